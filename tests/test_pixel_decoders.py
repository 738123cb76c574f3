"""The mask-proposal pixel decoders (docs/methods/mask-proposal-core.md#fpn-pixel-decoder,
docs/methods/mask-proposal-core.md#deformable-pixel-decoder): exact official key sets,
shapes, the encoder's reference points, and forwards against slow references built here
from the state dict with plain convolutions, an explicit sine encoding and a gather-based
bilinear sampler."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.pixel_decoder import (
    FPNPixelDecoder,
    MSDeformAttnPixelDecoder,
    PixelDecoderOutput,
    deformable_reference_points,
)

# A tiny backbone: channels per level, strides 4..32; conv_dim 32 keeps GroupNorm(32) legal.
TINY_SHAPES = {"res2": (8, 4), "res3": (12, 8), "res4": (16, 16), "res5": (20, 32)}
CONV_DIM, MASK_DIM = 32, 16
HEADS, LEVELS, POINTS, FFN = 8, 3, 4, 1024
SWIN_B = {"res2": (128, 4), "res3": (256, 8), "res4": (512, 16), "res5": (1024, 32)}
R101C = {"res2": (256, 4), "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_features(seed: int = 0, batch: int = 2, height: int = 40, width: int = 56) -> dict[str, torch.Tensor]:
    """Backbone-like maps of a 40x56 image: res2 10x14, res3 5x7, res4 3x4, res5 2x2 (ceil)."""
    g = gen(seed)
    return {
        name: torch.randn(batch, channels, -(-height // stride), -(-width // stride), generator=g)
        for name, (channels, stride) in TINY_SHAPES.items()
    }


def randomise(model: torch.nn.Module, seed: int, scale: float = 0.2) -> dict[str, torch.Tensor]:
    """Move every parameter off its initial value so that no weight can hide (zero offsets,
    uniform attention, unit norms)."""
    g = gen(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=g))
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def assert_close(got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    """Same shape and dtype, largest absolute difference at most atol (torch.testing's
    version costs a second of lazy imports on first use)."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    worst = (got - want).abs().max().item()
    assert worst <= atol, f"max abs difference {worst:.3g} > {atol:g}"


def conv_norm(x, sd, name, padding=0, relu=False, bias=False):
    """detectron2-style conv (no bias when normed) + GroupNorm(32) (+ ReLU), from the state dict."""
    y = F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"] if bias else None, padding=padding)
    y = F.group_norm(y, 32, sd[f"{name}.norm.weight"], sd[f"{name}.norm.bias"])
    return F.relu(y) if relu else y


# --------------------------------------------------------------------------- FPN decoder

FPN_KEYS = [
    "adapter_1.weight", "adapter_1.norm.weight", "adapter_1.norm.bias",
    "layer_1.weight", "layer_1.norm.weight", "layer_1.norm.bias",
    "adapter_2.weight", "adapter_2.norm.weight", "adapter_2.norm.bias",
    "layer_2.weight", "layer_2.norm.weight", "layer_2.norm.bias",
    "adapter_3.weight", "adapter_3.norm.weight", "adapter_3.norm.bias",
    "layer_3.weight", "layer_3.norm.weight", "layer_3.norm.bias",
    "layer_4.weight", "layer_4.norm.weight", "layer_4.norm.bias",
    "mask_features.weight", "mask_features.bias",
]  # fmt: skip


def test_fpn_has_exactly_the_official_keys_in_the_official_order() -> None:
    decoder = FPNPixelDecoder(TINY_SHAPES, conv_dim=CONV_DIM, mask_dim=MASK_DIM)
    sd = decoder.state_dict()
    assert list(sd) == FPN_KEYS
    assert sd["adapter_1.weight"].shape == (CONV_DIM, 8, 1, 1)
    assert sd["adapter_3.weight"].shape == (CONV_DIM, 16, 1, 1)
    assert sd["layer_1.weight"].shape == (CONV_DIM, CONV_DIM, 3, 3)
    assert sd["layer_4.weight"].shape == (CONV_DIM, 20, 3, 3)  # res5 goes straight into a 3x3
    assert sd["mask_features.weight"].shape == (MASK_DIM, CONV_DIM, 3, 3)


