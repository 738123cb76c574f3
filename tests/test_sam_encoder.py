"""The SAM image encoder EBSeg uses as backbone (methods/common/sam_encoder.py).

Tiny configurations of the real architecture: patch 16, a 64² pretraining size (so the stored
pos-embed is 4x4 and the global blocks' relative-position tables have 7 rows), windows of 2,
and a 48x80 input whose 3x5 grid is not a multiple of the window (padding) and needs the
tables resized both ways (5 rows vertically, 9 horizontally).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovbench_methods.common.errors import MethodConfigError, WeightsError
from ovbench_methods.common.sam_encoder import (
    OUTPUT_NAMES,
    SamEncoderConfig,
    SamImageEncoder,
    load_sam_image_encoder,
)

TINY = dict(img_size=64, embed_dim=32, depth=6, num_heads=2, window_size=2, global_attn_indexes=(1, 2, 4, 5))


def _randomised(config: SamEncoderConfig, seed: int = 0) -> SamImageEncoder:
    """An encoder whose every tensor (zero-initialised pos-embed and rel-pos tables included) is random."""
    encoder = SamImageEncoder(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(noise * (0.3 if param.dim() > 1 else 0.1))
    return encoder


# --------------------------------------------------------------------------- slow reference


def _linear_resize_rows(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linear interpolation along rows, half-pixel centres, edge-clamped (align_corners False)."""
    rows_in = table.shape[0]
    if rows_in == length:
        return table
    out = []
    for i in range(length):
        source = max((i + 0.5) * rows_in / length - 0.5, 0.0)
        low = int(math.floor(source))
        high = min(low + 1, rows_in - 1)
        weight = source - low
        out.append((1 - weight) * table[low] + weight * table[high])
    return torch.stack(out)


def _layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * norm.weight + norm.bias


