"""The OV-Seg / SCAN proposal backbones: Swin (D2 layout) and R101c (DeepLab ResNet).

Tiny configurations of the real architectures. The Swin blocks are checked against a slow
reference written here (explicit windows, relative-position bias looked up from coordinate
differences, the shift mask from band membership), the key sets against lists written out by
hand from the official module layouts, and the weight readers against files written in the
authors' formats.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovbench_methods.common.backbones import (
    FrozenBatchNorm2d,
    ResNetDeepLabBackbone,
    ResNetDeepLabConfig,
    SwinBackbone,
    SwinConfig,
    load_resnet_pretrained,
    load_swin_pretrained,
    read_weights_file,
    resnet_from_official,
    resnet_to_official,
    swin_from_official,
    swin_to_official,
)
from ovbench_methods.common.errors import MethodConfigError, WeightsError

TINY_SWIN = SwinConfig(
    embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), window_size=4, pretrain_img_size=128
)
TINY_RESNET = ResNetDeepLabConfig(
    layers=(1, 1, 1, 1), stem_out_channels=16, res2_out_channels=32, width_per_group=8, res5_multi_grid=(1,)
)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Random values for every float tensor, so that mapping mistakes cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if tensor.dtype.is_floating_point:
                noise = torch.randn(tensor.shape, generator=gen)
                if name.endswith("running_var"):
                    noise = noise.abs() + 0.5
                tensor.copy_(noise * 0.3 + (1.0 if name.endswith("norm.weight") else 0.0))


def _swin(config: SwinConfig = TINY_SWIN) -> SwinBackbone:
    torch.manual_seed(0)
    model = SwinBackbone(config).eval()
    _randomise(model)
    return model


def _resnet(config: ResNetDeepLabConfig = TINY_RESNET) -> ResNetDeepLabBackbone:
    torch.manual_seed(0)
    model = ResNetDeepLabBackbone(config).eval()
    _randomise(model, seed=1)
    return model


# --- expected official layouts, written out from the official modules ----------------------


def official_swin_keys(depths: tuple[int, ...]) -> set[str]:
    """D2SwinTransformer state-dict keys: patch embed, blocks (with their persistent
    relative_position_index buffer), merging at the end of every stage but the last, and one
    LayerNorm per output."""
    keys = {"patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight", "patch_embed.norm.bias"}
    block_parts = [
        "norm1.weight", "norm1.bias",
        "attn.relative_position_bias_table", "attn.relative_position_index",
        "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
        "norm2.weight", "norm2.bias",
        "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    ]  # fmt: skip
    for stage, depth in enumerate(depths):
        for block in range(depth):
            keys |= {f"layers.{stage}.blocks.{block}.{part}" for part in block_parts}
        if stage < len(depths) - 1:
            keys |= {f"layers.{stage}.downsample.{part}" for part in ("reduction.weight", "norm.weight", "norm.bias")}
    keys |= {f"norm{stage}.{part}" for stage in range(len(depths)) for part in ("weight", "bias")}
    return keys


def official_resnet_keys(layers: tuple[int, ...]) -> set[str]:
    """detectron2 DeepLab ResNet keys with FrozenBN: every conv has a ``.norm`` with four
    buffers; the first block of each stage has a shortcut (channels change)."""
    norm = ("weight", "bias", "running_mean", "running_var")
    keys: set[str] = set()

    def conv(prefix: str) -> set[str]:
        return {f"{prefix}.weight"} | {f"{prefix}.norm.{n}" for n in norm}

    for name in ("conv1", "conv2", "conv3"):
        keys |= conv(f"stem.{name}")
    for stage, blocks in enumerate(layers, start=2):
        for block in range(blocks):
            for name in ("conv1", "conv2", "conv3"):
                keys |= conv(f"res{stage}.{block}.{name}")
        keys |= conv(f"res{stage}.0.shortcut")
    return keys


# --- a slow reference of one official Swin block ----------------------------------------------


def reference_swin_block(block: torch.nn.Module, x: torch.Tensor, window: int, shift: int) -> torch.Tensor:
    """x (B, H, W, C) -> block output, window by window.

    Official order: LayerNorm, zero-pad right/bottom to window multiples, roll the padded map
    by -shift, attend inside each window with the bias table entry of the (dy, dx) offset and
    -100 between tokens of different bands of the padded map, roll back, crop, residual, MLP.
    Rolling is done by indexing: window cell (r, c) holds padded token ((r+s) % Hp, (c+s) % Wp).
    """
    batch, height, width, channels = x.shape
    heads = block.attn.num_heads
    head_dim = channels // heads
    normed = F.layer_norm(x, (channels,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    padded_h, padded_w = math.ceil(height / window) * window, math.ceil(width / window) * window
    padded = torch.zeros(batch, padded_h, padded_w, channels, dtype=x.dtype)
    padded[:, :height, :width] = normed
    table = block.attn.relative_position_bias_table

    def band(pos: int, size: int) -> int:
        if shift == 0:
            return 0
        return 0 if pos < size - window else (1 if pos < size - shift else 2)

    attended = torch.zeros_like(padded)
    for top in range(0, padded_h, window):
        for left in range(0, padded_w, window):
            cells = [(top + i, left + j) for i in range(window) for j in range(window)]
            sources = [((r + shift) % padded_h, (c + shift) % padded_w) for r, c in cells]
            tokens = torch.stack([padded[:, r, c] for r, c in sources], dim=1)  # (B, N, C)
            qkv = F.linear(tokens, block.attn.qkv.weight, block.attn.qkv.bias)
            q, k, v = qkv.view(batch, len(cells), 3, heads, head_dim).unbind(2)
            logits = torch.einsum("bnhd,bmhd->bhnm", q * head_dim**-0.5, k)
            bias = torch.zeros(heads, len(cells), len(cells), dtype=x.dtype)
            for n, (rn, cn) in enumerate(cells):
                for m, (rm, cm) in enumerate(cells):
                    row = (rn - rm + window - 1) * (2 * window - 1) + (cn - cm + window - 1)
                    bias[:, n, m] = table[row]
                    if (band(rn, padded_h), band(cn, padded_w)) != (band(rm, padded_h), band(cm, padded_w)):
                        bias[:, n, m] -= 100.0
            weights = torch.softmax(logits + bias, dim=-1)
            out = torch.einsum("bhnm,bmhd->bnhd", weights, v).reshape(batch, len(cells), channels)
            out = F.linear(out, block.attn.proj.weight, block.attn.proj.bias)
            for n, (r, c) in enumerate(sources):
                attended[:, r, c] = out[:, n]
    x = x + attended[:, :height, :width]
    hidden = F.layer_norm(x, (channels,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
    hidden = F.linear(F.gelu(F.linear(hidden, block.mlp.fc1.weight, block.mlp.fc1.bias)), block.mlp.fc2.weight, block.mlp.fc2.bias)
    return x + hidden


def reference_classifier_attn_mask(resolution: int, window: int) -> torch.Tensor:
    """The original Swin classifier's stored mask for an unpadded square map (shift w // 2)."""
    shift = window // 2
    def band(pos: int) -> int:
        return 0 if pos < resolution - window else (1 if pos < resolution - shift else 2)
    per_side = resolution // window
    masks = torch.zeros(per_side * per_side, window * window, window * window)
    for wi in range(per_side):
        for wj in range(per_side):
            labels = [
                (band(wi * window + i), band(wj * window + j)) for i in range(window) for j in range(window)
            ]
            for n, a in enumerate(labels):
                for m, b in enumerate(labels):
                    if a != b:
                        masks[wi * per_side + wj, n, m] = -100.0
    return masks


