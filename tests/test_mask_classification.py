"""The shared mask-classification parts (docs/methods/mask-classification.md): point sampling,
the Hungarian matcher against brute force, the set criterion's losses against direct
formulas, semantic inference, targets from label maps and the open-vocabulary classifier."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.mask_semantic import (
    combine_mask_probabilities,
    semantic_from_masks,
    semantic_to_instance_targets,
)
from ovbench_methods.common.matcher import HungarianMatcher
from ovbench_methods.common.open_vocab_classifier import (
    BackgroundEmbedding,
    cosine_class_logits,
    ensemble_template_embeddings,
)
from ovbench_methods.common.point_sampling import (
    pixel_centre_coords,
    point_sample,
    uncertain_point_coords,
    uniform_point_coords,
)
from ovbench_methods.common.set_criterion import (
    SetCriterion,
    SetCriterionConfig,
    average_num_masks,
    class_loss_name,
    dense_mask_losses,
    point_sampled_mask_losses,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed))


def random_targets(sizes, num_classes, height, width, seed=0):
    g = gen(seed)
    targets = []
    for count in sizes:
        labels = torch.randperm(num_classes, generator=g)[:count]
        masks = torch.rand(count, height, width, generator=g) > 0.5
        targets.append({"labels": labels.to(torch.int64), "masks": masks})
    return targets


def brute_force_assignment(cost: torch.Tensor) -> tuple[float, set[tuple[int, int]]]:
    """The minimal total cost over every one-to-one assignment of min(Q, G) pairs."""
    num_queries, num_targets = cost.shape
    best, best_pairs = math.inf, set()
    if num_queries >= num_targets:
        for queries in itertools.permutations(range(num_queries), num_targets):
            pairs = {(q, t) for t, q in enumerate(queries)}
            total = sum(float(cost[q, t]) for q, t in pairs)
            if total < best:
                best, best_pairs = total, pairs
    else:
        for chosen in itertools.permutations(range(num_targets), num_queries):
            pairs = {(q, t) for q, t in enumerate(chosen)}
            total = sum(float(cost[q, t]) for q, t in pairs)
            if total < best:
                best, best_pairs = total, pairs
    return (0.0 if best is math.inf else best), best_pairs


# --- point sampling ---------------------------------------------------------------------------


def test_point_sample_at_pixel_centres_returns_the_pixels():
    image = randn(2, 3, 5, 7, seed=1)
    coords = pixel_centre_coords(5, 7)
    sampled = point_sample(image, coords.expand(2, -1, -1))
    assert sampled.shape == (2, 3, 35)
    assert torch.allclose(sampled, image.flatten(2), atol=1e-6)
    # one chosen pixel, (row 3, column 5): x = 5.5 / 7, y = 3.5 / 5
    one = point_sample(image, torch.tensor([[[5.5 / 7, 3.5 / 5]]]).expand(2, -1, -1))
    assert torch.allclose(one[:, :, 0], image[:, :, 3, 5], atol=1e-6)


def test_point_sample_between_centres_is_bilinear_and_zero_padded_outside():
    image = torch.tensor([[[[0.0, 4.0], [8.0, 12.0]]]])
    centre = point_sample(image, torch.tensor([[[0.5, 0.5]]]))
    assert torch.allclose(centre, torch.tensor(6.0))
    # the top-left corner is half a pixel beyond the first centre on both axes: 1/4 of the pixel
    corner = point_sample(image, torch.tensor([[[0.0, 0.0]]]))
    assert torch.allclose(corner, torch.tensor(0.0))
    corner = point_sample(image, torch.tensor([[[1.0, 1.0]]]))
    assert torch.allclose(corner, torch.tensor(12.0 / 4))


def test_uniform_point_coords_follow_the_generator():
    a = uniform_point_coords(3, 10, generator=gen(4))
    b = uniform_point_coords(3, 10, generator=gen(4))
    assert a.shape == (3, 10, 2) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() < 1


def test_uncertain_points_are_the_most_uncertain_candidates():
    logits = randn(3, 1, 6, 8, seed=2) * 3
    points = uncertain_point_coords(logits, 20, 4.0, 1.0, generator=gen(7))
    assert points.shape == (3, 20, 2)
    candidates = uniform_point_coords(3, 80, generator=gen(7))
    uncertainty = -point_sample(logits, candidates)[:, 0].abs()
    for mask in range(3):
        kept = {tuple(p.tolist()) for p in points[mask]}
        order = uncertainty[mask].argsort(descending=True)
        expected = {tuple(candidates[mask, i].tolist()) for i in order[:20]}
        assert kept == expected
        # every kept point is at least as uncertain as every dropped candidate
        assert uncertainty[mask, order[:20]].min() >= uncertainty[mask, order[20:]].max()


def test_uncertain_points_mix_importance_then_uniform():
    logits = randn(2, 1, 4, 4, seed=3)
    points = uncertain_point_coords(logits, 16, 3.0, 0.75, generator=gen(5))
    g = gen(5)
    candidates = uniform_point_coords(2, 48, generator=g)
    fresh = uniform_point_coords(2, 4, generator=g)
    assert torch.equal(points[:, 12:], fresh)
    uncertainty = -point_sample(logits, candidates)[:, 0].abs()
    top = uncertainty.topk(12, dim=1).indices
    assert torch.equal(points[:, :12], torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2)))
    with pytest.raises(MethodConfigError):
        uncertain_point_coords(logits, 16, 0.5, 0.75)
    with pytest.raises(MethodConfigError):
        uncertain_point_coords(logits, 16, 3.0, 1.5)


# --- matcher ----------------------------------------------------------------------------------

PROBLEMS = [  # (queries, targets per image)
    (5, (2, 3)),
    (3, (3, 0)),
    (4, (0, 0)),
    (4, (4, 1)),
    (2, (3,)),
]


@pytest.mark.parametrize("mode", ["mask2former", "maskformer"])
@pytest.mark.parametrize("queries,sizes", PROBLEMS)
def test_matcher_equals_brute_force(mode, queries, sizes):
    num_classes, seed = 6, queries * 10 + sum(sizes)
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points=64, mode=mode) if mode == "mask2former" else HungarianMatcher(
        1.0, 20.0, 1.0, mode=mode
    )
    outputs = {
        "pred_logits": randn(len(sizes), queries, num_classes + 1, seed=seed),
        "pred_masks": randn(len(sizes), queries, 6, 6, seed=seed + 1) * 2,
    }
    targets = random_targets(sizes, num_classes, 12, 12, seed=seed + 2)
    matches = matcher(outputs, targets, generator=gen(9))
    # the same generator state gives the same points, image by image
    g = gen(9)
    for image, (target, (query_idx, target_idx)) in enumerate(zip(targets, matches)):
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert len(query_idx) == len(target_idx) == min(queries, sizes[image])
        assert torch.equal(query_idx, query_idx.sort().values)
        if sizes[image] == 0:
            continue
        cost = matcher.cost_matrix(
            outputs["pred_logits"][image], outputs["pred_masks"][image], target["labels"], target["masks"], generator=g
        )
        assert cost.shape == (queries, sizes[image]) and cost.dtype == torch.float32
        best, best_pairs = brute_force_assignment(cost)
        found = set(zip(query_idx.tolist(), target_idx.tolist()))
        assert found == best_pairs
        assert sum(float(cost[q, t]) for q, t in found) == pytest.approx(best, abs=1e-5)


def test_mask2former_matching_cost_is_the_weighted_sum_on_shared_points():
    logits, masks = randn(3, 5, seed=1), randn(3, 4, 4, seed=2)
    labels = torch.tensor([2, 0])
    target = (randn(2, 8, 8, seed=3) > 0).float()
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points=50)
    cost = matcher.cost_matrix(logits, masks, labels, target, generator=gen(1))
    coords = uniform_point_coords(1, 50, generator=gen(1))
    pred_points = point_sample(masks[:, None], coords.expand(3, -1, -1))[:, 0]
    target_points = point_sample(target[:, None], coords.expand(2, -1, -1))[:, 0]
    prob = logits.softmax(-1)
    for q in range(3):
        for t in range(2):
            x, y = pred_points[q], target_points[t]
            bce = F.binary_cross_entropy_with_logits(x, y)
            p = x.sigmoid()
            dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
            expected = -2.0 * prob[q, labels[t]] + 5.0 * bce + 5.0 * dice
            assert cost[q, t] == pytest.approx(float(expected), abs=1e-5)


def test_maskformer_matching_cost_uses_focal_on_nearest_downsampled_targets():
    logits, masks = randn(2, 4, seed=4), randn(2, 3, 3, seed=5)
    labels = torch.tensor([1])
    target = torch.zeros(1, 6, 6)
    target[0, ::2, ::2] = 1.0  # nearest 6 -> 3 keeps rows/columns 0, 2, 4: all ones
    cost = HungarianMatcher(1.0, 20.0, 1.0, mode="maskformer").cost_matrix(logits, masks, labels, target)
    y = torch.ones(9)
    for q in range(2):
        x = masks[q].flatten()
        p = x.sigmoid()
        focal = (0.25 * (1 - p) ** 2 * F.binary_cross_entropy_with_logits(x, y, reduction="none")).mean()
        dice = 1 - (2 * p.sum() + 1) / (p.sum() + 9 + 1)
        expected = -logits[q].softmax(-1)[1] + 20.0 * focal + dice
        assert cost[q, 0] == pytest.approx(float(expected), abs=1e-5)


def test_matcher_rejects_labels_outside_the_vocabulary():
    outputs = {"pred_logits": randn(1, 3, 4), "pred_masks": randn(1, 3, 4, 4)}
    targets = [{"labels": torch.tensor([3]), "masks": torch.ones(1, 4, 4)}]
    with pytest.raises(MethodConfigError, match="labels"):
        HungarianMatcher(num_points=8)(outputs, targets)


# --- losses -----------------------------------------------------------------------------------


def test_point_sampled_losses_at_every_pixel_centre_equal_the_dense_losses():
    pred = randn(3, 5, 6, seed=6) * 2
    target = (randn(3, 5, 6, seed=7) > 0).float()
    coords = pixel_centre_coords(5, 6).expand(3, -1, -1)
    bce, dice = point_sampled_mask_losses(pred, target, coords, num_masks=2.0)
    dense_bce = sum(F.binary_cross_entropy_with_logits(pred[i], target[i]) for i in range(3)) / 2.0
    prob = pred.sigmoid()
    dense_dice = sum(
        1 - (2 * (prob[i] * target[i]).sum() + 1) / (prob[i].sum() + target[i].sum() + 1) for i in range(3)
    ) / 2.0
    assert bce.item() == pytest.approx(dense_bce.item(), rel=1e-5)
    assert dice.item() == pytest.approx(dense_dice.item(), rel=1e-5)


def test_dense_losses_upsample_predictions_bilinearly():
    pred = randn(2, 3, 3, seed=8)
    target = (randn(2, 6, 6, seed=9) > 0).float()
    focal, dice = dense_mask_losses(pred, target, num_masks=1.0)
    up = F.interpolate(pred[:, None], size=(6, 6), mode="bilinear", align_corners=False)[:, 0]
    p = up.sigmoid()
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = 0.25 * target + 0.75 * (1 - target)
    expected = (alpha_t * (1 - p_t) ** 2 * F.binary_cross_entropy_with_logits(up, target, reduction="none")).mean((1, 2)).sum()
    assert focal.item() == pytest.approx(expected.item(), rel=1e-5)
    expected_dice = (1 - (2 * (p * target).sum((1, 2)) + 1) / (p.sum((1, 2)) + target.sum((1, 2)) + 1)).sum()
    assert dice.item() == pytest.approx(expected_dice.item(), rel=1e-5)


def test_cross_entropy_weights_no_object_by_eos_coef():
    # one image, two queries, K = 2: query 1 matched to class 0, query 0 unmatched ("no object" = 2)
    logits = torch.tensor([[[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]]])
    indices = [(torch.tensor([1]), torch.tensor([0]))]
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 2, 2)}]
    criterion = SetCriterion(SetCriterionConfig(num_points=4))
    loss = criterion.class_loss(logits, targets, indices)
    ce_unmatched = -2.0 + math.log(math.exp(1.0) + 1.0 + math.exp(2.0))
    ce_matched = -0.5 + math.log(math.exp(0.5) + math.exp(-1.0) + 1.0)
    expected = (0.1 * ce_unmatched + 1.0 * ce_matched) / (0.1 + 1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_num_masks_counts_targets_and_is_clamped_to_one():
    empty = [{"labels": torch.zeros(0, dtype=torch.int64)}] * 2
    assert average_num_masks(empty) == 1.0
    some = [{"labels": torch.tensor([1, 2])}, {"labels": torch.tensor([0])}]
    assert average_num_masks(some) == 3.0


def test_criterion_without_targets_gives_zero_mask_losses_and_trains_the_classes():
    pred_logits = randn(2, 4, 4, seed=10).requires_grad_()
    pred_masks = randn(2, 4, 5, 5, seed=11).requires_grad_()
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 10, 10)}] * 2
    losses = SetCriterion(SetCriterionConfig(num_points=16))({"pred_logits": pred_logits, "pred_masks": pred_masks}, targets)
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    sum(losses.values()).backward()
    assert pred_logits.grad is not None and pred_logits.grad.abs().sum() > 0
    assert pred_masks.grad is not None


def test_mask_losses_are_divided_by_the_target_count():
    torch.manual_seed(0)
    outputs = {"pred_logits": randn(1, 3, 3, seed=12), "pred_masks": randn(1, 3, 4, 4, seed=13)}
    targets = random_targets([2], 2, 8, 8, seed=14)
    criterion = SetCriterion(SetCriterionConfig(num_points=8, importance_sample_ratio=0.0))
    losses, indices = criterion(outputs, targets, return_indices=True, generator=gen(2))
    # the same points again: match (64 uniform points for the costs is the matcher's draw), then 8 loss points
    g = gen(2)
    final = indices[-1]
    criterion.matcher(outputs, targets, generator=g)
    queries, target_idx = final[0]
    coords = uncertain_point_coords(outputs["pred_masks"][0, queries][:, None], 8, 3.0, 0.0, generator=g)
    bce, _ = point_sampled_mask_losses(
        outputs["pred_masks"][0, queries], targets[0]["masks"][target_idx].float(), coords, num_masks=2.0
    )
    assert losses["loss_mask"].item() == pytest.approx(5.0 * bce.item(), rel=1e-6)


def test_deep_supervision_and_extra_heads_get_official_keys_and_weights():
    def output(seed):
        return {
            "pred_logits": randn(2, 5, 4, seed=seed),
            "pred_logits_1": randn(2, 5, 4, seed=seed + 1),
            "pred_masks": randn(2, 5, 6, 6, seed=seed + 2),
        }

    outputs = {**output(20), "aux_outputs": [output(30), output(40)]}
    targets = random_targets([2, 1], 3, 12, 12, seed=15)
    config = SetCriterionConfig(num_points=16, class_weight=1.5, extra_class_heads={"pred_logits_1": 1.5}, matcher_class_cost=2.0)
    criterion = SetCriterion(config)
    losses, indices = criterion(outputs, targets, return_indices=True)
    base = {"loss_ce", "1_loss_ce", "loss_mask", "loss_dice"}
    assert set(losses) == base | {f"{k}_{i}" for k in base for i in (0, 1)}
    assert len(indices) == 3 and all(len(m) == 2 for m in indices)
    assert criterion.matcher.class_cost == 2.0
    for suffix, out, match in (("", outputs, indices[-1]), ("_0", outputs["aux_outputs"][0], indices[0])):
        ce = criterion.class_loss(out["pred_logits"], targets, match)
        ce1 = criterion.class_loss(out["pred_logits_1"], targets, match)
        assert losses[f"loss_ce{suffix}"].item() == pytest.approx(1.5 * ce.item(), rel=1e-6)
        assert losses[f"1_loss_ce{suffix}"].item() == pytest.approx(1.5 * ce1.item(), rel=1e-6)
    only_first = SetCriterion(SetCriterionConfig(num_points=16, supervised_aux_outputs=1))(outputs, targets)
    assert set(only_first) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"}
    assert class_loss_name("pred_logits") == "loss_ce" and class_loss_name("pred_logits_1") == "1_loss_ce"


def test_maskformer_criterion_scores_matched_masks_densely():
    outputs = {"pred_logits": randn(1, 3, 3, seed=16), "pred_masks": randn(1, 3, 4, 4, seed=17)}
    targets = random_targets([2], 2, 8, 8, seed=18)
    criterion = SetCriterion(SetCriterionConfig.maskformer())
    assert (criterion.matcher.mode, criterion.matcher.class_cost, criterion.matcher.mask_cost) == ("maskformer", 1.0, 20.0)
    losses, indices = criterion(outputs, targets, return_indices=True)
    queries, target_idx = indices[-1][0]
    focal, dice = dense_mask_losses(outputs["pred_masks"][0, queries], targets[0]["masks"][target_idx].float(), 2.0)
    assert losses["loss_mask"].item() == pytest.approx(20.0 * focal.item(), rel=1e-6)
    assert losses["loss_dice"].item() == pytest.approx(dice.item(), rel=1e-6)


def test_criterion_holds_no_state_and_takes_any_vocabulary_size():
    criterion = SetCriterion(SetCriterionConfig(num_points=8))
    assert list(criterion.state_dict()) == [] and list(criterion.parameters()) == []
    for num_classes in (2, 7):
        outputs = {"pred_logits": randn(1, 3, num_classes + 1), "pred_masks": randn(1, 3, 4, 4)}
        losses = criterion(outputs, random_targets([2], num_classes, 4, 4))
        assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize(
    "field,value",
    [("eos_coef", 1.5), ("num_points", 0), ("oversample_ratio", 0.5), ("importance_sample_ratio", -0.1),
     ("mode", "detr"), ("class_weight", -1.0), ("matcher_dice_cost", -2.0), ("supervised_aux_outputs", -1)],
)
def test_config_rejects_bad_settings(field, value):
    with pytest.raises(MethodConfigError, match=field.split("_")[0]):
        SetCriterionConfig(**{field: value})


# --- semantic maps ----------------------------------------------------------------------------


def test_semantic_from_masks_matches_a_loop():
    class_logits, mask_logits = randn(2, 4, 4, seed=19), randn(2, 4, 3, 5, seed=20)
    result = semantic_from_masks(class_logits, mask_logits)
    assert result.shape == (2, 3, 3, 5)
    expected = torch.zeros(2, 3, 3, 5)
    for b in range(2):
        probs = class_logits[b].softmax(-1)
        for q in range(4):
            for k in range(3):
                expected[b, k] += probs[q, k] * mask_logits[b, q].sigmoid()
    assert torch.allclose(result, expected, atol=1e-6)
    assert torch.allclose(combine_mask_probabilities(class_logits.softmax(-1)[..., :3], mask_logits.sigmoid()), expected, atol=1e-6)


def test_semantic_to_instance_targets_on_a_named_example():
    labels = torch.tensor([[[0, 2, 255], [2, 7, 0]], [[255, 255, 255], [255, 9, 9]]])
    first, second = semantic_to_instance_targets(labels, num_classes=5, ignore_index=255)
    assert first["labels"].tolist() == [0, 2] and first["labels"].dtype == torch.int64
    assert first["masks"].dtype == torch.float32
    assert first["masks"].tolist() == [[[1, 0, 0], [0, 0, 1]], [[0, 1, 0], [1, 0, 0]]]
    assert second["labels"].shape == (0,) and second["masks"].shape == (0, 2, 3)


# --- open-vocabulary classifier ---------------------------------------------------------------


def test_template_ensemble_normalises_averages_and_normalises():
    per_template = randn(3, 4, 8, seed=21)
    result = ensemble_template_embeddings(per_template)
    for t in range(3):
        unit = [per_template[t, p] / per_template[t, p].norm() for p in range(4)]
        mean = sum(unit) / 4
        assert torch.allclose(result[t], mean / mean.norm(), atol=1e-6)


def test_background_embedding_shape_init_and_normalisation():
    torch.manual_seed(0)
    bg = BackgroundEmbedding(256)
    assert list(dict(bg.named_parameters())) == ["embedding"] and bg.embedding.shape == (1, 256)
    assert bg.init_std == pytest.approx(256**-0.5) and bg.embedding.std().item() == pytest.approx(1 / 16, rel=0.2)
    text = F.normalize(randn(3, 256, seed=22), dim=-1)
    classifier = bg(text)
    assert classifier.shape == (4, 256)
    assert torch.allclose(classifier, F.normalize(torch.cat([text, bg.embedding]), dim=-1))
    only_bg = BackgroundEmbedding(256, init_std=0.02, normalization="background")
    classifier = only_bg(text)
    assert torch.equal(classifier[:3], text)
    assert torch.allclose(classifier[3], only_bg.embedding[0] / only_bg.embedding[0].norm())


def test_cosine_class_logits():
    queries, weights = randn(2, 3, 8, seed=23), F.normalize(randn(5, 8, seed=24), dim=-1)
    logits = cosine_class_logits(queries, weights, torch.tensor(100.0))
    expected = 100.0 * (queries / queries.norm(dim=-1, keepdim=True)) @ weights.T
    assert torch.allclose(logits, expected, atol=1e-4)
    raw = cosine_class_logits(queries, weights, 2.0, normalize_queries=False)
    assert torch.allclose(raw, 2.0 * queries @ weights.T, atol=1e-5)
