"""Adapter for `clip-dense`: binds `ovbench_methods.clip_dense` to the harness interface.

This module is the only place that knows both sides: it turns a `Vocabulary` into the
plain name tuples the method takes, and the method's plain `ValueError`/`RuntimeError`
subclasses into `ovbench.errors` (one line each, shown without a traceback by the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ovbench_methods.clip_dense.model import ClipDenseModel, build_clip_dense_model
from ovbench_methods.common.clip import LAST_BLOCK_MODES
from ovbench_methods.common.clip_loading import ClipConfigError, ClipLoadingError
from ovbench_methods.common.prompts import TEMPLATE_SETS
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError, ConfigError
from ovbench.interface import OpenVocabSegmenter

if TYPE_CHECKING:
    from ovbench.eval.inference import InferenceMode

__all__ = ["ClipDenseConfig", "ClipDenseSegmenter"]


@dataclass
class ClipDenseConfig:
    """Model section of `configs/methods/clip-dense.yaml`; defaults are the published setting
    (MaskCLIP with OpenAI ViT-B/16)."""

    #: open_clip model name.
    arch: str = "ViT-B-16"
    #: an open_clip pretrained tag, or a path to an OpenAI `.pt` / open_clip checkpoint; None = random init.
    clip_weights: str | None = "openai"
    #: explicit open_clip config {embed_dim, vision_cfg, text_cfg, quick_gelu} (tiny test models); overrides arch.
    model_config: dict[str, Any] | None = None
    #: prompt-template set (methods/common/prompts.py); MaskCLIP encodes CLIP's 80 ImageNet + 5 scene templates.
    templates: str = "maskclip85"
    #: how the last ViT block yields dense tokens; "maskclip" = value path + residual + FFN as MaskCLIP's code.
    last_block: str = "maskclip"
    #: multiplies the cosine scores (MaskCLIP scores are raw cosines; the argmax does not depend on it).
    temperature: float = 1.0

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        if not isinstance(self.arch, str) or not self.arch:
            raise ConfigError(f"clip-dense: arch must be an open_clip model name, got {self.arch!r}")
        if self.clip_weights is not None and (not isinstance(self.clip_weights, str) or not self.clip_weights.strip()):
            raise ConfigError(f"clip-dense: clip_weights must be a tag, a file path or null, got {self.clip_weights!r}")
        if self.model_config is not None and not isinstance(self.model_config, dict):
            raise ConfigError(f"clip-dense: model_config must be a mapping, got {type(self.model_config).__name__}")
        if self.templates not in TEMPLATE_SETS:
            raise ConfigError(
                f"clip-dense: unknown templates {self.templates!r}; expected one of {', '.join(sorted(TEMPLATE_SETS))}"
            )
        if self.last_block not in LAST_BLOCK_MODES:
            raise ConfigError(
                f"clip-dense: unknown last_block {self.last_block!r}; expected one of {', '.join(LAST_BLOCK_MODES)}"
            )
        temperature = self.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ConfigError(f"clip-dense: temperature must be a positive number, got {self.temperature!r}")


class ClipDenseSegmenter(OpenVocabSegmenter):
    """Training-free MaskCLIP-style dense CLIP behind the uniform interface."""

    method_name = "clip-dense"
    config_class = ClipDenseConfig

    def __init__(
        self,
        config: ClipDenseConfig,
        inference: InferenceMode | None = None,
        trust_checkpoints: bool = False,
    ) -> None:
        super().__init__(inference)
        if not isinstance(config, ClipDenseConfig):
            raise ConfigError(f"clip-dense: expected a ClipDenseConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        try:
            self.model: ClipDenseModel = build_clip_dense_model(
                arch=config.arch,
                clip_weights=config.clip_weights,
                model_config=config.model_config,
                templates=config.templates,
                last_block=config.last_block,
                temperature=float(config.temperature),
                trusted=trust_checkpoints,
            )
        except ClipConfigError as exc:
            raise ConfigError(f"clip-dense: {exc}") from None
        except ClipLoadingError as exc:
            raise CheckpointError(f"clip-dense: {exc}") from None

    @staticmethod
    def class_names(vocabulary: Vocabulary) -> tuple[tuple[str, ...], ...]:
        """Each class as (name, *synonyms), the form the method encodes."""
        return tuple(cls.all_names for cls in vocabulary)

    def forward_logits(self, images: Tensor, vocabulary: Vocabulary) -> Tensor:
        """(N,3,h,w) float RGB in 0..255 -> (N,T,h/p,w/p) scaled cosine scores (p = patch size)."""
        return self.model(images, self.class_names(vocabulary))

    def load_checkpoint(self, path: str | Path, trusted: bool = False) -> None:
        """Load an ovbench checkpoint of this segmenter; cached text embeddings are dropped."""
        super().load_checkpoint(path, trusted=trusted)
        self.model.clear_text_cache()