# --- Swin -----------------------------------------------------------------------------------


def test_swin_outputs_names_shapes_and_strides():
    model = _swin()
    out = model(torch.randn(2, 3, 50, 70))
    assert list(out) == ["res2", "res3", "res4", "res5"]
    # patch 4 pads 50x70 to 52x72 -> 13x18, then ceil halving
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 16, 13, 18),
        "res3": (2, 32, 7, 9),
        "res4": (2, 64, 4, 5),
        "res5": (2, 128, 2, 3),
    }
    assert model.output_shapes() == {"res2": (16, 4), "res3": (32, 8), "res4": (64, 16), "res5": (128, 32)}
    assert SwinBackbone(SwinConfig(embed_dim=8, depths=(1,), num_heads=(1,), window_size=2, out_features=("res2",))).output_shapes() == {"res2": (8, 4)}


def test_swin_b_defaults_are_the_published_configuration():
    config = SwinConfig()
    assert (config.embed_dim, config.depths, config.num_heads, config.window_size) == (128, (2, 2, 18, 2), (4, 8, 16, 32), 12)
    assert (config.patch_size, config.mlp_ratio, config.qkv_bias, config.drop_path_rate, config.ape) == (4, 4.0, True, 0.3, False)
    assert config.num_features == (128, 256, 512, 1024)
    with pytest.raises(MethodConfigError):
        SwinConfig(embed_dim=10, num_heads=(3, 3, 3, 3))
    with pytest.raises(MethodConfigError):
        SwinConfig(out_features=("res6",))


