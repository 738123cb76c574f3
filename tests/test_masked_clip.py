"""masked-clip: outside-patch flags, OV-Seg mask prompts, SCAN's contextual shift.

Everything runs a tiny random-init open_clip ViT image tower (6 blocks, width 32, 8-pixel
patches on 64-pixel crops, so an 8x8 grid) against slow, explicit per-block references.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, VisionTransformer

from ovbench_methods.common.clip import ClipImageEncoder
from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.masked_clip import (
    MASK_PROMPT_INIT_STD,
    ClipContext,
    MaskPromptEmbedding,
    clip_image_embedding,
    contextual_shift_image_embedding,
    full_image_context,
    mask_prompted_image_embedding,
    outside_patch_flags,
    replaced_token_counts,
    sample_background_tokens,
)

SIZE, PATCH, WIDTH, LAYERS, OUT = 64, 8, 32, 6, 16
GRID = SIZE // PATCH
TOKENS = GRID * GRID


def tiny_encoder(seed: int = 0) -> ClipImageEncoder:
    torch.manual_seed(seed)
    visual = VisionTransformer(
        image_size=SIZE, patch_size=PATCH, width=WIDTH, layers=LAYERS, heads=2, mlp_ratio=4.0,
        output_dim=OUT, act_layer=QuickGELU,
    )
    with torch.no_grad():
        # open_clip zero-initialises biases and the LayerNorm affine; random values make
        # every term of the computation observable.
        for name, param in visual.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return ClipImageEncoder(visual.eval()).eval()


@pytest.fixture(scope="module")
def encoder() -> ClipImageEncoder:
    return tiny_encoder()


def crops(count: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised crops and blob masks whose borders cut through patches."""
    generator = torch.Generator().manual_seed(seed)
    regions = torch.randn(count, 3, SIZE, SIZE, generator=generator)
    low = torch.rand(count, 1, 5, 5, generator=generator)
    masks = (F.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False) > 0.5).float()
    masks[0] = 0
    masks[0, :, 10:30, 5:40] = 1  # a box whose edges fall inside patches
    return regions, masks


