"""Cost-aggregation blocks (methods/common/cost_aggregation.py) against slow references.

The references below are written from the block descriptions in docs/methods/catseg.md
(docs/methods/catseg.md#cost-volume-and-embedding, docs/methods/catseg.md#spatial-aggregation,
docs/methods/catseg.md#class-aggregation, docs/methods/catseg.md#upsampling-decoder and
docs/methods/catseg.md#loss): explicit per-window / per-position loops with plain softmax or
kernel sums, so that the vectorised, SDPA-based blocks are checked against the arithmetic
they stand for.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovbench_methods.catseg.model import CatSegAggregator
from ovbench_methods.common.cost_aggregation import (
    MASKED_LOGIT,
    ClassAttention,
    ClassTransformerLayer,
    CostAggregationError,
    LinearAttention,
    SwinBlock,
    SwinBlockPair,
    Up,
    WindowAttention,
    cosine_cost_volume,
    embed_cost_volume,
    gather_classes,
    per_pixel_bce_loss,
    scatter_classes,
    select_top_classes,
    shifted_window_mask,
    window_partition,
    window_reverse,
)


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere (zero-initialised padding tokens, unit norms ... included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return module


# ----------------------------------------------------------------- cost volume
def test_cosine_cost_volume_is_normalised_dot_product_per_template():
    torch.manual_seed(0)
    image, text = torch.randn(2, 8, 3, 5), torch.randn(2, 4, 3, 8)
    cost = cosine_cost_volume(image, text)
    assert cost.shape == (2, 3, 4, 3, 5)
    b, p, t, y, x = 1, 2, 3, 1, 4
    expected = F.cosine_similarity(image[b, :, y, x], text[b, t, p], dim=0)
    assert torch.allclose(cost[b, p, t, y, x], expected, atol=1e-6)
    assert cost.abs().max() <= 1 + 1e-6
    with pytest.raises(CostAggregationError):
        cosine_cost_volume(image, torch.randn(2, 4, 3, 7))


def test_cost_embedding_convolves_each_class_slice_separately():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 6, kernel_size=7, padding=3)
    cost = torch.randn(2, 2, 5, 8, 8)
    out = embed_cost_volume(cost, conv)
    assert out.shape == (2, 6, 5, 8, 8)
    assert torch.allclose(out[1, :, 3], conv(cost[1, :, 3].unsqueeze(0))[0], atol=1e-6)


# ----------------------------------------------------------------------- Swin
def test_window_partition_round_trip_and_order():
    x = torch.arange(2 * 4 * 4 * 1, dtype=torch.float32).view(2, 4, 4, 1)
    windows = window_partition(x, 2)
    assert windows.shape == (8, 4, 1)
    assert windows[1, :, 0].tolist() == [2, 3, 6, 7]  # second window of the first image: top right
    assert torch.equal(window_reverse(windows, 2, 4, 4), x)


def test_shifted_window_mask_separates_wrapped_regions_only():
    resolution, window, shift = (8, 8), 4, 2
    mask = shifted_window_mask(resolution, window, shift)
    assert mask.shape == (4, 16, 16)
    # After rolling by -shift, position (i, j) holds pixel ((i + shift) % H, (j + shift) % W): rows
    # and columns from H - shift on came from the other side of the image.
    rows = torch.arange(8).view(8, 1).expand(8, 8)
    cols = torch.arange(8).view(1, 8).expand(8, 8)
    wrapped = torch.stack([rows >= 8 - shift, cols >= 8 - shift], dim=-1).float()
    labels = window_partition(wrapped.unsqueeze(0), window)  # (nW, N, 2)
    differs = (labels.unsqueeze(2) != labels.unsqueeze(1)).any(-1)
    expected = torch.where(differs, torch.tensor(MASKED_LOGIT), torch.tensor(0.0))
    assert torch.equal(mask, expected)
    assert mask[0].eq(0).all() and mask[3].eq(MASKED_LOGIT).any()


def reference_swin_block(block: SwinBlock, x: torch.Tensor, guidance: torch.Tensor | None) -> torch.Tensor:
    """Pre-LN window attention on concat(norm1(x), guidance) done window by window, then MLP."""
    height, width = block.resolution
    window, shift, heads = block.window_size, block.shift_size, block.attn.num_heads
    batch, length, dim = x.shape
    normed = block.norm1(x)
    full = torch.cat([normed, guidance], dim=-1) if guidance is not None else normed
    grid = full.view(batch, height, width, -1)
    if shift:
        grid = torch.roll(grid, (-shift, -shift), dims=(1, 2))
    out = torch.zeros(batch, height, width, dim)
    mask = shifted_window_mask((height, width), window, shift) if shift else None
    head_dim = dim // heads
    for b in range(batch):
        for w_index, (top, left) in enumerate((t, l) for t in range(0, height, window) for l in range(0, width, window)):
            tokens = grid[b, top : top + window, left : left + window].reshape(window * window, -1)
            q, k, v = block.attn.q(tokens), block.attn.k(tokens), block.attn.v(tokens[:, :dim])
            heads_out = []
            for h in range(heads):
                sl = slice(h * head_dim, (h + 1) * head_dim)
                scores = q[:, sl] @ k[:, sl].T / math.sqrt(head_dim)
                if mask is not None:
                    scores = scores + mask[w_index]
                heads_out.append(scores.softmax(-1) @ v[:, sl])
            out[b, top : top + window, left : left + window] = block.attn.proj(torch.cat(heads_out, -1)).view(window, window, dim)
    if shift:
        out = torch.roll(out, (shift, shift), dims=(1, 2))
    y = x + out.view(batch, length, dim)
    return y + block.mlp(block.norm2(y))


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_block_matches_window_by_window_reference(shift):
    torch.manual_seed(0)
    block = randomise(SwinBlock(8, 6, (8, 8), num_heads=2, window_size=4, shift_size=shift), seed=1)
    classes, images = 3, 2
    x = torch.randn(images * classes, 64, 8)
    guidance = torch.randn(images, 64, 6)
    out = block(x, guidance)
    # the guidance of image b serves its `classes` consecutive sequences
    expected = reference_swin_block(block, x, guidance.repeat_interleave(classes, dim=0))
    assert torch.allclose(out, expected, atol=1e-5)


def test_window_attention_official_call_matches_split_projection():
    torch.manual_seed(0)
    attention = randomise(WindowAttention(8, 4, num_heads=2))
    x = torch.randn(8, 16, 8)
    guidance = torch.randn(8, 16, 4)
    mask = shifted_window_mask((8, 8), 4, 2)
    official_call = attention(torch.cat([x, guidance], -1), mask)
    split = attention.proj(attention.attend(*attention.project(x, guidance), mask))
    assert torch.allclose(official_call, split, atol=1e-6)


def test_swin_grid_not_larger_than_window_is_one_unshifted_window():
    block = SwinBlock(8, 0, (4, 4), num_heads=2, window_size=12, shift_size=6)
    assert block.window_size == 4 and block.shift_size == 0 and block.attn_mask is None
    with pytest.raises(CostAggregationError, match="multiple of window"):
        SwinBlock(8, 0, (6, 8), window_size=4)


def test_swin_pair_shares_normalised_guidance_across_classes_and_keeps_shape():
    torch.manual_seed(0)
    pair = randomise(SwinBlockPair(8, 6, (8, 8), num_heads=2, window_size=4))
    assert pair.block_2.shift_size == 2 and "attn_mask" in dict(pair.block_2.named_buffers())
    x, guidance = torch.randn(2, 8, 3, 8, 8), torch.randn(2, 6, 8, 8)
    out = pair(x, guidance)
    assert out.shape == x.shape
    # class slice 1 of image 0 on its own gives the same result: classes are separate sequences
    alone = pair(x[:1, :, 1:2], guidance[:1])
    assert torch.allclose(out[:1, :, 1:2], alone, atol=1e-5)


# --------------------------------------------------------------- class attention
def test_linear_attention_is_elu_kernel_weighted_average():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 3, 4), torch.randn(2, 7, 3, 4), torch.randn(2, 7, 3, 6)
    out = LinearAttention()(q, k, v)
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    weights = torch.einsum("nlhd,nshd->nhls", phi_q, phi_k)
    expected = torch.einsum("nhls,nshv->nlhv", weights, v) / (weights.sum(-1).permute(0, 2, 1).unsqueeze(-1) + 1e-6)
    assert torch.allclose(out, expected, atol=1e-5)


def reference_class_layer(layer: ClassTransformerLayer, x: torch.Tensor, guidance: torch.Tensor, pool: int) -> torch.Tensor:
    batch, channels, classes, height, width = x.shape
    pooled = F.avg_pool2d(x.transpose(1, 2).flatten(0, 1), pool) if pool > 1 else x.transpose(1, 2).flatten(0, 1)
    pooled = pooled.view(batch, classes, channels, *pooled.shape[-2:])
    out = torch.empty_like(pooled)
    pad = layer.pad_len - classes if layer.padding_tokens is not None else 0
    for b in range(batch):
        g = guidance[b]
        if pad > 0:
            g = torch.cat([g, layer.padding_guidance[0].expand(pad, -1)])
        for i in range(pooled.shape[-2]):
            for j in range(pooled.shape[-1]):
                tokens = pooled[b, :, :, i, j]
                if pad > 0:
                    tokens = torch.cat([tokens, layer.padding_tokens[0].expand(pad, -1)])
                normed = layer.norm1(tokens)
                attn = layer.attention
                q = attn.q(torch.cat([normed, g], -1)).view(-1, attn.num_heads, channels // attn.num_heads)
                k = attn.k(torch.cat([normed, g], -1)).view(-1, attn.num_heads, channels // attn.num_heads)
                v = attn.v(normed).view(-1, attn.num_heads, channels // attn.num_heads)
                tokens = tokens + LinearAttention()(q[None], k[None], v[None])[0].flatten(-2)
                tokens = tokens + layer.MLP(layer.norm2(tokens))
                out[b, :, :, i, j] = tokens[:classes]
    out = out.flatten(0, 1)
    if pool > 1:
        out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=True)
    return x + out.view(batch, classes, channels, height, width).transpose(1, 2)


@pytest.mark.parametrize("training", [True, False])
def test_class_layer_pads_with_learned_tokens_and_pools_in_training_only(training):
    torch.manual_seed(0)
    layer = randomise(ClassTransformerLayer(8, 4, num_heads=2, pooling_size=(2, 2), eval_pooling_size=(1, 1), pad_len=6))
    layer.train(training)
    x, guidance = torch.randn(2, 8, 3, 4, 4), torch.randn(2, 3, 4)
    out = layer(x, guidance)
    expected = reference_class_layer(layer, x, guidance, pool=2 if training else 1)
    assert torch.allclose(out, expected, atol=1e-5)
    # the learned padding takes part: changing it changes the real classes' output
    with torch.no_grad():
        layer.padding_tokens.add_(torch.randn_like(layer.padding_tokens))
    assert not torch.allclose(layer(x, guidance), out, atol=1e-4)


def test_class_layer_without_padding_is_class_permutation_equivariant():
    torch.manual_seed(0)
    layer = randomise(ClassTransformerLayer(8, 4, num_heads=2, pad_len=0)).eval()
    assert layer.padding_tokens is None and layer.padding_guidance is None
    assert not any("padding" in name for name, _ in layer.named_parameters())
    x, guidance = torch.randn(1, 8, 4, 4, 4), torch.randn(1, 4, 4)
    order = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(layer(x, guidance)[:, :, order], layer(x[:, :, order], guidance[:, order]), atol=1e-5)


def test_class_layer_with_more_classes_than_pad_len_does_not_pad():
    torch.manual_seed(0)
    layer = randomise(ClassTransformerLayer(8, 4, num_heads=2, pad_len=3)).eval()
    x, guidance = torch.randn(1, 8, 5, 2, 2), torch.randn(1, 5, 4)
    assert torch.allclose(layer(x, guidance), reference_class_layer(layer, x, guidance, pool=1), atol=1e-5)


def test_class_attention_full_option_is_softmax_attention():
    torch.manual_seed(0)
    attention = randomise(ClassAttention(8, 4, num_heads=2, attention_type="full"))
    x, guidance = torch.randn(3, 5, 8), torch.randn(3, 5, 4)
    out = attention(x, guidance)
    q = attention.q(torch.cat([x, guidance], -1)).view(3, 5, 2, 4).transpose(1, 2)
    k = attention.k(torch.cat([x, guidance], -1)).view(3, 5, 2, 4).transpose(1, 2)
    v = attention.v(x).view(3, 5, 2, 4).transpose(1, 2)
    expected = ((q @ k.transpose(-1, -2)) / 2.0).softmax(-1) @ v
    assert torch.allclose(out, expected.transpose(1, 2).flatten(-2), atol=1e-5)
    with pytest.raises(CostAggregationError, match="attention type"):
        ClassAttention(8, 4, attention_type="quadratic")


# ------------------------------------------------------------------- pruning
def test_top_class_selection_gather_and_scatter():
    cost = torch.zeros(2, 1, 5, 2, 2)
    cost[0, 0, 3, 1, 1] = 0.9
    cost[0, 0, 1, 0, 0] = 0.5
    cost[1, 0, 0, 0, 1] = 0.7
    cost[1, 0, 4, 1, 0] = 0.8
    kept = select_top_classes(cost, 2)
    assert sorted(kept[0].tolist()) == [1, 3] and sorted(kept[1].tolist()) == [0, 4]
    text = torch.arange(2 * 5 * 1 * 3, dtype=torch.float32).view(2, 5, 1, 3)
    assert torch.equal(gather_classes(text, kept)[1, 0], text[1, kept[1, 0]])
    logits = torch.randn(2, 2, 3, 3)
    full = scatter_classes(logits, kept, 5)
    assert full.shape == (2, 5, 3, 3)
    assert torch.equal(full[0, kept[0, 1]], logits[0, 1])
    dropped = [c for c in range(5) if c not in kept[0].tolist()]
    assert full[0, dropped].eq(MASKED_LOGIT).all()


def small_aggregator(pad_len: int) -> CatSegAggregator:
    return CatSegAggregator(
        text_guidance_dim=16, text_guidance_proj_dim=8, appearance_guidance_dim=16, appearance_guidance_proj_dim=8,
        decoder_dims=(16, 16), decoder_guidance_dims=(6, 4), decoder_guidance_proj_dims=(4, 2), num_layers=1,
        num_heads=2, hidden_dim=8, feature_resolution=(4, 4), window_size=2, pad_len=pad_len,
        pooling_sizes=(2, 2), eval_pooling_sizes=(1, 1), attention_type="linear", prompt_channel=1,
    )


def test_aggregator_prunes_to_the_top_pad_len_classes_and_gives_the_rest_minus_100():
    torch.manual_seed(0)
    aggregator = randomise(small_aggregator(pad_len=3)).eval()
    image = torch.randn(1, 16, 4, 4)
    text = torch.randn(1, 5, 1, 16)
    guidance = [image, torch.randn(1, 6, 8, 8), torch.randn(1, 4, 16, 16)]
    logits = aggregator(image, text, guidance)
    assert logits.shape == (1, 5, 16, 16)
    kept = select_top_classes(cosine_cost_volume(image, text), 3)[0]
    dropped = [c for c in range(5) if c not in kept.tolist()]
    assert logits[0, dropped].eq(MASKED_LOGIT).all()
    # the kept classes are exactly what the aggregator gives when offered only them
    only_kept = aggregator(image, text[:, kept], guidance)
    assert torch.allclose(logits[0, kept], only_kept[0], atol=1e-5)


def test_aggregator_without_pad_len_keeps_every_class():
    torch.manual_seed(0)
    aggregator = randomise(small_aggregator(pad_len=0)).eval()
    image, text = torch.randn(1, 16, 4, 4), torch.randn(1, 5, 1, 16)
    logits = aggregator(image, text, [image, torch.randn(1, 6, 8, 8), torch.randn(1, 4, 16, 16)])
    assert not logits.eq(MASKED_LOGIT).any()


# ------------------------------------------------------------------- decoder
def test_up_block_catseg_and_two_guidance_layouts():
    torch.manual_seed(0)
    catseg = Up(128, 64, 32)
    assert catseg.up.out_channels == 96 and catseg.conv.double_conv[0].in_channels == 128
    assert catseg.conv.double_conv[1].num_groups == 4
    out = catseg(torch.randn(6, 128, 4, 4), torch.randn(2, 32, 8, 8))  # 2 images x 3 classes
    assert out.shape == (6, 64, 8, 8)
    # GSNet's fusion decoder: CLIP 32 + RSIB 32 guidance after a ConvT to 128 - 32 channels
    fusion = Up(128, 64, [32, 32])
    assert fusion.up.out_channels == 96 and fusion.conv.double_conv[0].in_channels == 160
    assert fusion(torch.randn(6, 128, 4, 4), [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8)]).shape == (6, 64, 8, 8)
    with pytest.raises(CostAggregationError, match="2 guidance maps"):
        fusion(torch.randn(6, 128, 4, 4), torch.randn(2, 32, 8, 8))


def test_up_block_repeats_each_images_guidance_for_its_classes():
    torch.manual_seed(0)
    up = randomise(Up(16, 16, 4)).eval()
    x, guidance = torch.randn(4, 16, 2, 2), torch.randn(2, 4, 4, 4)  # 2 images x 2 classes
    out = up(x, guidance)
    assert torch.allclose(out[2:3], up(x[2:3], guidance[1:2]), atol=1e-6)


# ---------------------------------------------------------------------- loss
def test_bce_counts_ignored_pixels_as_negatives_unless_masked():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0] = 4.0
    targets = torch.tensor([[[0, 255], [7, 1]]])  # 255 ignored, 7 >= T ignored
    official = per_pixel_bce_loss(logits, targets, ignore_index=255)
    one_hot = torch.zeros(1, 3, 2, 2)
    one_hot[0, 0, 0, 0] = 1
    one_hot[0, 1, 1, 1] = 1
    assert torch.isclose(official, F.binary_cross_entropy_with_logits(logits, one_hot))
    masked = per_pixel_bce_loss(logits, targets, ignore_index=255, mask_ignored=True)
    valid = torch.tensor([[True, False], [False, True]])
    per_element = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    assert torch.isclose(masked, per_element[:, :, valid].mean())
    assert not torch.isclose(masked, official)


def test_bce_upsamples_logits_to_the_targets():
    logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    targets = torch.randint(0, 4, (2, 12, 12))
    loss = per_pixel_bce_loss(logits, targets)
    up = F.interpolate(logits, size=(12, 12), mode="bilinear", align_corners=False)
    expected = F.binary_cross_entropy_with_logits(up, F.one_hot(targets, 4).permute(0, 3, 1, 2).float())
    assert torch.isclose(loss, expected)
    loss.backward()
    assert logits.grad is not None
