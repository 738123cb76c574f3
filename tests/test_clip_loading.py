"""CLIP weight loading: OpenAI TorchScript archives, open_clip checkpoints, tags, bad files.

Fixtures are written by the tests in the on-disk layouts the real files use: OpenAI's
`.pt` is a TorchScript archive whose state dict has the OpenAI key names plus the
`input_resolution` / `context_length` / `vocab_size` entries; open_clip training saves
``{"epoch", "name", "state_dict": {"module.<key>": ...}}``.
"""

from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from torch import nn

from ovbench_adapters.clip_dense import ClipDenseConfig, ClipDenseSegmenter
from ovbench_methods.clip_dense.model import ClipDenseModel
from ovbench_methods.common import clip_loading
from ovbench_methods.common.clip_loading import (
    ClipConfigError,
    ClipLoadingError,
    ClipWeightsUnavailableError,
    create_clip,
    infer_openai_config,
)
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError, ConfigError

TINY_CONFIG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# OpenAI's conventions (64-wide heads), so the architecture can be inferred from shapes alone.
OPENAI_STYLE_CONFIG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}
CLASSES = (("water",), ("tree", "forest"), ("road",))


def random_clip(config: dict, seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    model = open_clip.CLIP(**copy.deepcopy(config)).eval()
    with torch.no_grad():  # non-zero biases so that a dropped tensor would show in the outputs
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(std=0.05)
    return model


def dense_logits(clip: nn.Module) -> torch.Tensor:
    tokenizer = open_clip.SimpleTokenizer(context_length=77)
    model = ClipDenseModel(clip, tokenizer, ("a photo of a {}.",))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        return model(torch.rand(1, 3, 64, 96, generator=generator) * 255, CLASSES)


def write_openai_archive(clip: nn.Module, path: Path, input_resolution: int = 64) -> Path:
    """A TorchScript archive with OpenAI's key layout, like the `.pt` files OpenAI ships."""
    root = nn.Module()
    for key, tensor in clip.state_dict().items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, nn.Module())
            module = getattr(module, name)
        module.register_buffer(leaf, tensor.clone())
    root.register_buffer("input_resolution", torch.tensor(input_resolution))
    root.register_buffer("context_length", torch.tensor(77))
    root.register_buffer("vocab_size", torch.tensor(49408))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(root), str(path))
    return path


def write_open_clip_checkpoint(clip: nn.Module, path: Path, **extra) -> Path:
    state = {f"module.{key}": value for key, value in clip.state_dict().items()}
    torch.save({"epoch": 3, "name": "tiny-run", "state_dict": state, **extra}, path)
    return path


def assert_one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


# ------------------------------------------------------------------------ files
def test_openai_torchscript_archive_loads_exactly_with_explicit_config(tmp_path):
    source = random_clip(TINY_CONFIG)
    path = write_openai_archive(source, tmp_path / "ViT-tiny.pt")
    loaded = create_clip("ViT-B-16", str(path), TINY_CONFIG)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.allclose(dense_logits(loaded), dense_logits(source), atol=1e-6)


def test_openai_architecture_is_inferred_from_shapes(tmp_path):
    source = random_clip(OPENAI_STYLE_CONFIG)
    path = write_openai_archive(source, tmp_path / "openai.pt")
    inferred = infer_openai_config(source.state_dict())
    assert inferred["vision_cfg"] == {**OPENAI_STYLE_CONFIG["vision_cfg"], "mlp_ratio": 4.0}
    assert inferred["text_cfg"] == OPENAI_STYLE_CONFIG["text_cfg"]
    assert inferred["embed_dim"] == 64 and inferred["quick_gelu"] is True
    # arch is deliberately a different model: OpenAI files carry their own architecture.
    loaded = create_clip("ViT-L-14", str(path))
    assert torch.allclose(dense_logits(loaded), dense_logits(source), atol=1e-6)


def test_plain_openai_layout_state_dict_with_metadata_loads(tmp_path):
    source = random_clip(OPENAI_STYLE_CONFIG)
    state = dict(source.state_dict())
    state.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(state, tmp_path / "plain.pt")
    loaded = create_clip("ViT-B-16", str(tmp_path / "plain.pt"))
    assert torch.allclose(dense_logits(loaded), dense_logits(source), atol=1e-6)


def test_open_clip_training_checkpoint_with_module_prefix_loads(tmp_path):
    source = random_clip(TINY_CONFIG, seed=2)
    path = write_open_clip_checkpoint(source, tmp_path / "epoch_3.pt")
    loaded = create_clip("ViT-B-16", str(path), TINY_CONFIG)
    result = loaded.load_state_dict(source.state_dict(), strict=True)  # same key set both ways
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.allclose(dense_logits(loaded), dense_logits(source), atol=1e-6)


