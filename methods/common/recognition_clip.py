"""What SAN and EBSeg share around their frozen CLIP (docs/methods/san.md#what-trains,
docs/methods/ebseg.md#what-trains): the image and text towers, CLIP's frozen temperature, the
learned background row, the per-vocabulary text cache, and the freezing rule that names each
visual parameter as the official code's two CLIP modules do (`clip_visual_extractor` for the
blocks before the recognition split, `clip_rec_head` for the blocks after it and ln_post/proj).
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from ovbench_methods.common.clip import ClipImageEncoder
from ovbench_methods.common.open_vocab_classifier import BackgroundEmbedding
from ovbench_methods.common.text import ClassEmbeddingCache, ClassNames, ClipTextEncoder, Tokenizer, cached_class_embeddings

__all__ = ["RecognitionClipModel"]


def _clear_text_cache_after_load(module: "RecognitionClipModel", incompatible_keys: Any) -> None:
    # A module-level function rather than a lambda keeps the model picklable.
    module.clear_text_cache()


class RecognitionClipModel(nn.Module):
    """Base of the models whose CLIP blocks after `recognition_split` are rerun as an
    attention-biased recognition head. Subclasses call `init_clip` first and `freeze_clip`
    once all modules exist."""

    #: CLIP blocks 1..this (1-based) come before the recognition head.
    recognition_split: int

    def init_clip(self, clip: nn.Module, tokenizer: Tokenizer, templates: Sequence[str], recognition_split: int) -> None:
        self.image_encoder = ClipImageEncoder(clip.visual)
        self.text_encoder = ClipTextEncoder(clip)
        self.recognition_split = int(recognition_split)
        self.templates = tuple(templates)
        self.tokenizer = tokenizer
        self._text_cache = ClassEmbeddingCache()
        # CLIP's temperature; frozen like the rest of CLIP (the official classifier holds it).
        self.logit_scale = nn.Parameter(clip.logit_scale.detach().clone().reshape(()), requires_grad=False)
        self.bg_embed = BackgroundEmbedding(self.image_encoder.output_dim)
        self.register_load_state_dict_post_hook(_clear_text_cache_after_load)

    # ------------------------------------------------------------ parameters
    def freeze_clip(self, frozen_exclude: Sequence[str], deeper_frozen_exclude: Sequence[str]) -> None:
        """The text side is frozen; of the image tower only the parameters whose official
        name contains a fragment of `frozen_exclude` (before the split) or
        `deeper_frozen_exclude` (the recognition head) train; "all" trains all of them."""
        for param in self.text_encoder.parameters():
            param.requires_grad_(False)
        for name, param in self.image_encoder.visual.named_parameters():
            official_name, deeper = self.official_clip_parameter_name(name)
            exclude = deeper_frozen_exclude if deeper else frozen_exclude
            param.requires_grad_("all" in exclude or any(fragment in official_name for fragment in exclude))

    def official_clip_parameter_name(self, name: str) -> tuple[str, bool]:
        """A visual-tower parameter's name inside the official module that holds it, and
        whether that module is the recognition head (`clip_rec_head`) rather than the
        feature extractor (`clip_visual_extractor`)."""
        prefix = "transformer.resblocks."
        if name.startswith(prefix):
            index, rest = name[len(prefix):].split(".", 1)
            if int(index) < self.recognition_split:
                return f"resblocks.{index}.{rest}", False
            return f"resblocks.{int(index) - self.recognition_split}.{rest}", True
        return name, name.startswith(("ln_post.", "proj"))

    def train(self, mode: bool = True) -> "RecognitionClipModel":
        super().train(mode)
        # The text side always runs as in evaluation (official: the classifier ignores train()).
        self.text_encoder.eval()
        return self

    # ------------------------------------------------------------------ text
    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def class_embeddings(self, classes: ClassNames) -> Tensor:
        """(T, D) L2-normalised template-ensembled text embeddings, cached per vocabulary
        (the text tower is frozen)."""
        return cached_class_embeddings(self._text_cache, self.text_encoder, self.tokenizer, classes, self.templates)

    def classifier_weights(self, classes: ClassNames) -> Tensor:
        """(T + 1, D): the class embeddings and the learned background row, all L2-normalised."""
        return self.bg_embed(self.class_embeddings(classes).to(self.bg_embed.embedding.device))
