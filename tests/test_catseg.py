"""CAT-Seg: split-q/k/v CLIP, image and text paths, full-scale sizes, the adapter, toyland.

Tiny random-init CLIPs built here stand in for OpenAI's; one test builds the full ViT-B/16
model (random weights, no download) to check the published parameter counts exactly.
"""

from __future__ import annotations

import copy
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ovbench_adapters.catseg import CatSegSegmenter
from ovbench_methods.catseg.config import CatSegConfig
from ovbench_methods.catseg.model import CatSegModel, build_catseg_model
from ovbench_methods.common.clip_cost_model import set_mlp_activation
from ovbench_methods.common.clip import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from ovbench_methods.common.clip_qkv import (
    SplitQKVAttention,
    SplitQKVError,
    pack_split_qkv,
    set_clip_finetuning,
    split_packed_qkv,
    split_qkv_attention,
)
from ovbench_methods.common.text import TemplateClassEncoder, template_prompts
from ovbench import registry
from ovbench.data.toyland import TOYLAND_EVAL_SPLITS
from ovbench.data.vocabulary import Vocabulary
from ovbench.engine.optim import OptimizerConfig, build_optimizer, optimizer_groups
from ovbench.errors import CheckpointError, ConfigError
from ovbench.eval.inference import InferenceConfig, build_inference
from toyland_runs import check_beats_majority_class, run_toyland
from ovbench.interface import IGNORE_INDEX

REPO = Path(__file__).resolve().parents[1]

#: pretrained grid 4x4 (64 px); CAT-Seg runs it at 96 px, so the pos-embed is resized to 6x6.
TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_HEAD = dict(
    image_size=(96, 96), feature_resolution=(6, 6), guidance_blocks=(0, 1), hidden_dim=16, num_heads=2, num_layers=2, window_size=2,
    text_guidance_proj_dim=8, appearance_guidance_proj_dim=8, decoder_dims=(16, 16),
    decoder_guidance_dims=(8, 8), decoder_guidance_proj_dims=(4, 4), pad_len=8,
)
CLASSES = (("road",), ("tree", "forest"), ("building",))


