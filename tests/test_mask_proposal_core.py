"""The first shared parts of the mask-proposal core (docs/methods/mask-proposal-core.md):
multi-scale deformable attention against a slow loop-and-arithmetic reference and gradcheck,
mask pooling against a per-mask loop, crop-and-mask against a numpy reference with its own
bicubic and nearest resizers, and the geometric ensemble's limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovbench_methods.common.crop_and_mask import (
    CLIP_MEAN_UNIT,
    CLIP_STD_UNIT,
    crop_and_mask,
    mask_boxes,
)
from ovbench_methods.common.ensemble import (
    clip_branch_probs,
    ensemble_class_probs,
    geometric_ensemble,
    in_vocab_probs,
    scatter_valid_rows,
    suppress_void,
)
from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.mask_pooling import mask_pool
from ovbench_methods.common.ms_deform_attn import (
    MSDeformAttn,
    level_start_index,
    ms_deform_attn_sample,
    spatial_shapes_tensor,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- deformable attention

SHAPES = [(4, 5), (2, 3), (1, 2)]


def bilinear_by_hand(plane: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Value of plane (D,H,W) at (x, y) in [0, 1]: pixel i covers [i/n, (i+1)/n], so the
    pixel-centre coordinate is x*W - 0.5; neighbours outside the map count as zero."""
    _, height, width = plane.shape
    u, v = x * width - 0.5, y * height - 0.5
    col0, row0 = math.floor(u), math.floor(v)
    fx, fy = u - col0, v - row0
    total = torch.zeros(plane.shape[0], dtype=plane.dtype)
    for row, wy in ((row0, 1 - fy), (row0 + 1, fy)):
        for col, wx in ((col0, 1 - fx), (col0 + 1, fx)):
            if 0 <= row < height and 0 <= col < width:
                total = total + wy * wx * plane[:, row, col]
    return total


