"""SAN checkpoints: the authors' detectron2 layout (``san_vit_b_16.pth``) and ovbench's own;
strict loading, one-line errors.

The official file is ``{"model": state_dict, ...}`` with the model's four modules
(docs/methods/san.md#checkpoint-layout): ``clip_visual_extractor.*`` (open_clip names, packed
``attn.in_proj_weight``, CLIP blocks before the split), ``clip_rec_head.*`` (the blocks after
it, renumbered from 0, ln_post, proj), ``side_adapter_network.*`` (timm ViT, queries, fusion
layers, mask decoder) and ``ov_classifier.*`` (the text tower's modules, logit_scale,
bg_embed and the persistent copy of the causal ``attn_mask``), plus ``criterion.empty_weight``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError
from ovbench_adapters.san import SanSegmenter, convert_official_state_dict, to_official_state_dict
from ovbench_methods.common.set_criterion import SetCriterionConfig
from ovbench_methods.san.config import SanConfig
from checkpoint_fixtures import perturb_parameters

TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 48, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
VOCABULARY = Vocabulary(["road", "tree", "building", "water"])
SPLIT = 3  # feature_last_layer: CLIP blocks 0-2 in the extractor, block 3 in the rec head


def tiny_segmenter(seed: int) -> SanSegmenter:
    config = SanConfig(
        clip_weights=None, model_config=copy.deepcopy(TINY_CLIP), templates=["{}"], feature_last_layer=SPLIT,
        fusion_map={0: 0, 1: 1, 3: 2}, side_width=24, side_depth=3, side_heads=2, side_image_size=64,
        num_queries=5, deep_supervision_idxs=[2, 3], decoder_embed_channels=16, decoder_mlp_channels=16,
        attn_bias_heads=3, criterion=SetCriterionConfig(num_points=64),
    )
    torch.manual_seed(seed)
    return perturb_parameters(SanSegmenter(config).eval(), seed)


def batch() -> torch.Tensor:
    return torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(3)) * 255


def outputs(segmenter: SanSegmenter) -> torch.Tensor:
    with torch.no_grad():
        return segmenter.forward_logits(batch(), VOCABULARY)


def official_file(segmenter: SanSegmenter, path: Path, *, with_criterion: bool = True) -> Path:
    state = segmenter.official_state_dict()
    if with_criterion:
        # the released file also holds the criterion's class weights (171 COCO-Stuff classes + no-object)
        weights = torch.ones(172)
        weights[-1] = 0.1
        state["criterion.empty_weight"] = weights
    torch.save({"model": state, "iteration": 59999}, path)
    return path


def test_official_layout_has_the_published_key_names_and_shapes():
    segmenter = tiny_segmenter(0)
    state = segmenter.official_state_dict()
    for key in (
        "clip_visual_extractor.conv1.weight",
        "clip_visual_extractor.class_embedding",
        "clip_visual_extractor.positional_embedding",
        "clip_visual_extractor.ln_pre.weight",
        "clip_visual_extractor.resblocks.0.attn.in_proj_weight",
        "clip_visual_extractor.resblocks.2.mlp.c_proj.bias",
        "clip_rec_head.resblocks.0.attn.in_proj_weight",
        "clip_rec_head.resblocks.0.attn.out_proj.weight",
        "clip_rec_head.ln_post.weight",
        "clip_rec_head.proj",
        "side_adapter_network.query_embed",
        "side_adapter_network.query_pos_embed",
        "side_adapter_network.vit_model.pos_embed",
        "side_adapter_network.vit_model.patch_embed.proj.weight",
        "side_adapter_network.vit_model.blocks.2.attn.qkv.weight",
        "side_adapter_network.vit_model.blocks.0.mlp.fc2.bias",
        "side_adapter_network.fusion_layers.layer_0.input_proj.0.weight",
        "side_adapter_network.fusion_layers.layer_2.input_proj.1.weight",
        "side_adapter_network.mask_decoder.query_mlp.layers.2.weight",
        "side_adapter_network.mask_decoder.pix_mlp.layers.0.weight",
        "side_adapter_network.mask_decoder.attn_mlp.layers.2.bias",
        "side_adapter_network.mask_decoder.bias_scaling.weight",
        "ov_classifier.transformer.resblocks.1.attn.in_proj_weight",
        "ov_classifier.token_embedding.weight",
        "ov_classifier.positional_embedding",
        "ov_classifier.ln_final.weight",
        "ov_classifier.text_projection",
        "ov_classifier.logit_scale",
        "ov_classifier.bg_embed",
        "ov_classifier.attn_mask",
    ):
        assert key in state, key
    assert not any(k.startswith("clip_visual_extractor.resblocks.3.") for k in state)
    assert not any(k.startswith("clip_rec_head.resblocks.1.") for k in state)
    assert not any("q_proj_weight" in k for k in state)  # packed attention, open_clip names
    # stored at their own sizes: CLIP's pos-embed at the pretrained 4x4 grid (+ CLS), the side
    # ViT's at its image-size grid without a CLS row
    assert state["clip_visual_extractor.positional_embedding"].shape == (17, 48)
    assert state["side_adapter_network.vit_model.pos_embed"].shape == (1, 16, 24)
    assert state["side_adapter_network.fusion_layers.layer_0.input_proj.1.weight"].shape == (24, 48, 1, 1)
    assert state["side_adapter_network.mask_decoder.attn_mlp.layers.2.weight"].shape == (3 * 16, 16, 1, 1)
    assert state["ov_classifier.bg_embed"].shape == (1, 32) and state["ov_classifier.logit_scale"].shape == ()
    mask = state["ov_classifier.attn_mask"]
    assert mask.shape == (77, 77) and torch.isneginf(mask[0, 1]) and mask[1, 0] == 0
    # the rec head's block 0 is CLIP block 3
    model_state = segmenter.model.state_dict()
    assert torch.equal(
        state["clip_rec_head.resblocks.0.mlp.c_fc.weight"],
        model_state["image_encoder.visual.transformer.resblocks.3.mlp.c_fc.weight"],
    )


def test_official_checkpoint_loads_strictly_and_reproduces_the_outputs(tmp_path):
    source = tiny_segmenter(0)
    path = official_file(source, tmp_path / "san_vit_b_16.pth")
    target = tiny_segmenter(1)
    assert not torch.allclose(outputs(target), outputs(source))
    target.load_checkpoint(path)
    assert torch.allclose(outputs(target), outputs(source), atol=1e-5)
    for key, value in source.model.state_dict().items():
        assert torch.equal(target.model.state_dict()[key], value), key


def test_a_file_without_the_derived_entries_also_loads(tmp_path):
    source = tiny_segmenter(0)
    path = tmp_path / "plain.pth"
    state = source.official_state_dict()
    del state["ov_classifier.attn_mask"]
    torch.save({"model": state}, path)
    target = tiny_segmenter(1)
    target.load_checkpoint(path)
    assert torch.allclose(outputs(target), outputs(source), atol=1e-5)


def test_conversion_inverts_export_and_finds_the_split_from_the_file():
    segmenter = tiny_segmenter(0)
    model_state = segmenter.model.state_dict()
    for split in (1, SPLIT):
        official = to_official_state_dict(model_state, feature_last_layer=split)
        back = convert_official_state_dict(official)
        assert set(back) == set(model_state)
        assert all(torch.equal(back[k], model_state[k]) for k in model_state)
    # without the split, export uses the published rule: the last quarter of the blocks
    assert "clip_rec_head.resblocks.0.ln_1.weight" in to_official_state_dict(model_state)
    assert "clip_visual_extractor.resblocks.2.ln_1.weight" in to_official_state_dict(model_state)


def test_ovbench_checkpoint_round_trip(tmp_path):
    source = tiny_segmenter(0)
    path = tmp_path / "ovbench.pth"
    torch.save({"model": source.state_dict()}, path)
    target = tiny_segmenter(1)
    target.load_checkpoint(path)
    assert torch.allclose(outputs(target), outputs(source), atol=1e-6)


def test_missing_and_unexpected_keys_are_one_error_line(tmp_path):
    state = tiny_segmenter(0).official_state_dict()
    del state["side_adapter_network.mask_decoder.bias_scaling.weight"]
    state["side_adapter_network.mask_decoder.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as error:
        tiny_segmenter(1).load_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message
    assert "official SAN checkpoint" in message
    assert "side_adapter.mask_decoder.bias_scaling.weight" in message
    assert "side_adapter.mask_decoder.extra_head.weight" in message


def test_a_gap_in_the_extractor_blocks_is_reported(tmp_path):
    state = tiny_segmenter(0).official_state_dict()
    for key in [k for k in state if k.startswith("clip_visual_extractor.resblocks.1.")]:
        del state[key]
    path = tmp_path / "gap.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as error:
        tiny_segmenter(1).load_checkpoint(path)
    assert "gaps" in str(error.value) and "\n" not in str(error.value)
