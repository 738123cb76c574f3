"""SAN: shapes, the recognition head's attention mask, CLIP's own path, what trains, settings.

Everything runs a tiny configuration of the real architecture (random-init CLIP with 4
blocks, 1 rerun for recognition; a 3-block side ViT).
"""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.set_criterion import SetCriterionConfig
from ovbench_methods.san.config import SanConfig
from ovbench_methods.san.model import SanModel, build_san_model
from ovbench_methods.san.recognition import BLOCKED, build_attention_mask, downsample_bias, recognize

TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    # pretrained grid 4x4 (64 px, patch 16); a 128 input at 0.5x gives exactly that grid
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 48, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CLASSES = (("road",), ("tree",), ("water",))


def tiny_config(**fields) -> SanConfig:
    settings = dict(
        clip_weights=None, model_config=copy.deepcopy(TINY_CLIP), templates=["{}"], feature_last_layer=3,
        fusion_map={0: 0, 1: 1, 3: 2}, side_width=24, side_depth=3, side_heads=2, side_image_size=64,
        num_queries=5, deep_supervision_idxs=[2, 3], decoder_embed_channels=16, decoder_mlp_channels=16,
        attn_bias_heads=3, criterion=SetCriterionConfig(num_points=64),
    )
    settings.update(fields)
    return SanConfig(**settings)


def tiny_model(seed: int = 0, **fields) -> SanModel:
    torch.manual_seed(seed)
    return build_san_model(tiny_config(**fields))