def _attend(tokens: torch.Tensor, positions: list[tuple[int, int]], side: tuple[int, int], attn) -> torch.Tensor:
    """Self-attention of one image's tokens (N, C) at grid `positions` within a `side` region,
    with the decomposed relative bias written out pair by pair."""
    heads = attn.num_heads
    n, dim = tokens.shape
    head_dim = dim // heads
    qkv = tokens @ attn.qkv.weight.t() + attn.qkv.bias
    q_all, k_all, v_all = qkv[:, :dim], qkv[:, dim:2 * dim], qkv[:, 2 * dim:]
    table_h = _linear_resize_rows(attn.rel_pos_h, 2 * side[0] - 1)
    table_w = _linear_resize_rows(attn.rel_pos_w, 2 * side[1] - 1)
    out = tokens.new_zeros(n, dim)
    for h in range(heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        q, k, v = q_all[:, cols], k_all[:, cols], v_all[:, cols]
        logits = tokens.new_zeros(n, n)
        for i, (qy, qx) in enumerate(positions):
            for j, (ky, kx) in enumerate(positions):
                logits[i, j] = (
                    (q[i] / math.sqrt(head_dim)) @ k[j]
                    + q[i] @ table_h[qy - ky + side[0] - 1]
                    + q[i] @ table_w[qx - kx + side[1] - 1]
                )
        out[:, cols] = torch.softmax(logits, dim=-1) @ v
    return out @ attn.proj.weight.t() + attn.proj.bias


def _reference_forward(encoder: SamImageEncoder, images: torch.Tensor) -> dict[str, torch.Tensor]:
    config = encoder.config
    p = config.patch_size
    batch, _, height, width = images.shape
    gh, gw = height // p, width // p
    patches = images[:, :, : gh * p, : gw * p].reshape(batch, 3, gh, p, gw, p)
    x = torch.einsum("bcyixj,ocij->byxo", patches, encoder.patch_embed.proj.weight) + encoder.patch_embed.proj.bias
    pos = F.interpolate(encoder.pos_embed.permute(0, 3, 1, 2), size=(gh, gw), mode="bicubic", align_corners=False)
    x = x + pos.permute(0, 2, 3, 1)
    kept = []
    for index, block in enumerate(encoder.blocks):
        normed = _layer_norm(x, block.norm1)
        attended = torch.zeros_like(x)
        for b in range(batch):
            if index in config.global_attn_indexes:
                positions = [(y, xx) for y in range(gh) for xx in range(gw)]
                tokens = torch.stack([normed[b, y, xx] for y, xx in positions])
                result = _attend(tokens, positions, (gh, gw), block.attn)
                for t, (y, xx) in enumerate(positions):
                    attended[b, y, xx] = result[t]
            else:
                w = config.window_size
                for top in range(0, gh, w):
                    for left in range(0, gw, w):
                        # Every window is w x w; cells past the grid are zero tokens.
                        positions = [(y, xx) for y in range(w) for xx in range(w)]
                        tokens = torch.stack([
                            normed[b, top + y, left + xx] if top + y < gh and left + xx < gw else x.new_zeros(x.shape[-1])
                            for y, xx in positions
                        ])
                        result = _attend(tokens, positions, (w, w), block.attn)
                        for t, (y, xx) in enumerate(positions):
                            if top + y < gh and left + xx < gw:
                                attended[b, top + y, left + xx] = result[t]
        x = x + attended
        hidden = F.gelu(_layer_norm(x, block.norm2) @ block.mlp.lin1.weight.t() + block.mlp.lin1.bias)
        x = x + hidden @ block.mlp.lin2.weight.t() + block.mlp.lin2.bias
        if index in config.global_attn_indexes:
            kept.append(x)
    return {
        name: F.interpolate(feature.permute(0, 3, 1, 2), scale_factor=scale, mode="bilinear", align_corners=False)
        for name, scale, feature in zip(OUTPUT_NAMES, config.output_scales, kept)
    }


# --------------------------------------------------------------------------- tests


def test_outputs_names_shapes_and_strides_on_a_padded_non_square_grid() -> None:
    encoder = SamImageEncoder(SamEncoderConfig(**TINY))
    assert encoder.pos_embed.shape == (1, 4, 4, 32)
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, 48, 80))  # 3x5 grid, windows of 2 -> padded to 4x6
    assert list(out) == ["res2", "res3", "res4", "res5"]
    assert {name: tuple(t.shape) for name, t in out.items()} == {
        "res2": (2, 32, 12, 20),
        "res3": (2, 32, 6, 10),
        "res4": (2, 32, 3, 5),
        "res5": (2, 32, 1, 2),  # floor(3 * 0.5), floor(5 * 0.5)
    }
    assert encoder.output_shapes() == {"res2": (32, 4), "res3": (32, 8), "res4": (32, 16), "res5": (32, 32)}
    assert encoder.output_shape() == encoder.output_shapes()
    assert all(isinstance(shape.stride, int) for shape in encoder.output_shapes().values())


def test_matches_a_slow_reference_with_windows_padding_and_resized_tables() -> None:
    # float64, so that what is left is the implementations' difference, not float32 rounding
    # (activations reach ~50 here; in float32 the two agree to ~4e-5, i.e. 1e-6 relative)
    encoder = _randomised(SamEncoderConfig(**TINY)).double()
    images = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        fast = encoder(images)
        slow = _reference_forward(encoder, images)
    for name in OUTPUT_NAMES:
        assert fast[name].dtype == torch.float64
        torch.testing.assert_close(fast[name], slow[name], rtol=0, atol=1e-10)
    # the bias matters: zeroing the tables changes the result (the test would catch a dropped term)
    with torch.no_grad():
        for block in encoder.blocks:
            block.attn.rel_pos_h.zero_()
        assert (encoder(images)["res5"] - fast["res5"]).abs().max() > 1e-3


