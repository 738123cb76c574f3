"""OV-Seg (docs/methods/ovseg.md): the tiny configuration of the published architecture, the
two-stage inference, the authors' checkpoint layout and the CLIP-stage file, the toyland run.

The official release ``ovseg_R101c_vitB16_ft_mpt.pth`` is ``{"model": state_dict}`` with
``backbone.*`` (detectron2 ResNet names), ``sem_seg_head.{pixel_decoder,predictor}.*``,
``clip_adapter.clip_model.*`` (OpenAI CLIP names, ``visual.mask_embedding`` included),
``clip_adapter.non_object_embedding``, ``clip_adapter.pixel_{mean,std}`` and
``criterion.empty_weight``; the tests write such files themselves.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from checkpoint_fixtures import check_conversion_inverts, check_official_file_reproduces, perturb_parameters
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError
from ovbench_adapters.ovseg import OvsegSegmenter, convert_official_state_dict, to_official_state_dict
from ovbench_methods.common.backbones import ResNetDeepLabConfig, SwinConfig
from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.two_stage import ClipBranchSettings
from ovbench_methods.ovseg.config import OvsegConfig

TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 3, "width": 32, "patch_size": 32, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
VOCABULARY = Vocabulary(["road", "tree", "building", "water"])


def tiny_config(**changes) -> OvsegConfig:
    settings = dict(
        resnet=ResNetDeepLabConfig(layers=(1, 1, 1, 3), stem_out_channels=16, res2_out_channels=32, width_per_group=8),
        clip_weights=None, model_config=copy.deepcopy(TINY_CLIP), templates=["{}"], conv_dim=32, mask_dim=16,
        hidden_dim=16, num_queries=6, nheads=2, dim_feedforward=32, dec_layers=2, class_hidden_dim=24,
        # random masks are high almost everywhere: this threshold leaves crops with background patches
        clip_branch=ClipBranchSettings(weight=0.7, mask_threshold=0.8),
    )
    settings.update(changes)
    return OvsegConfig(**settings)


def tiny_segmenter(seed: int, **changes) -> OvsegSegmenter:
    torch.manual_seed(seed)
    return perturb_parameters(OvsegSegmenter(tiny_config(**changes)).eval(), seed)


def batch() -> torch.Tensor:
    return torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(3)) * 255


def outputs(segmenter: OvsegSegmenter) -> torch.Tensor:
    with torch.no_grad():
        return segmenter.forward_logits(batch(), VOCABULARY)


# --------------------------------------------------------------------------- model
def test_shapes_and_what_trains():
    segmenter = tiny_segmenter(0)
    model = segmenter.model
    outputs_ = model.forward_outputs(batch(), tuple(c.all_names for c in VOCABULARY))
    assert len(outputs_.class_logits) == 2  # every DETR layer predicts
    assert outputs_.class_logits[-1].shape == (2, 6, 5)  # T + no-object
    assert outputs_.mask_logits[-1].shape == (2, 6, 24, 24)  # stride 4 of the padded 96 x 96
    assert outputs_.padded_size == (96, 96)
    assert model.mask_prompt.mask_embedding.shape == (3, 49, 32)  # depth 3, 7 x 7 grid, width 32
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("image_encoder.") for n in frozen) and "mask_prompt.mask_embedding" in frozen
    assert all(n.startswith(("image_encoder.", "classifier.text_encoder.", "mask_prompt.", "clip_logit_scale", "backbone."))
               for n in frozen)
    assert model.classifier.non_object.embedding.requires_grad
    # FREEZE_AT 2: the stem and res2 are frozen, res3 trains
    assert any(n.startswith("backbone.") for n in frozen)
    groups = segmenter.param_groups(1e-3, 1e-4)
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]  # backbone at 0.1x


def test_loss_supervises_every_layer_and_reaches_the_trainable_parts():
    segmenter = tiny_segmenter(0)
    segmenter.train()
    targets = torch.randint(0, 4, (2, 70, 90))
    targets[:, :5] = 255
    losses = segmenter.loss(batch(), targets, VOCABULARY)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"}
    sum(losses.values()).backward()
    model = segmenter.model
    assert model.predictor.class_embed.layers[0].weight.grad is not None
    assert model.classifier.non_object.embedding.grad is not None
    assert model.image_encoder.visual.conv1.weight.grad is None


def test_without_the_clip_branch_inference_is_the_in_vocabulary_einsum():
    segmenter = tiny_segmenter(0, clip_branch=ClipBranchSettings(enabled=False))
    model = segmenter.model
    classes = tuple(c.all_names for c in VOCABULARY)
    with torch.no_grad():
        scores = model.predict_semantic(batch(), classes, segmenter.clip_settings())
        out = model.forward_outputs(batch(), classes)
        masks = torch.nn.functional.interpolate(out.mask_logits[-1], size=(96, 96), mode="bilinear", align_corners=False)
        expected = torch.einsum("nqt,nqhw->nthw", out.class_logits[-1].softmax(-1)[..., :-1], masks[..., :70, :90].sigmoid())
    assert torch.allclose(scores, expected, atol=1e-6)


def test_clip_branch_weight_one_is_clip_alone_and_mask_prompts_matter():
    classes = tuple(c.all_names for c in VOCABULARY)
    segmenter = tiny_segmenter(0)
    model = segmenter.model
    with torch.no_grad():
        blended = model.predict_semantic(batch(), classes, replace(segmenter.clip_settings(), weight=0.7))
        clip_alone = model.predict_semantic(batch(), classes, replace(segmenter.clip_settings(), weight=1.0))
        in_vocab = model.predict_semantic(batch(), classes, replace(segmenter.clip_settings(), enabled=False))
        model.config.mask_prompt_fwd = False
        plain_clip = model.predict_semantic(batch(), classes, replace(segmenter.clip_settings(), weight=1.0))
    assert not torch.allclose(blended, in_vocab) and not torch.allclose(blended, clip_alone)
    assert not torch.allclose(clip_alone, plain_clip)  # the (perturbed) prompts change CLIP's view


def test_per_eval_set_settings_switch_and_are_reported():
    segmenter = tiny_segmenter(0, per_eval_set={"flood": {"weight": 1.0, "mask_threshold": 0.2}})
    assert segmenter.use_eval_set("urban")["clip_branch"]["weight"] == 0.7
    reported = segmenter.use_eval_set("flood")["clip_branch"]
    assert reported["weight"] == 1.0 and reported["mask_threshold"] == 0.2
    with pytest.raises(MethodConfigError, match="unknown settings"):
        tiny_config(per_eval_set={"flood": {"lambda": 0.5}})
    with pytest.raises(MethodConfigError, match="weight"):
        tiny_config(per_eval_set={"flood": {"weight": 1.5}})


def test_swin_backbone_option_builds_and_predicts():
    swin = SwinConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4, pretrain_img_size=64,
                      drop_path_rate=0.0)
    segmenter = tiny_segmenter(0, backbone="swin", swin=swin, backbone_multiplier=1.0)
    assert outputs(segmenter).shape == (2, 4, 70, 90)
    assert any(key.startswith("backbone.patch_embed.") for key in segmenter.official_state_dict())


# ---------------------------------------------------------------------- checkpoints
def test_official_layout_has_the_published_key_names():
    state = tiny_segmenter(0).official_state_dict()
    for key in (
        "backbone.stem.conv1.weight",
        "backbone.stem.conv1.norm.running_mean",
        "backbone.stem.conv3.norm.weight",
        "backbone.res2.0.shortcut.weight",
        "backbone.res5.2.conv2.weight",
        "sem_seg_head.pixel_decoder.adapter_1.weight",
        "sem_seg_head.pixel_decoder.layer_4.norm.bias",
        "sem_seg_head.pixel_decoder.mask_features.weight",
        "sem_seg_head.predictor.query_embed.weight",
        "sem_seg_head.predictor.input_proj.weight",
        "sem_seg_head.predictor.transformer.decoder.layers.1.multihead_attn.in_proj_weight",
        "sem_seg_head.predictor.transformer.decoder.norm.weight",
        "sem_seg_head.predictor.class_embed.layers.1.weight",
        "sem_seg_head.predictor.mask_embed.layers.2.bias",
        "clip_adapter.clip_model.visual.conv1.weight",
        "clip_adapter.clip_model.visual.transformer.resblocks.2.attn.in_proj_weight",
        "clip_adapter.clip_model.visual.proj",
        "clip_adapter.clip_model.visual.mask_embedding",
        "clip_adapter.clip_model.transformer.resblocks.0.mlp.c_fc.weight",
        "clip_adapter.clip_model.token_embedding.weight",
        "clip_adapter.clip_model.text_projection",
        "clip_adapter.clip_model.logit_scale",
        "clip_adapter.non_object_embedding",
        "clip_adapter.pixel_mean",
    ):
        assert key in state, key
    assert state["clip_adapter.non_object_embedding"].shape == (1, 32)
    assert state["clip_adapter.clip_model.visual.mask_embedding"].shape == (3, 49, 32)
    assert torch.allclose(state["clip_adapter.pixel_mean"].flatten(), torch.tensor([122.7709, 116.7460, 104.0937]), atol=1e-3)
    assert not any(k.startswith(("classifier.", "image_encoder.", "predictor.", "pixel_decoder.")) for k in state)


def test_official_checkpoint_loads_strictly_and_reproduces_the_outputs(tmp_path):
    check_official_file_reproduces(tiny_segmenter, outputs, tmp_path / "ovseg_R101c_vitB16_ft_mpt.pth")


def test_conversion_inverts_export():
    check_conversion_inverts(tiny_segmenter(0).model.state_dict(), to_official_state_dict, convert_official_state_dict)


def test_mask_adapted_clip_file_loads_into_clip_and_the_prompts(tmp_path):
    source = tiny_segmenter(0)
    official = source.official_state_dict()
    prefix = "clip_adapter.clip_model."
    clip_state = {"module." + k[len(prefix):]: v for k, v in official.items() if k.startswith(prefix)}
    path = tmp_path / "ovseg_clip_ft_mpt.pt"
    torch.save({"epoch": 5, "state_dict": clip_state}, path)
    target = tiny_segmenter(1)
    target.model.load_mask_adapted_clip(path)
    own, want = target.model.state_dict(), source.model.state_dict()
    for key in want:
        if key.startswith(("image_encoder.", "classifier.text_encoder.", "mask_prompt.")):
            assert torch.equal(own[key], want[key]), key
    assert not torch.equal(own["predictor.query_embed.weight"], want["predictor.query_embed.weight"])
    del clip_state["module.visual.ln_post.weight"]
    torch.save({"state_dict": clip_state}, path)
    with pytest.raises(Exception, match="missing") as error:
        target.model.load_mask_adapted_clip(path)
    assert "\n" not in str(error.value)


def test_a_mismatching_official_file_is_one_error_line(tmp_path):
    state = tiny_segmenter(0).official_state_dict()
    del state["sem_seg_head.predictor.query_embed.weight"]
    state["sem_seg_head.predictor.extra.weight"] = torch.zeros(2)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as error:
        tiny_segmenter(1).load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and "official OV-Seg checkpoint" in message
    assert "predictor.query_embed.weight" in message and "predictor.extra.weight" in message


# --------------------------------------------------------------------------- toyland
def test_toyland_scratch_run_shortened(isolated_home):
    """`ovbench run --method ovseg --protocol scratch`, shortened: MaskFormer's loss falls, the
    two-stage inference evaluates every split, and each record carries the CLIP-branch settings."""
    from toyland_runs import shortened_run

    records = shortened_run(isolated_home, "ovseg")
    settings = records[0]["extra"]["inference_settings"]["clip_branch"]
    assert settings["weight"] == 0.05 and settings["mask_threshold"] == 0.5  # the tiny scale's λ, the published MASK_THR


@pytest.mark.slow
def test_published_scale_shapes_and_parameter_counts():
    """R101c + CLIP ViT-B/16 at 512^2 with random weights: the shapes of the pipeline table in
    docs/methods/ovseg.md and the computed sizes of its parts."""
    segmenter = OvsegSegmenter(OvsegConfig(clip_weights=None)).eval()
    model = segmenter.model
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(model.predictor.class_embed) == 787_968
    assert model.mask_prompt.mask_embedding.numel() == 451_584
    assert count(model.predictor) == 11_008_512 and count(model.pixel_decoder) == 7_540_480
    with torch.no_grad():
        out = model.forward_outputs(torch.rand(1, 3, 512, 512) * 255, tuple(c.all_names for c in VOCABULARY))
    assert len(out.class_logits) == 6
    assert out.class_logits[-1].shape == (1, 100, 5) and out.mask_logits[-1].shape == (1, 100, 128, 128)