def test_fpn_without_norm_has_conv_biases_instead() -> None:
    keys = set(FPNPixelDecoder(TINY_SHAPES, conv_dim=CONV_DIM, mask_dim=MASK_DIM, norm="").state_dict())
    expected = {f"adapter_{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    expected |= {f"layer_{i}.{p}" for i in (1, 2, 3, 4) for p in ("weight", "bias")}
    assert keys == expected | {"mask_features.weight", "mask_features.bias"}


def nearest_by_index(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize as index arithmetic: output pixel i reads input floor(i * n_in / n_out)."""
    rows = (torch.arange(size[0]) * x.shape[-2] // size[0]).clamp(max=x.shape[-2] - 1)
    cols = (torch.arange(size[1]) * x.shape[-1] // size[1]).clamp(max=x.shape[-1] - 1)
    return x[..., rows[:, None], cols[None, :]]


def fpn_reference(sd: dict[str, torch.Tensor], feats: dict[str, torch.Tensor]) -> torch.Tensor:
    y = conv_norm(feats["res5"], sd, "layer_4", padding=1, relu=True)
    for number, name in ((3, "res4"), (2, "res3"), (1, "res2")):
        lateral = conv_norm(feats[name], sd, f"adapter_{number}")
        y = conv_norm(lateral + nearest_by_index(y, lateral.shape[-2:]), sd, f"layer_{number}", padding=1, relu=True)
    return F.conv2d(y, sd["mask_features.weight"], sd["mask_features.bias"], padding=1)


def test_fpn_forward_matches_a_hand_built_reference() -> None:
    decoder = FPNPixelDecoder(TINY_SHAPES, conv_dim=CONV_DIM, mask_dim=MASK_DIM)
    sd = randomise(decoder, seed=1)
    feats = tiny_features(seed=2)
    with torch.no_grad():
        out = decoder(feats)
    assert isinstance(out, PixelDecoderOutput)
    assert out.mask_features.shape == (2, MASK_DIM, 10, 14)
    assert out.multi_scale_features == [] and out.transformer_features is None
    assert_close(out.mask_features, fpn_reference(sd, feats), atol=1e-5)


def test_fpn_initialisation_is_the_official_one() -> None:
    decoder = FPNPixelDecoder(TINY_SHAPES, conv_dim=CONV_DIM, mask_dim=MASK_DIM)
    for name in ("adapter_1", "layer_2", "layer_4", "mask_features"):
        weight = getattr(decoder, name).weight
        bound = math.sqrt(3.0 / weight[0].numel())  # Kaiming-uniform with a=1
        assert weight.abs().max() <= bound and weight.abs().max() > 0.8 * bound, name
    assert torch.equal(decoder.mask_features.bias, torch.zeros(MASK_DIM))
    assert torch.equal(decoder.layer_1.norm.weight, torch.ones(CONV_DIM))


# --------------------------------------------------------------------------- deformable decoder


def msd_keys(num_layers: int) -> list[str]:
    keys = []
    for level in range(3):
        keys += [f"input_proj.{level}.0.weight", f"input_proj.{level}.0.bias", f"input_proj.{level}.1.weight", f"input_proj.{level}.1.bias"]
    keys.append("transformer.level_embed")  # a module's own parameters precede its children's
    for layer in range(num_layers):
        prefix = f"transformer.encoder.layers.{layer}."
        for part in ("self_attn.sampling_offsets", "self_attn.attention_weights", "self_attn.value_proj", "self_attn.output_proj", "norm1", "linear1", "linear2", "norm2"):
            keys += [prefix + part + ".weight", prefix + part + ".bias"]
    keys += ["mask_features.weight", "mask_features.bias"]
    keys += ["adapter_1.weight", "adapter_1.norm.weight", "adapter_1.norm.bias", "layer_1.weight", "layer_1.norm.weight", "layer_1.norm.bias"]
    return keys


def tiny_msd(num_layers: int = 2) -> MSDeformAttnPixelDecoder:
    return MSDeformAttnPixelDecoder(TINY_SHAPES, conv_dim=CONV_DIM, mask_dim=MASK_DIM, transformer_enc_layers=num_layers)


def test_deformable_decoder_has_exactly_the_official_keys_in_the_official_order() -> None:
    decoder = tiny_msd(2)
    sd = decoder.state_dict()
    assert list(sd) == msd_keys(2)
    assert [name for name, _ in decoder.named_parameters()] == msd_keys(2)  # no buffers
    assert sd["input_proj.0.0.weight"].shape == (CONV_DIM, 20, 1, 1)  # coarsest (res5) first
    assert sd["input_proj.2.0.weight"].shape == (CONV_DIM, 12, 1, 1)
    layer = "transformer.encoder.layers.1."
    assert sd[layer + "self_attn.sampling_offsets.weight"].shape == (HEADS * LEVELS * POINTS * 2, CONV_DIM)
    assert sd[layer + "self_attn.attention_weights.weight"].shape == (HEADS * LEVELS * POINTS, CONV_DIM)
    assert sd[layer + "linear1.weight"].shape == (FFN, CONV_DIM)
    assert sd["transformer.level_embed"].shape == (LEVELS, CONV_DIM)
    assert sd["mask_features.weight"].shape == (MASK_DIM, CONV_DIM, 1, 1)
    assert sd["adapter_1.weight"].shape == (CONV_DIM, 8, 1, 1)
    assert sd["layer_1.weight"].shape == (CONV_DIM, CONV_DIM, 3, 3)


def test_deformable_decoder_output_shapes_and_order() -> None:
    decoder = tiny_msd(1)
    with torch.no_grad():
        out = decoder(tiny_features())
    assert out.mask_features.shape == (2, MASK_DIM, 10, 14)
    assert [tuple(m.shape) for m in out.multi_scale_features] == [(2, CONV_DIM, 2, 2), (2, CONV_DIM, 3, 4), (2, CONV_DIM, 5, 7)]
    assert out.transformer_features is out.multi_scale_features[0]


def reference_points_by_hand(shapes: list[tuple[int, int]], valid: torch.Tensor) -> torch.Tensor:
    """Pixel centre of the query's own level over its valid extent, times each level's valid ratio."""
    batch = valid.shape[0]
    rows = []
    for own, (height, width) in enumerate(shapes):
        for i in range(height):
            for j in range(width):
                rows.append(
                    [
                        [[(j + 0.5) / (valid[b, own, 0] * width) * valid[b, lvl, 0], (i + 0.5) / (valid[b, own, 1] * height) * valid[b, lvl, 1]] for lvl in range(len(shapes))]
                        for b in range(batch)
                    ]
                )
    return torch.tensor(rows).permute(1, 0, 2, 3)


def test_reference_points_are_pixel_centres_rescaled_by_valid_ratios() -> None:
    shapes = [(5, 7), (3, 4), (2, 2)]
    ones = torch.ones(2, 3, 2)
    points = deformable_reference_points(torch.tensor(shapes), ones)
    assert points.shape == (2, 35 + 12 + 4, 3, 2)
    assert_close(points, reference_points_by_hand(shapes, ones), atol=1e-6)
    assert torch.equal(points[:, :, 0], points[:, :, 2])  # the same spot on every level
    valid = 0.5 + 0.5 * torch.rand(2, 3, 2, generator=gen(3))
    assert_close(deformable_reference_points(torch.tensor(shapes), valid), reference_points_by_hand(shapes, valid), atol=1e-6)


def sine_by_formula(height: int, width: int, num_feats: int) -> torch.Tensor:
    """(2F, H, W): row then column position k (1-based) mapped to 2*pi*k/(n + 1e-6), feature
    f uses frequency 10000^(2*floor(f/2)/F), sine on even features, cosine on odd."""
    feature = torch.arange(num_feats)
    frequency = 10000.0 ** (2 * (feature // 2) / num_feats)

    def encode(n: int) -> torch.Tensor:
        angle = (torch.arange(1, n + 1, dtype=torch.float32) / (n + 1e-6) * 2 * math.pi)[:, None] / frequency
        return torch.where(feature % 2 == 0, angle.sin(), angle.cos())  # (n, F)

    y = encode(height)[:, None, :].expand(height, width, num_feats)
    x = encode(width)[None, :, :].expand(height, width, num_feats)
    return torch.cat([y, x], dim=-1).permute(2, 0, 1)


def bilinear_gather(value: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """value (B, H, W, M, D) read at (x, y) in [0, 1] of shape (B, Q, M, P): pixel i of n spans
    [i/n, (i+1)/n], the four neighbours weighted by distance, neighbours off the map read 0."""
    batch, height, width, heads, _ = value.shape
    u, v = x * width - 0.5, y * height - 0.5
    col0, row0 = u.floor(), v.floor()
    b_index = torch.arange(batch).view(batch, 1, 1, 1).expand_as(u)
    m_index = torch.arange(heads).view(1, 1, heads, 1).expand_as(u)
    total = 0
    for row in (row0, row0 + 1):
        for col in (col0, col0 + 1):
            weight = (1 - (u - col).abs()) * (1 - (v - row).abs())
            inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
            read = value[b_index, row.long().clamp(0, height - 1), col.long().clamp(0, width - 1), m_index]
            total = total + (weight * inside)[..., None] * read
    return total  # (B, Q, M, P, D)


def encoder_layer_reference(sd, prefix, src, pos, centres, shapes):
    """One post-norm deformable encoder layer written out from its definition."""
    def linear(x, name):
        return x @ sd[f"{prefix}{name}.weight"].T + sd[f"{prefix}{name}.bias"]

    batch, length, channels = src.shape
    query = src + pos
    value = linear(src, "self_attn.value_proj").view(batch, length, HEADS, channels // HEADS)
    offsets = linear(query, "self_attn.sampling_offsets").view(batch, length, HEADS, LEVELS, POINTS, 2)
    weights = linear(query, "self_attn.attention_weights").view(batch, length, HEADS, LEVELS * POINTS).softmax(-1)
    weights = weights.view(batch, length, HEADS, LEVELS, POINTS)
    mixed = 0
    start = 0
    for level, (height, width) in enumerate(shapes):
        level_value = value[:, start : start + height * width].reshape(batch, height, width, HEADS, channels // HEADS)
        start += height * width
        x = centres[:, :, None, None, 0] + offsets[:, :, :, level, :, 0] / width
        y = centres[:, :, None, None, 1] + offsets[:, :, :, level, :, 1] / height
        mixed = mixed + (bilinear_gather(level_value, x, y) * weights[:, :, :, level, :, None]).sum(3)
    attended = linear(mixed.reshape(batch, length, channels), "self_attn.output_proj")
    src = F.layer_norm(src + attended, (channels,), sd[f"{prefix}norm1.weight"], sd[f"{prefix}norm1.bias"])
    hidden = linear(F.relu(linear(src, "linear1")), "linear2")
    return F.layer_norm(src + hidden, (channels,), sd[f"{prefix}norm2.weight"], sd[f"{prefix}norm2.bias"])


def deformable_decoder_reference(sd, feats, num_layers):
    levels = ["res5", "res4", "res3"]
    srcs, poss, shapes, centres = [], [], [], []
    for index, name in enumerate(levels):
        x = F.conv2d(feats[name], sd[f"input_proj.{index}.0.weight"], sd[f"input_proj.{index}.0.bias"])
        x = F.group_norm(x, 32, sd[f"input_proj.{index}.1.weight"], sd[f"input_proj.{index}.1.bias"])
        height, width = x.shape[-2:]
        pos = sine_by_formula(height, width, CONV_DIM // 2) + sd["transformer.level_embed"][index][:, None, None]
        srcs.append(x.flatten(2).transpose(1, 2))
        poss.append(pos.flatten(1).T[None].expand(x.shape[0], -1, -1))
        shapes.append((height, width))
        rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        centres.append(torch.stack([(cols.flatten() + 0.5) / width, (rows.flatten() + 0.5) / height], -1))
    src, pos = torch.cat(srcs, 1), torch.cat(poss, 1)
    centre = torch.cat(centres, 0)[None].expand(src.shape[0], -1, -1)
    for layer in range(num_layers):
        src = encoder_layer_reference(sd, f"transformer.encoder.layers.{layer}.", src, pos, centre, shapes)
    maps, start = [], 0
    for height, width in shapes:
        maps.append(src[:, start : start + height * width].transpose(1, 2).reshape(src.shape[0], CONV_DIM, height, width))
        start += height * width
    lateral = conv_norm(feats["res2"], sd, "adapter_1")
    up = F.interpolate(maps[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
    finest = conv_norm(lateral + up, sd, "layer_1", padding=1, relu=True)
    return F.conv2d(finest, sd["mask_features.weight"], sd["mask_features.bias"]), maps


@pytest.mark.parametrize("num_layers", [1, 2])
def test_deformable_decoder_forward_matches_a_slow_reference(num_layers: int) -> None:
    decoder = tiny_msd(num_layers)
    randomise(decoder, seed=4)
    with torch.no_grad():
        # Offsets of a few pixels around the star: many reads land between pixels, some off the map.
        for layer in decoder.transformer.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0.0, 0.25, generator=gen(5))
    sd = {name: value.detach().clone() for name, value in decoder.state_dict().items()}
    feats = tiny_features(seed=6)
    with torch.no_grad():
        out = decoder(feats)
        mask_features, maps = deformable_decoder_reference(sd, feats, num_layers)
    for got, want in zip(out.multi_scale_features, maps):
        assert_close(got, want, atol=1e-5)
    assert_close(out.mask_features, mask_features, atol=1e-5)


def test_deformable_decoder_runs_in_float32_under_autocast_and_for_half_inputs() -> None:
    decoder = tiny_msd(1)
    randomise(decoder, seed=7)
    feats = {name: value.bfloat16() for name, value in tiny_features(seed=8).items()}
    with torch.no_grad():
        plain = decoder({name: value.float() for name, value in feats.items()})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = decoder(feats)
    assert under_autocast.mask_features.dtype == torch.float32
    assert_close(under_autocast.mask_features, plain.mask_features, atol=0)


def test_deformable_decoder_initialisation_is_the_official_one() -> None:
    decoder = tiny_msd(2)
    for projection in decoder.input_proj:
        conv = projection[0]
        bound = math.sqrt(6.0 / (conv.in_channels + conv.out_channels))  # Xavier-uniform
        assert conv.weight.abs().max() <= bound and torch.equal(conv.bias, torch.zeros(CONV_DIM))
    first, second = decoder.transformer.encoder.layers
    assert torch.equal(first.self_attn.sampling_offsets.weight, torch.zeros_like(first.self_attn.sampling_offsets.weight))
    assert torch.equal(first.self_attn.attention_weights.bias, torch.zeros(HEADS * LEVELS * POINTS))
    # Xavier-uniform redone per layer; the layers are copies of one, so their 1-D parameters agree.
    bound = math.sqrt(6.0 / (CONV_DIM + FFN))
    assert first.linear1.weight.abs().max() <= bound and not torch.equal(first.linear1.weight, second.linear1.weight)
    assert torch.equal(first.linear1.bias, second.linear1.bias) and first.linear1.bias.abs().max() > 0
    level_embed = decoder.transformer.level_embed
    assert level_embed.abs().max() > 1.0 and 0.6 < level_embed.std() < 1.4  # N(0, 1), not Xavier
    assert torch.equal(decoder.mask_features.bias, torch.zeros(MASK_DIM)) and decoder.adapter_1.bias is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"conv_dim": 48},
        {"norm": "BN"},
        {"transformer_in_features": ("res3", "res6")},
        {"common_stride": 16},
        {"transformer_enc_layers": -1},
        {"transformer_in_features": ()},
    ],
)
def test_deformable_decoder_rejects_bad_settings(kwargs) -> None:
    settings = {"conv_dim": CONV_DIM, "mask_dim": MASK_DIM, "transformer_enc_layers": 1} | kwargs
    with pytest.raises(MethodConfigError):
        MSDeformAttnPixelDecoder(TINY_SHAPES, **settings)


def test_missing_inputs_are_named() -> None:
    feats = tiny_features()
    del feats["res2"]
    for decoder in (tiny_msd(1), FPNPixelDecoder(TINY_SHAPES, conv_dim=CONV_DIM, mask_dim=MASK_DIM)):
        with pytest.raises(MethodConfigError, match="res2"):
            decoder(feats)
    with pytest.raises(MethodConfigError):
        FPNPixelDecoder(TINY_SHAPES, conv_dim=40)


# --------------------------------------------------------------------------- published sizes


def fpn_count(channels: list[int], conv: int = 256, mask: int = 256) -> int:
    lateral = sum(c * conv + 2 * conv for c in channels[:-1])
    outputs = 3 * (9 * conv * conv + 2 * conv) + 9 * channels[-1] * conv + 2 * conv
    return lateral + outputs + 9 * conv * mask + mask


def deformable_count(channels: list[int], conv: int = 256, mask: int = 256, layers: int = 6) -> int:
    projections = sum(c * conv + conv + 2 * conv for c in channels[1:])
    attention = (conv + 1) * (HEADS * LEVELS * POINTS * 3) + 2 * (conv * conv + conv)
    layer = attention + 2 * 2 * conv + (conv * FFN + FFN) + (FFN * conv + conv)
    fpn = channels[0] * conv + 2 * conv + 9 * conv * conv + 2 * conv
    return projections + layers * layer + LEVELS * conv + conv * mask + mask + fpn


@pytest.mark.parametrize(
    ("shapes", "fpn", "deformable"),
    [(SWIN_B, 4_951_808, 5_544_384), (R101C, 7_540_480, 6_035_904)],
)
def test_published_parameter_counts(shapes, fpn, deformable) -> None:
    channels = [c for c, _ in shapes.values()]
    assert fpn_count(channels) == fpn and deformable_count(channels) == deformable
    assert sum(p.numel() for p in FPNPixelDecoder(shapes).parameters()) == fpn
    assert sum(p.numel() for p in MSDeformAttnPixelDecoder(shapes).parameters()) == deformable