def test_only_pos_embed_trains_and_is_resized_inside_the_forward() -> None:
    encoder = _randomised(SamEncoderConfig(**TINY))
    trainable = [name for name, param in encoder.named_parameters() if param.requires_grad]
    assert trainable == ["pos_embed"]
    images = torch.randn(1, 3, 48, 80)
    out = encoder(images)
    sum(t.square().mean() for t in out.values()).backward()
    grad = encoder.pos_embed.grad
    assert grad is not None and grad.shape == (1, 4, 4, 32)
    assert torch.isfinite(grad).all() and (grad.abs().sum(-1) > 0).all()  # every stored cell feeds the 3x5 grid
    assert all(param.grad is None for name, param in encoder.named_parameters() if name != "pos_embed")
    # a changed embedding reaches the next forward (no resized copy cached)
    before = out["res4"].detach()
    with torch.no_grad():
        encoder.pos_embed.add_(0.5)
        assert (encoder(images)["res4"] - before).abs().max() > 1e-3
    # no dropout or batch norm: train and eval mode compute the same
    encoder.eval()
    with torch.no_grad():
        evaluated = encoder(images)["res2"]
    encoder.train()
    with torch.no_grad():
        torch.testing.assert_close(encoder(images)["res2"], evaluated, rtol=0, atol=0)


def _official_style_file(encoder: SamImageEncoder, path, drop: str | None = None, reshape: str | None = None) -> dict:
    """A state dict laid out as sam_vit_b_01ec64.pth: the full SAM under its three prefixes."""
    state = {f"image_encoder.{key}": value.clone() for key, value in encoder.state_dict().items()}
    dim = encoder.config.embed_dim
    state.update({
        "image_encoder.neck.0.weight": torch.randn(8, dim, 1, 1),
        "image_encoder.neck.1.weight": torch.ones(8),
        "image_encoder.neck.1.bias": torch.zeros(8),
        "image_encoder.neck.2.weight": torch.randn(8, 8, 3, 3),
        "image_encoder.neck.3.weight": torch.ones(8),
        "image_encoder.neck.3.bias": torch.zeros(8),
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.randn(2, 4),
        "mask_decoder.iou_token.weight": torch.randn(1, 8),
    })
    if drop:
        del state[drop]
    if reshape:
        state[reshape] = torch.zeros(3, 3)
    torch.save(state, path)
    return state


def test_loads_the_official_file_layout_strictly(tmp_path) -> None:
    source = _randomised(SamEncoderConfig(**TINY), seed=3)
    path = tmp_path / "sam_vit_tiny.pth"
    _official_style_file(source, path)
    target = SamImageEncoder(SamEncoderConfig(**TINY))
    ignored = load_sam_image_encoder(target, path)
    assert sorted(ignored) == sorted([
        "image_encoder.neck.0.weight", "image_encoder.neck.1.weight", "image_encoder.neck.1.bias",
        "image_encoder.neck.2.weight", "image_encoder.neck.3.weight", "image_encoder.neck.3.bias",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "mask_decoder.iou_token.weight",
    ])
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert [name for name, param in target.named_parameters() if param.requires_grad] == ["pos_embed"]

    # a file holding the encoder's keys alone (no prefix) loads too
    bare = tmp_path / "encoder_only.pth"
    torch.save(source.state_dict(), bare)
    assert load_sam_image_encoder(SamImageEncoder(SamEncoderConfig(**TINY)), bare) == ()


def test_misfit_and_unreadable_files_fail_with_one_line(tmp_path) -> None:
    source = SamImageEncoder(SamEncoderConfig(**TINY))
    target = SamImageEncoder(SamEncoderConfig(**TINY))
    missing = tmp_path / "missing_key.pth"
    _official_style_file(source, missing, drop="image_encoder.blocks.3.attn.qkv.weight")
    with pytest.raises(WeightsError) as caught:
        load_sam_image_encoder(target, missing)
    message = str(caught.value)
    assert "\n" not in message and str(missing) in message and "blocks.3.attn.qkv.weight" in message

    wrong = tmp_path / "wrong_shape.pth"
    _official_style_file(source, wrong, reshape="image_encoder.blocks.1.attn.rel_pos_h")
    with pytest.raises(WeightsError) as caught:
        load_sam_image_encoder(target, wrong)
    message = str(caught.value)
    assert "\n" not in message and str(wrong) in message and "blocks.1.attn.rel_pos_h (3, 3) vs (7, 16)" in message

    with pytest.raises(WeightsError, match="not found"):
        load_sam_image_encoder(target, tmp_path / "absent.pth")
    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_a_dict)
    with pytest.raises(WeightsError, match="not a SAM state dict"):
        load_sam_image_encoder(target, not_a_dict)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError) as caught:
        load_sam_image_encoder(target, garbage)
    assert "\n" not in str(caught.value) and "cannot read" in str(caught.value)


