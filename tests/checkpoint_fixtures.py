"""Helpers for the tests that write checkpoints in official layouts and load them back."""

from __future__ import annotations

import torch
from torch import nn


def perturb_parameters(module: nn.Module, seed: int, scale: float = 0.05) -> nn.Module:
    """Add seeded noise to every parameter, so that no zero-initialised entry is left: a loader
    that skipped a tensor would then change the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return module


def save_detectron2_checkpoint(state: dict, path, train_classes: int = 171, iteration: int = 119999):
    """Write `state` as a detectron2 training checkpoint ``{"model": ..., "iteration": ...}``, the
    way the mask-classification releases are saved: the criterion's class weights (the
    training vocabulary's classes plus a no-object weight of 0.1) included."""
    weights = torch.ones(train_classes + 1)
    weights[-1] = 0.1
    torch.save({"model": {**state, "criterion.empty_weight": weights}, "iteration": iteration}, path)
    return path


def check_official_file_reproduces(make_segmenter, outputs, path) -> None:
    """A segmenter's weights written in its authors' layout (`official_state_dict`, saved as a
    detectron2 checkpoint) load strictly into a differently initialised build and give the
    same scores, bit for bit; every tensor of the model arrives."""
    source, target = make_segmenter(0), make_segmenter(1)
    save_detectron2_checkpoint(source.official_state_dict(), path)
    assert not torch.allclose(outputs(target), outputs(source))
    target.load_checkpoint(path)
    assert torch.equal(outputs(target), outputs(source))
    own = target.model.state_dict()
    assert all(torch.equal(own[key], value) for key, value in source.model.state_dict().items())


def check_conversion_inverts(model_state: dict, to_official, from_official) -> None:
    """from_official(to_official(state)) gives the model's keys and tensors back exactly."""
    back = from_official(to_official(model_state))
    assert set(back) == set(model_state)
    assert all(torch.equal(back[key], model_state[key]) for key in model_state)