def tiny_clip(seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    model = open_clip.CLIP(**copy.deepcopy(TINY_CLIP)).eval()
    with torch.no_grad():  # open_clip zero-initialises biases; random ones exercise the bias handling
        for module in model.modules():
            if isinstance(module, torch.nn.MultiheadAttention):
                module.in_proj_bias.normal_(std=0.1)
                module.out_proj.bias.normal_(std=0.1)
    return model


def tiny_model(seed: int = 0, **overrides) -> CatSegModel:
    clip = tiny_clip(seed)
    tokenizer = open_clip.SimpleTokenizer(context_length=clip.context_length)
    torch.manual_seed(seed + 100)
    return CatSegModel(clip, tokenizer, ["A photo of a {} in the scene"], CatSegConfig(**{**TINY_HEAD, **overrides}))


def images(n: int = 2, height: int = 96, width: int = 96, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 255


@pytest.fixture
def catseg_registered():
    """`adapter: catseg` resolves to the in-tree module ovbench_adapters.catseg."""
    assert registry.adapter_class("catseg") is CatSegSegmenter


# ---------------------------------------------------------------- split q/k/v
@pytest.mark.parametrize("batch_first", [True, False])
def test_split_attention_equals_packed_multihead_attention(batch_first):
    torch.manual_seed(0)
    packed = torch.nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        packed.in_proj_bias.normal_()
        packed.out_proj.bias.normal_()
    split = SplitQKVAttention.from_multihead(packed)
    x = torch.randn(3, 7, 16) if batch_first else torch.randn(7, 3, 16)
    causal = torch.full((7, 7), float("-inf")).triu(1)
    boolean = torch.rand(7, 7) > 0.7
    boolean.fill_diagonal_(False)
    per_head = torch.randn(3 * 4, 7, 7)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 5:] = True
    for kwargs in ({}, {"attn_mask": causal}, {"attn_mask": boolean}, {"attn_mask": per_head}, {"key_padding_mask": padding}):
        expected = packed(x, x, x, need_weights=False, **kwargs)[0]
        assert torch.allclose(split(x, x, x, need_weights=False, **kwargs)[0], expected, atol=1e-5), kwargs
    memory = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    assert torch.allclose(split(x, memory, memory)[0], packed(x, memory, memory, need_weights=False)[0], atol=1e-5)
    with pytest.raises(SplitQKVError, match="need_weights"):
        split(x, x, x, need_weights=True)


def test_split_clip_keeps_both_towers_outputs_and_uses_official_key_names():
    reference = tiny_clip()
    clip = copy.deepcopy(reference)
    assert split_qkv_attention(clip) == 3 + 2
    state = clip.state_dict()
    assert "visual.transformer.resblocks.0.attn.q_proj_weight" in state
    assert "transformer.resblocks.1.attn.v_proj_weight" in state
    assert "visual.transformer.resblocks.0.attn.in_proj_bias" in state
    assert not any(key.endswith("in_proj_weight") for key in state)
    pixels = torch.randn(2, 3, 64, 64)
    tokens = open_clip.SimpleTokenizer()(["a photo of a road", "a tree"])
    with torch.no_grad():
        assert torch.allclose(clip.encode_image(pixels), reference.encode_image(pixels), atol=1e-5)
        assert torch.allclose(clip.encode_text(tokens), reference.encode_text(tokens), atol=1e-5)


def test_state_dict_conversion_round_trips_in_openai_chunk_order():
    packed = tiny_clip().state_dict()
    split = split_packed_qkv(packed)
    weight = packed["visual.transformer.resblocks.2.attn.in_proj_weight"]
    assert torch.equal(split["visual.transformer.resblocks.2.attn.k_proj_weight"], weight[32:64])
    assert torch.equal(split["visual.transformer.resblocks.2.attn.v_proj_weight"], weight[64:])
    back = pack_split_qkv(split)
    assert back.keys() == packed.keys()
    assert all(torch.equal(back[key], packed[key]) for key in packed)
    del split["transformer.resblocks.0.attn.k_proj_weight"]
    with pytest.raises(SplitQKVError, match="k_proj_weight"):
        pack_split_qkv(split)


def test_finetuning_modes_select_transformer_parameters():
    clip = tiny_clip()
    with pytest.raises(SplitQKVError, match="split_qkv_attention"):
        set_clip_finetuning(clip, "attention")
    split_qkv_attention(clip)
    names = set_clip_finetuning(clip, "attention")
    assert len(names) == 2 * (3 + 2) and all(n.endswith(("q_proj_weight", "v_proj_weight")) for n in names)
    assert not clip.visual.positional_embedding.requires_grad and not clip.token_embedding.weight.requires_grad
    full = set_clip_finetuning(clip, "full")
    assert "transformer.resblocks.0.mlp.c_fc.weight" in full and "visual.proj" not in full
    assert set_clip_finetuning(clip, "frozen") == []


def test_gradients_reach_only_q_and_v_and_adamw_never_touches_k():
    model = tiny_model()
    model.train()
    clip_params = dict(model.image_encoder.named_parameters(prefix="image")) | dict(
        model.text_encoder.named_parameters(prefix="text")
    )
    loss = model.loss(images(), torch.randint(0, 3, (2, 96, 96)), CLASSES)
    loss.backward()
    for name, param in clip_params.items():
        is_qv = name.endswith(("q_proj_weight", "v_proj_weight"))
        assert param.requires_grad == is_qv, name
        assert (param.grad is not None) == is_qv, name
    # text q/v learn (encoded with gradients every step); the dense last block discards q, so its
    # weight gets an exact zero gradient, as in the official packed computation
    assert model.text_encoder.transformer.resblocks[0].attn.v_proj_weight.grad.abs().sum() > 0
    assert model.image_encoder.blocks[0].attn.q_proj_weight.grad.abs().sum() > 0
    assert torch.count_nonzero(model.image_encoder.blocks[-1].attn.q_proj_weight.grad) == 0
    assert all(p.grad is not None for p in model.head_parameters())

    k_before = model.image_encoder.blocks[0].attn.k_proj_weight.detach().clone()
    q_before = model.image_encoder.blocks[-1].attn.q_proj_weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    optimizer.step()
    assert torch.equal(model.image_encoder.blocks[0].attn.k_proj_weight, k_before)
    # zero gradient but still decayed, like the official q of the last block
    assert torch.allclose(model.image_encoder.blocks[-1].attn.q_proj_weight, q_before * (1 - 1e-2 * 0.5))


def test_quick_gelu_is_swapped_into_both_towers_without_touching_weights():
    clip = tiny_clip()
    reference = copy.deepcopy(clip)
    assert set_mlp_activation(clip, torch.nn.GELU) == 3 + 2
    assert isinstance(clip.transformer.resblocks[1].mlp.gelu, torch.nn.GELU)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(clip.encode_image(pixels), reference.encode_image(pixels), atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(clip.state_dict().values(), reference.state_dict().values()))


# ------------------------------------------------------------------ image path
def test_image_path_pads_to_32_then_stretches_and_crops_logits_back():
    model = tiny_model().eval()
    batch = images(1, 40, 56)
    features = model.image_encoder.encode_resized(batch, (96, 96), 32, "catseg", (0, 1))
    mean = torch.tensor(CLIP_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_PIXEL_STD).view(1, 3, 1, 1)
    canvas = F.pad((batch - mean) / std, (0, 64 - 56, 0, 64 - 40))  # zeros = the mean colour
    manual = model.image_encoder.forward_pixels(F.interpolate(canvas, size=(96, 96), mode="bilinear"), "catseg", (0, 1))
    assert features.padded_size == (64, 64) and features.image_size == (40, 56)
    assert torch.allclose(features.dense, manual.dense, atol=1e-5)
    assert features.dense.shape == (1, 32, 6, 6) and features.block_maps[1].shape == (1, 32, 6, 6)
    with torch.no_grad():
        logits = model(batch, CLASSES)
        assert logits.shape == (1, 3, 40, 56)
        assert model(images(1, 96, 96), CLASSES).shape == (1, 3, 24, 24)  # 4x the 6x6 grid, no padding


def test_frozen_pos_embed_resize_is_cached_until_the_weights_change():
    model = tiny_model().eval()
    encoder = model.image_encoder
    first = encoder.positional_embedding((6, 6))
    assert first.shape == (37, 32) and encoder.positional_embedding((6, 6)) is first
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["image_encoder.visual.positional_embedding"] += 1.0
    model.load_state_dict(state)
    assert torch.allclose(encoder.positional_embedding((6, 6)), first + 1.0, atol=1e-5)


# ------------------------------------------------------------------------ text
def test_template_prompts_first_synonym_or_all_synonyms():
    prompts, cells = template_prompts(CLASSES, ["a {}", "the {}"], "first")
    assert prompts == ["a road", "the road", "a tree", "the tree", "a building", "the building"]
    assert cells.tolist() == [0, 1, 2, 3, 4, 5]
    prompts, cells = template_prompts(CLASSES, ["a {}"], "average")
    assert prompts == ["a road", "a tree", "a forest", "a building"] and cells.tolist() == [0, 1, 1, 2]
    with pytest.raises(ValueError, match="synonym"):
        template_prompts(CLASSES, ["a {}"], "all")


def test_synonym_averaging_is_the_normalised_mean_within_each_template():
    model = tiny_model()
    tokenizer = open_clip.SimpleTokenizer()
    encoder = TemplateClassEncoder(tokenizer, ["a {}", "the {}"], synonyms="average")
    with torch.no_grad():
        embeddings = encoder(model.text_encoder, CLASSES)
        tree = F.normalize(model.text_encoder(tokenizer(["the tree"])), dim=-1)
        forest = F.normalize(model.text_encoder(tokenizer(["the forest"])), dim=-1)
    assert embeddings.shape == (3, 2, 32)
    assert torch.allclose(embeddings[1, 1], F.normalize(tree + forest, dim=-1)[0], atol=1e-5)


def test_text_is_encoded_with_gradients_in_training_and_cached_per_vocabulary_in_eval():
    model = tiny_model()
    calls = []
    model.text_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    model.train()
    first = model.class_embeddings(CLASSES)
    model.class_embeddings(CLASSES)
    assert first.requires_grad and first.shape == (3, 1, 32) and len(calls) == 2
    model.eval()
    cached = model.class_embeddings(CLASSES)
    assert model.class_embeddings(CLASSES) is cached and len(calls) == 3
    other = model.class_embeddings(CLASSES[:2])
    assert other.shape == (3 - 1, 1, 32) and len(calls) == 4
    assert torch.allclose(cached, first.detach(), atol=1e-6)
    # training changes the tower, so entering train mode drops the cache
    model.train()
    model.eval()
    model.class_embeddings(CLASSES)
    assert len(calls) == 5


# -------------------------------------------------------------- full scale
def test_full_scale_vit_b16_parameter_counts_and_output_shape():
    torch.manual_seed(0)
    model = build_catseg_model(CatSegConfig(clip_weights=None))

    def count(params) -> int:
        return sum(p.numel() for p in params)

    upsamplers = count(model.upsample1.parameters()) + count(model.upsample2.parameters())
    assert count(model.transformer.parameters()) == 2_308_961  # docs/methods/catseg.md#parameter-counts
    assert count(model.transformer.layers[0].swin_block.block_1.parameters()) == 231_040
    assert count(model.transformer.layers[0].parameters()) == 677_120
    assert upsamplers == 2_359_680
    assert count(model.clip_parameters()) == 20_447_232
    assert count(model.head_parameters()) == 2_308_961 + 2_359_680
    assert model.image_encoder.blocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"
    model.eval()
    with torch.no_grad():
        logits = model(images(1, 384, 384), CLASSES)
    assert logits.shape == (1, 3, 96, 96) and torch.isfinite(logits).all()


# ---------------------------------------------------------------- adapter
def test_published_recipe_and_remoteclip_variant_changes_only_its_clip(catseg_registered):
    full = registry.resolve_method("catseg").as_dict()
    assert full["model"]["arch"] == "ViT-B-16" and full["model"]["image_size"] == [384, 384]
    assert full["inference"] == {**full["inference"], "mode": "sliding", "size": [640, 640], "window": 384, "stride": 256,
                                 "global_view": 384, "activation": "sigmoid", "short_side": 640, "max_size": 2560}
    assert full["train"]["iters"] == 30000 and full["train"]["grad_clip"] == 0.01
    assert full["coco_recipe"]["iters"] == 80000 and full["coco_recipe"]["batch_size"] == 4
    assert full["coco_checkpoint"]["file"] == "model_base.pth"
    remote = registry.resolve_method("catseg-remoteclip").as_dict()
    changed = {k for k in full["model"] if remote["model"][k] != full["model"][k]}
    assert changed == {"arch", "clip_weights", "image_size"} and remote["model"]["image_size"] == [768, 768]
    assert remote["coco_checkpoint"] is None
    assert {k: v for k, v in remote.items() if k not in ("model", "coco_checkpoint", "description", "method")} == {
        k: v for k, v in full.items() if k not in ("model", "coco_checkpoint", "description", "method")
    }


def test_remoteclip_variant_missing_weights_is_one_clear_error(catseg_registered):
    resolved = registry.resolve_method("catseg-remoteclip")
    with pytest.raises(CheckpointError, match="RemoteCLIP-ViT-B-32.pt") as info:
        registry.build_segmenter(resolved)
    assert "\n" not in str(info.value)
    tiny = registry.build_segmenter(registry.resolve_method("catseg-remoteclip", scale="tiny"))
    assert tiny.model.image_encoder.patch_size == (32, 32) and tiny.model.feature_resolution == (8, 8)


def test_bad_config_fields_raise_config_error(catseg_registered):
    for field, value in [("window_size", 0), ("synonyms", "all"), ("image_size", [384]),
                         ("clip_finetune", "prompt"), ("pad_len", -1)]:
        with pytest.raises(ConfigError, match=field) as info:
            registry.resolve_method("catseg", scale="tiny", overrides={"model": {field: value}})
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="catseg: hidden dim 32 is not divisible by 3 heads"):
        registry.build_segmenter(registry.resolve_method("catseg", scale="tiny", overrides={"model": {"num_heads": 3}}))
    with pytest.raises(ConfigError, match="unknown template set 'nope'"):
        registry.build_segmenter(registry.resolve_method("catseg", scale="tiny", overrides={"model": {"templates": "nope"}}))
    with pytest.raises(ConfigError, match="catseg: feature_resolution"):
        CatSegSegmenter(CatSegConfig(clip_weights=None, model_config=TINY_CLIP, image_size=(96, 96), guidance_blocks=(0, 1)))
    # a config built in code is checked like one read from a file
    with pytest.raises(ConfigError, match="synonyms: expected one of first, average"):
        CatSegSegmenter(CatSegConfig(clip_weights=None, synonyms="all"))


