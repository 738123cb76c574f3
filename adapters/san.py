"""Adapter for `san`: binds `ovbench_methods.san` (SAN, CVPR 2023) to the harness interface.

Training and inference go through `MaskClassificationSegmenter` (per-class target masks, the
"masks" inference mode). The optimiser groups are the official ones: every trainable
parameter (side adapter, `bg_embed`, CLIP's visual positional embedding) at the base rate,
with the YAML's `optimizer.no_decay_names` exempting the embeddings from weight decay.
Checkpoints: ovbench files and the authors' detectron2 file ``san_vit_b_16.pth``
(docs/methods/san.md#checkpoint-layout), converted here.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor

from ovbench_adapters.common.mask_classification import MaskClassificationSegmenter
from ovbench_methods.common.errors import WeightsError
from ovbench_methods.san.config import SanConfig
from ovbench_methods.san.model import SanModel, build_san_model

__all__ = [
    "OFFICIAL_PREFIXES",
    "SanConfig",
    "SanSegmenter",
    "convert_official_state_dict",
    "published_feature_last_layer",
    "to_official_state_dict",
]

#: Module prefixes of the official SAN state dict (docs/methods/san.md#checkpoint-layout).
EXTRACTOR = "clip_visual_extractor."
REC_HEAD = "clip_rec_head."
SIDE = "side_adapter_network."
CLASSIFIER = "ov_classifier."
OFFICIAL_PREFIXES = (EXTRACTOR, REC_HEAD, SIDE, CLASSIFIER)

#: Official entries that follow from other settings and are not model weights here:
#: the criterion's no-object class weights (a function of the training vocabulary's size and
#: eos_coef) and the text tower's causal mask, which the official classifier re-registers as
#: a persistent buffer.
DERIVED_OFFICIAL_KEYS = ("criterion.empty_weight", CLASSIFIER + "attn_mask")

_VISUAL = "image_encoder.visual."
_BLOCKS = _VISUAL + "transformer.resblocks."
_TEXT = "text_encoder."
_SIDE = "side_adapter."
_BLOCK_KEY = re.compile(r"resblocks\.(\d+)\.(.+)")


class SanCheckpointError(WeightsError):
    """An official SAN state dict that cannot be converted."""


def _extractor_block_count(state: Mapping[str, Any]) -> int:
    indices = {int(m.group(1)) for key in state if key.startswith(EXTRACTOR) and (m := _BLOCK_KEY.match(key[len(EXTRACTOR):]))}
    if indices and indices != set(range(len(indices))):
        raise SanCheckpointError(f"{EXTRACTOR}resblocks has gaps: {sorted(indices)}")
    return len(indices)


def convert_official_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Official detectron2 SAN keys -> `SanModel` keys.

    - ``clip_visual_extractor.resblocks.i`` -> ``image_encoder.visual.transformer.resblocks.i``; its
      other entries (conv1, class_embedding, positional_embedding, ln_pre) -> ``image_encoder.visual.*``;
    - ``clip_rec_head.resblocks.j`` -> CLIP block ``L + j``, L = the extractor's block count
      (the file's FEATURE_LAST_LAYER_IDX); ``clip_rec_head.ln_post`` / ``proj`` -> ``image_encoder.visual.*``;
    - ``side_adapter_network.*`` -> ``side_adapter.*`` (same names below);
    - ``ov_classifier.bg_embed`` -> ``bg_embed.embedding``, ``ov_classifier.logit_scale`` ->
      ``logit_scale``, the other ``ov_classifier.*`` (text tower) -> ``text_encoder.*``;
    - ``criterion.empty_weight`` and ``ov_classifier.attn_mask`` are dropped (derived).

    Keys that fit none of these pass through unchanged, so that the loader reports them.
    """
    first_rec_block = _extractor_block_count(state)
    converted: dict[str, Any] = {}
    for key, value in state.items():
        if key in DERIVED_OFFICIAL_KEYS:
            continue
        if key.startswith(EXTRACTOR):
            rest = key[len(EXTRACTOR):]
            match = _BLOCK_KEY.match(rest)
            converted[(_BLOCKS + rest[len("resblocks."):]) if match else (_VISUAL + rest)] = value
        elif key.startswith(REC_HEAD):
            rest = key[len(REC_HEAD):]
            match = _BLOCK_KEY.match(rest)
            if match:
                converted[f"{_BLOCKS}{first_rec_block + int(match.group(1))}.{match.group(2)}"] = value
            else:
                converted[_VISUAL + rest] = value
        elif key.startswith(SIDE):
            converted[_SIDE + key[len(SIDE):]] = value
        elif key.startswith(CLASSIFIER):
            rest = key[len(CLASSIFIER):]
            if rest == "bg_embed":
                converted["bg_embed.embedding"] = value
            elif rest == "logit_scale":
                converted["logit_scale"] = value.reshape(()) if isinstance(value, Tensor) else value
            else:
                converted[_TEXT + rest] = value
        else:
            converted[key] = value
    return converted


