"""SCAN (docs/methods/scan.md): the tiny configuration of the published architecture, seeded
contextual shift, the ten-layer decoder's supervision, the authors' checkpoint layout and the
CS-CLIP file, the RemoteCLIP variant's configuration, the toyland run.

The official release ``SCAN.pth`` is ``{"model": state_dict}`` with ``backbone.*`` (D2 Swin
names), ``sem_seg_head.{pixel_decoder,predictor}.*``, the calibration modules at the top level
(``learnable_weight``, ``LFM``, ``oriclip_mlp``, ``fusion_decoder``, ``lightweight_transformer``),
``clip_adapter.clip_model.*`` (open_clip names; the crop CLIP), ``clip_adapter.original_clip.*``
(the frozen copy of the visual tower), ``clip_adapter.non_object_embedding``,
``clip_adapter.pixel_{mean,std}`` and ``criterion.empty_weight``.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from checkpoint_fixtures import check_conversion_inverts, check_official_file_reproduces, perturb_parameters
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError
from ovbench_adapters.scan import ScanSegmenter, convert_official_state_dict, to_official_state_dict
from ovbench_methods.common.backbones import SwinConfig
from ovbench_methods.common.set_criterion import SetCriterionConfig
from ovbench_methods.scan.calibration import ScanCalibrationConfig
from ovbench_methods.scan.config import ScanClipBranchSettings, ScanConfig

TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": False,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 32, "patch_size": 32, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
VOCABULARY = Vocabulary(["road", "tree", "building", "water"])
CLASSES = tuple(c.all_names for c in VOCABULARY)


def tiny_config(**changes) -> ScanConfig:
    settings = dict(
        swin=SwinConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4, pretrain_img_size=64,
                        drop_path_rate=0.0),
        clip_weights=None, model_config=copy.deepcopy(TINY_CLIP), templates=["{}"], conv_dim=32, mask_dim=16,
        hidden_dim=16, num_queries=6, nheads=2, dim_feedforward=32, dec_layers=3, class_hidden_dim=24,
        transformer_layers=1, transformer_heads=2, transformer_ffn_dim=32,
        calibration=ScanCalibrationConfig(clip_layers=(2, 3, 4), scan_dim=32, ca_layers=2, ca_heads=2, tf_layers=2,
                                          tf_heads=2, tf_ffn=64),
        # random masks are high almost everywhere: this threshold leaves crops with background patches
        clip_branch=ScanClipBranchSettings(weight=0.7, mask_threshold=0.65, replace_ratio=0.5, replace_layers=[1, 3]),
        criterion=SetCriterionConfig(num_points=64, supervised_aux_outputs=2),
    )
    settings.update(changes)
    return ScanConfig(**settings)


def tiny_segmenter(seed: int, **changes) -> ScanSegmenter:
    torch.manual_seed(seed)
    return perturb_parameters(ScanSegmenter(tiny_config(**changes)).eval(), seed)


def batch() -> torch.Tensor:
    return torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(3)) * 255


def outputs(segmenter: ScanSegmenter) -> torch.Tensor:
    with torch.no_grad():
        return segmenter.forward_logits(batch(), VOCABULARY)


# --------------------------------------------------------------------------- model
def test_published_defaults_and_what_trains():
    config = ScanConfig()
    assert (config.dec_layers, config.criterion.supervised_aux_outputs) == (10, 9)
    assert (config.clip_branch.mask_threshold, config.clip_branch.weight, config.clip_branch.replace_ratio) == (0.4, 0.7, 0.15)
    assert config.clip_branch.replace_layers == [1, 3, 5] and config.context_resize == "nearest"
    model = tiny_segmenter(0).model
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert all(n.startswith(("image_encoder.", "original_clip.", "classifier.text_encoder.", "clip_logit_scale")) for n in frozen)
    assert any(n.startswith("original_clip.") for n in frozen) and any(n.startswith("image_encoder.") for n in frozen)
    assert model.calibration.learnable_weight.requires_grad


def test_every_prediction_is_calibrated_and_the_last_deep_supervision_output_is_dropped():
    segmenter = tiny_segmenter(0)
    model = segmenter.model
    out = model.forward_outputs(batch(), CLASSES)
    assert len(out.class_logits) == 4  # 3 layers + the initial queries
    assert out.class_logits[-1].shape == (1, 6, 5) and out.mask_logits[-1].shape == (1, 6, 24, 24)
    segmenter.train()
    targets = torch.randint(0, 4, (1, 70, 90))
    losses = segmenter.loss(batch(), targets, VOCABULARY)
    # 3 deep-supervision outputs, 2 weighted: the official arrangement, one fewer than built
    assert {k for k in losses if k.startswith("loss_ce")} == {"loss_ce", "loss_ce_0", "loss_ce_1"}
    sum(losses.values()).backward()
    assert model.calibration.learnable_weight.grad is not None
    assert model.calibration.LFM.conv1.weight.grad is not None
    assert model.original_clip.visual.conv1.weight.grad is None


def test_calibration_changes_the_class_logits():
    model = tiny_segmenter(0).model
    with torch.no_grad():
        base = model.forward_outputs(batch(), CLASSES).class_logits[-1]
        model.calibration.learnable_weight.add_(1.0)
        moved = model.forward_outputs(batch(), CLASSES).class_logits[-1]
    assert not torch.allclose(base, moved)


def test_contextual_shift_is_deterministic_under_a_seed_and_differs_across_seeds():
    segmenter = tiny_segmenter(0)
    model = segmenter.model
    settings = segmenter.clip_settings()
    with torch.no_grad():
        first = model.predict_semantic(batch(), CLASSES, settings)
        again = model.predict_semantic(batch(), CLASSES, settings)
        other = model.predict_semantic(batch(), CLASSES, replace(settings, shift_seed=1))
        unshifted = model.predict_semantic(batch(), CLASSES, replace(settings, replace_ratio=0.0))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, unshifted)


def test_each_image_starts_from_the_seed_so_batching_does_not_change_it():
    model = tiny_segmenter(0).model
    images = torch.cat([batch(), batch().flip(-1)])
    with torch.no_grad():
        together = model.predict_semantic(images, CLASSES)
        alone = model.predict_semantic(images[1:], CLASSES)
    assert torch.allclose(together[1:], alone, atol=1e-5)


def test_the_seed_is_recorded_with_the_settings():
    segmenter = tiny_segmenter(0, per_eval_set={"flood": {"shift_seed": 7, "replace_ratio": 0.05}})
    assert segmenter.use_eval_set("urban")["clip_branch"]["shift_seed"] == 0
    settings = segmenter.use_eval_set("flood")["clip_branch"]
    assert settings["shift_seed"] == 7 and settings["replace_ratio"] == 0.05 and settings["replace_layers"] == [1, 3]


def test_void_suppression_runs_only_where_configured():
    model = tiny_segmenter(0).model
    settings = model.config.clip_branch
    with torch.no_grad():
        plain = model.predict_semantic(batch(), CLASSES, settings)
        suppressed = model.predict_semantic(batch(), CLASSES, replace(settings, suppress_void=True))
        clip_only = model.predict_semantic(batch(), CLASSES, replace(settings, weight=0.0))
        clip_only_suppressed = model.predict_semantic(batch(), CLASSES, replace(settings, weight=0.0, suppress_void=True))
    assert not torch.allclose(plain, suppressed)
    assert torch.equal(clip_only, clip_only_suppressed)  # officially only in the ensemble branch


def test_remoteclip_variant_inherits_scan_with_vit_b32_and_quick_gelu():
    from ovbench import registry

    resolved = registry.resolve_method("scan-remoteclip")
    config = resolved.model_config
    assert (config.arch, config.clip_weights, config.quick_gelu) == ("ViT-B-32", "RemoteCLIP-ViT-B-32.pt", True)
    assert config.dec_layers == 10 and config.clip_branch.mask_threshold == 0.4
    tiny = registry.resolve_method("scan-remoteclip", scale="tiny").model_config
    assert tiny.model_config["quick_gelu"] is True and tiny.model_config["vision_cfg"]["patch_size"] == 32


# ---------------------------------------------------------------------- checkpoints


def test_official_layout_has_the_published_key_names():
    state = tiny_segmenter(0).official_state_dict()
    for key in (
        "backbone.patch_embed.proj.weight",
        "backbone.layers.0.blocks.0.attn.relative_position_bias_table",
        "backbone.layers.0.downsample.reduction.weight",
        "backbone.norm3.weight",
        "sem_seg_head.pixel_decoder.input_proj.0.0.weight",
        "sem_seg_head.pixel_decoder.transformer.level_embed",
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
        "sem_seg_head.pixel_decoder.mask_features.weight",
        "sem_seg_head.predictor.query_feat.weight",
        "sem_seg_head.predictor.transformer_cross_attention_layers.2.multihead_attn.in_proj_weight",
        "sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight",
        "sem_seg_head.predictor.decoder_norm.weight",
        "sem_seg_head.predictor.class_embed.layers.1.weight",
        "learnable_weight",
        "LFM.conv1.weight",
        "oriclip_mlp.fc2.weight",
        "fusion_decoder.multiattn.1.in_proj_weight",
        "fusion_decoder.ln.0.weight",
        "lightweight_transformer.layers.1.linear2.weight",
        "clip_adapter.clip_model.visual.conv1.weight",
        "clip_adapter.clip_model.transformer.resblocks.0.attn.in_proj_weight",
        "clip_adapter.clip_model.text_projection",
        "clip_adapter.original_clip.conv1.weight",
        "clip_adapter.original_clip.proj",
        "clip_adapter.non_object_embedding",
    ):
        assert key in state, key
    assert "fusion_decoder.ln.1.weight" not in state  # no LayerNorm after the last cross-attention layer
    assert state["learnable_weight"].shape == (1,)
    assert not any(k.startswith(("calibration.", "image_encoder.", "original_clip.", "predictor.")) for k in state)


def test_official_checkpoint_loads_strictly_and_reproduces_the_outputs(tmp_path):
    check_official_file_reproduces(tiny_segmenter, outputs, tmp_path / "SCAN.pth")


def test_conversion_inverts_export():
    check_conversion_inverts(tiny_segmenter(0).model.state_dict(), to_official_state_dict, convert_official_state_dict)


def test_cs_clip_file_replaces_the_crop_tower_only(tmp_path):
    source, target = tiny_segmenter(0), tiny_segmenter(1)
    official = source.official_state_dict()
    prefix = "clip_adapter.clip_model."
    path = tmp_path / "CS_CLIP.pt"
    torch.save({"state_dict": {"module.clip_model." + k[len(prefix):]: v for k, v in official.items() if k.startswith(prefix)}}, path)
    before = copy.deepcopy(target.model.original_clip.state_dict())
    target.model.load_cs_clip(str(path))
    assert all(torch.equal(v, source.model.image_encoder.visual.state_dict()[k]) for k, v in target.model.image_encoder.visual.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in target.model.original_clip.state_dict().items())


def test_a_mismatching_official_file_is_one_error_line(tmp_path):
    state = tiny_segmenter(0).official_state_dict()
    del state["learnable_weight"]
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as error:
        tiny_segmenter(1).load_checkpoint(path)
    assert "\n" not in str(error.value) and "calibration.learnable_weight" in str(error.value)


# --------------------------------------------------------------------------- toyland
def test_toyland_scratch_run_shortened(isolated_home):
    """`ovbench run --method scan --protocol scratch`, shortened: the loss falls, every split is
    evaluated with the seeded contextual shift, and each record carries the seed."""
    from toyland_runs import shortened_run

    records = shortened_run(isolated_home, "scan")
    settings = records[0]["extra"]["inference_settings"]["clip_branch"]
    assert settings["shift_seed"] == 0 and settings["replace_layers"] == [1, 3]


@pytest.mark.slow
def test_published_scale_shapes_and_parameter_counts():
    """Swin-B + CLIP ViT-B/16 at 640^2 with random weights: the shapes of the pipeline table in
    docs/methods/scan.md and the computed sizes of its parts."""
    segmenter = ScanSegmenter(ScanConfig(clip_weights=None)).eval()
    model = segmenter.model
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.calibration) == 26_397_185
    assert count(model.predictor.class_embed) == 787_968 and count(model.predictor) == 16_825_344
    with torch.no_grad():
        out = model.forward_outputs(torch.rand(1, 3, 640, 640) * 255, CLASSES)
    assert len(out.class_logits) == 11  # 10 layers + the initial queries
    assert out.class_logits[-1].shape == (1, 100, 5) and out.mask_logits[-1].shape == (1, 100, 160, 160)
    assert out.context.patch_map(6).shape == (1, 768, 14, 14)