def test_adapter_uses_the_checkpoint_weights(tmp_path):
    source = random_clip(TINY_CONFIG, seed=4)
    path = write_open_clip_checkpoint(source, tmp_path / "epoch_3.pt")
    config = ClipDenseConfig(clip_weights=str(path), model_config=copy.deepcopy(TINY_CONFIG), templates="single")
    segmenter = ClipDenseSegmenter(config)
    tokenizer = open_clip.SimpleTokenizer(context_length=77)
    reference = ClipDenseModel(source, tokenizer, ("A photo of a {} in the scene",))
    batch = torch.rand(1, 3, 64, 64) * 255
    vocabulary = Vocabulary(["water", ["tree", "forest"]])
    with torch.no_grad():
        expected = reference(batch, (("water",), ("tree", "forest")))
    assert torch.allclose(segmenter.forward_logits(batch, vocabulary), expected, atol=1e-6)


# ------------------------------------------------------------------- bad files
def test_corrupt_file_gives_one_clear_error(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ClipLoadingError) as exc:
        create_clip("ViT-B-16", str(path), TINY_CONFIG)
    assert str(path) in assert_one_line(exc)
    with pytest.raises(CheckpointError) as exc:
        ClipDenseSegmenter(ClipDenseConfig(clip_weights=str(path), model_config=copy.deepcopy(TINY_CONFIG)))
    assert "broken.pt" in assert_one_line(exc)


def test_truncated_torchscript_archive_gives_one_clear_error(tmp_path):
    path = write_openai_archive(random_clip(OPENAI_STYLE_CONFIG), tmp_path / "openai.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ClipLoadingError) as exc:
        create_clip("ViT-B-16", str(path))
    assert "cannot read CLIP weights" in assert_one_line(exc)


def test_wrong_keys_name_missing_and_unexpected_keys(tmp_path):
    state = dict(random_clip(TINY_CONFIG).state_dict())
    state["visual.extra_head.weight"] = state.pop("visual.proj")
    torch.save({"state_dict": state}, tmp_path / "renamed.pt")
    with pytest.raises(ClipLoadingError) as exc:
        create_clip("ViT-B-16", str(tmp_path / "renamed.pt"), TINY_CONFIG)
    message = assert_one_line(exc)
    assert "1 missing keys" in message and "visual.proj" in message
    assert "1 unexpected keys" in message and "visual.extra_head.weight" in message


def test_checkpoint_of_another_architecture_names_the_shape_mismatch(tmp_path):
    path = write_open_clip_checkpoint(random_clip(TINY_CONFIG), tmp_path / "tiny.pt")
    wider = copy.deepcopy(TINY_CONFIG)
    wider["embed_dim"] = 32
    with pytest.raises(ClipLoadingError, match="shape mismatches") as exc:
        create_clip("ViT-B-16", str(path), wider)
    assert_one_line(exc)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(ClipLoadingError, match="not found"):
        create_clip("ViT-B-16", str(tmp_path / "nowhere.pt"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ClipLoadingError, match="not a CLIP state dict"):
        create_clip("ViT-B-16", str(tmp_path / "list.pt"), TINY_CONFIG)


def test_pickled_objects_need_trust(tmp_path):
    source = random_clip(TINY_CONFIG)
    path = write_open_clip_checkpoint(source, tmp_path / "with_args.pt", args=argparse.Namespace(lr=1e-3))
    with pytest.raises(ClipLoadingError) as exc:
        create_clip("ViT-B-16", str(path), TINY_CONFIG)
    assert "--trust-checkpoint" in assert_one_line(exc)
    loaded = create_clip("ViT-B-16", str(path), TINY_CONFIG, trusted=True)
    assert torch.equal(loaded.visual.proj, source.visual.proj)


# ------------------------------------------------------------------------- tags
def test_offline_tag_gives_one_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': We have no connection (offline mode)\nmore")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(ClipWeightsUnavailableError) as exc:
        create_clip("ViT-B-16", "openai")
    message = assert_one_line(exc)
    assert "could not fetch CLIP weights ViT-B-16/openai" in message and "--clip-weights PATH" in message
    with pytest.raises(CheckpointError, match="--clip-weights PATH"):
        ClipDenseSegmenter(ClipDenseConfig())


def test_openai_tag_forces_quick_gelu(monkeypatch):
    seen = {}

    def fake_create_model(arch, pretrained=None, **kwargs):
        seen.update(arch=arch, pretrained=pretrained, **kwargs)
        return random_clip(TINY_CONFIG)

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    create_clip("ViT-B-16", "openai")
    assert seen["pretrained"] == "openai" and seen["force_quick_gelu"] is True
    create_clip("ViT-B-16", "laion2b_s34b_b88k")
    assert seen["force_quick_gelu"] is False


def test_unknown_tag_and_architecture_are_config_errors(monkeypatch):
    monkeypatch.setattr(open_clip, "create_model", pytest.fail)  # must fail before any download
    with pytest.raises(ClipConfigError, match="laion9b") as exc:
        create_clip("ViT-B-16", "laion9b")
    assert "openai" in assert_one_line(exc)  # lists the real tags
    with pytest.raises(ConfigError, match="laion9b"):
        ClipDenseSegmenter(ClipDenseConfig(clip_weights="laion9b"))
    with pytest.raises(ClipConfigError, match="ViT-B-17"):
        create_clip("ViT-B-17", "openai")


def test_random_init_needs_no_network(monkeypatch):
    monkeypatch.setattr(clip_loading.open_clip, "create_model", pytest.fail)
    model = create_clip("ViT-B-16", None, TINY_CONFIG)
    assert model.visual.conv1.out_channels == 64