@pytest.mark.parametrize(
    ("stage", "block", "size"),
    [(0, 1, (13, 18)), (0, 0, (13, 18)), (3, 1, (2, 3)), (1, 1, (7, 9))],
    ids=["shifted-padded", "plain-padded", "map-smaller-than-window", "shifted-odd"],
)
def test_swin_block_matches_slow_reference(stage, block, size):
    model = _swin()
    layer = model.layers[stage].blocks[block]
    channels = TINY_SWIN.num_features[stage]
    x = torch.randn(2, *size, channels, generator=torch.Generator().manual_seed(3))
    shift = 0 if block % 2 == 0 else TINY_SWIN.window_size // 2
    with torch.no_grad():
        got = layer(x)
        want = reference_swin_block(layer, x, TINY_SWIN.window_size, shift)
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()


def test_swin_forward_matches_blockwise_reference_end_to_end():
    """Patch embed padding, merging with odd sizes and the output norms around the blocks."""
    model = _swin(SwinConfig(embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=3))
    pixels = torch.randn(1, 3, 21, 30, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = model(pixels)
        x = F.conv2d(F.pad(pixels, (0, 2, 0, 3)), model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=4)
        x = F.layer_norm(x.permute(0, 2, 3, 1), (8,), model.patch_embed.norm.weight, model.patch_embed.norm.bias)
        for stage, layer in enumerate(model.layers):
            for index, block in enumerate(layer.blocks):
                x = reference_swin_block(block, x, 3, 0 if index % 2 == 0 else 1)
            norm = getattr(model, f"norm{stage}")
            want = F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias).permute(0, 3, 1, 2)
            assert torch.allclose(got[f"res{stage + 2}"], want, atol=1e-5, rtol=0)
            if layer.downsample is not None:
                h, w = x.shape[1:3]
                x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
                x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
                merge = layer.downsample
                x = F.linear(F.layer_norm(x, x.shape[-1:], merge.norm.weight, merge.norm.bias), merge.reduction.weight)


