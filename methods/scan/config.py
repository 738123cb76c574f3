"""SCAN's settings. The defaults are the published ViT-B/16 setting (configs/scan_vitB.yaml
over the repository's config defaults); `configs/methods/scan.yaml` states only what differs
(recipes, the `tiny` scale), `scan-remoteclip.yaml` the RemoteCLIP variant. Notes on every
field: docs/methods/scan.md#settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ovbench_methods.common.backbones import SwinConfig
from ovbench_methods.common.errors import MethodConfigError, require_positive_ints
from ovbench_methods.common.mask2former_settings import Mask2FormerSettings
from ovbench_methods.common.set_criterion import SetCriterionConfig
from ovbench_methods.common.two_stage import ClipBranchSettings, check_per_eval_set
from ovbench_methods.scan.calibration import ScanCalibrationConfig

__all__ = ["ContextResize", "ScanClipBranchSettings", "ScanConfig", "ScanConfigError"]

#: How the padded image is brought to CLIP's 224 for the original-CLIP pass.
ContextResize = Literal["nearest", "bilinear"]


class ScanConfigError(MethodConfigError):
    """Settings that do not describe a valid SCAN model."""


@dataclass
class ScanClipBranchSettings(ClipBranchSettings):
    """OV-Seg's CLIP-branch settings plus SCAN's contextual shift (docs/methods/scan.md#contextual-shift)."""

    #: share of each crop's background patches overwritten (REPLACE_RATIO).
    replace_ratio: float = 0.15
    #: 1-based CLIP blocks after which they are overwritten (REPLACE_LAYER; ViT-L [1,3,5,7,9]).
    replace_layers: list[int] = field(default_factory=lambda: [1, 3, 5])
    #: seed of the draw (the official code draws from an unseeded generator); every image
    #: starts from it, so a prediction does not depend on the images evaluated before it.
    shift_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= float(self.replace_ratio) <= 1.0:
            raise MethodConfigError(f"replace_ratio must be in [0, 1], got {self.replace_ratio}")
        if any(int(layer) < 1 for layer in self.replace_layers):
            raise MethodConfigError(f"replace_layers are 1-based CLIP blocks, got {self.replace_layers}")


def _default_branch() -> ScanClipBranchSettings:
    return ScanClipBranchSettings(weight=0.7, mask_threshold=0.4)


def _mask2former_criterion() -> SetCriterionConfig:
    # DEC_LAYERS 10 builds 10 layers (11 predictions) but the loss weights cover 9 of the
    # 10 deep-supervision outputs (docs/methods/scan.md#ten-decoder-layers).
    return SetCriterionConfig(supervised_aux_outputs=9)


@dataclass
class ScanConfig(Mask2FormerSettings):
    """SCAN. Types are checked by whoever builds the config from a file; `__post_init__`
    checks ranges and relations."""

    # ---------------------------------------------------------------- backbone
    swin: SwinConfig = field(default_factory=SwinConfig)
    #: the authors' ImageNet-22k Swin file (swin_base_patch4_window12_384_22k.pkl), or None.
    backbone_weights: str | None = None
    backbone_multiplier: float = 1.0

    # -------------------------------------------------------------------- CLIP
    #: open_clip model name and pretrained tag (DataComp ViT-B-16; RemoteCLIP: a weights file).
    arch: str = "ViT-B-16"
    clip_weights: str | None = "datacomp_xl_s13b_b90k"
    model_config: dict[str, Any] | None = None
    #: DataComp weights use GELU.
    quick_gelu: bool | None = False
    #: the released CS-CLIP visual tower (open_clip layout) loaded into the crop branch, or None.
    cs_clip_weights: str | None = None
    #: resize of the padded image to 224 for the original CLIP: "nearest" (official) or "bilinear".
    context_resize: ContextResize = "nearest"

    # -------------------------------------------------------------------- head
    # (the shared Mask2Former settings, `Mask2FormerSettings`, come first in the field order)
    #: decoder layers actually built: the official 10 (DEC_LAYERS passed without the usual -1).
    dec_layers: int = 10
    class_hidden_dim: int = 1024
    class_layers: int = 2
    size_divisibility: int = 32

    # -------------------------------------------------------------- calibration
    #: the calibration stack (docs/methods/scan.md#semantic-assisted-calibration): CLIP blocks
    #: 6/9/12 (SELECT_ORI_CLIP_ID; ViT-L 12/18/24), σ 9/7/3 (FREQUENCY_SIGMA), SCAN_DIM 512 (ViT-L
    #: 768; also the class head's output), 5 + 5 layers; its `clip_width` and `grid` are taken
    #: from the CLIP the model is built with.
    calibration: ScanCalibrationConfig = field(default_factory=ScanCalibrationConfig)

    # -------------------------------------------------------------- classifier
    templates: str | list[str] = "vild14"
    temperature: float = 100.0
    clip_branch: ScanClipBranchSettings = field(default_factory=_default_branch)
    per_eval_set: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -------------------------------------------------------------------- loss
    criterion: SetCriterionConfig = field(default_factory=_mask2former_criterion)

    def __post_init__(self) -> None:
        self.check_head_settings(ScanConfigError)
        require_positive_ints(self, ("dec_layers", "class_hidden_dim", "class_layers"), ScanConfigError)
        if self.context_resize not in get_args(ContextResize):
            raise ScanConfigError(f"context_resize must be one of {list(get_args(ContextResize))}, got {self.context_resize!r}")
        if self.backbone_multiplier < 0:
            raise ScanConfigError(f"backbone_multiplier must not be negative, got {self.backbone_multiplier}")
        if self.size_divisibility < 0:
            raise ScanConfigError(f"size_divisibility must not be negative, got {self.size_divisibility}")
        if isinstance(self.clip_branch, dict):
            self.clip_branch = ScanClipBranchSettings(**self.clip_branch)
        check_per_eval_set(self.per_eval_set, self.clip_branch)