def _official_key_shapes(depth=12, dim=768, heads=12, grid=64, window=14, mlp=3072, patch=16, global_blocks=(2, 5, 8, 11)):
    """The tensors of the official ImageEncoderViT (neck commented out) for SAM ViT-B, written
    from its structure: PatchEmbed.proj, pos_embed, and per Block norm1, Attention (qkv, proj,
    rel_pos_h/w sized 2 * input_size - 1 by the block's grid or window), norm2, MLPBlock."""
    head_dim = dim // heads
    shapes = {
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "pos_embed": (1, grid, grid, dim),
    }
    for i in range(depth):
        side = grid if i in global_blocks else window
        shapes.update({
            f"blocks.{i}.norm1.weight": (dim,),
            f"blocks.{i}.norm1.bias": (dim,),
            f"blocks.{i}.attn.rel_pos_h": (2 * side - 1, head_dim),
            f"blocks.{i}.attn.rel_pos_w": (2 * side - 1, head_dim),
            f"blocks.{i}.attn.qkv.weight": (3 * dim, dim),
            f"blocks.{i}.attn.qkv.bias": (3 * dim,),
            f"blocks.{i}.attn.proj.weight": (dim, dim),
            f"blocks.{i}.attn.proj.bias": (dim,),
            f"blocks.{i}.norm2.weight": (dim,),
            f"blocks.{i}.norm2.bias": (dim,),
            f"blocks.{i}.mlp.lin1.weight": (mlp, dim),
            f"blocks.{i}.mlp.lin1.bias": (mlp,),
            f"blocks.{i}.mlp.lin2.weight": (dim, mlp),
            f"blocks.{i}.mlp.lin2.bias": (dim,),
        })
    return shapes


def test_published_size_keys_and_shapes_equal_the_official_encoder() -> None:
    with torch.device("meta"):
        encoder = SamImageEncoder(SamEncoderConfig())
    own = {key: tuple(value.shape) for key, value in encoder.state_dict().items()}
    expected = _official_key_shapes()
    assert set(own) == set(expected)
    assert own == expected
    assert own["blocks.2.attn.rel_pos_h"] == (127, 64) and own["blocks.0.attn.rel_pos_w"] == (27, 64)
    assert len(own) == 3 + 12 * 14
    assert encoder.output_shapes() == {"res2": (768, 4), "res3": (768, 8), "res4": (768, 16), "res5": (768, 32)}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"global_attn_indexes": (1, 3, 5)}, "needs 4 global blocks"),
        ({"global_attn_indexes": (1, 2, 4, 6)}, "below depth 6"),
        ({"global_attn_indexes": (2, 1, 4, 5)}, "increasing"),
        ({"num_heads": 3}, "not divisible by num_heads"),
        ({"img_size": 72}, "not a multiple of patch_size"),
        ({"output_scales": (4, 2, 1)}, "one factor per output"),
        ({"output_scales": (4, 2, 0, 0.5)}, "positive numbers"),
        ({"window_size": -1}, "window_size"),
        ({"depth": 0}, "depth must be a positive integer"),
    ],
)
def test_bad_settings_fail_with_one_line(change: dict, words: str) -> None:
    with pytest.raises(MethodConfigError, match=words) as caught:
        SamEncoderConfig(**{**TINY, **change})
    assert "\n" not in str(caught.value)


def test_yaml_lists_become_tuples() -> None:
    config = SamEncoderConfig(**{**TINY, "global_attn_indexes": [1, 2, 4, 5], "output_scales": [4, 2, 1, 0.5]})
    assert config.global_attn_indexes == (1, 2, 4, 5) and config.output_scales == (4, 2, 1, 0.5)