def images(batch: int = 2, height: int = 128, width: int = 128, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 255


# ------------------------------------------------------------------ shapes
def test_shapes_in_training_and_evaluation():
    model = tiny_model().train()
    outputs = model.forward_outputs(images(2, 96, 128), CLASSES)
    # two decoded side blocks (deep supervision 2, prediction 3)
    assert len(outputs.class_logits) == len(outputs.mask_logits) == len(outputs.attn_biases) == 2
    for logits, masks, biases in zip(outputs.class_logits, outputs.mask_logits, outputs.attn_biases):
        assert logits.shape == (2, 5, len(CLASSES) + 1)
        assert masks.shape == (2, 5, 96 // 16, 128 // 16)  # the side grid of the padded image
        assert len(biases) == 1 and biases[0].shape == (2, 3, 5, 96 // 16, 128 // 16)
    assert outputs.padded_size == (96, 128)
    assert outputs.clip_grid == (3, 4)  # 0.5x the padded image, patch 16

    model.eval()
    with torch.no_grad():
        prediction = model.predict_masks(images(2, 96, 128), CLASSES)
        evaluated = model.forward_outputs(images(2, 96, 128), CLASSES)
    assert len(evaluated.class_logits) == 1  # evaluation decodes the last side block only
    assert prediction.class_logits.shape == (2, 5, 4) and prediction.mask_logits.shape == (2, 5, 6, 8)
    assert prediction.padded_size == (96, 128)


def test_padding_to_32_and_the_half_resolution_clip_input():
    model = tiny_model().eval()
    pixels = model.prepare_pixels(images(1, 100, 70))
    assert pixels.shape[-2:] == (128, 96)
    # zero (= the mean colour after normalisation) on the bottom/right, like detectron2's ImageList
    assert torch.all(pixels[..., 100:, :] == 0) and torch.all(pixels[..., :, 70:] == 0)
    clip_input = model.clip_input(pixels)
    expected = F.interpolate(pixels, scale_factor=0.5, mode="bilinear", align_corners=False)
    assert clip_input.shape[-2:] == (64, 48) and torch.equal(clip_input, expected)
    with torch.no_grad():
        outputs = model.forward_outputs(images(1, 100, 70), CLASSES)
    assert outputs.padded_size == (128, 96) and outputs.mask_logits[-1].shape[-2:] == (8, 6)


def test_loss_has_the_official_keys_and_is_finite():
    model = tiny_model().train()
    targets = [
        {"labels": torch.tensor([0, 2]), "masks": (torch.rand(2, 100, 90) > 0.5).float()},
        {"labels": torch.tensor([1]), "masks": torch.ones(1, 100, 90)},
    ]
    losses = model.loss(images(2, 100, 90), targets, CLASSES)
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"}
    assert all(torch.isfinite(v) for v in losses.values())


# ---------------------------------------------------------- attention mask
def test_attention_mask_follows_the_rules_entry_by_entry():
    batch, heads, queries, patches = 2, 3, 4, 6
    bias = torch.randn(batch, heads, queries, 2, 3)
    mask = build_attention_mask(bias, num_heads=heads)
    length = queries + 1 + patches
    assert mask.shape == (batch * heads, length, length)
    cls = queries
    for image in range(batch):
        for head in range(heads):
            plane = mask[image * heads + head]  # batch-major, as nn.MultiheadAttention reads it
            for row in range(length):
                for col in range(length):
                    value = plane[row, col].item()
                    if col < queries:  # SOS columns: only each SOS token sees itself
                        assert value == (0.0 if row == col else BLOCKED), (row, col)
                    elif row < queries and col == cls:  # SOS rows do not see CLS
                        assert value == BLOCKED
                    elif row < queries:  # SOS rows see patches through their query's bias
                        assert value == bias[image, head, row].flatten()[col - cls - 1].item()
                    else:  # CLS and patch rows: CLIP's own attention
                        assert value == 0.0


def test_a_shared_bias_head_is_repeated_for_every_clip_head():
    bias = torch.randn(1, 1, 2, 2, 2)
    mask = build_attention_mask(bias, num_heads=4)
    assert mask.shape == (4, 2 + 1 + 4, 2 + 1 + 4)
    assert all(torch.equal(mask[0], mask[h]) for h in range(4))
    with pytest.raises(ValueError):
        build_attention_mask(torch.randn(1, 2, 2, 2, 2), num_heads=4)


def test_bias_is_max_pooled_to_the_clip_grid():
    bias = torch.arange(16.0).reshape(1, 1, 1, 4, 4)
    pooled = downsample_bias(bias, (2, 2), "max")
    assert pooled.flatten().tolist() == [5.0, 7.0, 13.0, 15.0]
    assert downsample_bias(bias, (2, 2), "avg").flatten().tolist() == [2.5, 4.5, 10.5, 12.5]


def test_cls_and_patch_rows_follow_clips_own_forward():
    model = tiny_model().eval()
    encoder = model.image_encoder
    pixels = model.clip_input(model.prepare_pixels(images(2, 128, 128)))  # 64 px: CLIP's own grid
    with torch.no_grad():
        tokens, grid = encoder.embed(pixels)
        first = model.config.feature_last_layer
        tokens_first, _ = encoder.run_blocks(tokens, 0, first)
        queries = 5
        bias = torch.randn(2, 3, queries, 8, 8) * 5
        mask = build_attention_mask(downsample_bias(bias, grid), num_heads=3)
        x = torch.cat([tokens_first[:, :1].expand(-1, queries, -1), tokens_first], dim=1)
        rerun, _ = encoder.run_blocks(x, first, encoder.num_blocks, attn_mask=mask)
        plain, _ = encoder.run_blocks(tokens_first, first, encoder.num_blocks)
        assert torch.allclose(rerun[:, queries:], plain, atol=1e-5)
        # CLS -> ln_post -> proj is exactly what open_clip's own image forward returns
        assert torch.allclose(encoder.project(rerun[:, queries]), encoder.visual(pixels), atol=1e-5)
        # the SOS outputs depend on the bias; CLIP's rows never do
        other_mask = build_attention_mask(downsample_bias(-bias, grid), num_heads=3)
        rerun_other, _ = encoder.run_blocks(x, first, encoder.num_blocks, attn_mask=other_mask)
        assert torch.allclose(rerun_other[:, queries:], plain, atol=1e-5)
        assert not torch.allclose(rerun_other[:, :queries], rerun[:, :queries], atol=1e-3)
        embeddings = recognize(encoder, tokens_first, grid, [bias], first)
        assert embeddings.shape == (2, queries, 32)
        assert torch.allclose(embeddings, F.normalize(encoder.project(rerun[:, :queries]), dim=-1), atol=1e-5)


def test_an_sos_token_with_a_one_hot_bias_reads_that_patch():
    # a bias that blocks every patch but one makes the SOS token attend to itself and that patch
    model = tiny_model().eval()
    encoder = model.image_encoder
    with torch.no_grad():
        tokens, grid = encoder.embed(model.clip_input(model.prepare_pixels(images(1))))
        tokens, _ = encoder.run_blocks(tokens, 0, 3)
        bias = torch.full((1, 3, 1, 4, 4), BLOCKED)
        bias[..., 1, 2] = 0.0
        moved = tokens.clone()
        # (not a constant shift: the blocks' LayerNorm would remove it)
        moved[:, 1 + 4 * 1 + 2] += torch.randn(tokens.shape[-1])  # change the chosen patch
        elsewhere = tokens.clone()
        elsewhere[:, 1 + 4 * 3 + 3] += torch.randn(tokens.shape[-1])  # change another patch
        base = recognize(encoder, tokens, grid, [bias], 3)
        assert not torch.allclose(recognize(encoder, moved, grid, [bias], 3), base, atol=1e-4)
        assert torch.allclose(recognize(encoder, elsewhere, grid, [bias], 3), base, atol=1e-4)


# ------------------------------------------------------------- what trains
def test_trainable_parameters_are_the_side_adapter_bg_embed_and_clip_pos_embed():
    model = tiny_model()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    side = {name for name, _ in model.side_adapter.named_parameters()}
    assert trainable == {f"side_adapter.{n}" for n in side} | {"bg_embed.embedding", "image_encoder.visual.positional_embedding"}
    assert not model.logit_scale.requires_grad


def test_the_official_freeze_knobs_select_clip_parameters_by_their_official_names():
    model = tiny_model(clip_frozen_exclude=["positional_embedding", "resblocks.2.attn"], clip_deeper_frozen_exclude=["proj"])
    trainable = {name for name, p in model.image_encoder.named_parameters() if p.requires_grad}
    assert trainable == {
        "visual.positional_embedding",
        "visual.transformer.resblocks.2.attn.in_proj_weight", "visual.transformer.resblocks.2.attn.in_proj_bias",
        "visual.transformer.resblocks.2.attn.out_proj.weight", "visual.transformer.resblocks.2.attn.out_proj.bias",
        # clip_rec_head.resblocks.0 is CLIP block 3; the fragment "proj" (a substring match, as
        # officially) also catches its in_proj, out_proj and c_proj
        "visual.transformer.resblocks.3.attn.in_proj_weight", "visual.transformer.resblocks.3.attn.in_proj_bias",
        "visual.transformer.resblocks.3.attn.out_proj.weight", "visual.transformer.resblocks.3.attn.out_proj.bias",
        "visual.transformer.resblocks.3.mlp.c_proj.weight", "visual.transformer.resblocks.3.mlp.c_proj.bias",
        "visual.proj",
    }
    everything = tiny_model(clip_deeper_frozen_exclude=["all"])
    rec_head = {n for n, p in everything.image_encoder.named_parameters() if p.requires_grad}
    assert "visual.transformer.resblocks.3.mlp.c_fc.weight" in rec_head and "visual.ln_post.weight" in rec_head
    assert "visual.transformer.resblocks.2.mlp.c_fc.weight" not in rec_head


def test_pos_embed_trains_through_the_resize_and_its_stored_table_is_never_overwritten():
    model = tiny_model().train()
    table = model.image_encoder.visual.positional_embedding
    before = table.detach().clone()
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 192, 160)}] * 2
    # 192 x 160 -> CLIP 96 x 80 -> a 6 x 5 grid, not the pretrained 4 x 4
    losses = model.loss(images(2, 192, 160), targets, CLASSES)
    sum(losses.values()).backward()
    assert table.shape == (17, 48) and torch.equal(table.detach(), before)
    assert table.grad is not None and table.grad.abs().sum() > 0
    assert model.side_adapter.vit_model.pos_embed.grad is not None
    assert model.bg_embed.embedding.grad is not None


