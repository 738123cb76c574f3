"""CAT-Seg's settings: the shared CLIP cost-volume fields plus its decoder guidance widths.
The defaults are the published ViT-B/16 setting; `configs/methods/catseg.yaml` states only
what differs from them (the recipe and the `tiny` scale)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ovbench_methods.common.clip_cost_model import ClipCostVolumeConfig, Pair

__all__ = ["CatSegConfig"]


@dataclass
class CatSegConfig(ClipCostVolumeConfig):
    """CAT-Seg (the shared fields are documented on `ClipCostVolumeConfig`)."""

    #: widths the decoder guidance is projected to before each upsampling stage.
    decoder_guidance_proj_dims: Pair = (32, 16)

    positive_fields: ClassVar[tuple[str, ...]] = (*ClipCostVolumeConfig.positive_fields, "decoder_guidance_proj_dims")
