"""Adapter for `clip-dense`: binds `ovbench_methods.clip_dense` to the harness interface.

It turns a `Vocabulary` into the plain name tuples the method takes; the settings are
`ClipDenseConfig`, defined with the model.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from ovbench.data.vocabulary import Vocabulary
from ovbench.interface import ConfiguredSegmenter
from ovbench_methods.clip_dense.config import ClipDenseConfig
from ovbench_methods.clip_dense.model import ClipDenseModel, build_clip_dense_model

__all__ = ["ClipDenseConfig", "ClipDenseSegmenter"]


class ClipDenseSegmenter(ConfiguredSegmenter):
    """Training-free MaskCLIP-style dense CLIP behind the uniform interface."""

    method_name = "clip-dense"
    config_class = ClipDenseConfig
    model: ClipDenseModel

    def build_model(self, config: ClipDenseConfig, trusted: bool) -> ClipDenseModel:
        return build_clip_dense_model(config, trusted=trusted)

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
