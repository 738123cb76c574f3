"""GSNet assembled: the published configuration, Table 3's variants A-I, training steps, the
official quirks and their flags, full-scale sizes, `inherit:` method YAMLs, and toyland runs.

Every model here is built from the method YAMLs (`configs/methods/gsnet.yaml`, `gsnet/A..I`)
at their `tiny` scale (random CLIP and DINO, nothing downloaded), except one full-scale
build with random weights that checks the published parameter counts exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from ovbench_adapters.gsnet import GsNetSegmenter
from ovbench_methods.common.dino import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD
from ovbench import registry
from ovbench.data.toyland import TOYLAND_EVAL_SPLITS, TOYLAND_TRAIN_SPLIT, ToylandDataset
from ovbench.engine.optim import OptimizerConfig, build_optimizer, optimizer_groups
from ovbench.errors import CheckpointError, ConfigError
from toyland_runs import check_beats_majority_class, run_toyland
from ovbench.interface import IGNORE_INDEX
from ovbench.profile import profile_method

REPO = Path(__file__).resolve().parents[1]
ROWS = ("A", "B", "C", "D", "E", "F", "G", "H", "I")
VARIANTS = ("gsnet",) + tuple(f"gsnet/{row}" for row in ROWS)

#: Model fields each Table 3 row changes with respect to gsnet.yaml (full scale).
ROW_CHANGES = {
    "A": {"use_rsib": False, "fusion_type": "clip_only", "rsib_decoder_guidance": False},
    "B": {"arch": "ViT-B-32", "clip_weights": "RemoteCLIP-ViT-B-32.pt", "image_size": (768, 768), "use_rsib": False,
          "fusion_type": "clip_only", "rsib_decoder_guidance": False},
    "C": {"use_clip": False, "fusion_type": "rsib_only", "clip_decoder_guidance": False},
    "D": {"arch": "ViT-B-32", "clip_weights": "RemoteCLIP-ViT-B-32.pt", "image_size": (768, 768)},
    "E": {"fusion_type": "simple_concatenation"},
    "F": {"fusion_type": "fusion_query"},
    "G": {"clip_decoder_guidance": False, "rsib_decoder_guidance": False},
    "H": {"rsib_decoder_guidance": False},
    "I": {"clip_decoder_guidance": False},
}


def tiny(method: str = "gsnet", seed: int = 0, **model_overrides) -> GsNetSegmenter:
    overrides = {"model": model_overrides} if model_overrides else None
    resolved = registry.resolve_method(method, scale="tiny", overrides=overrides)
    torch.manual_seed(seed)
    segmenter = registry.build_segmenter(resolved)
    assert isinstance(segmenter, GsNetSegmenter)
    return segmenter


def toyland_batch(split: str = TOYLAND_TRAIN_SPLIT, count: int = 2):
    dataset = ToylandDataset(split)
    samples = [dataset[i] for i in range(count)]
    images = torch.stack([torch.from_numpy(s["image"]).permute(2, 0, 1).float() for s in samples])
    masks = torch.stack([torch.from_numpy(s["mask"]) for s in samples])
    # The engine's remapping: the dataset's ignore value -> IGNORE_INDEX before the loss.
    masks = torch.where(masks == dataset.ignore_index, torch.full_like(masks, IGNORE_INDEX), masks)
    return images, masks, dataset.vocabulary


# ------------------------------------------------------------------ configuration
def test_published_recipe():
    full = registry.resolve_method("gsnet").as_dict()
    assert full["adapter"] == "gsnet"
    assert full["model"]["arch"] == "ViT-B-16" and full["model"]["dino_weights"] == "$RSIB_CKPT"
    assert full["inference"] == {"mode": "sliding", "size": [640, 640], "window": 384, "stride": 256, "global_view": 384,
                                 "global_weight": 0.5, "activation": "sigmoid", "short_side": 640, "max_size": 2560,
                                 "upsample_logits": True}
    train = full["train"]
    assert (train["iters"], train["batch_size"], train["grad_clip"], train["precision"]) == (30000, 4, 0.01, "fp32")
    assert {k: train["optimizer"][k] for k in ("lr", "weight_decay")} == {"lr": 0.0002, "weight_decay": 0.0001}
    assert (train["schedule"]["name"], train["schedule"]["warmup_iters"]) == ("cosine", 0)
    assert train["transform"]["crop_size"] == [384, 384] and train["transform"]["label_pad_value"] is None
    assert train["transform"]["size_divisibility"] == 384 and train["transform"]["max_size"] == 1333
    assert full["coco_checkpoint"] is None  # no GSNet COCO-Stuff checkpoint is published


@pytest.mark.parametrize("row", ROWS)
def test_table3_rows_inherit_gsnet_and_change_only_their_components(row):
    base = registry.resolve_method("gsnet")
    variant = registry.resolve_method(f"gsnet/{row}")
    before, after = vars(base.model_config), vars(variant.model_config)
    changed = {key: after[key] for key in after if after[key] != before[key]}
    assert changed == ROW_CHANGES[row]
    assert variant.config.train == base.config.train and variant.config.inference == base.config.inference
    assert variant.config.description.startswith(f"GSNet Table 3 row {row}")
    assert f"gsnet/{row}" in registry.method_names()


def test_inherit_deep_merges_and_refuses_cycles(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("inherit: gsnet\nmodel: {hidden_dim: 64}\nscales: {tiny: {train: {iters: 7}}}\n")
    resolved = registry.resolve_method(str(child), scale="tiny")
    assert resolved.model_config.hidden_dim == 32  # the parent's tiny overlay still applies on top
    assert resolved.model_config.window_size == 4 and resolved.config.train.iters == 7
    assert resolved.config.train.batch_size == 4 and resolved.config.adapter == "gsnet"
    assert registry.resolve_method(str(child)).model_config.hidden_dim == 64
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(f"inherit: {second}\n")
    second.write_text(f"inherit: {first}\n")
    with pytest.raises(ConfigError, match="inherit cycle"):
        registry.resolve_method(str(first))
    bad = tmp_path / "bad.yaml"
    bad.write_text("inherit: [gsnet, catseg]\n")
    with pytest.raises(ConfigError, match="inherit must name one method"):
        registry.resolve_method(str(bad))


def test_bad_settings_are_one_line_config_errors():
    for field, value in [("fusion_type", "sum"), ("dino_input_norm", "raw"), ("dino_finetune", "some"),
                         ("decoder_dims", [40, 32]), ("window_size", 0)]:
        with pytest.raises(ConfigError, match=field) as info:
            registry.resolve_method("gsnet", scale="tiny", overrides={"model": {field: value}})
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="gsnet: .*vit_huge_8"):
        tiny(dino_arch="vit_huge_8")
    # a fusion that does not fit the streams, and guidance from a stream that is not there
    for fields, message in [({"use_rsib": False}, "clip_only"), ({"use_clip": False}, "rsib_only"),
                            ({"use_clip": False, "fusion_type": "rsib_only"}, "clip_decoder_guidance"),
                            ({"use_clip": False, "use_rsib": False}, "at least one image stream"),
                            ({"dino_image_size": [256, 256]}, "must be equal")]:
        with pytest.raises(ConfigError, match=message) as info:
            tiny(**fields)
        assert "\n" not in str(info.value)
    # The official pos-embed constant only fits 384 input at patch 8.
    with pytest.raises(ConfigError, match="pos_embed_resize"):
        tiny(dino_pos_embed_resize="official")
    # The RSIB weights are a file, never an open_clip tag; CLIP's may be either.
    for field, value, message in [("dino_weights", " ", "dino_weights must be a file path or null"),
                                  ("clip_weights", 3, "clip_weights: expected a string, got 3")]:
        with pytest.raises(ConfigError, match=message):
            registry.resolve_method("gsnet", overrides={"model": {field: value}})


def test_rsib_weights_come_from_rsib_ckpt_like_the_official_code(monkeypatch, tmp_path):
    monkeypatch.delenv("RSIB_CKPT", raising=False)
    resolved = registry.resolve_method("gsnet", scale="tiny", overrides={"model": {"dino_weights": "$RSIB_CKPT"}})
    with pytest.raises(CheckpointError, match="RSIB_CKPT") as info:
        registry.build_segmenter(resolved)
    assert "Google Drive" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.setenv("RSIB_CKPT", str(tmp_path / "rsib.pth"))
    with pytest.raises(CheckpointError, match="RSIB checkpoint not found: .*rsib.pth"):
        registry.build_segmenter(resolved)
    # Rows without an RSIB never look for it.
    assert registry.build_segmenter(registry.resolve_method("gsnet/A", scale="tiny")).model.dino_model is None


# -------------------------------------------------------- Table 3: every variant
@pytest.mark.parametrize("method", VARIANTS)
def test_variant_trains_one_step_and_predicts_on_toyland(method):
    segmenter = tiny(method)
    model = segmenter.model
    images, masks, vocabulary = toyland_batch()
    groups = segmenter.param_groups(2e-4, 1e-4)
    assert [g["lr"] for g in groups] == [pytest.approx(2e-4), pytest.approx(2e-6)]
    grouped = {id(p) for g in groups for p in g["params"]}
    dino = list(model.dino_model.parameters()) if model.dino_model is not None else []
    assert not any(id(p) in grouped or p.requires_grad for p in dino)  # the RSIB is frozen, in no group
    optimizer = build_optimizer(optimizer_groups(segmenter, groups, OptimizerConfig()), OptimizerConfig())

    segmenter.train()
    loss = segmenter(images, masks, vocabulary)["loss_sem_seg"]
    assert torch.isfinite(loss)
    loss.backward()
    named = dict(segmenter.named_parameters())
    text_q = named["model.text_encoder.transformer.resblocks.0.attn.q_proj_weight"]
    text_v = named["model.text_encoder.transformer.resblocks.0.attn.v_proj_weight"]
    assert text_q.grad.abs().sum() > 0 and text_v.grad.abs().sum() > 0
    visual_v = named["model.image_encoder.visual.transformer.resblocks.0.attn.v_proj_weight"]
    if model.use_clip:
        assert visual_v.grad.abs().sum() > 0
    else:  # row C never runs the CLIP image tower
        assert not visual_v.requires_grad and visual_v.grad is None
    assert not any(p.requires_grad for n, p in named.items() if n.endswith("k_proj_weight"))
    # Every trainable weight takes part (DDP runs with find_unused_parameters=False).
    for name, param in named.items():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    for part in (model.transformer.fusion, model.transformer.decoder.head, model.transformer.layers[0]):
        assert sum(p.grad.abs().sum() for p in part.parameters()) > 0
    assert all(p.grad is None for p in dino)
    if model.rsib_projections is not None:
        assert model.rsib_projections.dino_down_sample.weight.grad.abs().sum() > 0
    before = text_v.detach().clone()
    optimizer.step()
    assert not torch.equal(before, text_v)

    segmenter.eval()
    eval_images, eval_masks, eval_vocabulary = toyland_batch(TOYLAND_EVAL_SPLITS[0], count=2)
    scores = segmenter.predict(eval_images, eval_vocabulary)
    assert scores.shape == (2, len(eval_vocabulary), *eval_masks.shape[-2:])
    assert scores.min() >= 0 and scores.max() <= 1


def test_variants_build_the_official_modules_only_where_the_official_code_does():
    full, row_c, row_g = tiny("gsnet").model, tiny("gsnet/C").model, tiny("gsnet/G").model
    assert full.upsample1 is not None and full.rsib_projections.dino_decod_proj1 is not None
    assert full.transformer.fusion_type == "query_guided" and full.feature_resolution == (8, 8)
    assert row_c.upsample1 is None and row_c.rsib_projections.dino_decod_proj2 is not None
    assert row_c.transformer.decoder.CLIP_decoder_guidance_projection is None
    assert row_g.upsample1 is None and row_g.rsib_projections.dino_decod_proj1 is None
    assert row_g.transformer.decoder.Fusiondecoder1.up.out_channels == 32  # keeps its full width
    assert tiny("gsnet/E").model.transformer.fusion_type == "simple_concatenation"
    assert tiny("gsnet/F").model.transformer.fusion_type == "fusion_query"
    assert tiny("gsnet/A").model.dino_model is None and tiny("gsnet/B").model.image_encoder.patch_size == (32, 32)


# ----------------------------------------------------------------- quirks and flags
def capture_rsib_input(segmenter: GsNetSegmenter, images: torch.Tensor) -> torch.Tensor:
    seen = []
    dino = segmenter.model.dino_model
    original = dino.features
    dino.features = lambda pixels, blocks=None: seen.append(pixels) or original(pixels, blocks)
    with torch.no_grad():
        segmenter.forward_logits(images, ToylandDataset(TOYLAND_TRAIN_SPLIT).vocabulary)
    return seen[0]


def test_rsib_sees_the_clip_normalised_canvas_unless_imagenet_is_asked_for():
    images = torch.rand(1, 3, 100, 120, generator=torch.Generator().manual_seed(0)) * 255

    def expected(mean, std):
        pixels = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        pixels = F.pad(pixels, (0, 8, 0, 28))  # zero-pad to a multiple of 32: 128 x 128
        return pixels  # already 128 = the tiny RSIB input, so no stretch

    official = capture_rsib_input(tiny().eval(), images)
    torch.testing.assert_close(official, expected(CLIP_PIXEL_MEAN, CLIP_PIXEL_STD))
    clean = capture_rsib_input(tiny(dino_input_norm="imagenet").eval(), images)
    torch.testing.assert_close(clean, expected(IMAGENET_PIXEL_MEAN, IMAGENET_PIXEL_STD))


def test_ignored_pixels_are_negative_targets_unless_masked():
    images, masks, vocabulary = toyland_batch()
    segmenter = tiny().train()
    logits = segmenter.forward_logits(images, vocabulary).detach()
    up = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    masks[:, :8] = len(vocabulary) + 3  # ids >= T count as ignored too
    valid = (masks != IGNORE_INDEX) & (masks < len(vocabulary))
    assert (~valid).any() and valid.any()
    targets = F.one_hot(torch.where(valid, masks, 0), len(vocabulary)).permute(0, 3, 1, 2).float() * valid[:, None]
    segmenter.model.forward = lambda *_: logits
    official = segmenter.loss(images, masks, vocabulary)["loss_sem_seg"]
    torch.testing.assert_close(official, F.binary_cross_entropy_with_logits(up, targets))
    segmenter.config.mask_ignored = True
    masked = segmenter.loss(images, masks, vocabulary)["loss_sem_seg"]
    per_pixel = F.binary_cross_entropy_with_logits(up, targets, reduction="none") * valid[:, None]
    torch.testing.assert_close(masked, per_pixel.sum() / (valid.sum() * len(vocabulary)))


def test_training_vocabulary_keeps_the_ignored_background_query():
    # docs/methods/gsnet.md#background-stays-a-training-query: toyland-train, like
    # LandDiscover50K, ignores "background" yet queries it
    dataset = ToylandDataset(TOYLAND_TRAIN_SPLIT)
    assert dataset.vocabulary[dataset.ignore_index].name == "background"
    images, masks, vocabulary = toyland_batch()
    segmenter = tiny().train()
    assert segmenter.forward_logits(images, vocabulary).shape[1] == len(vocabulary) == 9


# ---------------------------------------------------------------------- full scale
def test_full_scale_parameter_counts_and_output_shape():
    resolved = registry.resolve_method("gsnet", overrides={"model": {"clip_weights": None, "dino_weights": None}})
    torch.manual_seed(0)
    model = registry.build_segmenter(resolved).model

    def count(params) -> int:
        return sum(p.numel() for p in params)

    # docs/methods/gsnet.md#parameter-counts
    assert count(model.transformer.parameters()) == 4_036_369
    assert count(model.transformer.fusion.parameters()) == 1_618_560
    assert count(model.transformer.layers.parameters()) == 1_354_240
    upsamplers = count(model.upsample1.parameters()) + count(model.upsample2.parameters())
    assert upsamplers == 2_359_680 and count(model.rsib_projections.parameters()) == 2_163_584
    assert count(model.clip_parameters()) == 20_447_232
    assert count(model.head_parameters()) == 4_036_369 + 4_523_264
    assert count(model.dino_model.parameters()) == 85_807_872 and not any(p.requires_grad for p in model.dino_model.parameters())
    assert model.dino_model.pos_embed.shape == (1, 785, 768) and model.feature_resolution == (24, 24)
    model.eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 384, 384) * 255, [("road",), ("building",), ("water",)])
    assert logits.shape == (1, 3, 96, 96) and torch.isfinite(logits).all()


def test_profile_prints_the_published_parts(monkeypatch):
    # `ovbench profile --method gsnet --depth 2` builds with random weights: nothing is read from $RSIB_CKPT.
    monkeypatch.delenv("RSIB_CKPT", raising=False)
    profile = profile_method("gsnet", depth=2)
    parts = {p.name: (p.trainable, p.frozen) for p in profile.parts}
    assert parts["model.transformer"] == (4_036_369, 0)  # RIPD incl. QGFF and the aggregator
    assert parts["model.upsample1"][0] + parts["model.upsample2"][0] + parts["model.rsib_projections"][0] == 4_523_264
    assert parts["model.image_encoder"][0] + parts["model.text_encoder"][0] == 20_447_232  # CLIP q/v
    assert parts["model.dino_model"] == (0, 85_807_872)
    assert profile.trainable == 29_006_865  # docs/methods/gsnet.md#parameter-counts: about 29.0M


# ------------------------------------------------------------------------- toyland
def test_toyland_scratch_run_shortened(isolated_home):
    # The full tiny run (1000 iterations, sliding window) is test_toyland_run_beats_majority_class.
    log, records = run_toyland(isolated_home, "gsnet", "short", "train.iters=20", "train.log_every=5", "train.checkpoint_every=20",
                               "inference.mode=whole", "inference.size=[128,128]")
    assert log[-1]["iteration"] == 20
    assert sum(e["loss"] for e in log[-3:]) / 3 < 0.8 * log[0]["loss"]
    assert [r["eval_set"] for r in records] == list(TOYLAND_EVAL_SPLITS)
    assert all(r["method"] == "gsnet" and r["iterations"] == 20 and 0 <= r["metrics"]["mIoU"] <= 100 for r in records)
    config = yaml.safe_load((isolated_home / "runs" / "short" / "config.yaml").read_text())
    assert config["model"]["dino_weights"] is None and config["model"]["pad_len"] == 32
    assert (isolated_home / "runs" / "short" / "checkpoints" / "iter_0000020.pt").is_file()


@pytest.mark.slow
def test_toyland_run_beats_majority_class(isolated_home):
    # ~3 min on 2 CPU cores; the figures of seeds 0-2 are toyland_runs.REFERENCE_RUNS.
    log, records = run_toyland(isolated_home, "gsnet", "full")
    plateau = [e["loss"] for e in log if 20 <= e["iteration"] <= 100]  # the class-prior fit
    assert sum(e["loss"] for e in log[-5:]) / 5 < 0.85 * sum(plateau) / len(plateau)
    check_beats_majority_class(records)
