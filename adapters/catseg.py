"""Adapter for `catseg`: binds `ovbench_methods.catseg` (CAT-Seg, CVPR 2024) to the harness interface.

It turns a `Vocabulary` into name tuples, targets into the per-pixel BCE the method trains
with, the model's parameters into the official optimiser groups (CLIP q/v at 0.01x), and
checkpoints into the model's keys: ovbench checkpoints and the authors' detectron2 files
(``model_base.pth`` / ``model_large.pth``). The settings are `CatSegConfig`, defined with
the model.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from ovbench_adapters.common.clip_cost_volume import ClipCostVolumeSegmenter
from ovbench_adapters.common.official_checkpoint import detectron2_clip_renames, inverse_renames, rename_prefixes
from ovbench_methods.catseg.config import CatSegConfig
from ovbench_methods.catseg.model import CatSegModel, build_catseg_model
from ovbench_methods.common.clip_qkv import split_packed_qkv

__all__ = ["CatSegConfig", "CatSegSegmenter", "convert_official_state_dict", "to_official_state_dict"]

#: Prefixes of the official detectron2 state dict
#: (docs/methods/catseg.md#module-and-state-dict-correspondence).
OFFICIAL_CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
OFFICIAL_HEAD_PREFIX = "sem_seg_head.predictor.transformer."
#: Official CLIP entries CAT-Seg never uses; dropped on load.
UNUSED_CLIP_KEYS = (OFFICIAL_CLIP_PREFIX + "logit_scale",)
#: Official prefix -> model prefix; ``upsample1/2.*`` keep their names.
RENAMES = detectron2_clip_renames(OFFICIAL_CLIP_PREFIX, OFFICIAL_HEAD_PREFIX)


def convert_official_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Official detectron2 CAT-Seg keys -> `CatSegModel` keys.

    ``sem_seg_head.predictor.clip_model.visual.*`` -> ``image_encoder.visual.*``; its text-tower
    keys -> ``text_encoder.*``; ``sem_seg_head.predictor.transformer.*`` -> ``transformer.*``;
    ``upsample1/2.*`` unchanged; ``clip_model.logit_scale`` dropped (unused). Packed
    ``in_proj_weight`` entries (an OpenAI-layout CLIP) are split into q/k/v. Keys that fit
    none of these are passed through unchanged, so that the loader reports them.
    """
    return split_packed_qkv(rename_prefixes(state, RENAMES, drop=UNUSED_CLIP_KEYS))


def to_official_state_dict(model_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`CatSegModel` keys -> the official detectron2 layout (inverse of `convert_official_state_dict`,
    without ``logit_scale``); used to export weights for the authors' code and by the tests."""
    return rename_prefixes(model_state, inverse_renames(RENAMES))


class CatSegSegmenter(ClipCostVolumeSegmenter):
    """CAT-Seg behind the uniform interface."""

    method_name = "catseg"
    config_class = CatSegConfig
    official_checkpoint_name = "official CAT-Seg checkpoint"
    model: CatSegModel

    build_method_model = staticmethod(build_catseg_model)
    convert_official_state_dict = staticmethod(convert_official_state_dict)
    to_official_state_dict = staticmethod(to_official_state_dict)