def tiny_segmenter(**fields) -> CatSegSegmenter:
    config = CatSegConfig(
        clip_weights=None, model_config=copy.deepcopy(TINY_CLIP), templates=["{}"], image_size=[96, 96],
        feature_resolution=[6, 6], guidance_blocks=[0, 1], hidden_dim=16, num_heads=2, window_size=2,
        text_guidance_proj_dim=8, appearance_guidance_proj_dim=8, decoder_dims=[16, 16], decoder_guidance_dims=[8, 8],
        decoder_guidance_proj_dims=[4, 4], **fields,
    )
    inference = build_inference(InferenceConfig(mode="sliding", size=[160, 160], window=96, stride=64, global_view=96,
                                                activation="sigmoid"))
    torch.manual_seed(0)
    return CatSegSegmenter(config, inference=inference)


def test_adapter_training_step_and_official_param_groups():
    segmenter = tiny_segmenter()
    vocabulary = Vocabulary(["road", "tree", "building"])
    groups = segmenter.param_groups(2e-4, 1e-4)
    assert [g["lr"] for g in groups] == [pytest.approx(2e-4), pytest.approx(2e-6)]
    assert sum(p.numel() for p in groups[1]["params"]) == sum(p.numel() for p in segmenter.model.clip_parameters())
    engine_groups = optimizer_groups(segmenter, groups, OptimizerConfig())
    optimizer = build_optimizer(engine_groups, OptimizerConfig())
    segmenter.train()
    targets = torch.randint(0, 3, (2, 96, 96))
    targets[:, :10] = IGNORE_INDEX
    losses = segmenter(images(), targets, vocabulary)
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    before = {n: p.detach().clone() for n, p in segmenter.named_parameters() if p.requires_grad}
    losses["loss_sem_seg"].backward()
    optimizer.step()
    changed = {n for n, p in segmenter.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert "model.transformer.conv1.weight" in changed
    assert "model.text_encoder.transformer.resblocks.0.attn.q_proj_weight" in changed
    masked = tiny_segmenter(mask_ignored=True)
    masked.train()
    assert not torch.isclose(masked(images(), targets, vocabulary)["loss_sem_seg"], losses["loss_sem_seg"])


def test_predict_through_the_sliding_window_gives_probabilities_at_input_size():
    segmenter = tiny_segmenter().eval()
    vocabulary = Vocabulary(["road", ["tree", "forest"], "building", "car"])
    scores = segmenter.predict(images(2, 120, 100), vocabulary)
    assert scores.shape == (2, 4, 120, 100)
    assert scores.min() >= 0 and scores.max() <= 1
    # 4 tiles + 1 global view per image in one forward; eval pooling [1, 1] and the cached text
    assert not segmenter.model.transformer.layers[0].attention.active_pooling


def test_tiny_scale_builds_from_the_yaml(catseg_registered):
    resolved = registry.resolve_method("catseg", scale="tiny")
    segmenter = registry.build_segmenter(resolved)
    assert segmenter.model.feature_resolution == (8, 8)
    assert segmenter.model.transformer.layers[0].swin_block.block_2.shift_size == 2
    assert resolved.config.inference.mode == "sliding"


# ---------------------------------------------------------------- toyland
def test_toyland_scratch_run_shortened(isolated_home, catseg_registered):
    # The full tiny run (800 iterations, sliding window) is test_toyland_run_beats_majority_class.
    log, records = run_toyland(isolated_home, "catseg", "short", "train.iters=30", "train.log_every=5", "train.checkpoint_every=30",
                               "inference.mode=whole", "inference.size=[128,128]")
    assert log[-1]["iteration"] == 30
    assert sum(e["loss"] for e in log[-3:]) / 3 < 0.8 * log[0]["loss"]
    assert [r["eval_set"] for r in records] == list(TOYLAND_EVAL_SPLITS)
    assert all(r["method"] == "catseg" and r["iterations"] == 30 and 0 <= r["metrics"]["mIoU"] <= 100 for r in records)


@pytest.mark.slow
def test_toyland_run_beats_majority_class(isolated_home, catseg_registered):
    # ~3 min on 2 CPU cores; the figures of seeds 0-2 are toyland_runs.REFERENCE_RUNS.
    log, records = run_toyland(isolated_home, "catseg", "full")
    assert sum(e["loss"] for e in log[-5:]) / 5 < 0.6 * log[0]["loss"]
    check_beats_majority_class(records)