def published_feature_last_layer(num_blocks: int) -> int:
    """The published split of CLIP's blocks: the last quarter is rerun for recognition
    (ViT-B 12 blocks -> 9, ViT-L 24 -> 18)."""
    return (3 * num_blocks) // 4


def to_official_state_dict(model_state: Mapping[str, Tensor], feature_last_layer: int | None = None) -> dict[str, Tensor]:
    """`SanModel` keys -> the official layout (inverse of `convert_official_state_dict`).

    `feature_last_layer` is where the blocks split between ``clip_visual_extractor`` and
    ``clip_rec_head``; it is not visible in the model's keys, so None means the published
    rule (`published_feature_last_layer`); `SanSegmenter.official_state_dict` passes the
    configured value. The text tower's causal mask ``ov_classifier.attn_mask`` is written
    as the official file holds it; ``criterion.empty_weight`` is not (it depends on the
    training vocabulary's size, which a model does not fix).
    """
    block_indices = {int(m.group(1)) for key in model_state if key.startswith(_BLOCKS) and (m := _BLOCK_KEY.match(key[len(_VISUAL + "transformer."):]))}
    split = published_feature_last_layer(len(block_indices)) if feature_last_layer is None else int(feature_last_layer)
    official: dict[str, Tensor] = {}
    for key, value in model_state.items():
        if key.startswith(_BLOCKS):
            index, rest = key[len(_BLOCKS):].split(".", 1)
            if int(index) < split:
                official[f"{EXTRACTOR}resblocks.{index}.{rest}"] = value
            else:
                official[f"{REC_HEAD}resblocks.{int(index) - split}.{rest}"] = value
        elif key.startswith(_VISUAL):
            rest = key[len(_VISUAL):]
            head = REC_HEAD if rest.startswith(("ln_post.", "proj")) else EXTRACTOR
            official[head + rest] = value
        elif key.startswith(_SIDE):
            official[SIDE + key[len(_SIDE):]] = value
        elif key.startswith(_TEXT):
            official[CLASSIFIER + key[len(_TEXT):]] = value
        elif key == "bg_embed.embedding":
            official[CLASSIFIER + "bg_embed"] = value
        elif key == "logit_scale":
            official[CLASSIFIER + "logit_scale"] = value
        else:
            official[key] = value
    positional = model_state.get(_TEXT + "positional_embedding")
    if positional is not None:
        length = int(positional.shape[0])
        official[CLASSIFIER + "attn_mask"] = torch.full((length, length), float("-inf")).triu_(1)
    return official


class SanSegmenter(MaskClassificationSegmenter):
    """SAN behind the uniform interface."""

    method_name = "san"
    config_class = SanConfig
    official_prefixes: ClassVar[tuple[str, ...]] = OFFICIAL_PREFIXES
    official_checkpoint_name = "official SAN checkpoint"
    model: SanModel

    build_method_model = staticmethod(build_san_model)
    convert_official_state_dict = staticmethod(convert_official_state_dict)
    to_official_state_dict = staticmethod(to_official_state_dict)

    def official_state_dict(self) -> dict[str, Tensor]:
        """This model's weights in the official layout, split where the configuration splits CLIP."""
        return to_official_state_dict(self.model.state_dict(), self.config.feature_last_layer)