def slow_core(value, shapes, locations, weights):
    """Loops over batch, query, head, level and point; value (N,S,M,D) -> (N,Lq,M*D)."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = torch.zeros(batch, queries, heads * dim, dtype=value.dtype)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    for n in range(batch):
        for q in range(queries):
            for m in range(heads):
                acc = torch.zeros(dim, dtype=value.dtype)
                for lvl, (h, w) in enumerate(shapes):
                    # rows of the flattened level are row-major pixels
                    plane = value[n, starts[lvl] : starts[lvl + 1], m].T.reshape(dim, h, w)
                    for p in range(points):
                        x, y = locations[n, q, m, lvl, p].tolist()
                        acc = acc + weights[n, q, m, lvl, p] * bilinear_by_hand(plane, x, y)
                out[n, q, m * dim : (m + 1) * dim] = acc
    return out


def random_core_inputs(seed=0, batch=2, queries=3, heads=2, dim=3, points=2, dtype=torch.float64):
    g = gen(seed)
    total = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, total, heads, dim, generator=g, dtype=dtype)
    # Some locations fall outside the map, where the zero padding shows.
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=g, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=g, dtype=dtype)
    return value, locations, weights


def test_deformable_core_matches_slow_reference():
    value, locations, weights = random_core_inputs()
    fast = ms_deform_attn_sample(value, SHAPES, locations, weights)
    torch.testing.assert_close(fast, slow_core(value, SHAPES, locations, weights), rtol=0, atol=1e-12)
    # float32 and shapes given as a tensor agree too
    fast32 = ms_deform_attn_sample(value.float(), spatial_shapes_tensor(SHAPES), locations.float(), weights.float())
    torch.testing.assert_close(fast32, fast.float(), rtol=1e-5, atol=1e-5)


def test_pixel_centre_reads_that_pixel():
    value = torch.arange(20, dtype=torch.float64).view(1, 20, 1, 1)
    row, col = 2, 3
    location = torch.tensor([(col + 0.5) / 5, (row + 0.5) / 4], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn_sample(value, [(4, 5)], location, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))
    assert out.item() == row * 5 + col


def test_deformable_core_gradcheck():
    value, locations, weights = random_core_inputs(seed=3, batch=1, queries=2, heads=2, dim=2, points=2)
    inputs = tuple(t.clone().requires_grad_(True) for t in (value, locations, weights))
    assert torch.autograd.gradcheck(lambda v, s, a: ms_deform_attn_sample(v, SHAPES, s, a), inputs, eps=1e-6, atol=1e-5)


def slow_module(module: MSDeformAttn, query, reference, flat, shapes, padding):
    """The module's arithmetic written out: projections, per-level pixel offsets, a
    softmax over levels x points, then the slow core."""
    batch, queries, _ = query.shape
    m, lv, pts = module.n_heads, module.n_levels, module.n_points
    value = flat @ module.value_proj.weight.T + module.value_proj.bias
    if padding is not None:
        value = value * (~padding)[..., None]
    value = value.view(batch, flat.shape[1], m, -1)
    offsets = (query @ module.sampling_offsets.weight.T + module.sampling_offsets.bias).view(batch, queries, m, lv, pts, 2)
    logits = (query @ module.attention_weights.weight.T + module.attention_weights.bias).view(batch, queries, m, lv * pts)
    weights = (logits.exp() / logits.exp().sum(-1, keepdim=True)).view(batch, queries, m, lv, pts)
    locations = torch.empty_like(offsets)
    for n in range(batch):
        for q in range(queries):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(pts):
                        dx, dy = offsets[n, q, head, lvl, p]
                        ref = reference[n, q, lvl]
                        if ref.shape[0] == 2:
                            locations[n, q, head, lvl, p] = torch.stack([ref[0] + dx / w, ref[1] + dy / h])
                        else:
                            locations[n, q, head, lvl, p] = torch.stack(
                                [ref[0] + dx / pts * ref[2] * 0.5, ref[1] + dy / pts * ref[3] * 0.5]
                            )
    core = slow_core(value, shapes, locations, weights)
    return core @ module.output_proj.weight.T + module.output_proj.bias


@pytest.mark.parametrize("reference_dim", [2, 4])
def test_module_matches_slow_reference_with_padding(reference_dim):
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=8, n_levels=3, n_heads=2, n_points=2).double()
    with torch.no_grad():  # move away from the initialisation so every term matters
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    g = gen(1)
    total = sum(h * w for h, w in SHAPES)
    query = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    flat = torch.randn(2, total, 8, generator=g, dtype=torch.float64)
    reference = torch.rand(2, 3, 3, reference_dim, generator=g, dtype=torch.float64)
    padding = torch.rand(2, total, generator=g) > 0.7
    shapes = spatial_shapes_tensor(SHAPES)
    out = module(query, reference, flat, shapes, level_start_index(shapes), padding)
    torch.testing.assert_close(out, slow_module(module, query, reference, flat, SHAPES, padding), rtol=0, atol=1e-10)
    # without the mask the padded values are read, so the result differs
    unpadded = module(query, reference, flat, shapes, level_start_index(shapes))
    assert not torch.allclose(unpadded, out)
    torch.testing.assert_close(unpadded, slow_module(module, query, reference, flat, SHAPES, None), rtol=0, atol=1e-10)


def test_module_initialisation_and_state_dict_names():
    module = MSDeformAttn(d_model=16, n_levels=3, n_heads=8, n_points=4)
    assert sorted(module.state_dict()) == sorted(
        f"{layer}.{kind}"
        for layer in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
        for kind in ("weight", "bias")
    )
    assert module.sampling_offsets.weight.shape == (8 * 3 * 4 * 2, 16)
    assert module.attention_weights.weight.shape == (8 * 3 * 4, 16)
    assert not module.sampling_offsets.weight.any()
    assert not module.attention_weights.weight.any() and not module.attention_weights.bias.any()
    assert not module.value_proj.bias.any() and not module.output_proj.bias.any()
    bias = module.sampling_offsets.bias.view(8, 3, 4, 2)
    for head in range(8):
        angle = 2 * math.pi * head / 8
        direction = (math.cos(angle), math.sin(angle))
        scale = max(abs(direction[0]), abs(direction[1]))
        for point in range(4):
            expected = torch.tensor([direction[0] / scale * (point + 1), direction[1] / scale * (point + 1)])
            for level in range(3):
                torch.testing.assert_close(bias[head, level, point], expected, rtol=0, atol=1e-5)
    # Xavier-uniform bound sqrt(6 / (fan_in + fan_out))
    bound = math.sqrt(6 / 32)
    assert module.value_proj.weight.abs().max() <= bound and module.value_proj.weight.std() > 0
    # an official-layout state dict loads with nothing missing or unexpected
    fresh = MSDeformAttn(d_model=16, n_levels=3, n_heads=8, n_points=4)
    result = fresh.load_state_dict({k: v.clone() for k, v in module.state_dict().items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_module_rejects_bad_settings_and_inputs():
    with pytest.raises(MethodConfigError, match="divisible"):
        MSDeformAttn(d_model=10, n_heads=4)
    module = MSDeformAttn(d_model=8, n_levels=3, n_heads=2, n_points=1)
    query, flat = torch.randn(1, 2, 8), torch.randn(1, 31, 8)
    with pytest.raises(MethodConfigError, match="spatial shapes"):
        module(query, torch.rand(1, 2, 3, 2), flat, spatial_shapes_tensor(SHAPES))
    with pytest.raises(MethodConfigError, match="levels"):
        module(query, torch.rand(1, 2, 3, 2), torch.randn(1, 20, 8), spatial_shapes_tensor([(4, 5)]))
    with pytest.raises(MethodConfigError, match="end in 2"):
        module(query, torch.rand(1, 2, 3, 3), torch.randn(1, 28, 8), spatial_shapes_tensor(SHAPES))


# --------------------------------------------------------------------------- mask pooling


def pooled_by_loop(features, masks, keep):
    batch, channels = features.shape[:2]
    out = torch.zeros(batch, masks.shape[1], channels, dtype=features.dtype)
    for b in range(batch):
        for q in range(masks.shape[1]):
            weight = keep(masks[b, q])
            area = float(weight.sum())
            for c in range(channels):
                out[b, q, c] = float((features[b, c] * weight).sum()) / (area + 1e-8)
    return out


@pytest.mark.parametrize(
    "mode,keep",
    [
        ("logit", lambda m: (m > 0).double()),
        ("sigmoid", lambda m: (torch.sigmoid(m) > 0.5).double()),
        ("probability", lambda m: (m > 0.3).double()),
        ("soft", lambda m: m.double()),
    ],
)
def test_mask_pool_matches_per_mask_loop(mode, keep):
    g = gen(5)
    features = torch.randn(2, 4, 6, 7, generator=g, dtype=torch.float64)
    masks = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    if mode in ("probability", "soft"):
        masks = masks.sigmoid()
    masks[0, 1] = -5.0 if mode in ("logit", "sigmoid") else 0.0  # an empty mask pools to zero
    pooled = mask_pool(features, masks, binarize=mode, threshold=0.3)
    torch.testing.assert_close(pooled, pooled_by_loop(features, masks, keep), rtol=1e-12, atol=1e-12)
    assert not pooled[0, 1].any()


def test_mask_pool_resizes_logits_bilinearly_before_binarising():
    g = gen(6)
    features = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    logits = torch.randn(1, 2, 16, 16, generator=g, dtype=torch.float64)
    pooled = mask_pool(features, logits, binarize="sigmoid", resize_masks=True)
    # 16 -> 4 with align_corners False: output pixel i reads source position 4i + 1.5, the
    # mean of source pixels 4i+1 and 4i+2 in each direction
    small = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            small[0, :, i, j] = logits[0, :, 4 * i + 1 : 4 * i + 3, 4 * j + 1 : 4 * j + 3].mean(dim=(-2, -1))
    expected = pooled_by_loop(features, small, lambda m: (m > 0).double())
    torch.testing.assert_close(pooled, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(MethodConfigError, match="differ in size"):
        mask_pool(features, logits)


def test_mask_pool_gradient_reaches_features_only():
    features = torch.randn(1, 2, 3, 3, requires_grad=True)
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    mask_pool(features, logits).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert logits.grad is None


# --------------------------------------------------------------------------- crop and mask


def cubic(distance: float, a: float = -0.75) -> float:
    d = abs(distance)
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    if d < 2:
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return 0.0


def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) interpolation matrix of PyTorch's bicubic resize: half-pixel centres,
    Keys kernel a = -0.75, taps beyond the border repeat the edge pixel."""
    matrix = np.zeros((size_out, size_in))
    scale = size_in / size_out
    for i in range(size_out):
        source = (i + 0.5) * scale - 0.5
        base = math.floor(source)
        for tap in range(base - 1, base + 3):
            matrix[i, min(max(tap, 0), size_in - 1)] += cubic(source - tap)
    return matrix


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    return np.array([min(int(math.floor(i * size_in / size_out)), size_in - 1) for i in range(size_out)])


