"""Adapter for `sed`: binds `ovbench_methods.sed` (SED, CVPR 2024) to the harness interface.

It turns a `Vocabulary` into name tuples (synonyms averaged within each template by the
model), targets into SED's four per-pixel BCE losses, the model's parameters into the
official optimiser groups (the image tower at 0.01x, the decoder at the base rate, the text
tower and logit_scale frozen) and checkpoints into the model's keys: ovbench checkpoints and
the authors' detectron2 files (docs/methods/sed.md#checkpoint-layout). The settings are
`SedConfig`, defined with the model.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from torch import Tensor

from ovbench.data.vocabulary import Vocabulary
from ovbench.interface import IGNORE_INDEX
from ovbench_adapters.common.param_groups import head_and_clip_groups
from ovbench_adapters.common.official_checkpoint import (
    OfficialCheckpointSegmenter,
    detectron2_clip_renames,
    inverse_renames,
    rename_prefixes,
)
from ovbench_methods.sed.config import SedConfig
from ovbench_methods.sed.model import SedModel, build_sed_model

__all__ = ["SedConfig", "SedSegmenter", "convert_official_state_dict", "to_official_state_dict"]

#: Prefixes of the official detectron2 state dict (docs/methods/sed.md#checkpoint-layout).
OFFICIAL_CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
OFFICIAL_HEAD_PREFIX = "sem_seg_head.predictor.transformer."
#: Official prefix -> model prefix; SED keeps CLIP's (frozen) logit_scale as a model entry.
RENAMES = [*detectron2_clip_renames(OFFICIAL_CLIP_PREFIX, OFFICIAL_HEAD_PREFIX), (OFFICIAL_CLIP_PREFIX + "logit_scale", "logit_scale")]


def convert_official_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Official detectron2 SED keys -> `SedModel` keys.

    ``sem_seg_head.predictor.clip_model.visual.*`` -> ``image_encoder.visual.*``; its
    text-tower keys -> ``text_encoder.*``; ``clip_model.logit_scale`` -> ``logit_scale``;
    ``sem_seg_head.predictor.transformer.*`` -> ``transformer.*``. Keys that fit none of these
    are passed through unchanged, so that the strict loader names them.
    """
    return rename_prefixes(state, RENAMES)


def to_official_state_dict(model_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`SedModel` keys -> the official detectron2 layout (inverse of `convert_official_state_dict`)."""
    return rename_prefixes(model_state, inverse_renames(RENAMES))


class SedSegmenter(OfficialCheckpointSegmenter):
    """SED behind the uniform interface."""

    method_name = "sed"
    config_class = SedConfig
    official_prefixes: ClassVar[tuple[str, ...]] = ("sem_seg_head.",)
    official_checkpoint_name = "official SED checkpoint"
    model: SedModel

    build_method_model = staticmethod(build_sed_model)
    convert_official_state_dict = staticmethod(convert_official_state_dict)
    to_official_state_dict = staticmethod(to_official_state_dict)

    def forward_logits(self, images: Tensor, vocabulary: Vocabulary) -> Tensor:
        """(N,3,h,w) float RGB in 0..255 -> (N,T,h',w') logits (192^2 for the 768^2 encoder input)."""
        return self.model(images, self.class_names(vocabulary))

    def loss(self, images: Tensor, targets: Tensor, vocabulary: Vocabulary) -> dict[str, Tensor]:
        """The four per-pixel BCE losses (main, head0, head1, head2), weight 1 each;
        IGNORE_INDEX and ids >= T are all-negative targets (or masked out)."""
        return self.model.loss(
            images, targets, self.class_names(vocabulary), ignore_index=IGNORE_INDEX, mask_ignored=self.config.mask_ignored
        )

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The decoder at base_lr; the trainable image tower at base_lr x clip_multiplier;
        the frozen text tower and logit_scale in no group."""
        return head_and_clip_groups(
            self.model.head_parameters(), self.model.clip_parameters(), base_lr, weight_decay, self.config.clip_multiplier
        )