def test_text_embeddings_are_cached_per_vocabulary_and_the_text_side_stays_in_eval():
    model = tiny_model().train()
    assert not model.text_encoder.training
    first = model.class_embeddings(CLASSES)
    assert model.class_embeddings(CLASSES) is first
    other = model.class_embeddings(CLASSES[:2])
    assert other.shape == (2, 32) and len(model._text_cache) == 2
    model.load_state_dict(model.state_dict())
    assert len(model._text_cache) == 0
    weights = model.classifier_weights(CLASSES)
    assert weights.shape == (4, 32) and torch.allclose(weights.norm(dim=-1), torch.ones(4))


# --------------------------------------------------------------- settings
def test_published_defaults():
    config = SanConfig()
    assert (config.arch, config.clip_weights, config.clip_resolution, config.feature_last_layer) == ("ViT-B-16", "openai", 0.5, 9)
    assert config.fusion_map == {0: 0, 3: 1, 6: 2, 9: 3}
    assert (config.side_width, config.side_depth, config.side_heads, config.side_patch_size, config.side_image_size) == (240, 8, 6, 16, 640)
    assert (config.num_queries, config.decoder_embed_channels, config.decoder_mlp_layers, config.attn_bias_heads) == (100, 256, 3, 12)
    assert config.deep_supervision_idxs == [7, 8] and config.rec_downsample == "max" and config.templates == "vild14"
    assert config.clip_frozen_exclude == ["positional_embedding"] and config.clip_deeper_frozen_exclude == []
    assert (config.criterion.class_weight, config.criterion.mask_weight, config.criterion.dice_weight) == (2.0, 5.0, 5.0)
    assert (config.criterion.eos_coef, config.criterion.num_points) == (0.1, 12544)