def crops_reference(image: np.ndarray, probs: np.ndarray, threshold: float, ratio: float, size: int):
    """image (3,H,W) 0..255, probs (Q,H,W) -> list of (crop, mask, box) or None per mask."""
    fill = np.array([255.0 * c for c in CLIP_MEAN_UNIT])[:, None, None]
    mean = np.array(CLIP_MEAN_UNIT)[:, None, None] * 255.0
    std = np.array(CLIP_STD_UNIT)[:, None, None] * 255.0
    height, width = image.shape[1:]
    results = []
    for prob in probs:
        binary = prob > threshold
        ys, xs = np.where(binary)
        if len(xs) == 0:
            results.append(None)
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * ratio, (y1 - y0) * ratio
        left, top = max(int(cx - w / 2), 0), max(int(cy - h / 2), 0)
        right, bottom = min(int(cx + w / 2), width), min(int(cy + h / 2), height)
        cut = binary[top:bottom, left:right].astype(np.float64)
        painted = np.where(cut[None] > 0, image[:, top:bottom, left:right], fill)
        normalised = (painted - mean) / std
        rows, cols = bicubic_matrix(bottom - top, size), bicubic_matrix(right - left, size)
        crop = np.einsum("ij,cjk,lk->cil", rows, normalised, cols)
        mask = cut[nearest_indices(bottom - top, size)][:, nearest_indices(right - left, size)]
        results.append((crop, mask, (left, top, right, bottom)))
    return results


