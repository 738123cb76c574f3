"""EBSeg's settings. The defaults are the published EBSeg-B setting (configs/ebseg/ebseg_b.yaml
over the repository's config defaults): OpenAI CLIP ViT-B/16 at 0.5x the padded image, the
SAM ViT-B encoder, CLIP blocks 3/6/9 fused into res3-res5, blocks 10-12 rerun as the
recognition head, the v-v surgery path from block 3, 100 queries, 9 masked-attention layers.
`configs/methods/ebseg.yaml` states only what differs (recipes, the `tiny` scale). Notes on
every field: docs/methods/ebseg.md#settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ovbench_methods.common.errors import MethodConfigError, require_positive_ints
from ovbench_methods.common.mask2former_settings import Mask2FormerSettings
from ovbench_methods.common.sam_encoder import SamEncoderConfig
from ovbench_methods.common.set_criterion import SetCriterionConfig

__all__ = ["EbsegBalancing", "EbsegConfig", "EbsegConfigError", "SscAffinity"]

#: Which vocabulary the SSC loss's text affinity comes from
#: (docs/methods/ebseg.md#text-affinity-of-the-first-vocabulary): "first_vocabulary" keeps the
#: affinity of the first vocabulary the model classified with (official); "loss_vocabulary"
#: uses the vocabulary of each loss call.
SscAffinity = Literal["first_vocabulary", "loss_vocabulary"]


class EbsegConfigError(MethodConfigError):
    """Settings that do not describe a valid EBSeg model."""


@dataclass
class EbsegBalancing:
    """The exponents of the inference-time balancing of the three class embeddings
    (docs/methods/ebseg.md#adab-balancing). Seen classes: pA^(1-alpha-gamma) pD^alpha pB^gamma;
    unseen: pA^(1-beta-gamma) pD^beta pB^gamma. EBSeg-B (0.09, 0.3, 0.7); EBSeg-L (0.12, 0.4, 0.6)."""

    alpha: float = 0.09
    beta: float = 0.3
    gamma: float = 0.7

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise EbsegConfigError(f"balancing {name} must be in [0, 1], got {value!r}")
        for name, value in (("alpha", self.alpha), ("beta", self.beta)):
            if float(value) + float(self.gamma) > 1.0 + 1e-9:
                raise EbsegConfigError(f"balancing {name} + gamma must not exceed 1, got {value} + {self.gamma}")


def _ebseg_criterion() -> SetCriterionConfig:
    # Matching costs 2/5/5; both class heads weigh CLASS_WEIGHT x 0.75 = 1.5
    # (docs/methods/ebseg.md#losses).
    return SetCriterionConfig(class_weight=1.5, matcher_class_cost=2.0, extra_class_heads={"pred_logits_1": 1.5})


@dataclass
class EbsegConfig(Mask2FormerSettings):
    """EBSeg. Types are checked by whoever builds the config from a file; `__post_init__`
    checks ranges and relations."""

    # -------------------------------------------------------------------- SAM
    sam: SamEncoderConfig = field(default_factory=SamEncoderConfig)
    #: the official SAM file (sam_vit_b_01ec64.pth), or None = random init (the released EBSeg
    #: checkpoints carry the encoder weights themselves).
    sam_weights: str | None = None

    # -------------------------------------------------------------------- CLIP
    arch: str = "ViT-B-16"
    clip_weights: str | None = "openai"
    model_config: dict[str, Any] | None = None
    quick_gelu: bool | None = True
    #: CLIP sees the padded image resized by this factor (bilinear; ViT-L 0.7).
    clip_resolution: float = 0.5
    #: 1-based CLIP blocks whose outputs are fused into res3, res4, res5 (ViT-L [6, 12, 18]).
    fusion_layers: list[int] = field(default_factory=lambda: [3, 6, 9])
    #: CLIP blocks 1..this feed the decoder; the blocks after it are rerun as the recognition
    #: head (ViT-L 18).
    rec_first_layer: int = 9
    #: the 1-based CLIP block from which the v-v surgery path runs at inference; None = the
    #: official rule, block layers // 6 + 1 (ViT-B 3, ViT-L 5).
    surgery_first_layer: int | None = None
    #: name fragments of the CLIP visual parameters (official `clip_visual_extractor` names)
    #: that train; the official CLIP_FROZEN_EXCLUDE.
    clip_frozen_exclude: list[str] = field(default_factory=lambda: ["positional_embedding"])
    #: the same for the recognition head (its official names: resblocks.<j>.*, ln_post.*, proj);
    #: the official head freezes everything.
    clip_deeper_frozen_exclude: list[str] = field(default_factory=list)
    #: attention-bias heads: CLIP's head count (ViT-B 12, ViT-L 16).
    attn_bias_heads: int = 12
    #: how the bias reaches the CLIP grid (REC_DOWNSAMPLE_METHOD): "max" pooling (official).
    rec_downsample: str = "max"
    #: run the recognition head for every prediction at inference, as the official code does
    #: (only the last is used); False runs the last alone, with the same result.
    rec_all_predictions_at_inference: bool = True

    # -------------------------------------------------------------------- head
    # (the shared Mask2Former settings, `Mask2FormerSettings`, come first in the field order:
    # 256 wide, 100 queries, 9 masked-attention layers = DEC_LAYERS 10 - 1, 10 predictions)
    #: the A embedding's scale is clamped to at most this (init 1).
    embedding_scale_max: float = 10.0
    size_divisibility: int = 32

    # ------------------------------------------------------------- classifier
    templates: str | list[str] = "vild14"
    balancing: EbsegBalancing = field(default_factory=EbsegBalancing)

    # -------------------------------------------------------------------- loss
    criterion: SetCriterionConfig = field(default_factory=_ebseg_criterion)
    #: weight of the SSC loss on the final prediction (official 10; 0 switches it off).
    ssc_weight: float = 10.0
    #: the SSC Gram matrix uses the scaled A embeddings (official; the scale enters squared);
    #: False compares the unit embeddings.
    ssc_scaled_gram: bool = True
    ssc_affinity: SscAffinity = "first_vocabulary"

    def __post_init__(self) -> None:
        self.check_head_settings(EbsegConfigError)
        require_positive_ints(self, ("rec_first_layer", "attn_bias_heads"), EbsegConfigError)
        if isinstance(self.sam, dict):
            self.sam = SamEncoderConfig(**self.sam)
        if isinstance(self.balancing, dict):
            self.balancing = EbsegBalancing(**self.balancing)
        if isinstance(self.criterion, dict):
            self.criterion = SetCriterionConfig(**self.criterion)
        if not 0 < self.clip_resolution <= 4:
            raise EbsegConfigError(f"clip_resolution must be in (0, 4], got {self.clip_resolution}")
        if len(self.fusion_layers) != 3:
            raise EbsegConfigError(f"fusion_layers names the CLIP blocks fused into res3, res4, res5: three, got {self.fusion_layers}")
        for layer in self.fusion_layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= self.rec_first_layer:
                raise EbsegConfigError(
                    f"fusion_layers must be 1-based CLIP blocks up to rec_first_layer {self.rec_first_layer}, got {self.fusion_layers}"
                )
        if self.surgery_first_layer is not None and not 1 <= int(self.surgery_first_layer) <= self.rec_first_layer:
            raise EbsegConfigError(
                f"surgery_first_layer must be a 1-based CLIP block up to rec_first_layer {self.rec_first_layer}, got {self.surgery_first_layer}"
            )
        if self.rec_downsample not in ("max", "avg", "bilinear", "bicubic", "nearest"):
            raise EbsegConfigError(f"rec_downsample must be max, avg, bilinear, bicubic or nearest, got {self.rec_downsample!r}")
        if self.embedding_scale_max <= 0:
            raise EbsegConfigError(f"embedding_scale_max must be positive, got {self.embedding_scale_max}")
        if self.size_divisibility < 0:
            raise EbsegConfigError(f"size_divisibility must not be negative, got {self.size_divisibility}")
        if self.ssc_weight < 0:
            raise EbsegConfigError(f"ssc_weight must not be negative, got {self.ssc_weight}")
        if self.ssc_affinity not in get_args(SscAffinity):
            raise EbsegConfigError(f"ssc_affinity must be one of {list(get_args(SscAffinity))}, got {self.ssc_affinity!r}")
        if isinstance(self.clip_weights, str) and not self.clip_weights.strip():
            raise EbsegConfigError("clip_weights must be a pretrained tag, a file path or null")
        if isinstance(self.sam_weights, str) and not self.sam_weights.strip():
            raise EbsegConfigError("sam_weights must be a file path or null")
