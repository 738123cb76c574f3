"""Training-free dense CLIP segmentation in the style of MaskCLIP (Zhou et al., ECCV 2022).

The image runs through CLIP's ViT unchanged except for the last block, whose attention is
replaced by its value path (mode "maskclip" by default, see `LAST_BLOCK_MODES`); ln_post and
proj then map every patch token into the joint space. The per-class scores are the cosine
similarity between each L2-normalised patch embedding and prompt-ensembled text embeddings,
optionally multiplied by a temperature (which leaves the argmax unchanged).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.clip_dense.config import ClipDenseConfig
from ovbench_methods.common.clip import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, ClipImageEncoder
from ovbench_methods.common.clip_loading import create_clip, create_tokenizer
from ovbench_methods.common.prompts import get_templates, validate_templates
from ovbench_methods.common.text import ClassEmbeddingCache, ClassNames, ClipTextEncoder, Tokenizer, encode_class_prompts


class ClipDenseModel(nn.Module):
    """Frozen CLIP producing per-class cosine maps on the patch grid.

    Args:
        clip: an open_clip CLIP model; its image and text towers are taken over.
        tokenizer: prompt strings -> token ids for `clip`'s text tower.
        templates: prompt templates, each with one ``{}``.
        config: the settings read here (`last_block`, `temperature`); None = the defaults.
        pixel_mean, pixel_std: normalisation on the 0..255 scale.
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Tokenizer,
        templates: Sequence[str],
        config: ClipDenseConfig | None = None,
        pixel_mean: Sequence[float] = CLIP_PIXEL_MEAN,
        pixel_std: Sequence[float] = CLIP_PIXEL_STD,
    ) -> None:
        super().__init__()
        config = ClipDenseConfig() if config is None else config
        last_block = config.last_block
        self.image_encoder = ClipImageEncoder(clip.visual, pixel_mean, pixel_std)
        self.text_encoder = ClipTextEncoder(clip)
        self.tokenizer = tokenizer
        self.templates = validate_templates(templates)
        self.last_block = last_block
        self.temperature = float(config.temperature)
        # Training-free: nothing here is optimised, and a frozen text tower is what makes
        # caching class embeddings per vocabulary valid.
        self.requires_grad_(False)
        self._text_cache = ClassEmbeddingCache()
        # New weights (load_state_dict on this model or any parent) invalidate cached text.
        self.register_load_state_dict_post_hook(_clear_text_cache_after_load)

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.image_encoder.patch_size

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def class_embeddings(self, classes: ClassNames) -> Tensor:
        """(T, D) L2-normalised class embeddings, encoded once per (vocabulary, templates)."""
        if not classes:
            raise ValueError("no classes given")
        key = ClassEmbeddingCache.cache_key(classes, self.templates)

        def compute() -> Tensor:
            with torch.no_grad():
                return encode_class_prompts(self.text_encoder, self.tokenizer, classes, self.templates)

        return self._text_cache.get_or_compute(key, compute)

    def dense_embeddings(self, images: Tensor) -> Tensor:
        """(N,3,H,W) 0..255 -> (N, D, h, w) L2-normalised patch embeddings."""
        features = self.image_encoder(images, last_block=self.last_block)
        return F.normalize(features.dense.float(), dim=1)

    def forward(self, images: Tensor, classes: ClassNames) -> Tensor:
        """(N,3,H,W) 0..255 images, T classes (names + synonyms) -> (N, T, H/p, W/p) scores."""
        patches = self.dense_embeddings(images)
        text = self.class_embeddings(classes).to(device=patches.device, dtype=patches.dtype)
        return torch.einsum("ndhw,td->nthw", patches, text) * self.temperature


def _clear_text_cache_after_load(module: ClipDenseModel, incompatible_keys: Any) -> None:
    # A module-level function rather than a lambda keeps the model picklable.
    module.clear_text_cache()


def build_clip_dense_model(config: ClipDenseConfig, trusted: bool = False) -> ClipDenseModel:
    """Create the CLIP model (see `create_clip`) and wrap it as a `ClipDenseModel`."""
    template_list = get_templates(config.templates)
    clip = create_clip(config.arch, config.clip_weights, config.model_config, trusted=trusted)
    tokenizer = create_tokenizer(config.arch, clip, config.model_config)
    return ClipDenseModel(clip, tokenizer, template_list, config)