def test_fusion_map_keys_read_back_from_json_become_integers():
    assert tiny_config(fusion_map={"0": "0", "1": "1", "3": "2"}).fusion_map == {0: 0, 1: 1, 3: 2}


@pytest.mark.parametrize(
    "fields",
    [
        {"num_queries": 0},
        {"side_width": 25},  # not a multiple of side_heads
        {"clip_resolution": 0.0},
        {"fusion_map": {5: 0}},  # beyond feature_last_layer
        {"fusion_map": {0: 3}},  # beyond the side blocks
        {"fusion_map": {0: 0, 1: 0}},
        {"deep_supervision_idxs": [3, 2]},
        {"deep_supervision_idxs": [4]},
        {"rec_downsample": "area"},
    ],
)
def test_bad_settings_are_one_line_config_errors(fields):
    with pytest.raises(MethodConfigError) as error:
        tiny_config(**fields)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("fields", [{"feature_last_layer": 4, "fusion_map": {0: 0}}, {"attn_bias_heads": 2}, {"attn_bias_layers": 2}])
def test_settings_that_do_not_fit_the_clip_fail_at_build(fields):
    with pytest.raises(MethodConfigError):
        tiny_model(**fields)


def test_one_bias_per_recognition_block():
    model = tiny_model(feature_last_layer=2, fusion_map={0: 0, 2: 1}, attn_bias_layers=2).eval()
    with torch.no_grad():
        outputs = model.forward_outputs(images(1), CLASSES)
    assert len(outputs.attn_biases[-1]) == 2 and outputs.class_logits[-1].shape == (1, 5, 4)


def test_side_vit_is_timms_without_cls_token_or_final_norm():
    from timm.models.vision_transformer import VisionTransformer

    vit = tiny_model().side_adapter.vit_model
    assert isinstance(vit, VisionTransformer)
    assert vit.cls_token is None and isinstance(vit.norm, torch.nn.Identity)
    assert vit.pos_embed.shape == (1, 16, 24) and vit.blocks[0].norm1.eps == 1e-6
    assert open_clip.transformer.QuickGELU in {type(m) for m in tiny_model().image_encoder.modules()}


# ------------------------------------------------------------------ adapter / toyland
def test_toyland_scratch_run_shortened(isolated_home):
    """`ovbench run --method san --protocol scratch` end to end, shortened: the set-criterion
    loss through MaskClassificationSegmenter falls, and the "masks" inference mode evaluates
    every split."""
    from ovbench import registry
    from ovbench.data.toyland import TOYLAND_EVAL_SPLITS
    from ovbench_adapters.san import SanSegmenter
    from toyland_runs import run_toyland

    assert registry.adapter_class("san") is SanSegmenter
    log, records = run_toyland(isolated_home, "san", "short", "train.iters=30", "train.log_every=5", "train.checkpoint_every=30")
    assert log[-1]["iteration"] == 30
    assert sum(e["loss"] for e in log[-3:]) / 3 < 0.9 * log[0]["loss"]
    assert [r["eval_set"] for r in records] == list(TOYLAND_EVAL_SPLITS)
    assert all(r["method"] == "san" and r["iterations"] == 30 and 0 <= r["metrics"]["mIoU"] <= 100 for r in records)


@pytest.mark.slow
def test_toyland_run_beats_majority_class_on_flood(isolated_home):
    # configs/methods/san.yaml, tiny scale, seed 0: urban / flood / objects 4.81 / 18.73 / 1.96
    # mIoU against the majority class's 9.41 / 4.70 / 8.44: flood (training names) is far above
    # it; urban and objects query names the random text tower never trained on.
    from toyland_runs import majority_class_miou, run_toyland

    log, records = run_toyland(isolated_home, "san", "full")
    assert sum(e["loss"] for e in log[-5:]) / 5 < 0.7 * log[0]["loss"]
    flood = next(r["metrics"]["mIoU"] for r in records if r["eval_set"] == "toyland-flood")
    assert flood > 2 * majority_class_miou("toyland-flood")
