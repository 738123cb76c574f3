"""The DINO specialist stream (methods/common/dino.py): architecture, dense outputs,
pos-embed resizing, normalisation, checkpoint loading, freezing."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ovbench_methods.common.dino import (
    OFFICIAL_POS_EMBED_SCALE,
    DinoArch,
    DinoCheckpointError,
    DinoConfigError,
    DinoInputError,
    DinoVisionTransformer,
    build_dino,
    dino_arch,
    load_dino_checkpoint,
    resize_pos_embed,
)

# A narrow, shallow DINO with the real patch size and pretraining grid (28² -> 48² at 384²),
# so the official pos-embed path runs exactly as at full size.
TINY = DinoArch(patch_size=8, embed_dim=32, depth=3, num_heads=4, pretrain_img_size=224)
CLIP_MEAN = torch.tensor([122.771, 116.746, 104.094]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([68.501, 66.632, 70.323]).view(1, 3, 1, 1)
IMAGENET_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


def tiny(seed: int = 0, **kwargs) -> DinoVisionTransformer:
    torch.manual_seed(seed)
    return DinoVisionTransformer(TINY, **kwargs)


def images(size: int = 384, batch: int = 1, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=generator) * 255


def dino_block_reference(block: nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
    """DINO's block, written out: pre-LN softmax attention with packed qkv, then a GELU MLP."""
    batch, tokens, dim = x.shape
    h = F.layer_norm(x, (dim,), block.norm1.weight, block.norm1.bias, 1e-6)
    qkv = F.linear(h, block.attn.qkv.weight, block.attn.qkv.bias)
    qkv = qkv.reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(dim=-1)
    y = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
    x = x + F.linear(y, block.attn.proj.weight, block.attn.proj.bias)
    h = F.layer_norm(x, (dim,), block.norm2.weight, block.norm2.bias, 1e-6)
    h = F.linear(F.gelu(F.linear(h, block.mlp.fc1.weight, block.mlp.fc1.bias)), block.mlp.fc2.weight, block.mlp.fc2.bias)
    return x + h


# --------------------------------------------------------------------------- full size
@pytest.fixture(scope="module")
def vit_b8() -> DinoVisionTransformer:
    torch.manual_seed(0)
    return DinoVisionTransformer("vit_base_8")


def test_vit_b8_layout_matches_dino(vit_b8):
    state = vit_b8.state_dict()
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(12):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    assert set(state) == expected  # DINO's names, nothing more (pixel statistics are not persistent)
    assert state["pos_embed"].shape == (1, 785, 768)
    assert state["cls_token"].shape == (1, 1, 768)
    assert state["patch_embed.proj.weight"].shape == (768, 3, 8, 8)
    assert state["blocks.0.attn.qkv.weight"].shape == (2304, 768)
    assert state["blocks.11.mlp.fc1.weight"].shape == (3072, 768)
    assert vit_b8.blocks[0].attn.num_heads == 12
    assert all(m.eps == 1e-6 for m in vit_b8.modules() if isinstance(m, nn.LayerNorm))
    assert sum(p.numel() for p in vit_b8.parameters()) == 85_807_872


def test_vit_b8_full_size_rsib_layers(vit_b8):
    feats = vit_b8(images(384), blocks=(3, 7, 11))
    assert feats.grid == (48, 48)
    assert sorted(feats.maps) == [3, 7, 11]
    for index in (3, 7, 11):
        assert feats.maps[index].shape == (1, 768, 48, 48)
        assert feats.cls[index].shape == (1, 768)
    # After the final LayerNorm (weight 1, bias 0 at init) every token is standardised.
    tokens = feats.maps[11].flatten(2)
    assert torch.allclose(tokens.mean(dim=1), torch.zeros(1, 48 * 48), atol=1e-4)