def proposal_masks(height: int, width: int) -> torch.Tensor:
    probs = torch.zeros(4, height, width)
    probs[0, 2:7, 3:12] = 0.9  # a rectangle
    probs[1, 5, 8] = 0.6  # a single pixel
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    probs[2] = torch.sigmoid(3.0 - ((yy - 9.0) ** 2 + (xx - 4.0) ** 2).sqrt())  # a blob near the border
    probs[3] = 0.2  # below the threshold everywhere: invalid
    return probs


@pytest.mark.parametrize("ratio", [1.0, 1.7])
def test_crop_and_mask_matches_numpy_reference(ratio):
    height, width = 12, 15
    image = torch.rand(3, height, width, generator=gen(7)) * 255
    probs = proposal_masks(height, width)
    crops = crop_and_mask(image, probs, threshold=0.5, expand_ratio=ratio, size=20)
    expected = crops_reference(image.double().numpy(), probs.double().numpy(), 0.5, ratio, 20)
    assert crops.valid.tolist() == [e is not None for e in expected] == [True, True, True, False]
    kept = [e for e in expected if e is not None]
    assert crops.regions.shape == (3, 3, 20, 20) and crops.region_masks.shape == (3, 1, 20, 20)
    for index, (crop, mask, box) in enumerate(kept):
        assert tuple(crops.boxes[index].tolist()) == box
        np.testing.assert_allclose(crops.regions[index].numpy(), crop, rtol=0, atol=2e-5)
        np.testing.assert_array_equal(crops.region_masks[index, 0].numpy(), mask)