def slow_outside(masks: torch.Tensor, patch: int) -> torch.Tensor:
    count, _, height, width = masks.shape
    rows, cols = height // patch, width // patch
    out = torch.zeros(count, rows * cols, dtype=torch.bool)
    for v in range(count):
        for r in range(rows):
            for c in range(cols):
                cell = masks[v, 0, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
                out[v, r * cols + c] = not bool((cell > 0).any())
    return out


def run_block(encoder: ClipImageEncoder, index: int, tokens: torch.Tensor) -> torch.Tensor:
    """One block on (N, L, C) tokens, with the layout the installed open_clip expects."""
    block = encoder.blocks[index]
    if encoder.visual.transformer.batch_first:
        return block(tokens)
    return block(tokens.transpose(0, 1)).transpose(0, 1)


def final_embedding(encoder: ClipImageEncoder, tokens: torch.Tensor) -> torch.Tensor:
    return encoder.visual.ln_post(tokens[:, 0]) @ encoder.visual.proj


# ------------------------------------------------------------------ outside flags
def test_outside_flags_match_a_per_patch_loop():
    _, masks = crops(5)
    masks[1, 0, 3, 3] = 1  # one pixel makes its patch inside
    flags = outside_patch_flags(masks, PATCH)
    assert flags.shape == (5, TOKENS) and flags.dtype == torch.bool
    assert torch.equal(flags, slow_outside(masks, PATCH))
    assert not flags[1, 0]
    # row-major: the box in crop 0 spans rows 1..3 and columns 0..4
    expected = torch.ones(GRID, GRID, dtype=torch.bool)
    expected[1:4, 0:5] = False
    assert torch.equal(flags[0].view(GRID, GRID), expected)
    # rectangular patches and boolean masks go through the same rule
    assert torch.equal(outside_patch_flags(masks.bool(), (PATCH, PATCH)), flags)


def test_outside_flags_refuse_bad_shapes():
    with pytest.raises(MethodConfigError, match="multiple of the patch"):
        outside_patch_flags(torch.ones(1, 1, 60, 64), PATCH)
    with pytest.raises(MethodConfigError, match=r"\(V,1,S,S\)"):
        outside_patch_flags(torch.ones(1, 64, 64), PATCH)


# ------------------------------------------------------------------ plain CLIP
def test_plain_embedding_is_open_clips_forward(encoder):
    regions, _ = crops(3)
    with torch.no_grad():
        assert torch.allclose(clip_image_embedding(encoder, regions), encoder.visual(regions), atol=1e-6)
        assert torch.equal(
            mask_prompted_image_embedding(encoder, None, regions, None), clip_image_embedding(encoder, regions)
        )


# ------------------------------------------------------------------ mask prompts
def slow_mask_prompts(encoder, mask_embedding, regions, masks):
    """The official order written out: conv1, replace, CLS + pos-embed, ln_pre, blocks with
    replacement after block d (1-based) for d < depth, CLS -> ln_post -> proj."""
    visual = encoder.visual
    outside = slow_outside(masks, PATCH)
    depth = mask_embedding.shape[0]
    prompts = mask_embedding.expand(depth, TOKENS, WIDTH)
    patches = visual.conv1(regions).reshape(regions.shape[0], WIDTH, -1).permute(0, 2, 1).clone()
    for v in range(regions.shape[0]):
        for n in range(TOKENS):
            if outside[v, n]:
                patches[v, n] = prompts[0, n]
    cls = visual.class_embedding.expand(regions.shape[0], 1, WIDTH)
    tokens = visual.ln_pre(torch.cat([cls, patches], dim=1) + visual.positional_embedding)
    for i in range(LAYERS):
        tokens = run_block(encoder, i, tokens).clone()
        d = i + 1
        if d < depth:
            for v in range(regions.shape[0]):
                for n in range(TOKENS):
                    if outside[v, n]:
                        tokens[v, 1 + n] = prompts[d, n]
    return final_embedding(encoder, tokens)


@pytest.mark.parametrize("depth", [1, 3, LAYERS + 2])
def test_mask_prompts_match_slow_reference(encoder, depth):
    regions, masks = crops(3)
    mask_embedding = torch.randn(depth, TOKENS, WIDTH, generator=torch.Generator().manual_seed(depth))
    with torch.no_grad():
        fast = mask_prompted_image_embedding(encoder, mask_embedding, regions, masks)
        slow = slow_mask_prompts(encoder, mask_embedding, regions, masks)
    assert fast.shape == (3, OUT)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()
    assert not torch.allclose(fast, clip_image_embedding(encoder, regions), atol=1e-3)


def test_mask_prompts_depth_matters_and_shared_prompt_broadcasts(encoder):
    regions, masks = crops(3)
    generator = torch.Generator().manual_seed(5)
    deep = torch.randn(3, TOKENS, WIDTH, generator=generator)
    shared = torch.randn(3, 1, WIDTH, generator=generator)
    with torch.no_grad():
        assert not torch.allclose(
            mask_prompted_image_embedding(encoder, deep, regions, masks),
            mask_prompted_image_embedding(encoder, deep[:1], regions, masks),
            atol=1e-4,
        )
        assert torch.allclose(
            mask_prompted_image_embedding(encoder, shared, regions, masks),
            mask_prompted_image_embedding(encoder, shared.expand(3, TOKENS, WIDTH).clone(), regions, masks),
            atol=1e-6,
        )


def test_zero_prompts_with_all_inside_masks_are_plain_clip(encoder):
    regions, masks = crops(3)
    masks.zero_()
    masks[:, :, ::PATCH, ::PATCH] = 1  # one pixel per patch: every patch is inside
    prompts = MaskPromptEmbedding(3, TOKENS, WIDTH)
    with torch.no_grad():
        assert torch.allclose(prompts(encoder, regions, masks), clip_image_embedding(encoder, regions), atol=1e-6)
        # ... and with no mask pixel at all every patch token is the (zero) prompt instead
        assert not torch.allclose(
            prompts(encoder, regions, torch.zeros_like(masks)), clip_image_embedding(encoder, regions), atol=1e-3
        )


def test_mask_prompt_module_keys_and_init():
    zeros = MaskPromptEmbedding(3, 196, 768)
    assert list(zeros.state_dict()) == ["mask_embedding"]
    assert zeros.mask_embedding.shape == (3, 196, 768) and zeros.depth == 3
    assert torch.count_nonzero(zeros.mask_embedding) == 0
    torch.manual_seed(0)
    normal = MaskPromptEmbedding(3, 196, 768, init="normal")
    assert math.isclose(float(normal.mask_embedding.detach().std()), MASK_PROMPT_INIT_STD, rel_tol=0.02)
    assert abs(float(normal.mask_embedding.detach().mean())) < 1e-3
    with pytest.raises(MethodConfigError, match="init"):
        MaskPromptEmbedding(3, 196, 768, init="uniform")  # type: ignore[arg-type]
    with pytest.raises(MethodConfigError, match="depth"):
        MaskPromptEmbedding(0, 196, 768)


def test_mask_prompts_train_and_refuse_bad_shapes(encoder):
    regions, masks = crops(2)
    prompts = MaskPromptEmbedding(3, TOKENS, WIDTH, init="normal")
    prompts(encoder, regions, masks).sum().backward()
    assert prompts.mask_embedding.grad is not None and prompts.mask_embedding.grad.abs().sum() > 0
    with pytest.raises(MethodConfigError, match="mask_embedding"):
        mask_prompted_image_embedding(encoder, torch.zeros(3, TOKENS + 1, WIDTH), regions, masks)
    with pytest.raises(MethodConfigError, match="region masks"):
        mask_prompted_image_embedding(encoder, torch.zeros(3, TOKENS, WIDTH), regions, masks[:1])


# ------------------------------------------------------------------ original-CLIP context
def test_full_image_context_matches_a_manual_run(encoder):
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 96, 80, generator=generator)
    with torch.no_grad():
        context = full_image_context(encoder, images, size=SIZE)
        pixels = F.interpolate(images, size=(SIZE, SIZE))  # the official call: default mode (nearest)
        visual = encoder.visual
        patches = visual.conv1(pixels).reshape(2, WIDTH, -1).permute(0, 2, 1)
        tokens = visual.ln_pre(torch.cat([visual.class_embedding.expand(2, 1, WIDTH), patches], 1) + visual.positional_embedding)
        manual = [tokens]
        for i in range(LAYERS):
            tokens = run_block(encoder, i, tokens)
            manual.append(tokens)
        assert context.num_blocks == LAYERS and context.grid == (GRID, GRID)
        for layer in range(LAYERS + 1):
            assert torch.allclose(context.cls(layer), manual[layer][:, 0], atol=1e-5)
            assert torch.allclose(context.patches(layer), manual[layer][:, 1:], atol=1e-5)
        assert torch.allclose(context.embedding, visual(pixels), atol=1e-5)
        # patch maps: channel-first, row-major like the official permute + reshape
        official_map = manual[3][:, 1:].permute(0, 2, 1).reshape(2, WIDTH, GRID, GRID)
        assert torch.allclose(context.patch_map(3), official_map, atol=1e-5)
        assert torch.allclose(context.layer_cls(1), torch.stack([t[1, 0] for t in manual]), atol=1e-5)
        bilinear = full_image_context(encoder, images, resize_mode="bilinear", size=SIZE)
        smooth = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        assert torch.allclose(bilinear.embedding, visual(smooth), atol=1e-5)
    with pytest.raises(MethodConfigError, match="resize mode"):
        full_image_context(encoder, images, resize_mode="bicubic")  # type: ignore[arg-type]
    with pytest.raises(MethodConfigError, match="layer"):
        context.cls(LAYERS + 1)


