"""SAN's settings. The defaults are the published ViT-B/16 setting (the official
san/config.py defaults with configs/san_clip_vit_res4_coco.yaml laid over them);
`configs/methods/san.yaml` states only what differs from them (the recipes and the `tiny`
scale). Notes on every field: docs/methods/san.md#settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.set_criterion import SetCriterionConfig

__all__ = ["RecDownsample", "SanConfig", "SanConfigError"]

#: How the side adapter's attention bias is brought to the CLIP grid before it masks the
#: recognition blocks: adaptive "max" pooling (official), "avg" pooling, or an interpolation.
RecDownsample = Literal["max", "avg", "bilinear", "bicubic", "nearest"]


class SanConfigError(MethodConfigError):
    """Settings that do not describe a valid SAN model."""


def _published_fusion_map() -> dict[int, int]:
    return {0: 0, 3: 1, 6: 2, 9: 3}


@dataclass
class SanConfig:
    """SAN (Side Adapter Network). Field types are checked by whoever builds the config from
    a file (ovbench's loader checks every annotation, `Literal` choices included);
    `__post_init__` checks ranges and the relations between fields."""

    # ------------------------------------------------------------------ CLIP
    #: open_clip model name (ViT-B-16; the ViT-L row is "ViT-L-14-336").
    arch: str = "ViT-B-16"
    #: an open_clip pretrained tag, a path to an OpenAI `.pt` / open_clip checkpoint, or None = random init.
    clip_weights: str | None = "openai"
    #: explicit open_clip config {embed_dim, vision_cfg, text_cfg, quick_gelu} (tiny models); overrides arch.
    model_config: dict[str, Any] | None = None
    #: force QuickGELU for a named arch built without a pretrained tag (OpenAI's weights use it); None = arch default.
    quick_gelu: bool | None = True
    #: CLIP sees the padded image resized by this factor (docs/methods/san.md#clip-input-at-half-resolution).
    clip_resolution: float = 0.5
    #: CLIP blocks 1..this (1-based) feed the side adapter; the blocks after it are rerun as
    #: the recognition head on the output of this block (ViT-L 18).
    feature_last_layer: int = 9
    #: name fragments of the CLIP parameters up to `feature_last_layer` that still train
    #: (official CLIP_FROZEN_EXCLUDE; names as in the official `clip_visual_extractor`:
    #: conv1.weight, class_embedding, positional_embedding, ln_pre.*, resblocks.<i>.*);
    #: "all" trains all of them (docs/methods/san.md#what-trains).
    clip_frozen_exclude: list[str] = field(default_factory=lambda: ["positional_embedding"])
    #: the same for the recognition blocks (official CLIP_DEEPER_FROZEN_EXCLUDE; names as in
    #: `clip_rec_head`: resblocks.<j>.*, ln_post.*, proj); empty = all frozen.
    clip_deeper_frozen_exclude: list[str] = field(default_factory=list)
    #: CLIP output index -> side-adapter block index it is added after; output 0 is the
    #: token sequence after ln_pre, output k the one after CLIP block k (1-based); side index
    #: 0 is before the first side block (ViT-L {0: 0, 6: 1, 12: 2, 18: 3}).
    fusion_map: dict[int, int] = field(default_factory=_published_fusion_map)

    # ---------------------------------------------------------- side adapter
    side_width: int = 240
    side_depth: int = 8
    side_heads: int = 6
    side_patch_size: int = 16
    side_mlp_ratio: float = 4.0
    #: the side ViT's positional embedding covers this image size (640 -> a 40 x 40 grid).
    side_image_size: int = 640
    side_drop_path: float = 0.0
    #: query tokens = mask proposals = SOS tokens of the recognition head.
    num_queries: int = 100
    #: 1-based side blocks whose outputs are decoded; the last one is the prediction, the
    #: others are deep supervision (loss keys "_0", "_1", ...).
    deep_supervision_idxs: list[int] = field(default_factory=lambda: [7, 8])

    # ---------------------------------------------------------- mask decoder
    decoder_embed_channels: int = 256
    decoder_mlp_channels: int = 256
    decoder_mlp_layers: int = 3
    #: attention-bias heads: CLIP's head count (ViT-B 12, ViT-L 16), or 1 (shared by all heads).
    attn_bias_heads: int = 12
    #: one bias for all recognition blocks (1, official) or one per block.
    attn_bias_layers: int = 1
    #: learnable affine `bias_scaling` on the bias (official True); False = identity.
    rescale_attn_bias: bool = True
    #: docs/methods/san.md#max-pooled-attention-bias.
    rec_downsample: RecDownsample = "max"

    # ------------------------------------------------------------- classifier
    #: a template-set name or a list of templates (ViLD's 14, official CLIP_TEMPLATE_SET "vild").
    templates: str | list[str] = "vild14"
    #: images are zero-padded to a multiple of this after normalisation (detectron2 ImageList).
    size_divisibility: int = 32

    # ------------------------------------------------------------------ loss
    criterion: SetCriterionConfig = field(default_factory=SetCriterionConfig)

    def __post_init__(self) -> None:
        for name in (
            "feature_last_layer", "side_width", "side_depth", "side_heads", "side_patch_size", "side_image_size",
            "num_queries", "decoder_embed_channels", "decoder_mlp_channels", "decoder_mlp_layers",
            "attn_bias_heads", "attn_bias_layers",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SanConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.size_divisibility < 0:
            raise SanConfigError(f"size_divisibility must not be negative, got {self.size_divisibility}")
        if not 0 < self.clip_resolution <= 4:
            raise SanConfigError(f"clip_resolution must be in (0, 4], got {self.clip_resolution}")
        if self.side_mlp_ratio <= 0:
            raise SanConfigError(f"side_mlp_ratio must be positive, got {self.side_mlp_ratio}")
        if not 0 <= self.side_drop_path < 1:
            raise SanConfigError(f"side_drop_path must be in [0, 1), got {self.side_drop_path}")
        if self.side_width % self.side_heads:
            raise SanConfigError(f"side_width {self.side_width} is not a multiple of side_heads {self.side_heads}")
        if self.side_image_size % self.side_patch_size:
            raise SanConfigError(
                f"side_image_size {self.side_image_size} is not a multiple of side_patch_size {self.side_patch_size}"
            )
        if self.rec_downsample not in get_args(RecDownsample):
            raise SanConfigError(f"rec_downsample must be one of {list(get_args(RecDownsample))}, got {self.rec_downsample!r}")
        if isinstance(self.clip_weights, str) and not self.clip_weights.strip():
            raise SanConfigError("clip_weights must be a tag, a file path or null, got an empty string")
        # A map read back from JSON has string keys; the model needs integers.
        try:
            fusion = {int(source): int(target) for source, target in self.fusion_map.items()}
        except (TypeError, ValueError):
            raise SanConfigError(f"fusion_map must map CLIP output indices to side block indices, got {self.fusion_map!r}") from None
        if not fusion:
            raise SanConfigError("fusion_map must name at least one CLIP output")
        for source, target in fusion.items():
            if not 0 <= source <= self.feature_last_layer:
                raise SanConfigError(
                    f"fusion_map source {source} is outside CLIP outputs 0..{self.feature_last_layer} (feature_last_layer)"
                )
            if not 0 <= target < self.side_depth:
                raise SanConfigError(f"fusion_map target {target} is outside side blocks 0..{self.side_depth - 1}")
        if len(set(fusion.values())) != len(fusion):
            raise SanConfigError(f"fusion_map sends two CLIP outputs to one side block: {fusion}")
        self.fusion_map = fusion
        idxs = [int(i) for i in self.deep_supervision_idxs]
        if not idxs or any(not 1 <= i <= self.side_depth for i in idxs) or idxs != sorted(set(idxs)):
            raise SanConfigError(
                f"deep_supervision_idxs must be increasing side blocks in 1..{self.side_depth}, got {self.deep_supervision_idxs}"
            )
        self.deep_supervision_idxs = idxs