def test_variants():
    assert dino_arch("vit_small_16") == DinoArch(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    assert dino_arch("vit_base_16").patch_size == 16
    assert dino_arch({"variant": "vit_small_8", "depth": 2}).depth == 2
    assert dino_arch("vit_base_8", embed_dim=64, num_heads=4).embed_dim == 64
    with pytest.raises(DinoConfigError, match="unknown DINO variant"):
        dino_arch("vit_huge_8")
    with pytest.raises(DinoConfigError, match="unknown DINO architecture field"):
        dino_arch("vit_base_8", width=3)
    with pytest.raises(DinoConfigError, match="not divisible"):
        dino_arch("vit_base_8", num_heads=5)
    with pytest.raises(DinoConfigError, match="unknown DINO input_norm"):
        DinoVisionTransformer(TINY, input_norm="dino")
    with pytest.raises(DinoConfigError, match="pos_embed_resize"):
        DinoVisionTransformer(TINY, pos_embed_resize="bilinear")


# --------------------------------------------------------------------------- dense outputs
def test_every_layer_equals_manual_timm_forward():
    model = tiny()
    x = images(384)
    feats = model(x)  # all blocks
    assert sorted(feats.maps) == [0, 1, 2]

    pixels = (x - CLIP_MEAN) / CLIP_STD
    tokens = model.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
    tokens = torch.cat([model.cls_token.expand(1, -1, -1), tokens], dim=1)
    patch_table = model.pos_embed[:, 1:].reshape(1, 28, 28, 32).permute(0, 3, 1, 2)
    resized = F.interpolate(patch_table, scale_factor=1.717857142857143, mode="bicubic", align_corners=False)
    tokens = tokens + torch.cat([model.pos_embed[:, :1], resized.permute(0, 2, 3, 1).reshape(1, 48 * 48, 32)], dim=1)
    for i, block in enumerate(model.blocks):
        tokens = block(tokens)
        normed = model.norm(tokens)
        expected = normed[:, 1:].transpose(1, 2).reshape(1, 32, 48, 48)
        torch.testing.assert_close(feats.maps[i], expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(feats.cls[i], normed[:, 0], rtol=0, atol=1e-5)


def test_timm_block_is_dinos_block():
    model = tiny(seed=3)
    x = torch.randn(2, 50, 32)
    for block in model.blocks:
        torch.testing.assert_close(block(x), dino_block_reference(block, x, heads=4), rtol=1e-5, atol=1e-5)


def test_pretraining_size_needs_no_resize_and_matches_timm():
    model = tiny(seed=4)
    x = images(224)
    feats = model(x, blocks=[-1])
    assert sorted(feats.maps) == [2]
    reference = model.forward_features((x - CLIP_MEAN) / CLIP_STD)  # timm's own path, no resizing
    torch.testing.assert_close(feats.maps[2].flatten(2).transpose(1, 2), reference[:, 1:], rtol=0, atol=1e-5)


def test_chosen_blocks_stop_early_and_bad_indices():
    model = tiny()
    x = images(64)  # 8x8 grid, "exact" below because the official scale only fits 48x48
    model.pos_embed_resize = "exact"
    ran = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    feats = model(x, blocks=(1, 0))
    assert sorted(feats.maps) == [0, 1] and ran == [0, 1]
    with pytest.raises(DinoInputError, match="out of range"):
        model(x, blocks=(3,))
    with pytest.raises(DinoInputError, match="multiple of the patch size"):
        model(images(60))
    with pytest.raises(DinoInputError, match=r"\(B,3,H,W\)"):
        model(torch.rand(1, 4, 64, 64))


# --------------------------------------------------------------------------- pos-embed
def test_official_pos_embed_scale_vs_exact_grid():
    torch.manual_seed(0)
    table = torch.randn(1, 785, 16)
    official = resize_pos_embed(table, (48, 48), "official")
    exact = resize_pos_embed(table, (48, 48), "exact")
    assert official.shape == exact.shape == (1, 1 + 48 * 48, 16)
    assert torch.equal(official[:, 0], table[:, 0]) and torch.equal(exact[:, 0], table[:, 0])
    square = table[:, 1:].reshape(1, 28, 28, 16).permute(0, 3, 1, 2)
    by_scale = F.interpolate(square, scale_factor=OFFICIAL_POS_EMBED_SCALE, mode="bicubic", align_corners=False)
    by_size = F.interpolate(square, size=(48, 48), mode="bicubic", align_corners=False)
    torch.testing.assert_close(official[:, 1:], by_scale.permute(0, 2, 3, 1).reshape(1, -1, 16), rtol=0, atol=0)
    torch.testing.assert_close(exact[:, 1:], by_size.permute(0, 2, 3, 1).reshape(1, -1, 16), rtol=0, atol=0)
    # The fixed factor shifts the sampling grid: not the same table as a resize to 48x48.
    assert (official - exact).abs().max() > 0.05
    # DINO's (grid + 0.1) / side rule is where the constant comes from: identical at 48x48.
    assert OFFICIAL_POS_EMBED_SCALE == 48.1 / 28
    torch.testing.assert_close(resize_pos_embed(table, (48, 48), "dino"), official, rtol=0, atol=0)


def test_official_scale_refuses_other_grids_and_same_grid_is_unchanged():
    table = torch.randn(1, 785, 8)
    with pytest.raises(DinoInputError, match="exact") as err:
        resize_pos_embed(table, (32, 32), "official")
    assert "\n" not in str(err.value)
    dino = resize_pos_embed(table, (32, 40), "dino")
    assert dino.shape == (1, 1 + 32 * 40, 8)
    assert resize_pos_embed(table, (28, 28), "official") is table
    assert resize_pos_embed(table, (32, 40), "exact").shape == (1, 1 + 32 * 40, 8)


def test_model_uses_its_resize_mode():
    official = tiny(seed=5)
    exact = tiny(seed=5, pos_embed_resize="exact")
    x = images(384)
    a, b = official(x, blocks=[0]).maps[0], exact(x, blocks=[0]).maps[0]
    assert a.shape == b.shape == (1, 32, 48, 48)
    assert not torch.allclose(a, b, atol=1e-3)
    with pytest.raises(DinoInputError, match="pos_embed_resize 'official'"):
        official(images(256))
    assert exact(images(256), blocks=[0]).maps[0].shape == (1, 32, 32, 32)


# --------------------------------------------------------------------------- normalisation
def test_clip_normalisation_by_default_imagenet_by_flag():
    clip_model = tiny(seed=6)
    imagenet_model = tiny(seed=6, input_norm="imagenet")
    x = images(64)
    for model in (clip_model, imagenet_model):
        model.pos_embed_resize = "exact"
    got = clip_model(x, blocks=[2]).maps[2]
    torch.testing.assert_close(got, clip_model.features((x - CLIP_MEAN) / CLIP_STD, blocks=[2]).maps[2])
    got_in = imagenet_model(x, blocks=[2]).maps[2]
    torch.testing.assert_close(got_in, imagenet_model.features((x - IMAGENET_MEAN) / IMAGENET_STD, blocks=[2]).maps[2])
    assert not torch.allclose(got, got_in, atol=1e-3)


# --------------------------------------------------------------------------- checkpoints
def dino_weights(seed: int = 11) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tiny(seed=seed).state_dict().items()}


def dino_head(dim: int = 32) -> dict[str, torch.Tensor]:
    """Entries of DINO's projection head as they sit in a teacher dict (not part of the ViT)."""
    return {
        "head.mlp.0.weight": torch.randn(64, dim),
        "head.mlp.0.bias": torch.zeros(64),
        "head.last_layer.weight_g": torch.ones(65, 1),
        "head.last_layer.weight_v": torch.randn(65, 64),
    }


def assert_loaded(model, weights):
    state = model.state_dict()
    for key, value in weights.items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize(
    "layout",
    ["plain", "teacher_backbone", "module_backbone", "teacher_module_backbone"],
)
def test_checkpoint_layouts(tmp_path, layout):
    weights = dino_weights()
    if layout == "plain":
        payload = weights  # e.g. dino_vitbase8_pretrain.pth
    elif layout == "teacher_backbone":
        student = {f"module.backbone.{k}": torch.zeros_like(v) for k, v in weights.items()}
        payload = {"teacher": {**{f"backbone.{k}": v for k, v in weights.items()}, **dino_head()},
                   "student": student, "epoch": 100}
    elif layout == "module_backbone":
        payload = {f"module.backbone.{k}": v for k, v in weights.items()}
    else:
        payload = {"teacher": {f"module.backbone.{k}": v for k, v in weights.items()}}
    path = tmp_path / "rsib.pth"
    torch.save(payload, path)
    model = tiny(seed=0)
    report = load_dino_checkpoint(model, path)
    assert_loaded(model, weights)
    assert report.missing == []
    assert report.took_teacher == layout.startswith("teacher")
    if layout == "teacher_backbone":
        assert sorted(report.unexpected) == sorted(dino_head())


def test_missing_keys_fail_by_default_official_mode_loads_partially(tmp_path):
    weights = dino_weights()
    partial = {k: v for k, v in weights.items() if not k.startswith("blocks.2.")}
    path = tmp_path / "partial.pth"
    torch.save({"teacher": partial}, path)
    model = tiny(seed=0)
    before = model.state_dict()["blocks.2.attn.qkv.weight"].clone()
    with pytest.raises(DinoCheckpointError, match=r"missing 12 key\(s\): blocks\.2\.") as err:
        load_dino_checkpoint(model, path)
    assert "\n" not in str(err.value)
    report = load_dino_checkpoint(model, path, key_check="official")
    assert len(report.missing) == 12 and not report.complete
    assert torch.equal(model.state_dict()["cls_token"], weights["cls_token"])
    assert torch.equal(model.state_dict()["blocks.2.attn.qkv.weight"], before)


def test_strict_refuses_unexpected_and_wrapped_files_fail_clearly(tmp_path):
    weights = dino_weights()
    path = tmp_path / "teacher.pth"
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in weights.items()}, **dino_head()}}, path)
    with pytest.raises(DinoCheckpointError, match=r"unexpected 4 key\(s\): head\."):
        load_dino_checkpoint(tiny(), path, key_check="strict")
    # A file the official strict=False load would silently ignore: every key is missing.
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": weights}, wrapped)
    with pytest.raises(DinoCheckpointError, match="non-tensor entries") as err:
        load_dino_checkpoint(tiny(), wrapped)
    assert "\n" not in str(err.value)
    renamed = tmp_path / "renamed.pth"
    torch.save({f"dino_model.{k}": v for k, v in weights.items()}, renamed)
    with pytest.raises(DinoCheckpointError, match=r"missing \d+ key\(s\): cls_token, pos_embed"):
        load_dino_checkpoint(tiny(), renamed)


