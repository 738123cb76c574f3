"""GSNet's settings: the shared CLIP cost-volume fields plus the RSIB (DINO specialist), the
fusion design and the RIPD decoder's guidance. The defaults are the published setting
(configs/vitb_384.yaml of the official code); `configs/methods/gsnet.yaml` states only what
differs from them, and each Table 3 row (`gsnet/A` ... `gsnet/I`) only what it changes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ovbench_methods.common.clip_cost_model import ClipCostVolumeConfig, Pair
from ovbench_methods.common.dino import DinoFinetuneMode, DinoInputNorm, KeyCheck, PosEmbedResizeMode
from ovbench_methods.common.errors import MethodConfigError, WeightsError
from ovbench_methods.gsnet.fusion import FusionType

__all__ = ["RSIB_PUBLISHED", "TWO_STREAM_FUSIONS", "GsNetConfig"]

#: Where the authors publish the RSIB weights (the official code reads the path from $RSIB_CKPT).
RSIB_PUBLISHED = "Google Drive, 'Specialist RSI Backbone weights' link in the README of github.com/yecy749/GSNet"
#: Fusion designs that need both image streams (QGFF and the Table 3 rows E, F).
TWO_STREAM_FUSIONS: tuple[str, ...] = ("query_guided", "simple_concatenation", "fusion_query")


@dataclass
class GsNetConfig(ClipCostVolumeConfig):
    """GSNet (the shared CLIP and aggregator fields are documented on `ClipCostVolumeConfig`).
    GSNet pads the class axis to `pad_len` but never prunes it."""

    #: the CLIP image stream (USE_CLIP_CORR); false = Table 3 row C.
    use_clip: bool = True
    #: the DINO specialist stream (USE_DINO_CORR); false = Table 3 rows A, B.
    use_rsib: bool = True
    #: query_guided (QGFF) | simple_concatenation ("Cat") | fusion_query ("Fusion Q") | clip_only | rsib_only.
    fusion_type: FusionType = "query_guided"
    #: DINO variant name (vit_base_8) or a mapping of DinoArch fields (may hold `variant`).
    dino_arch: str | dict[str, Any] = "vit_base_8"
    #: the RSIB checkpoint file (environment variables expand; official: $RSIB_CKPT); None = random init.
    dino_weights: str | None = "$RSIB_CKPT"
    #: RSIB input (h, w); the official pos-embed resize only fits 384 at patch 8.
    dino_image_size: Pair = (384, 384)
    #: "clip" = the RSIB sees the CLIP-normalised image (official, docs/methods/gsnet.md#rsib-sees-clip-normalised-input);
    #: "imagenet" = DINO's own statistics.
    dino_input_norm: DinoInputNorm = "clip"
    #: "official" (hard-coded 1.717857 bicubic factor, docs/methods/gsnet.md#rsib-pos-embed-scale-constant)
    #: | "dino" | "exact".
    dino_pos_embed_resize: PosEmbedResizeMode = "official"
    #: DINO_FINETUNE: "freeze" (official) | "attention" | "full".
    dino_finetune: DinoFinetuneMode = "freeze"
    #: RSIB key check: "missing" (fail on absent weights; loads what the official strict=False load
    #: loads whenever that load was complete), "official" (never fail on names,
    #: docs/methods/gsnet.md#rsib-loaded-without-key-check), "strict".
    dino_key_check: KeyCheck = "missing"
    #: RIPD integrates the CLIP guidance (DECODER_CLIP_GUIDANCE_DIMS non-zero); rows G, I: false.
    clip_decoder_guidance: bool = True
    #: RIPD integrates the RSIB guidance (DECODER_DINO_GUIDANCE_DIMS non-zero); rows G, H: false.
    rsib_decoder_guidance: bool = True
    #: widths each stream's decoder guidance is projected to before each RIPD stage.
    decoder_clip_guidance_proj_dims: Pair = (32, 16)
    decoder_rsib_guidance_proj_dims: Pair = (32, 16)

    positive_fields: ClassVar[tuple[str, ...]] = (
        *ClipCostVolumeConfig.positive_fields, "dino_image_size", "decoder_clip_guidance_proj_dims",
        "decoder_rsib_guidance_proj_dims",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.dino_weights, str) and not self.dino_weights.strip():
            raise MethodConfigError("dino_weights must be a file path or null, got an empty string")
        if any(d % 16 for d in self.decoder_dims):
            raise MethodConfigError(
                f"decoder_dims must be two multiples of 16 (the decoder's GroupNorm uses C/16 groups), got {list(self.decoder_dims)}"
            )
        self._check_streams()

    def _check_streams(self) -> None:
        """The image streams, the fusion design and the decoder guidance must fit together."""
        use_clip, use_rsib, fusion = self.use_clip, self.use_rsib, self.fusion_type
        if not use_clip and not use_rsib:
            raise MethodConfigError("GSNet needs at least one image stream: use_clip or the RSIB (use_rsib)")
        if use_clip and use_rsib:
            expected: tuple[str, ...] = TWO_STREAM_FUSIONS
        else:
            expected = ("clip_only",) if use_clip else ("rsib_only",)
        if fusion not in expected:
            streams = "CLIP and the RSIB" if use_clip and use_rsib else "CLIP only" if use_clip else "the RSIB only"
            raise MethodConfigError(f"fusion_type {fusion!r} does not fit a model with {streams}; use {' or '.join(expected)}")
        if self.clip_decoder_guidance and not use_clip:
            raise MethodConfigError("clip_decoder_guidance needs the CLIP image stream (use_clip)")
        if self.rsib_decoder_guidance and not use_rsib:
            raise MethodConfigError("rsib_decoder_guidance needs the RSIB stream (use_rsib)")

    def resolved_dino_weights(self) -> str | None:
        """`dino_weights` with environment variables and ~ expanded; None without an RSIB or weights.

        An unset variable (the official $RSIB_CKPT) is a `WeightsError` telling where the file
        is published; so is a path that does not exist.
        """
        if not self.use_rsib or self.dino_weights is None:
            return None
        raw = self.dino_weights
        expanded = os.path.expanduser(os.path.expandvars(raw))
        if "$" in expanded:
            raise WeightsError(
                f"dino_weights {raw!r} names an unset environment variable; download the RSIB weights "
                f"({RSIB_PUBLISHED}) and set RSIB_CKPT=FILE or model.dino_weights=FILE (null = random init)"
            )
        if not Path(expanded).is_file():
            raise WeightsError(f"RSIB checkpoint not found: {expanded} (the RSIB weights are published at {RSIB_PUBLISHED})")
        return expanded
