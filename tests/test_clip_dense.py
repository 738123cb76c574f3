"""clip-dense: dense CLIP path, text embeddings and their cache, adapter end to end.

Everything runs on tiny random-init CLIP models (2 blocks, width 64) built in the tests.
"""

from __future__ import annotations

import copy
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ovbench_adapters.clip_dense import ClipDenseSegmenter
from ovbench_methods.clip_dense.config import ClipDenseConfig
from ovbench_methods.clip_dense.model import ClipDenseModel
from ovbench_methods.common.clip import LAST_BLOCK_MODES, ClipImageEncoder, DenseClipError
from ovbench_methods.common.prompts import TEMPLATE_SETS, UnknownTemplateSetError, get_templates
from ovbench_methods.common.text import ClipTextEncoder
from ovbench.data.vocabulary import Vocabulary
from ovbench import registry
from ovbench.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_clip(seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    model = open_clip.CLIP(**copy.deepcopy(TINY_CONFIG)).eval()
    # open_clip zero-initialises biases; random ones make the value path's bias handling observable.
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            block.attn.in_proj_bias.normal_(std=0.1)
            block.attn.out_proj.bias.normal_(std=0.1)
    return model


def tiny_model(
    templates=("a photo of a {}.", "there is a {} in the scene."), last_block: str = "maskclip", seed: int = 0
) -> ClipDenseModel:
    clip = tiny_clip(seed)
    tokenizer = open_clip.SimpleTokenizer(context_length=clip.context_length)
    return ClipDenseModel(clip, tokenizer, templates, ClipDenseConfig(last_block=last_block))


def images(n: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, height, width, generator=generator) * 255


class StandInWholeImage:
    """Same call signature as ovbench.eval.inference modes: resize, forward, upsample back."""

    def __init__(self, size=(128, 128)):
        self.size = size

    def __call__(self, forward, batch):
        height, width = batch.shape[-2:]
        views = F.interpolate(batch, size=self.size, mode="bilinear", align_corners=False)
        logits = forward(views)
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)


def whole_image_mode(size=(128, 128)):
    try:
        from ovbench.eval.inference import InferenceConfig, build_inference
    except ImportError:  # the harness module may not exist yet in a partial checkout
        return StandInWholeImage(size)
    return build_inference(InferenceConfig(mode="whole", size=list(size)))


# ------------------------------------------------------------------ dense path
def test_forward_logits_shape_on_non_square_input():
    model = tiny_model()
    vocabulary = (("water",), ("tree", "forest"), ("road",))
    logits = model(images(2, 96, 160), vocabulary)
    assert logits.shape == (2, 3, 6, 10)
    # Scores are cosines (temperature 1), so they are bounded.
    assert logits.abs().max() <= 1.0 + 1e-5


def test_sides_not_multiple_of_patch_round_up_to_the_next_grid():
    model = tiny_model()
    assert model(images(1, 100, 150), (("water",),)).shape == (1, 1, 7, 10)


def test_positional_embedding_resize_keeps_cls_and_row_column_order():
    encoder = ClipImageEncoder(tiny_clip().visual)
    table = encoder.visual.positional_embedding
    assert encoder.positional_embedding((4, 4)) is table  # native grid: untouched
    with torch.no_grad():
        table.zero_()
        table[0] = 7.0
        rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
        table[1:, 0] = rows.flatten()  # channel 0 encodes the row, channel 1 the column
        table[1:, 1] = cols.flatten()
    resized = encoder.positional_embedding((8, 12))
    assert resized.shape == (1 + 8 * 12, 64)
    assert torch.equal(resized[0], table[0])
    grid = resized[1:].reshape(8, 12, -1)
    # Rows vary only down the grid and columns only across it: h and w were not swapped.
    assert torch.allclose(grid[:, :, 0], grid[:, :1, 0].expand(8, 12), atol=1e-5)
    assert torch.allclose(grid[:, :, 1], grid[:1, :, 1].expand(8, 12), atol=1e-5)
    assert (grid[1:, 0, 0] > grid[:-1, 0, 0]).all() and (grid[0, 1:, 1] > grid[0, :-1, 1]).all()


