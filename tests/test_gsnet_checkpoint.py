"""GSNet checkpoints: the authors' detectron2 layout, the RSIB (DINO) file, ovbench's own.

The official file is written here in its exact layout
(docs/methods/gsnet.md#module-and-state-dict-correspondence), assembled from
the sub-modules the way the official model nests them: ``{"model": state_dict, "iteration":
...}`` with ``sem_seg_head.predictor.clip_model.*`` (both CLIP towers, split q/k/v weights,
packed in_proj_bias, pos-embed at the pretrained size, ``logit_scale``),
``sem_seg_head.predictor.transformer.*`` (fusion convolutions, guidance projections, the
aggregator layers, ``Fusiondecoder1/2``, ``head`` all at one level) and, at the top level,
``upsample1/2``, ``dino_down_sample``, ``dino_decod_proj1/2`` and ``dino_model.*``. The RSIB
file is a DINO training checkpoint: ``{"teacher": {"module.backbone.<DINO keys>", head...}}``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ovbench_adapters.gsnet import GsNetSegmenter, to_official_state_dict
from ovbench_methods.common.clip_qkv import pack_split_qkv
from ovbench import registry
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError
from checkpoint_fixtures import perturb_parameters

VOCABULARY = Vocabulary(["road", "tree", "building", "water"])
CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
HEAD_PREFIX = "sem_seg_head.predictor.transformer."


def tiny(method: str = "gsnet", seed: int = 0, **model_overrides) -> GsNetSegmenter:
    resolved = registry.resolve_method(method, scale="tiny", overrides={"model": model_overrides} if model_overrides else None)
    torch.manual_seed(seed)
    segmenter = registry.build_segmenter(resolved).eval()
    return perturb_parameters(segmenter, seed)


def batch() -> torch.Tensor:
    return torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(3)) * 255


def outputs(segmenter: GsNetSegmenter) -> torch.Tensor:
    with torch.no_grad():
        return segmenter.forward_logits(batch(), VOCABULARY)


def official_layout(segmenter: GsNetSegmenter) -> OrderedDict:
    """The detectron2 state dict the official code would save for this model."""
    model = segmenter.model
    state: OrderedDict = OrderedDict()
    for key, value in model.image_encoder.visual.state_dict().items():
        state[CLIP_PREFIX + "visual." + key] = value
    for key, value in model.text_encoder.state_dict().items():
        state[CLIP_PREFIX + key] = value
    state[CLIP_PREFIX + "logit_scale"] = torch.tensor(4.6052)
    head = model.transformer
    # RIPD keeps the fusion convolutions and the decoder parts next to the aggregator layers.
    for part in (head.fusion, head.decoder):
        for key, value in part.state_dict().items():
            state[HEAD_PREFIX + key] = value
    for name in ("guidance_projection", "text_guidance_projection", "layers"):
        for key, value in getattr(head, name).state_dict().items():
            state[f"{HEAD_PREFIX}{name}.{key}"] = value
    for name in ("upsample1", "upsample2"):
        if getattr(model, name) is not None:
            for key, value in getattr(model, name).state_dict().items():
                state[f"{name}.{key}"] = value
    if model.rsib_projections is not None:
        for key, value in model.rsib_projections.state_dict().items():
            state[key] = value
        for key, value in model.dino_model.state_dict().items():
            state["dino_model." + key] = value
    return state


def save_official(path: Path, state: dict) -> Path:
    torch.save({"model": state, "iteration": 29999}, path)
    return path


def dino_training_checkpoint(segmenter: GsNetSegmenter) -> dict:
    """A DINO training checkpoint: teacher and student, DDP + multi-crop prefixes, projection head."""
    teacher = {f"module.backbone.{key}": value.clone() for key, value in segmenter.model.dino_model.state_dict().items()}
    teacher["module.head.last_layer.weight_g"] = torch.ones(1, 8)
    return {"teacher": teacher, "student": {"module.backbone.cls_token": torch.zeros(1, 1, 1)}, "epoch": 100}


# --------------------------------------------------------------------- official
def test_official_layout_has_the_published_key_names():
    state = official_layout(tiny())
    for key in (
        CLIP_PREFIX + "visual.transformer.resblocks.0.attn.q_proj_weight",
        CLIP_PREFIX + "visual.transformer.resblocks.0.attn.in_proj_bias",
        CLIP_PREFIX + "transformer.resblocks.1.attn.v_proj_weight",
        CLIP_PREFIX + "visual.positional_embedding",
        HEAD_PREFIX + "conv1.weight",
        HEAD_PREFIX + "conv2.weight",
        HEAD_PREFIX + "fusion_corr.weight",
        HEAD_PREFIX + "guidance_projection.0.weight",
        HEAD_PREFIX + "text_guidance_projection.0.weight",
        HEAD_PREFIX + "CLIP_decoder_guidance_projection.0.0.weight",
        HEAD_PREFIX + "DINO_decoder_guidance_projection.1.0.weight",
        HEAD_PREFIX + "layers.1.swin_block.block_2.attn.q.weight",
        HEAD_PREFIX + "layers.0.attention.padding_tokens",
        HEAD_PREFIX + "layers.0.attention.padding_guidance",
        HEAD_PREFIX + "Fusiondecoder1.up.weight",
        HEAD_PREFIX + "Fusiondecoder2.conv.double_conv.4.weight",
        HEAD_PREFIX + "head.weight",
        "upsample1.weight",
        "upsample2.bias",
        "dino_down_sample.weight",
        "dino_decod_proj1.weight",
        "dino_decod_proj2.weight",
        "dino_model.cls_token",
        "dino_model.pos_embed",
        "dino_model.blocks.11.attn.qkv.weight",
        "dino_model.norm.weight",
    ):
        assert key in state, key
    assert not any(k.endswith("in_proj_weight") or ".fusion." in k or ".decoder." in k or "rsib" in k for k in state)
    assert state[CLIP_PREFIX + "visual.positional_embedding"].shape[0] == 1 + 8 * 8  # tiny pretrained grid, not resized
    assert state["dino_model.pos_embed"].shape[1] == 1 + 8 * 8
    # The export helper writes exactly this layout (without the unused logit_scale).
    exported = to_official_state_dict(tiny().model.state_dict())
    assert set(exported) == set(state) - {CLIP_PREFIX + "logit_scale"}


# the full model (both streams, QGFF, both decoder guidances) by default; the variants' own
# modules are covered by test_variants_build_the_official_modules_only_where_the_official_code_does
@pytest.mark.parametrize(
    "method", ["gsnet", *(pytest.param(m, marks=pytest.mark.slow) for m in ("gsnet/A", "gsnet/C", "gsnet/E", "gsnet/F", "gsnet/G"))]
)
def test_official_checkpoint_loads_and_reproduces_the_outputs(tmp_path, method):
    source, target = tiny(method, seed=0), tiny(method, seed=1)
    expected = outputs(source)
    assert not torch.allclose(outputs(target), expected)
    path = save_official(tmp_path / "model_final.pth", official_layout(source))
    target.load_checkpoint(path)  # raises on any missing or unexpected key
    torch.testing.assert_close(outputs(target), expected)


def test_official_checkpoint_with_packed_openai_attention_also_loads(tmp_path):
    source, target = tiny(seed=0), tiny(seed=1)
    packed = pack_split_qkv(official_layout(source))
    assert any(key.endswith("attn.in_proj_weight") for key in packed)
    target.load_checkpoint(save_official(tmp_path / "packed.pth", packed))
    torch.testing.assert_close(outputs(target), outputs(source))


def test_official_checkpoint_without_the_swin_shift_masks_loads(tmp_path):
    source, target = tiny(seed=0), tiny(seed=1)
    state = official_layout(source)
    masks = [key for key in state if key.endswith(".attn_mask")]
    assert masks  # persistent buffers of the shifted Swin blocks, derived from the configuration
    for key in masks:
        del state[key]
    target.load_checkpoint(save_official(tmp_path / "no_masks.pth", state))
    torch.testing.assert_close(outputs(target), outputs(source))


def test_missing_and_unexpected_keys_are_one_error_line(tmp_path):
    segmenter = tiny()
    state = official_layout(segmenter)
    del state[HEAD_PREFIX + "fusion_corr.weight"]
    state[HEAD_PREFIX + "fusion_feats.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        segmenter.load_checkpoint(save_official(tmp_path / "broken.pth", state))
    message = str(info.value)
    assert "\n" not in message and "1 missing keys" in message and "1 unexpected keys" in message
    assert "transformer.fusion.fusion_corr.weight" in message and "official GSNet checkpoint" in message
    # A checkpoint of another Table 3 row does not fit this one.
    with pytest.raises(CheckpointError, match="does not fit this gsnet configuration"):
        tiny("gsnet/H").load_checkpoint(save_official(tmp_path / "full.pth", official_layout(segmenter)))


def test_ovbench_checkpoint_round_trip_carries_the_rsib(tmp_path):
    source, target = tiny(seed=0), tiny(seed=1)
    path = tmp_path / "iter_0000010.pt"
    torch.save({"model": source.state_dict(), "iteration": 10}, path)
    assert any(key.startswith("model.dino_model.") for key in source.state_dict())
    target.load_checkpoint(path)
    torch.testing.assert_close(outputs(target), outputs(source))


def test_unreadable_and_non_state_dict_files(tmp_path):
    segmenter = tiny()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        segmenter.load_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="not found"):
        segmenter.load_checkpoint(tmp_path / "absent.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        segmenter.load_checkpoint(tmp_path / "list.pth")


# -------------------------------------------------------------------------- RSIB
def test_rsib_training_checkpoint_loads_the_teacher_only(tmp_path):
    source, target = tiny(seed=0), tiny(seed=1)
    path = tmp_path / "rsib_checkpoint.pth"
    torch.save(dino_training_checkpoint(source), path)
    target.load_rsib_checkpoint(path)
    for key, value in source.model.dino_model.state_dict().items():
        assert torch.equal(target.model.dino_model.state_dict()[key], value), key
    assert not any(p.requires_grad for p in target.model.dino_model.parameters())  # still frozen
    head_before = target.model.transformer.fusion.conv1.weight.clone()
    other = tiny(seed=2)
    other.load_checkpoint(path)  # load_checkpoint recognises the DINO layout and loads only the RSIB
    assert torch.equal(other.model.dino_model.cls_token, source.model.dino_model.cls_token)
    assert torch.equal(target.model.transformer.fusion.conv1.weight, head_before)


def test_rsib_file_named_by_rsib_ckpt_is_loaded_at_build(tmp_path, monkeypatch):
    source = tiny(seed=0)
    path = tmp_path / "rsib.pth"
    torch.save({key: value.clone() for key, value in source.model.dino_model.state_dict().items()}, path)
    monkeypatch.setenv("RSIB_CKPT", str(path))
    built = registry.build_segmenter(
        registry.resolve_method("gsnet", scale="tiny", overrides={"model": {"dino_weights": "$RSIB_CKPT"}})
    )
    assert torch.equal(built.model.dino_model.pos_embed, source.model.dino_model.pos_embed)


def test_rsib_checkpoint_problems_are_one_line(tmp_path):
    segmenter = tiny()
    partial = {key: value for key, value in segmenter.model.dino_model.state_dict().items() if not key.startswith("blocks.3.")}
    torch.save({"teacher": partial}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing") as info:
        segmenter.load_rsib_checkpoint(tmp_path / "partial.pth")
    assert "\n" not in str(info.value) and "blocks.3." in str(info.value)
    official = tiny(dino_key_check="official")
    official.load_rsib_checkpoint(tmp_path / "partial.pth")  # strict=False, as the official loader
    torch.save(dino_training_checkpoint(segmenter), tmp_path / "rsib.pth")
    with pytest.raises(CheckpointError, match="no RSIB"):
        tiny("gsnet/A").load_rsib_checkpoint(tmp_path / "rsib.pth")
    other_size = tiny(dino_arch={"variant": "vit_base_8", "embed_dim": 32, "depth": 12, "num_heads": 4, "pretrain_img_size": 64})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        other_size.load_rsib_checkpoint(tmp_path / "rsib.pth")