def test_crop_and_mask_fill_and_boxes():
    height, width = 10, 10
    image = torch.full((3, height, width), 200.0)
    probs = torch.zeros(2, height, width)
    probs[0, 1:4, 2:8] = 1.0
    probs[0, 2, 4] = 0.0  # a hole inside the box is painted too
    probs[1, 0, 9] = 1.0
    crops = crop_and_mask(image, probs, threshold=0.5, size=6)
    assert crops.boxes.tolist() == [[2, 1, 8, 4], [9, 0, 10, 1]]
    assert mask_boxes(probs > 0.5).tolist() == [[2.0, 1.0, 8.0, 4.0], [9.0, 0.0, 10.0, 1.0]]
    unnormalised = crop_and_mask(image, probs, threshold=0.5, size=6, normalize=False)
    # the 1x1 crop resizes to a constant; pixels outside the mask carry CLIP's mean x 255
    assert torch.allclose(unnormalised.regions[1], torch.full((3, 6, 6), 200.0))
    # the hole inside the first box is painted with CLIP's mean too, and its mask is binary
    hole = crop_and_mask(image, probs[:1], threshold=0.5, size=6, normalize=False)
    assert set(hole.region_masks.unique().tolist()) == {0.0, 1.0}
    same_size = crop_and_mask(image, probs[:1], threshold=0.5, size=3, normalize=False)
    assert same_size.regions.shape == (1, 3, 3, 3)
    # the painted background normalises to zero
    columns = torch.tensor([1.0, 0.0, 0.0, 1.0]).expand(1, 4, 4)
    normalised = crop_and_mask(torch.zeros(3, 4, 4), columns, threshold=0.5, size=4)
    assert normalised.regions[0, :, :, 1:3].abs().max() < 1e-5
    assert normalised.regions[0, :, :, 0].sub(normalised.regions[0, :, 0, 0][:, None]).abs().max() == 0


def test_crop_and_mask_empty_matting_and_errors():
    image = torch.rand(3, 8, 8) * 255
    nothing = crop_and_mask(image, torch.zeros(3, 8, 8), threshold=0.5)
    assert nothing.valid.tolist() == [False] * 3
    assert nothing.regions.shape == (0, 3, 224, 224) and nothing.boxes.shape == (0, 4)
    probs = torch.zeros(1, 8, 8)
    probs[0, 2:6, 2:6] = 0.75
    matted = crop_and_mask(image, probs, threshold=0.5, normalize=False, matting=True, size=4)
    fill = torch.tensor([255.0 * c for c in CLIP_MEAN_UNIT]).view(3, 1, 1)
    expected = image[:, 2:6, 2:6] * 0.75 + 0.25 * fill
    torch.testing.assert_close(matted.regions[0], expected, rtol=0, atol=1e-4)  # same size: no resampling
    with pytest.raises(MethodConfigError, match="image's size"):
        crop_and_mask(image, torch.zeros(1, 4, 4), threshold=0.5)
    with pytest.raises(MethodConfigError, match="at least 1"):
        crop_and_mask(image, probs, threshold=0.5, expand_ratio=0.5)