def test_shape_mismatch_is_one_line(tmp_path):
    weights = dino_weights()
    weights["pos_embed"] = torch.zeros(1, 197, 32)  # a /16 table
    path = tmp_path / "b16.pth"
    torch.save(weights, path)
    for key_check in ("missing", "official"):
        with pytest.raises(DinoCheckpointError, match=r"pos_embed \(1, 197, 32\) vs \(1, 785, 32\)") as err:
            load_dino_checkpoint(tiny(), path, key_check=key_check)
        assert "\n" not in str(err.value)


def test_untrusted_pickles_are_refused_unless_trusted(tmp_path):
    weights = dino_weights()
    path = tmp_path / "dino_full_checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in weights.items()},
                "args": argparse.Namespace(arch="vit_base", patch_size=8)}, path)
    with pytest.raises(DinoCheckpointError, match="trusted=True") as err:
        load_dino_checkpoint(tiny(), path)
    assert "\n" not in str(err.value)
    model = build_dino(TINY, path, trusted=True)
    assert_loaded(model, weights)
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(DinoCheckpointError, match="not found"):
        build_dino(TINY, tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DinoCheckpointError, match="cannot read"):
        build_dino(TINY, garbage)


# --------------------------------------------------------------------------- freezing
def test_frozen_by_default_stays_eval_and_gets_no_gradient():
    model = tiny()
    model.pos_embed_resize = "exact"
    head = nn.Conv2d(32, 4, 1)
    parent = nn.ModuleDict({"dino": model, "head": head})
    parent.train()
    assert head.training and not model.training
    assert not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    out = head(model(images(64), blocks=[2]).maps[2])
    out.sum().backward()
    assert head.weight.grad is not None
    assert all(p.grad is None for p in model.parameters())


def test_attention_finetune_trains_qkv_and_pos_embed():
    model = tiny(finetune="attention")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"pos_embed"} | {f"blocks.{i}.attn.qkv.weight" for i in range(3)}
    model.train()
    assert model.training
    model(images(384), blocks=[2]).maps[2].sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0  # resized inside forward
    full = tiny(finetune="full")
    assert all(p.requires_grad for p in full.parameters())
    with pytest.raises(DinoConfigError, match="finetune"):
        tiny(finetune="partial")
    assert math.isclose(OFFICIAL_POS_EMBED_SCALE, 1.717857142857143)