def manual_last_block(block, x: torch.Tensor, mode: str) -> torch.Tensor:
    """The last block for one token sequence, written out from the block's parameters."""
    width = x.shape[-1]
    normed = F.layer_norm(x, (width,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    w_v = block.attn.in_proj_weight[2 * width :]
    b_v = block.attn.in_proj_bias[2 * width :]
    value = (normed @ w_v.T + b_v) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias
    if mode == "value":
        return value
    out = value + (x if mode == "maskclip" else x[:1])
    hidden = F.layer_norm(out, (width,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    hidden = hidden @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
    hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU (tiny config sets quick_gelu)
    return out + hidden @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias


@pytest.mark.parametrize("mode", ["maskclip", "catseg", "value"])
def test_dense_last_block_equals_value_path_computed_by_hand(mode):
    encoder = ClipImageEncoder(tiny_clip().visual)
    with torch.no_grad():
        tokens, grid = encoder.embed(encoder.normalize(images(1, 64, 96)))
        before_last, _ = encoder.run_blocks(tokens, 0, encoder.num_blocks - 1)
        dense = encoder.dense_last_block(before_last, mode)
        token = 5  # a patch token, not CLS
        expected = manual_last_block(encoder.blocks[-1], before_last[0], mode)[token]
    assert torch.allclose(dense[0, token], expected, atol=1e-5)


def test_dense_features_differ_from_ordinary_attention_and_modes_are_distinct():
    encoder = ClipImageEncoder(tiny_clip().visual)
    batch = images(1, 64, 64)
    with torch.no_grad():
        outputs = {mode: encoder(batch, last_block=mode).dense for mode in LAST_BLOCK_MODES}
    for first in LAST_BLOCK_MODES:
        for second in LAST_BLOCK_MODES:
            if first < second:
                assert not torch.allclose(outputs[first], outputs[second]), (first, second)


def test_ordinary_path_reproduces_open_clip_image_embedding():
    clip = tiny_clip()
    encoder = ClipImageEncoder(clip.visual)
    batch = images(2, 64, 64)
    with torch.no_grad():
        tokens, _ = encoder.embed(encoder.normalize(batch))
        final, _ = encoder.run_blocks(tokens)
        ours = encoder.project(final[:, 0])
        reference = clip.encode_image(encoder.normalize(batch))
    assert torch.allclose(ours, reference, atol=1e-5)


def test_intermediate_block_maps_and_cls_are_returned():
    encoder = ClipImageEncoder(tiny_clip().visual)
    with torch.no_grad():
        features = encoder(images(2, 64, 96), block_indices=(0, 1))
        tokens, _ = encoder.embed(encoder.normalize(images(2, 64, 96)))
        after_first = encoder.blocks[0](tokens)
    assert features.grid == (4, 6)
    assert features.dense.shape == (2, 64, 4, 6)
    assert features.block_maps[0].shape == (2, 64, 4, 6)
    assert torch.allclose(features.block_cls[0], after_first[:, 0], atol=1e-6)
    assert torch.allclose(features.block_maps[0][:, :, 1, 2], after_first[:, 1 + 1 * 6 + 2], atol=1e-6)
    with pytest.raises(DenseClipError, match="block index 2"):
        encoder(images(1, 64, 64), block_indices=(2,))


def test_temperature_scales_scores_without_changing_the_argmax():
    vocabulary = (("water",), ("tree",), ("road",))
    batch = images(1, 64, 64)
    plain = tiny_model()
    hot = tiny_model()
    hot.temperature = 100.0
    with torch.no_grad():
        low, high = plain(batch, vocabulary), hot(batch, vocabulary)
    assert torch.allclose(high, low * 100.0, atol=1e-4)
    assert torch.equal(high.argmax(1), low.argmax(1))


# ------------------------------------------------------------------- text side
def count_text_encodes(model: ClipDenseModel) -> list[int]:
    calls = [0]
    model.text_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_text_encoder_matches_open_clip_encode_text():
    clip = tiny_clip()
    tokens = open_clip.SimpleTokenizer()(["a photo of a tree.", "water"])
    with torch.no_grad():
        ours = ClipTextEncoder(clip)(tokens)
        reference = clip.encode_text(tokens)
    assert torch.allclose(ours, reference, atol=1e-6)


def test_same_vocabulary_is_encoded_once_and_different_vocabulary_is_not_reused():
    model = tiny_model()
    calls = count_text_encodes(model)
    first = model.class_embeddings((("water",), ("tree",)))
    assert calls[0] > 0
    seen = calls[0]
    again = model.class_embeddings((("water",), ("tree",)))
    assert calls[0] == seen
    assert torch.equal(first, again)
    other = model.class_embeddings((("water",), ("road",)))
    assert calls[0] > seen
    assert torch.allclose(other[0], first[0], atol=1e-6)  # same class, same embedding
    assert not torch.allclose(other[1], first[1])


def test_class_embedding_is_the_prompt_ensemble_and_synonyms_are_extra_prompts():
    templates = ("a photo of a {}.", "there is a {} in the scene.")
    model = tiny_model(templates)
    tokenizer = open_clip.SimpleTokenizer()
    with torch.no_grad():
        prompts = [t.format(name) for name in ("tree", "forest") for t in templates]
        per_prompt = F.normalize(model.text_encoder(tokenizer(prompts)), dim=-1)
    expected = F.normalize(per_prompt.mean(0), dim=-1)
    with_synonym = model.class_embeddings((("tree", "forest"),))[0]
    name_only = model.class_embeddings((("tree",),))[0]
    assert torch.allclose(with_synonym, expected, atol=1e-5)
    assert torch.allclose(name_only, F.normalize(per_prompt[:2].mean(0), dim=-1), atol=1e-5)
    assert not torch.allclose(with_synonym, name_only)
    assert torch.allclose(with_synonym.norm(), torch.tensor(1.0))


def test_loading_new_weights_clears_the_text_cache():
    model = tiny_model()
    calls = count_text_encodes(model)
    vocabulary = (("water",),)
    before = model.class_embeddings(vocabulary)
    model.load_state_dict(tiny_model(seed=3).state_dict())
    seen = calls[0]
    after = model.class_embeddings(vocabulary)
    assert calls[0] > seen
    assert not torch.allclose(before, after)


# -------------------------------------------------------------------- templates
def test_template_sets():
    assert get_templates("single") == ("A photo of a {} in the scene",)
    assert len(get_templates("vild14")) == 14
    assert list(get_templates("imagenet80")) == [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    maskclip = get_templates("maskclip85")
    assert len(set(maskclip)) == 85 and maskclip[:80] == get_templates("imagenet80")
    assert all(t.count("{}") == 1 for templates in TEMPLATE_SETS.values() for t in templates)
    with pytest.raises(UnknownTemplateSetError, match="imagenet81"):
        get_templates("imagenet81")


# ---------------------------------------------------------------------- adapter
def tiny_config(**overrides) -> ClipDenseConfig:
    return ClipDenseConfig(clip_weights=None, model_config=copy.deepcopy(TINY_CONFIG), **overrides)


def test_adapter_predict_end_to_end_gives_scores_at_input_size():
    segmenter = ClipDenseSegmenter(tiny_config(), inference=whole_image_mode((128, 128)))
    vocabulary = Vocabulary(["water", ["tree", "forest"], "road", "building"])
    batch = images(2, 90, 120)
    scores = segmenter.predict(batch, vocabulary)
    assert scores.shape == (2, 4, 90, 120)
    assert torch.isfinite(scores).all()
    logits = segmenter.forward_logits(F.interpolate(batch, size=(128, 128), mode="bilinear"), vocabulary)
    assert logits.shape == (2, 4, 8, 8)
    assert not any(p.requires_grad for p in segmenter.parameters())
    assert segmenter.param_groups(1e-4, 0.0) == []


def test_adapter_rejects_bad_config_fields_with_config_error():
    for field, value in [("last_block", "attn"), ("temperature", 0)]:
        with pytest.raises(ConfigError, match=field):
            registry.resolve_method("clip-dense", scale="tiny", overrides={"model": {field: value}})
    with pytest.raises(ConfigError, match="clip-dense: unknown prompt-template set 'nope'"):
        ClipDenseSegmenter(tiny_config(templates="nope"))
    with pytest.raises(ConfigError, match="model_config"):
        bad_config = {"embed_dim": 64, "vision_cfg": {"bogus": 1}}
        ClipDenseSegmenter(ClipDenseConfig(clip_weights=None, model_config=bad_config))
    with pytest.raises(ConfigError, match="ViT-B-61"):
        ClipDenseSegmenter(ClipDenseConfig(arch="ViT-B-61", clip_weights=None))


def test_published_defaults_and_tiny_scale_build():
    full = registry.resolve_method("clip-dense")
    assert (full.model_config.arch, full.model_config.clip_weights, full.model_config.templates) == ("ViT-B-16", "openai", "maskclip85")
    assert full.config.inference.mode == "whole"
    resolved = registry.resolve_method("clip-dense", scale="tiny")
    segmenter = registry.build_segmenter(resolved)
    assert segmenter.predict(images(1, 64, 64), Vocabulary(["water", "tree"])).shape == (1, 2, 64, 64)