def test_reference_resizers_agree_with_torch_on_a_plain_map():
    # guards the numpy reference itself: its resizers are PyTorch's conventions
    plane = torch.rand(1, 1, 5, 7, generator=gen(8), dtype=torch.float64)
    torch_cubic = F.interpolate(plane, size=(9, 4), mode="bicubic", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(bicubic_matrix(5, 9) @ plane[0, 0].numpy() @ bicubic_matrix(7, 4).T, torch_cubic, atol=1e-12)
    torch_nearest = F.interpolate(plane, size=(9, 4), mode="nearest")[0, 0].numpy()
    np.testing.assert_array_equal(plane[0, 0].numpy()[nearest_indices(5, 9)][:, nearest_indices(7, 4)], torch_nearest)


# --------------------------------------------------------------------------- geometric ensemble


def ensemble_inputs():
    g = gen(9)
    logits = torch.randn(5, 4 + 1, generator=g, dtype=torch.float64)
    clip_logits = torch.randn(3, 4 + 1, generator=g, dtype=torch.float64)
    valid = torch.tensor([True, False, True, True, False])
    return in_vocab_probs(logits), clip_branch_probs(clip_logits), valid, logits, clip_logits


def test_branch_probabilities_drop_no_object_in_the_official_order():
    _, _, _, logits, clip_logits = ensemble_inputs()
    torch.testing.assert_close(in_vocab_probs(logits), logits.softmax(-1)[:, :4])
    torch.testing.assert_close(clip_branch_probs(clip_logits), clip_logits[:, :4].softmax(-1))
    assert torch.allclose(clip_branch_probs(clip_logits).sum(-1), torch.ones(3, dtype=torch.float64))


def test_geometric_ensemble_limits_and_invalid_masks():
    p_in, p_clip, valid, _, _ = ensemble_inputs()
    torch.testing.assert_close(geometric_ensemble(p_in, p_clip, valid, 0.0), p_in, rtol=0, atol=0)
    at_one = geometric_ensemble(p_in, p_clip, valid, 1.0)
    torch.testing.assert_close(at_one[valid], p_clip, rtol=0, atol=0)
    assert (at_one[~valid] == 1).all()  # p_in^0 * 1
    mixed = geometric_ensemble(p_in, p_clip, valid, 0.7)
    clip_rows = iter(p_clip)
    for q in range(5):
        clip_row = next(clip_rows) if valid[q] else None
        for k in range(4):
            expected = p_in[q, k].item() ** 0.3 * (clip_row[k].item() ** 0.7 if clip_row is not None else 1.0)
            assert mixed[q, k].item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(scatter_valid_rows(p_clip, valid)[valid], p_clip)


def test_official_zero_weight_means_clip_alone():
    p_in, p_clip, valid, _, _ = ensemble_inputs()
    probs, kept = ensemble_class_probs(p_in, p_clip, valid, 0.0)
    torch.testing.assert_close(probs, p_clip)
    assert kept.tolist() == valid.tolist()
    probs, kept = ensemble_class_probs(p_in, p_clip, valid, 0.0, zero_weight_clip_only=False)
    torch.testing.assert_close(probs, p_in)
    assert kept.all()
    probs, kept = ensemble_class_probs(p_in, p_clip, valid, 0.45)
    torch.testing.assert_close(probs, geometric_ensemble(p_in, p_clip, valid, 0.45))
    assert kept.all()
    with pytest.raises(MethodConfigError, match=r"\[0, 1\]"):
        geometric_ensemble(p_in, p_clip, valid, 1.5)
    with pytest.raises(MethodConfigError, match="one row per valid mask"):
        geometric_ensemble(p_in, p_clip[:2], valid, 0.5)


def test_void_suppression_by_hand():
    p_in, p_clip, valid, logits, _ = ensemble_inputs()
    mixed = geometric_ensemble(p_in, p_clip, valid, 0.7)
    suppressed = suppress_void(mixed, logits)
    for q in range(5):
        void = math.exp(logits[q, 4]) / sum(math.exp(v) for v in logits[q].tolist())
        total = sum(mixed[q].tolist())
        values = [m / total * (1 - void) for m in mixed[q].tolist()] + [void]
        # log(x + eps) then softmax is (x + eps) / sum(x + eps)
        denominator = sum(v + 1e-8 for v in values)
        for k in range(4):
            assert suppressed[q, k].item() == pytest.approx((values[k] + 1e-8) / denominator, rel=1e-9)