def test_swin_official_key_set_round_trips():
    model = _swin()
    official = swin_to_official(model.state_dict())
    assert set(official) == official_swin_keys(TINY_SWIN.depths)
    index = official["layers.0.blocks.0.attn.relative_position_index"]
    assert index.dtype == torch.int64 and tuple(index.shape) == (16, 16)
    assert int(index[0, 0]) == 3 * 7 + 3 and int(index[0, 15]) == 0  # (dy, dx) = (0, 0) and (-3, -3)
    assert tuple(official["layers.2.blocks.0.attn.relative_position_bias_table"].shape) == (49, 2)
    fresh = SwinBackbone(TINY_SWIN)
    result = fresh.load_state_dict(swin_from_official(official), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


def test_swin_from_official_refuses_a_wrong_derived_buffer():
    official = swin_to_official(_swin().state_dict())
    official["layers.1.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    with pytest.raises(WeightsError, match="relative_position_index"):
        swin_from_official(official)


def _authors_swin_state(model: SwinBackbone, as_numpy: bool = False) -> dict:
    """What MaskFormer's converter pickles: the original classifier's keys (no norm0..3, plus
    head, final norm and the stored shift masks of a 128² model with window 4)."""
    state = {k: v for k, v in swin_to_official(model.state_dict()).items() if not k.startswith("norm")}
    state["norm.weight"], state["norm.bias"] = torch.ones(128), torch.zeros(128)
    state["head.weight"], state["head.bias"] = torch.randn(10, 128), torch.zeros(10)
    for stage in range(3):  # maps 32, 16, 8 are larger than the window; 4 is not
        resolution = 128 // 4 // 2**stage
        state[f"layers.{stage}.blocks.1.attn_mask"] = reference_classifier_attn_mask(resolution, 4)
    if as_numpy:
        state = {k: v.numpy() for k, v in state.items()}
    return state


@pytest.mark.parametrize("fmt", ["pkl-tensors", "pkl-numpy", "pth"])
def test_load_swin_pretrained_reads_the_authors_formats(tmp_path, fmt):
    source = _swin()
    payload = {"model": _authors_swin_state(source, as_numpy=fmt == "pkl-numpy"), "__author__": "third_party", "matching_heuristics": True}
    path = tmp_path / ("swin.pth" if fmt == "pth" else "swin.pkl")
    if fmt == "pth":
        torch.save({"model": payload["model"]}, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle)
    target = SwinBackbone(TINY_SWIN)
    kept = load_swin_pretrained(target, path)
    assert sorted(kept) == sorted(f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    for key, value in source.state_dict().items():
        if not key.startswith("norm"):
            assert torch.equal(target.state_dict()[key], value), key
    assert torch.equal(target.norm0.weight, torch.ones(16))  # left at init, as officially


def test_load_swin_pretrained_reports_key_problems_on_one_line(tmp_path):
    state = _authors_swin_state(_swin())
    del state["layers.0.blocks.0.attn.qkv.weight"]
    state["layers.0.blocks.0.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps({"model": state}))
    with pytest.raises(WeightsError) as info:
        load_swin_pretrained(SwinBackbone(TINY_SWIN), path)
    message = str(info.value)
    assert "\n" not in message and "1 missing" in message and "1 unexpected" in message
    state = _authors_swin_state(_swin())
    state["layers.1.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
    path.write_bytes(pickle.dumps({"model": state}))
    with pytest.raises(WeightsError, match="attn_mask"):
        load_swin_pretrained(SwinBackbone(TINY_SWIN), path)


# --- ResNet ---------------------------------------------------------------------------------


def test_resnet_outputs_names_shapes_and_strides():
    model = _resnet()
    out = model(torch.randn(1, 3, 50, 70))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 32, 13, 18),
        "res3": (1, 64, 7, 9),
        "res4": (1, 128, 4, 5),
        "res5": (1, 256, 2, 3),
    }
    assert model.output_shapes() == {"res2": (32, 4), "res3": (64, 8), "res4": (128, 16), "res5": (256, 32)}
    stem = model.conv1
    assert [stem[i].out_channels for i in (0, 3, 6)] == [8, 8, 16] and stem[0].stride == (2, 2)
    assert [stage[0].conv2.out_channels for stage in model._stages()] == [8, 16, 32, 64]


def test_r101c_defaults_are_ovseg_settings():
    config = ResNetDeepLabConfig()
    assert config.layers == (3, 4, 23, 3) and config.stem_type == "deeplab" and config.stem_out_channels == 128
    assert (config.stride_in_1x1, config.norm, config.freeze_at, config.res5_dilation) == (False, "FrozenBN", 2, 1)
    assert config.res5_multi_grid == (1, 2, 4)
    with pytest.raises(MethodConfigError):
        ResNetDeepLabConfig(layers=(1, 1, 1, 2), res5_multi_grid=(1, 2, 4))


@pytest.mark.parametrize(("base", "stride5"), [(1, 32), (2, 16)])
def test_res5_multigrid_dilations(base, stride5):
    config = ResNetDeepLabConfig(
        layers=(1, 1, 1, 3), stem_out_channels=16, res2_out_channels=32, width_per_group=8, res5_dilation=base
    )
    model = ResNetDeepLabBackbone(config).eval()
    res5 = model.layer4
    assert [b.conv2.dilation for b in res5] == [(base * g, base * g) for g in (1, 2, 4)]
    assert [b.conv2.padding for b in res5] == [(base * g, base * g) for g in (1, 2, 4)]
    assert all(b.conv2.kernel_size == (3, 3) for b in res5)
    assert [b.conv2.stride for b in res5] == [(2, 2) if base == 1 else (1, 1), (1, 1), (1, 1)]
    assert res5[0].downsample[0].stride == ((2, 2) if base == 1 else (1, 1))
    assert model.output_shapes()["res5"] == (256, stride5)
    out = model(torch.randn(1, 3, 64, 64))
    assert tuple(out["res5"].shape[-2:]) == (64 // stride5, 64 // stride5)


def test_resnet_stride_in_1x1_moves_the_stride():
    config = ResNetDeepLabConfig(
        layers=(1, 1, 1, 1), stem_out_channels=16, res2_out_channels=32, width_per_group=8, res5_multi_grid=(1,), stride_in_1x1=True
    )
    block = ResNetDeepLabBackbone(config).layer2[0]
    assert (block.conv1.stride, block.conv2.stride, block.downsample[0].stride) == ((2, 2), (1, 1), (2, 2))


def test_resnet_official_key_set_round_trips():
    model = _resnet()
    official = resnet_to_official(model.state_dict())
    assert set(official) == official_resnet_keys(TINY_RESNET.layers)
    fresh = ResNetDeepLabBackbone(TINY_RESNET)
    result = fresh.load_state_dict(resnet_from_official(official), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    with pytest.raises(WeightsError, match="res2.0.conv9"):
        resnet_from_official({"res2.0.conv9.weight": torch.zeros(1)})


def test_frozen_batch_norm_and_freeze_at():
    norm = FrozenBatchNorm2d(4)
    assert torch.allclose(norm.running_var, torch.full((4,), 1 - 1e-5))
    _randomise(norm)
    x = torch.randn(2, 4, 3, 3)
    want = (x - norm.running_mean.view(1, -1, 1, 1)) / torch.sqrt(norm.running_var.view(1, -1, 1, 1) + 1e-5)
    want = want * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    assert torch.allclose(norm(x), want, atol=1e-6)
    assert torch.allclose(norm(x.requires_grad_()), want, atol=1e-6)
    assert set(norm.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    model = ResNetDeepLabBackbone(TINY_RESNET)  # freeze_at 2: stem and res2
    frozen = {name.split(".")[0] for name, p in model.named_parameters() if not p.requires_grad}
    trained = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert frozen == {"conv1", "layer1"} and trained == {"layer2", "layer3", "layer4"}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    bn = ResNetDeepLabBackbone(replace(TINY_RESNET, norm="BN"))
    assert isinstance(bn.bn1, FrozenBatchNorm2d) and isinstance(bn.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(bn.layer2[0].bn1, torch.nn.BatchNorm2d)


def test_load_resnet_pretrained_reads_a_detectron2_pickle(tmp_path):
    source = _resnet()
    official = {k: v.numpy() for k, v in resnet_to_official(source.state_dict()).items()}
    official["fc.weight"] = np.zeros((5, 256), dtype=np.float32)
    official["fc.bias"] = np.zeros(5, dtype=np.float32)
    official["res2.0.conv1.norm.num_batches_tracked"] = np.array(7)
    del official["res3.0.conv2.norm.running_mean"], official["res3.0.conv2.norm.running_var"]
    path = tmp_path / "R-103.pkl"
    with path.open("wb") as handle:
        pickle.dump({"model": official, "__author__": "detectron2", "matching_heuristics": True}, handle, protocol=2)
    target = ResNetDeepLabBackbone(TINY_RESNET)
    filled = load_resnet_pretrained(target, path)
    assert filled == ["res3.0.conv2.norm.running_mean", "res3.0.conv2.norm.running_var"]
    assert torch.equal(target.layer2[0].bn2.running_mean, torch.zeros(16))
    assert torch.equal(target.layer2[0].bn2.running_var, torch.ones(16))
    for key, value in source.state_dict().items():
        if not key.startswith("layer2.0.bn2.running"):
            assert torch.equal(target.state_dict()[key], value), key
    del official["stem.conv1.weight"]
    path.write_bytes(pickle.dumps({"model": official}))
    with pytest.raises(WeightsError, match=r"1 missing keys .*conv1\.0\.weight"):
        load_resnet_pretrained(ResNetDeepLabBackbone(TINY_RESNET), path)


# --- safe pickle reading --------------------------------------------------------------------


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"a": _Exploit(marker)}}))
    with pytest.raises(WeightsError, match="refusing"):
        read_weights_file(path)
    with pytest.raises(WeightsError, match="refusing"):
        read_weights_file(path, trusted=True)  # trusted widens torch.load only
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"model": {"a": print}}))
    with pytest.raises(WeightsError, match="builtins.print"):
        read_weights_file(path)


def test_missing_or_broken_files_are_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        read_weights_file(tmp_path / "none.pkl")
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(WeightsError, match="cannot read"):
        read_weights_file(broken)
    not_state = tmp_path / "list.pkl"
    not_state.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(WeightsError, match="not a state dict"):
        load_resnet_pretrained(ResNetDeepLabBackbone(TINY_RESNET), not_state)
