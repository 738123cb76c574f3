"""SED's settings. The defaults are the published ConvNeXt-B setting (the official
configs/convnextB_768.yaml on top of configs/config.yaml and sed/config.py, evaluated with
eval.sh's overrides); `configs/methods/sed.yaml` states only what differs from them (the
recipe and the `tiny` scale). Notes: docs/methods/sed.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args, Literal

from ovbench_methods.common.cost_aggregation import AttentionType
from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.text import SynonymMode

__all__ = ["SedConfig", "SedConfigError", "SedClipFinetune", "SED_CLIP_FINETUNE_MODES", "InputResize"]

Pair = tuple[int, int]
Triple = tuple[int, int, int]

#: Which image-tower weights train: "full" = every visual parameter (official), "full_res5" =
#: only the last ConvNeXt stage (the official code's other ConvNeXt option), "frozen" = none.
SedClipFinetune = Literal["full", "full_res5", "frozen"]
SED_CLIP_FINETUNE_MODES: tuple[str, ...] = get_args(SedClipFinetune)

#: How a view reaches the encoder: "stretch" = bilinear to `image_size` whatever its aspect
#: (official, docs/methods/sed.md#stretch-to-768); "pad" = zero-pad bottom/right to a multiple
#: of 32 and crop the logits back (aspect kept; pair with inference `size: null`).
InputResize = Literal["stretch", "pad"]


class SedConfigError(MethodConfigError):
    """Settings that do not describe a valid SED model."""


@dataclass
class SedConfig:
    """SED (Xie et al., CVPR 2024). Every default is the published ConvNeXt-B value."""

    #: open_clip model name of the CLIP (MODEL.ENC.CLIP_MODEL_NAME; SED-L: convnext_large_d_320).
    arch: str = "convnext_base_w_320"
    #: an open_clip pretrained tag, a path to an open_clip checkpoint, or None = random init
    #: (SED-L: laion2b_s29b_b131k_ft_soup).
    clip_weights: str | None = "laion_aesthetic_s13b_b82k"
    #: explicit open_clip config {embed_dim, vision_cfg (timm_model_name, ...), text_cfg} (tiny models).
    model_config: dict[str, Any] | None = None
    #: keep the stochastic depth stock open_clip 3.x configures for the trunk (0.1); False =
    #: none, as in the open_clip release SED bundles (docs/methods/sed.md#no-stochastic-depth).
    stochastic_depth: bool = False
    #: encoder input (h, w); the official model hard-codes 768 x 768 (clip_resolution).
    image_size: Pair = (768, 768)
    #: see `InputResize`.
    input_resize: InputResize = "stretch"
    #: a template-set name or a list of templates; P = their number (PROMPT_ENSEMBLE_TYPE imagenet).
    templates: str | list[str] = "imagenet80"
    #: "average" = every name of a class under each template, averaged within the template
    #: (official, docs/methods/sed.md#synonyms-averaged-per-template); "first" = the first name only.
    synonyms: SynonymMode = "average"
    #: multiply the cosine cost by exp(logit_scale) clamped at 100, which the official code
    #: computes and then leaves unused (docs/methods/sed.md#logit-scale-not-applied).
    apply_logit_scale: bool = False
    #: HIDDEN_DIMS: width of the cost embedding (conv1 output) and of the first decoder stage.
    hidden_dim: int = 128
    #: DECODER_DIMS: output widths of the three decoder stages (192^2 at the end).
    decoder_dims: Triple = (64, 32, 16)
    #: DECODER_GUIDANCE_DIMS: widths of res4, res3, res2 (checked against the encoder).
    decoder_guidance_dims: Triple = (512, 256, 128)
    #: DECODER_GUIDANCE_PROJ_DIMS: image and cost guidance widths per stage.
    decoder_guidance_proj_dims: Triple = (32, 16, 8)
    #: the cost-guidance chain's first input width is 80 in the official code whatever the
    #: template count; True takes it from the templates instead
    #: (docs/methods/sed.md#eighty-cost-guidance-channels).
    derive_cost_guidance_channels: bool = False
    #: NUM_HEADS of the class attention.
    num_heads: int = 4
    #: ATTENTION_TYPE of the class attention: "linear" (official) or "full".
    attention_type: AttentionType = "linear"
    #: POOLING_SIZES in training; eval.sh evaluates with [1, 1].
    pooling_sizes: Pair = (2, 2)
    eval_pooling_sizes: Pair = (1, 1)
    #: KERNEL_SIZE: depthwise kernel of the decoder ConvNeXt block of each stage.
    kernel_sizes: Triple = (9, 9, 9)
    #: initial layer-scale gamma of the decoder ConvNeXt blocks (official 1.0; ConvNeXt's own
    #: default is 1e-6; docs/methods/sed.md#layer-scale-init-10).
    layer_scale_init: float = 1.0
    #: which image-tower weights train (CLIP_FINETUNE), see `SedClipFinetune`.
    clip_finetune: SedClipFinetune = "full"
    #: learning-rate multiplier of the trainable image tower (SOLVER.CLIP_MULTIPLIER).
    clip_multiplier: float = 0.01
    #: early rejection at evaluation (TEST.FAST_INFERENCE; docs/methods/sed.md#top-k-early-rejection).
    fast_inference: bool = False
    #: classes kept per pixel after each auxiliary head (TEST.TOPK: config 1; the README's fast mode 8).
    top_k: int = 1
    #: leave ignored pixels out of the BCE (official: they count as all-negative targets).
    mask_ignored: bool = False

    def __post_init__(self) -> None:
        positive = {
            "image_size": self.image_size, "hidden_dim": self.hidden_dim, "decoder_dims": self.decoder_dims,
            "decoder_guidance_dims": self.decoder_guidance_dims,
            "decoder_guidance_proj_dims": self.decoder_guidance_proj_dims, "num_heads": self.num_heads,
            "pooling_sizes": self.pooling_sizes, "eval_pooling_sizes": self.eval_pooling_sizes,
            "kernel_sizes": self.kernel_sizes, "top_k": self.top_k,
        }
        for name, value in positive.items():
            values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
            if any(isinstance(v, int) and v < 1 for v in values):
                raise SedConfigError(f"{name} must be positive, got {_plain(value)}")
        lengths = {"image_size": 2, "pooling_sizes": 2, "eval_pooling_sizes": 2, "decoder_dims": 3,
                   "decoder_guidance_dims": 3, "decoder_guidance_proj_dims": 3, "kernel_sizes": 3}
        for name, length in lengths.items():
            value = getattr(self, name)
            if isinstance(value, (tuple, list)) and len(value) != length:
                raise SedConfigError(f"{name} needs {length} entries, got {_plain(value)}")
        if any(side % 32 for side in self.image_size):
            raise SedConfigError(f"image_size {_plain(self.image_size)} must be a multiple of the ConvNeXt stride 32")
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise SedConfigError(f"kernel_sizes must be odd (same-size depthwise convs), got {_plain(self.kernel_sizes)}")
        if self.hidden_dim % self.num_heads or any(d % self.num_heads for d in self.decoder_dims[:2]):
            raise SedConfigError(
                f"hidden_dim {self.hidden_dim} and the first two decoder_dims {_plain(self.decoder_dims[:2])} "
                f"must be divisible by num_heads {self.num_heads}"
            )
        # GroupNorm of each DoubleConv uses width // 16 groups.
        if any(d < 16 for d in self.decoder_dims):
            raise SedConfigError(f"decoder_dims must be at least 16 (GroupNorm with C/16 groups), got {_plain(self.decoder_dims)}")
        widths = (self.hidden_dim, *self.decoder_dims[:2])
        for width, guidance in zip(widths, self.decoder_guidance_proj_dims):
            if guidance >= width:
                raise SedConfigError(
                    f"decoder_guidance_proj_dims {_plain(self.decoder_guidance_proj_dims)} must each be below the "
                    f"stage input width {_plain(widths)} (the upsampling conv outputs input - guidance channels)"
                )
        if self.clip_multiplier < 0:
            raise SedConfigError(f"clip_multiplier must not be negative, got {self.clip_multiplier}")
        if isinstance(self.clip_weights, str) and not self.clip_weights.strip():
            raise SedConfigError("clip_weights must be a tag, a file path or null, got an empty string")
        if self.layer_scale_init < 0:
            raise SedConfigError(f"layer_scale_init must not be negative, got {self.layer_scale_init}")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
