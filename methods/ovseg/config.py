"""OV-Seg's settings. The defaults are the published R101c + ViT-B/16 setting
(configs/ovseg_R101c_vitB_bs32_120k.yaml over the repository's config defaults);
`configs/methods/ovseg.yaml` states only what differs (recipes, the Swin-B + ViT-L/14 row,
the `tiny` scale). Notes on every field: docs/methods/ovseg.md#settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ovbench_methods.common.backbones import ResNetDeepLabConfig, SwinConfig
from ovbench_methods.common.errors import MethodConfigError, require_positive_ints
from ovbench_methods.common.set_criterion import SetCriterionConfig
from ovbench_methods.common.two_stage import ClipBranchSettings, check_per_eval_set

__all__ = ["BackboneName", "OvsegConfig", "OvsegConfigError"]

#: "r101c" (ResNet-101, DeepLab stem, multi-grid res5) or "swin" (Swin-B 384, window 12).
BackboneName = Literal["r101c", "swin"]


class OvsegConfigError(MethodConfigError):
    """Settings that do not describe a valid OV-Seg model."""


def _maskformer_criterion() -> SetCriterionConfig:
    return SetCriterionConfig.maskformer()


@dataclass
class OvsegConfig:
    """OV-Seg. Types are checked by whoever builds the config from a file; `__post_init__`
    checks ranges and the relations between fields."""

    # ---------------------------------------------------------------- backbone
    backbone: BackboneName = "r101c"
    resnet: ResNetDeepLabConfig = field(default_factory=ResNetDeepLabConfig)
    swin: SwinConfig = field(default_factory=SwinConfig)
    #: the backbone's learning rate relative to the base rate (SOLVER.BACKBONE_MULTIPLIER; Swin-B 1.0).
    backbone_multiplier: float = 0.1
    #: the authors' ImageNet backbone file (R-103.pkl / swin_base_patch4_window12_384_22k.pkl), or None.
    backbone_weights: str | None = None

    # -------------------------------------------------------------------- CLIP
    #: open_clip model name (OpenAI ViT-B/16; the Swin-B row uses ViT-L-14).
    arch: str = "ViT-B-16"
    #: open_clip pretrained tag, a CLIP file (OpenAI .pt, open_clip checkpoint, OV-Seg's
    #: mask-adapted CLIP), or None = random init.
    clip_weights: str | None = "openai"
    #: explicit open_clip config (tiny models); overrides arch.
    model_config: dict[str, Any] | None = None
    #: OpenAI's CLIP uses QuickGELU.
    quick_gelu: bool | None = True
    #: OV-Seg's CLIP-stage file (fine-tuned + mask prompts; open_clip layout, ``module.`` keys)
    #: loaded over `clip_weights`, or None (docs/methods/ovseg.md#checkpoint-layout).
    mask_adapted_clip: str | None = None
    #: mask prompt tuning: depth of `mask_embedding` (MASK_PROMPT_DEPTH) and whether crops are
    #: classified through it (MASK_PROMPT_FWD; the released "ft + mpt" weights: True).
    mask_prompt_depth: int = 3
    mask_prompt_fwd: bool = True

    # -------------------------------------------------------------------- head
    conv_dim: int = 256
    mask_dim: int = 256
    hidden_dim: int = 256
    num_queries: int = 100
    nheads: int = 8
    dropout: float = 0.1
    dim_feedforward: int = 2048
    dec_layers: int = 6
    pre_norm: bool = False
    #: the class-embedding MLP 256 -> 1024 -> D (EMBED_HIDDEN_DIM, EMBED_LAYERS).
    class_hidden_dim: int = 1024
    class_layers: int = 2
    #: supervise every decoder layer's prediction (DEEP_SUPERVISION).
    deep_supervision: bool = True
    #: images are zero-padded to a multiple of this after normalisation (MASK_FORMER.SIZE_DIVISIBILITY).
    size_divisibility: int = 32

    # -------------------------------------------------------------- classifier
    templates: str | list[str] = "vild14"
    #: fixed cosine temperature of both classifiers (get_sim_logits).
    temperature: float = 100.0
    #: the CLIP branch at inference: λ 0.7, MASK_THR 0.5 for R101c (0.4 for Swin-B).
    clip_branch: ClipBranchSettings = field(default_factory=lambda: ClipBranchSettings(weight=0.7, mask_threshold=0.5))
    #: per evaluation set: {set name: {field of clip_branch: value}} (docs/methods/ovseg.md#per-dataset-settings).
    per_eval_set: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -------------------------------------------------------------------- loss
    criterion: SetCriterionConfig = field(default_factory=_maskformer_criterion)

    def __post_init__(self) -> None:
        if self.backbone not in get_args(BackboneName):
            raise OvsegConfigError(f"backbone must be one of {list(get_args(BackboneName))}, got {self.backbone!r}")
        require_positive_ints(self, ("conv_dim", "mask_dim", "hidden_dim", "num_queries", "nheads", "dim_feedforward",
                                     "dec_layers", "class_hidden_dim", "class_layers"), OvsegConfigError)
        if self.hidden_dim % self.nheads:
            raise OvsegConfigError(f"hidden_dim {self.hidden_dim} is not a multiple of nheads {self.nheads}")
        if self.mask_prompt_depth < 1:
            raise OvsegConfigError(f"mask_prompt_depth must be at least 1, got {self.mask_prompt_depth}")
        if not 0 <= self.dropout < 1:
            raise OvsegConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.size_divisibility < 0:
            raise OvsegConfigError(f"size_divisibility must not be negative, got {self.size_divisibility}")
        if self.backbone_multiplier < 0:
            raise OvsegConfigError(f"backbone_multiplier must not be negative, got {self.backbone_multiplier}")
        if self.temperature <= 0:
            raise OvsegConfigError(f"temperature must be positive, got {self.temperature}")
        if isinstance(self.clip_branch, dict):
            self.clip_branch = ClipBranchSettings(**self.clip_branch)
        check_per_eval_set(self.per_eval_set, self.clip_branch)

