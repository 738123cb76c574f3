"""SED checkpoints: the authors' detectron2 layout and ovbench's own, strict and one-line errors.

The official file is written here in its exact layout (docs/methods/sed.md#checkpoint-layout):
a torch.save'd ``{"model": state_dict, "iteration": ...}`` whose keys are the SED module's
state dict: ``sem_seg_head.predictor.clip_model.*`` (the whole open_clip CLIP: ConvNeXt trunk,
projection head, frozen text tower, logit_scale; its attn_mask buffer is not persistent) and
``sem_seg_head.predictor.transformer.*`` (the Aggregator). The detectron2 backbone is deleted
before training and the pixel statistics are non-persistent buffers, so nothing else is there.
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from pathlib import Path

import open_clip
import pytest
import torch

from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError
from ovbench_adapters.sed import SedSegmenter, convert_official_state_dict, to_official_state_dict
from ovbench_methods.sed import SedConfig
from checkpoint_fixtures import perturb_parameters

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
                   "timm_proj": "linear", "image_size": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
VOCABULARY = Vocabulary(["road", "tree", "building", "water"])
CLIP = "sem_seg_head.predictor.clip_model."
HEAD = "sem_seg_head.predictor.transformer."

#: The Aggregator's parameter names in the official code (TEXT_GUIDANCE_DIM 0: no text
#: projection; CNEXT_TYPE V1; no buffers), stage indices written as N.
OFFICIAL_HEAD_PATTERNS = {
    "conv1.weight", "conv1.bias",
    "decoder_guidance_projection.N.0.weight", "decoder_guidance_projection.N.0.bias",
    "decoder_corr_guidance_projection.N.0.weight", "decoder_corr_guidance_projection.N.0.bias",
    "decoderN.up.weight", "decoderN.up.bias",
    "decoderN.conv.double_conv.0.weight", "decoderN.conv.double_conv.1.weight", "decoderN.conv.double_conv.1.bias",
    "decoderN.conv.double_conv.3.weight", "decoderN.conv.double_conv.4.weight", "decoderN.conv.double_conv.4.bias",
    "decoderN.cnext.dwconv.weight", "decoderN.cnext.dwconv.bias", "decoderN.cnext.norm.weight", "decoderN.cnext.norm.bias",
    "decoderN.cnext.pwconv1.weight", "decoderN.cnext.pwconv1.bias", "decoderN.cnext.pwconv2.weight",
    "decoderN.cnext.pwconv2.bias", "decoderN.cnext.gamma",
    "decoderN.attention.attention.q.weight", "decoderN.attention.attention.q.bias",
    "decoderN.attention.attention.k.weight", "decoderN.attention.attention.k.bias",
    "decoderN.attention.attention.v.weight", "decoderN.attention.attention.v.bias",
    "decoderN.attention.MLP.0.weight", "decoderN.attention.MLP.0.bias",
    "decoderN.attention.MLP.2.weight", "decoderN.attention.MLP.2.bias",
    "decoderN.attention.norm1.weight", "decoderN.attention.norm1.bias",
    "decoderN.attention.norm2.weight", "decoderN.attention.norm2.bias",
    "headN.weight", "headN.bias", "head.weight", "head.bias",
}


def tiny_config(**fields) -> SedConfig:
    settings = dict(
        clip_weights=None, model_config=copy.deepcopy(TINY_CLIP), image_size=(64, 64), templates=["a {}.", "the {}."],
        derive_cost_guidance_channels=True, hidden_dim=32, decoder_dims=(32, 16, 16), decoder_guidance_dims=(160, 80, 40),
        decoder_guidance_proj_dims=(16, 8, 4), num_heads=2,
    )
    return SedConfig(**{**settings, **fields})


def tiny_segmenter(seed: int, **fields) -> SedSegmenter:
    torch.manual_seed(seed)
    segmenter = SedSegmenter(tiny_config(**fields)).eval()
    return perturb_parameters(segmenter, seed)


def outputs(segmenter: SedSegmenter) -> torch.Tensor:
    views = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)) * 255
    with torch.no_grad():
        return segmenter.forward_logits(views, VOCABULARY)


def official_layout(segmenter: SedSegmenter) -> OrderedDict:
    """The detectron2 state dict the official code would save for this model, assembled from
    the sub-modules as the official model nests them: the open_clip CLIP under clip_model
    (visual tower, text tower at its top level, logit_scale), the Aggregator under transformer."""
    model = segmenter.model
    state: OrderedDict = OrderedDict()
    for key, value in model.image_encoder.visual.state_dict().items():
        state[CLIP + "visual." + key] = value
    for key, value in model.text_encoder.state_dict().items():
        state[CLIP + key] = value
    state[CLIP + "logit_scale"] = model.logit_scale.detach().clone()
    for key, value in model.transformer.state_dict().items():
        state[HEAD + key] = value
    return state


def save_official(path: Path, state: dict) -> Path:
    torch.save({"model": state, "iteration": 79999}, path)
    return path


def test_clip_part_is_exactly_a_stock_open_clip_state_dict():
    state = official_layout(tiny_segmenter(0))
    clip_keys = {key[len(CLIP):]: value.shape for key, value in state.items() if key.startswith(CLIP)}
    stock = open_clip.CLIP(**copy.deepcopy(TINY_CLIP)).state_dict()
    assert clip_keys == {key: value.shape for key, value in stock.items()}
    assert "visual.head.proj.weight" in clip_keys and "visual.trunk.head.norm.weight" in clip_keys
    assert not any("attn_mask" in key for key in clip_keys)


def test_head_part_has_the_official_aggregator_names():
    state = official_layout(tiny_segmenter(0))
    head_keys = {re.sub(r"(decoder|head|projection\.)(\d)", r"\1N", key[len(HEAD):]) for key in state if key.startswith(HEAD)}
    assert head_keys == OFFICIAL_HEAD_PATTERNS
    assert all(key.startswith((CLIP, HEAD)) for key in state)


def test_converters_are_inverse_and_match_the_official_layout():
    segmenter = tiny_segmenter(0)
    model_state = segmenter.model.state_dict()
    official = to_official_state_dict(model_state)
    assert list(official) == list(to_official_state_dict(convert_official_state_dict(official)))
    assert set(official) == set(official_layout(segmenter))
    assert set(convert_official_state_dict(official)) == set(model_state)


def test_official_checkpoint_loads_and_reproduces_the_outputs(tmp_path):
    source = tiny_segmenter(0)
    path = save_official(tmp_path / "sed_convnext_base.pth", official_layout(source))
    target = tiny_segmenter(1)
    assert not torch.allclose(outputs(target), outputs(source))
    target.load_checkpoint(path)
    assert torch.equal(outputs(target), outputs(source))
    assert torch.equal(target.model.logit_scale, source.model.logit_scale)


def test_written_by_to_official_state_dict_loads_too(tmp_path):
    source = tiny_segmenter(0)
    path = save_official(tmp_path / "exported.pth", to_official_state_dict(source.model.state_dict()))
    target = tiny_segmenter(1)
    target.load_checkpoint(path)
    assert torch.equal(outputs(target), outputs(source))


def test_missing_and_unexpected_keys_fail_in_one_line(tmp_path):
    state = official_layout(tiny_segmenter(0))
    del state[HEAD + "decoder2.cnext.gamma"]
    state["sem_seg_head.predictor.extra.weight"] = torch.zeros(1)
    path = save_official(tmp_path / "broken.pth", state)
    with pytest.raises(CheckpointError) as info:
        tiny_segmenter(1).load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert "1 missing keys" in message and "transformer.decoder2.cnext.gamma" in message
    assert "1 unexpected keys" in message and "sem_seg_head.predictor.extra.weight" in message


def test_official_file_of_another_configuration_fails_in_one_line(tmp_path):
    path = save_official(tmp_path / "other.pth", official_layout(tiny_segmenter(0, kernel_sizes=(7, 7, 7))))
    with pytest.raises(CheckpointError, match="shape mismatches") as info:
        tiny_segmenter(1).load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_ovbench_checkpoint_round_trip(tmp_path):
    source = tiny_segmenter(0)
    path = tmp_path / "ovbench.pth"
    torch.save({"model": source.state_dict(), "iteration": 10}, path)
    target = tiny_segmenter(1)
    target.load_checkpoint(path)
    assert torch.equal(outputs(target), outputs(source))
