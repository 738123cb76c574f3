"""CAT-Seg checkpoints: the authors' detectron2 layout and ovbench's own, strict and one-line errors.

The official file is written here in its exact layout
(docs/methods/catseg.md#module-and-state-dict-correspondence): a torch.save'd
``{"model": state_dict, "iteration": ...}`` with ``sem_seg_head.predictor.clip_model.*`` (both
CLIP towers, split q/k/v weights, packed in_proj_bias, pos-embed at the pretrained size,
``logit_scale``), ``sem_seg_head.predictor.transformer.*`` and top-level ``upsample1/2``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import open_clip
import pytest
import torch

from ovbench_adapters.catseg import CatSegSegmenter, to_official_state_dict
from ovbench_methods.catseg.config import CatSegConfig
from ovbench_methods.common.clip_qkv import pack_split_qkv
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError
from checkpoint_fixtures import perturb_parameters

TINY_CLIP = {
    "embed_dim": 32,
    "quick_gelu": True,
    # pretrained grid 4x4: the 96-pixel CAT-Seg input resizes it to 6x6 in the forward
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
VOCABULARY = Vocabulary(["road", "tree", "building", "water"])


def tiny_segmenter(seed: int, **fields) -> CatSegSegmenter:
    settings = dict(
        clip_weights=None, model_config=copy.deepcopy(TINY_CLIP), image_size=[96, 96], feature_resolution=[6, 6],
        guidance_blocks=[0, 1], hidden_dim=16, num_heads=2, window_size=2, text_guidance_proj_dim=8,
        appearance_guidance_proj_dim=8, decoder_dims=[16, 16], decoder_guidance_dims=[8, 8],
        decoder_guidance_proj_dims=[4, 4], pad_len=8,
    )
    config = CatSegConfig(**{**settings, **fields})
    torch.manual_seed(seed)
    segmenter = CatSegSegmenter(config).eval()
    return perturb_parameters(segmenter, seed)


def batch() -> torch.Tensor:
    return torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(3)) * 255


def official_layout(segmenter: CatSegSegmenter) -> OrderedDict:
    """The detectron2 state dict the official code would save for this model.

    Built from the sub-modules as the official model nests them: the whole OpenAI CLIP under
    clip_model (visual tower + text tower at its top level, plus logit_scale), the Aggregator
    under transformer, the upsamplers at the top.
    """
    model = segmenter.model
    state: OrderedDict = OrderedDict()
    clip = "sem_seg_head.predictor.clip_model."
    for key, value in model.image_encoder.visual.state_dict().items():
        state[clip + "visual." + key] = value
    for key, value in model.text_encoder.state_dict().items():
        state[clip + key] = value
    state[clip + "logit_scale"] = torch.tensor(4.6052)
    for key, value in model.transformer.state_dict().items():
        state["sem_seg_head.predictor.transformer." + key] = value
    for name in ("upsample1", "upsample2"):
        for key, value in getattr(model, name).state_dict().items():
            state[f"{name}.{key}"] = value
    return state


def save_official(path: Path, state: dict) -> Path:
    torch.save({"model": state, "iteration": 79999}, path)
    return path


def outputs(segmenter: CatSegSegmenter) -> torch.Tensor:
    with torch.no_grad():
        return segmenter.forward_logits(batch(), VOCABULARY)


def test_official_layout_has_the_published_key_names():
    state = official_layout(tiny_segmenter(0))
    for key in (
        "sem_seg_head.predictor.clip_model.visual.transformer.resblocks.0.attn.q_proj_weight",
        "sem_seg_head.predictor.clip_model.visual.transformer.resblocks.2.attn.in_proj_bias",
        "sem_seg_head.predictor.clip_model.transformer.resblocks.1.attn.v_proj_weight",
        "sem_seg_head.predictor.clip_model.token_embedding.weight",
        "sem_seg_head.predictor.clip_model.text_projection",
        "sem_seg_head.predictor.transformer.conv1.weight",
        "sem_seg_head.predictor.transformer.guidance_projection.0.weight",
        "sem_seg_head.predictor.transformer.text_guidance_projection.0.weight",
        "sem_seg_head.predictor.transformer.decoder_guidance_projection.1.0.weight",
        "sem_seg_head.predictor.transformer.layers.1.swin_block.block_2.attn.q.weight",
        "sem_seg_head.predictor.transformer.layers.0.swin_block.block_1.mlp.fc2.weight",
        "sem_seg_head.predictor.transformer.layers.0.swin_block.guidance_norm.weight",
        "sem_seg_head.predictor.transformer.layers.0.attention.attention.k.weight",
        "sem_seg_head.predictor.transformer.layers.0.attention.MLP.2.weight",
        "sem_seg_head.predictor.transformer.layers.1.attention.padding_tokens",
        "sem_seg_head.predictor.transformer.layers.1.attention.padding_guidance",
        "sem_seg_head.predictor.transformer.decoder1.up.weight",
        "sem_seg_head.predictor.transformer.decoder2.conv.double_conv.4.weight",
        "sem_seg_head.predictor.transformer.head.weight",
        "upsample1.weight",
        "upsample2.bias",
    ):
        assert key in state, key
    # pos-embed stays at the pretrained 4x4 grid (+ CLS); the 6x6 resize happens in the forward
    assert state["sem_seg_head.predictor.clip_model.visual.positional_embedding"].shape == (17, 32)
    assert not any(key.endswith("in_proj_weight") for key in state)


def test_official_checkpoint_loads_and_reproduces_the_outputs(tmp_path):
    source = tiny_segmenter(0)
    path = save_official(tmp_path / "model_final.pth", official_layout(source))
    target = tiny_segmenter(1)
    assert not torch.allclose(outputs(target), outputs(source))
    target.load_checkpoint(path)
    assert torch.allclose(outputs(target), outputs(source), atol=1e-5)


def test_official_checkpoint_with_packed_openai_attention_also_loads(tmp_path):
    source = tiny_segmenter(0)
    state = pack_split_qkv(official_layout(source))
    # the Swin shift masks are derived from the configuration; a file may lack them
    masks = [key for key in state if key.endswith("attn_mask")]
    assert masks == [f"sem_seg_head.predictor.transformer.layers.{i}.swin_block.block_2.attn_mask" for i in (0, 1)]
    for key in masks:
        del state[key]
    path = save_official(tmp_path / "packed.pth", state)
    target = tiny_segmenter(1)
    target.load_checkpoint(path)
    assert torch.allclose(outputs(target), outputs(source), atol=1e-5)


def test_export_writes_the_official_key_names():
    # That conversion and export invert each other is a row of the contract (tests/test_contract.py).
    segmenter = tiny_segmenter(0)
    official = to_official_state_dict(segmenter.model.state_dict())
    assert set(official) == set(official_layout(segmenter)) - {"sem_seg_head.predictor.clip_model.logit_scale"}


def test_missing_and_unexpected_keys_are_one_error_line(tmp_path):
    state = official_layout(tiny_segmenter(0))
    del state["sem_seg_head.predictor.transformer.head.weight"]
    state["sem_seg_head.predictor.transformer.extra_head.weight"] = torch.zeros(1)
    path = save_official(tmp_path / "broken.pth", state)
    target = tiny_segmenter(1)
    reference = outputs(target)
    with pytest.raises(CheckpointError) as info:
        target.load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    assert "1 missing keys" in message and "transformer.head.weight" in message
    assert "1 unexpected keys" in message and "extra_head" in message
    assert torch.equal(outputs(target), reference)  # nothing was loaded


def test_checkpoint_of_another_size_names_the_shape_mismatch(tmp_path):
    path = save_official(tmp_path / "wide.pth", official_layout(tiny_segmenter(0, hidden_dim=32)))
    with pytest.raises(CheckpointError, match="shape mismatches") as info:
        tiny_segmenter(1).load_checkpoint(path)
    assert "\n" not in str(info.value) and "(32,) vs (16,)" in str(info.value)


def test_ovbench_checkpoint_round_trip_and_text_cache_refresh(tmp_path):
    source = tiny_segmenter(0)
    path = tmp_path / "ovbench.pt"
    torch.save({"model": source.state_dict(), "iteration": 10}, path)
    target = tiny_segmenter(1)
    stale = outputs(target)  # fills the evaluation text cache with the old text tower
    target.load_checkpoint(path)
    assert torch.allclose(outputs(target), outputs(source), atol=1e-5)
    assert not torch.allclose(outputs(target), stale)


def test_unreadable_and_non_state_dict_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        tiny_segmenter(0).load_checkpoint(tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot load"):
        tiny_segmenter(0).load_checkpoint(garbage)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        tiny_segmenter(0).load_checkpoint(tmp_path / "list.pth")


def test_official_file_is_usable_by_open_clip_after_packing():
    # the CLIP part of an official file, packed back, is an ordinary OpenAI-layout CLIP state dict
    state = official_layout(tiny_segmenter(0))
    prefix = "sem_seg_head.predictor.clip_model."
    clip_state = pack_split_qkv({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    clip = open_clip.CLIP(**copy.deepcopy(TINY_CLIP))
    missing, unexpected = clip.load_state_dict(clip_state, strict=False)
    assert not missing and not unexpected