# ------------------------------------------------------------------ contextual shift
def test_replaced_token_count_is_the_official_truncation():
    for count in range(0, 300, 7):
        for ratio in (0.0, 0.05, 0.1, 0.15, 0.29, 0.57, 1.0):
            outside = torch.zeros(1, 300, dtype=torch.bool)
            outside[0, :count] = True
            assert int(replaced_token_counts(outside, ratio)) == int(ratio * count)
    # a product just below an integer truncates, as Python's int() does
    assert int(0.29 * 100) == 28
    outside = torch.ones(1, 100, dtype=torch.bool)
    assert int(replaced_token_counts(outside, 0.29)) == 28


def test_sampled_tokens_are_background_per_crop_and_seeded():
    _, masks = crops(6)
    outside = outside_patch_flags(masks, PATCH)
    chosen = sample_background_tokens(outside, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(chosen.sum(1), replaced_token_counts(outside, 0.3))
    assert not (chosen & ~outside).any()
    again = sample_background_tokens(outside, 0.3, torch.Generator().manual_seed(0))
    other = sample_background_tokens(outside, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(chosen, again) and not torch.equal(chosen, other)
    # every background token can be chosen: no bias to the first positions
    generator = torch.Generator().manual_seed(2)
    hits = sum(sample_background_tokens(outside, 0.3, generator).long() for _ in range(200))
    assert torch.equal(hits > 0, outside)
    # two crops with identical backgrounds get their own draws
    twins = outside[:1].expand(2, -1)
    drawn = sample_background_tokens(twins, 0.5, torch.Generator().manual_seed(0))
    assert not torch.equal(drawn[0], drawn[1])
    assert not sample_background_tokens(outside, 0.0, torch.Generator().manual_seed(0)).any()
    with pytest.raises(MethodConfigError, match="ratio"):
        sample_background_tokens(outside, 1.5)


def slow_contextual_shift(encoder, regions, masks, context_cls, layers, ratio, generator):
    """Explicit loop: after block d (1-based) in `layers`, draw each layer's choice in the
    same order as the fast path and overwrite chosen patch tokens one by one."""
    outside = slow_outside(masks, PATCH)
    tokens = encoder.embed(regions)[0]
    for i in range(LAYERS):
        tokens = run_block(encoder, i, tokens).clone()
        d = i + 1
        if d in layers:
            chosen = sample_background_tokens(outside, ratio, generator)
            for v in range(regions.shape[0]):
                value = context_cls[d] if context_cls.dim() == 2 else context_cls[d, v]
                for n in torch.nonzero(chosen[v])[:, 0].tolist():
                    tokens[v, 1 + n] = value
    return final_embedding(encoder, tokens)


def test_contextual_shift_matches_slow_reference(encoder):
    regions, masks = crops(4)
    context = full_image_context(encoder, torch.randn(1, 3, 100, 120), size=SIZE)
    context_cls = context.layer_cls(0)
    with torch.no_grad():
        fast = contextual_shift_image_embedding(
            encoder, regions, masks, context, (1, 3, 5), 0.4, torch.Generator().manual_seed(7)
        )
        slow = slow_contextual_shift(
            encoder, regions, masks, context_cls, {1, 3, 5}, 0.4, torch.Generator().manual_seed(7)
        )
    assert fast.shape == (4, OUT)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()


def test_contextual_shift_seeds_and_ratio_zero(encoder):
    regions, masks = crops(3)
    context_cls = full_image_context(encoder, torch.randn(1, 3, SIZE, SIZE), size=SIZE).layer_cls()

    def shifted(seed, ratio=0.15, layers=(1, 3, 5)):
        with torch.no_grad():
            return contextual_shift_image_embedding(
                encoder, regions, masks, context_cls, layers, ratio, torch.Generator().manual_seed(seed)
            )

    assert torch.equal(shifted(0), shifted(0))
    assert not torch.allclose(shifted(0, 0.5), shifted(1, 0.5), atol=1e-4)
    with torch.no_grad():
        plain = clip_image_embedding(encoder, regions)
    assert torch.allclose(shifted(0, 0.0), plain, atol=1e-6)
    assert torch.allclose(shifted(0, 0.5, ()), plain, atol=1e-6)
    assert not torch.allclose(shifted(0, 0.5), plain, atol=1e-4)


def test_contextual_shift_per_crop_context_and_bad_settings(encoder):
    regions, masks = crops(2)
    context = full_image_context(encoder, torch.randn(2, 3, SIZE, SIZE), size=SIZE)
    per_crop = torch.stack([context.layer_cls(0), context.layer_cls(1)], dim=1)  # (L+1, V, C)
    with torch.no_grad():
        fast = contextual_shift_image_embedding(
            encoder, regions, masks, per_crop, (1, 2), 0.5, torch.Generator().manual_seed(0)
        )
        slow = slow_contextual_shift(encoder, regions, masks, per_crop, {1, 2}, 0.5, torch.Generator().manual_seed(0))
        shared = contextual_shift_image_embedding(
            encoder, regions, masks, context.layer_cls(0), (1, 2), 0.5, torch.Generator().manual_seed(0)
        )
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(fast[0], shared[0], atol=1e-6) and not torch.allclose(fast[1], shared[1], atol=1e-4)
    with pytest.raises(MethodConfigError, match="replace layers"):
        contextual_shift_image_embedding(encoder, regions, masks, context.layer_cls(), (0, 1))
    with pytest.raises(MethodConfigError, match="replace layers"):
        contextual_shift_image_embedding(encoder, regions, masks, context.layer_cls(), (LAYERS + 1,))
    with pytest.raises(MethodConfigError, match="context CLS"):
        contextual_shift_image_embedding(encoder, regions, masks, context.layer_cls()[1:])
    with pytest.raises(MethodConfigError, match="ratio"):
        contextual_shift_image_embedding(encoder, regions, masks, context.layer_cls(), replace_ratio=-0.1)
    assert isinstance(context, ClipContext)


def test_contextual_shift_replaced_positions_carry_the_context_cls(encoder, monkeypatch):
    """Hook the last replace layer: the chosen tokens equal the context CLS right after it."""
    import ovbench_methods.common.masked_clip as masked_clip

    regions, masks = crops(3)
    context_cls = torch.randn(LAYERS + 1, WIDTH)
    chosen_log = []
    original = masked_clip.sample_background_tokens

    def recording(outside, ratio, generator=None):
        chosen = original(outside, ratio, generator)
        chosen_log.append(chosen)
        return chosen

    captured = {}
    real_replace = masked_clip._replace_patch_tokens

    def capture(tokens, where, values):
        out = real_replace(tokens, where, values)
        captured.setdefault("calls", []).append((tokens, where, out))
        return out

    monkeypatch.setattr(masked_clip, "sample_background_tokens", recording)
    monkeypatch.setattr(masked_clip, "_replace_patch_tokens", capture)
    outside = outside_patch_flags(masks, PATCH)
    with torch.no_grad():
        contextual_shift_image_embedding(encoder, regions, masks, context_cls, (2, 4), 0.25, torch.Generator().manual_seed(0))
    assert len(chosen_log) == 2
    for (before, where, after), layer, chosen in zip(captured["calls"], (2, 4), chosen_log):
        assert torch.equal(where, chosen)
        assert torch.equal(chosen.sum(1), torch.tensor([int(0.25 * int(c)) for c in outside.sum(1)]))
        assert torch.equal(after[:, 0], before[:, 0])  # CLS untouched
        patches_after, patches_before = after[:, 1:], before[:, 1:]
        assert torch.equal(patches_after[~chosen], patches_before[~chosen])
        assert torch.equal(patches_after[chosen], context_cls[layer].expand(int(chosen.sum()), WIDTH))


def test_python_random_is_not_used(encoder, monkeypatch):
    """The official code draws with Python's `random`; this one only with torch generators."""

    def refuse(*args, **kwargs):
        raise AssertionError("python random used")

    monkeypatch.setattr(random, "sample", refuse)
    regions, masks = crops(2)
    with torch.no_grad():
        contextual_shift_image_embedding(
            encoder, regions, masks, torch.zeros(LAYERS + 1, WIDTH), generator=torch.Generator().manual_seed(0)
        )
