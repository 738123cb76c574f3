"""Settings of the training-free dense CLIP baseline. The defaults are the published MaskCLIP
setting with OpenAI ViT-B/16; `configs/methods/clip-dense.yaml` states only the recipe and the
`tiny` scale."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ovbench_methods.common.clip import LastBlockMode
from ovbench_methods.common.errors import MethodConfigError

__all__ = ["ClipDenseConfig"]


@dataclass
class ClipDenseConfig:
    #: open_clip model name.
    arch: str = "ViT-B-16"
    #: an open_clip pretrained tag, or a path to an OpenAI `.pt` / open_clip checkpoint; None = random init.
    clip_weights: str | None = "openai"
    #: explicit open_clip config {embed_dim, vision_cfg, text_cfg, quick_gelu} (tiny test models); overrides arch.
    model_config: dict[str, Any] | None = None
    #: prompt-template set (ovbench_methods/common/prompts.py); MaskCLIP encodes CLIP's 80 ImageNet + 5 scene templates.
    templates: str = "maskclip85"
    #: how the last ViT block yields dense tokens; "maskclip" = value path + residual + FFN as MaskCLIP's code.
    last_block: LastBlockMode = "maskclip"
    #: multiplies the cosine scores (MaskCLIP scores are raw cosines; the argmax does not depend on it).
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise MethodConfigError(f"temperature must be positive, got {self.temperature}")
        if isinstance(self.clip_weights, str) and not self.clip_weights.strip():
            raise MethodConfigError("clip_weights must be a tag, a file path or null, got an empty string")
