"""Adapter for `scan` (and `scan-remoteclip`, the same adapter with RemoteCLIP weights): binds
`ovbench_methods.scan` (SCAN, CVPR 2024) to the harness interface.

Training goes through `MaskClassificationSegmenter` (per-class target masks, Mask2Former's
criterion); inference through `TwoStageSegmenter` (crops classified by the CS-CLIP with
seeded contextual shift; λ, MASK_THR and REPLACE_RATIO per evaluation set, the seed in every
record). Checkpoints: ovbench files and the authors' ``SCAN.pth`` (segmentation checkpoint
with CS-CLIP swapped in; docs/methods/scan.md#checkpoint-layout), converted here.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from torch import Tensor

from ovbench_adapters.common.two_stage import CLIP_ADAPTER_RENAMES, TwoStageSegmenter, from_two_stage_layout, to_two_stage_layout
from ovbench_methods.common.backbones import swin_from_official, swin_to_official
from ovbench_methods.scan.calibration import OFFICIAL_KEY_PREFIXES as CALIBRATION_PREFIXES
from ovbench_methods.scan.config import ScanConfig
from ovbench_methods.scan.model import ScanModel, build_scan_model

__all__ = ["OFFICIAL_PREFIXES", "ScanConfig", "ScanSegmenter", "convert_official_state_dict", "to_official_state_dict"]

#: Key prefixes that mark the official SCAN state dict (docs/methods/scan.md#checkpoint-layout).
OFFICIAL_PREFIXES = ("sem_seg_head.", "clip_adapter.")

_RENAMES = [
    ("sem_seg_head.pixel_decoder.", "pixel_decoder."),
    ("sem_seg_head.predictor.", "predictor."),
    *((prefix, "calibration." + prefix) for prefix in CALIBRATION_PREFIXES),
    ("clip_adapter.original_clip.", "original_clip.visual."),
    *CLIP_ADAPTER_RENAMES,
]


def convert_official_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Official SCAN keys -> `ScanModel` keys (Swin through its converter, the rest by prefix)."""
    return from_two_stage_layout(state, _RENAMES, swin_from_official)


def to_official_state_dict(model_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`ScanModel` keys -> the official layout (inverse of `convert_official_state_dict`)."""
    return to_two_stage_layout(model_state, _RENAMES, swin_to_official)


class ScanSegmenter(TwoStageSegmenter):
    """SCAN behind the uniform interface."""

    method_name = "scan"
    config_class = ScanConfig
    official_prefixes: ClassVar[tuple[str, ...]] = OFFICIAL_PREFIXES
    official_checkpoint_name = "official SCAN checkpoint"
    model: ScanModel

    build_method_model = staticmethod(build_scan_model)
    convert_official_state_dict = staticmethod(convert_official_state_dict)
    to_official_state_dict = staticmethod(to_official_state_dict)

    def official_state_dict(self) -> dict[str, Tensor]:
        return to_official_state_dict(self.model.state_dict())
