"""Adapter for `ovseg`: binds `ovbench_methods.ovseg` (OV-Seg, CVPR 2023) to the harness interface.

Training goes through `MaskClassificationSegmenter` (per-class target masks, MaskFormer's
criterion); inference through `TwoStageSegmenter` (each proposal classified again by the
mask-adapted CLIP, λ and MASK_THR per evaluation set). Checkpoints: ovbench files and the
authors' detectron2 files ``ovseg_R101c_vitB16_ft_mpt.pth`` / ``ovseg_swinbase_vitL14_ft_mpt.pth``
(docs/methods/ovseg.md#checkpoint-layout), converted here.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from torch import Tensor

from ovbench_adapters.common.two_stage import CLIP_ADAPTER_RENAMES, TwoStageSegmenter, from_two_stage_layout, to_two_stage_layout
from ovbench_methods.common.backbones import (
    resnet_from_official,
    resnet_to_official,
    swin_from_official,
    swin_to_official,
)
from ovbench_methods.ovseg.config import OvsegConfig
from ovbench_methods.ovseg.model import OvsegModel, build_ovseg_model

__all__ = ["OFFICIAL_PREFIXES", "OvsegConfig", "OvsegSegmenter", "convert_official_state_dict", "to_official_state_dict"]

#: Key prefixes of the official OV-Seg state dict (docs/methods/ovseg.md#checkpoint-layout).
OFFICIAL_PREFIXES = ("sem_seg_head.", "clip_adapter.")

#: official key -> model key, first match wins (the backbone is converted on its own).
_RENAMES = [
    ("sem_seg_head.pixel_decoder.", "pixel_decoder."),
    ("sem_seg_head.predictor.", "predictor."),
    ("clip_adapter.clip_model.visual.mask_embedding", "mask_prompt.mask_embedding"),
    *CLIP_ADAPTER_RENAMES,
]


def _is_swin(state: Mapping[str, Any]) -> bool:
    """A Swin backbone, in either layout, has a patch embedding; R101c a stem."""
    return any(key.startswith("backbone.patch_embed.") for key in state)


def convert_official_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Official detectron2 OV-Seg keys -> `OvsegModel` keys; the backbone (R101c or Swin-B)
    through its own converter."""
    return from_two_stage_layout(state, _RENAMES, swin_from_official if _is_swin(state) else resnet_from_official)


def to_official_state_dict(model_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`OvsegModel` keys -> the official layout (inverse of `convert_official_state_dict`)."""
    return to_two_stage_layout(model_state, _RENAMES, swin_to_official if _is_swin(model_state) else resnet_to_official)


class OvsegSegmenter(TwoStageSegmenter):
    """OV-Seg behind the uniform interface."""

    method_name = "ovseg"
    config_class = OvsegConfig
    official_prefixes: ClassVar[tuple[str, ...]] = OFFICIAL_PREFIXES
    official_checkpoint_name = "official OV-Seg checkpoint"
    model: OvsegModel

    build_method_model = staticmethod(build_ovseg_model)
    convert_official_state_dict = staticmethod(convert_official_state_dict)
    to_official_state_dict = staticmethod(to_official_state_dict)

    def official_state_dict(self) -> dict[str, Tensor]:
        """This model's weights in the official layout."""
        return to_official_state_dict(self.model.state_dict())
