"""What the CAT-Seg and GSNet adapters share: a segmenter base that maps the interface onto
`ovbench_methods.common.clip_cost_model.SplitClipCostModel` (per-pixel BCE, the official
optimiser groups; building, class names and checkpoint loading come from
`OfficialCheckpointSegmenter`).

Subclasses name the method (`method_name`), point at its config dataclass (`config_class`,
defined next to the model in `ovbench_methods`), its builder (`build_method_model`) and convert
the official checkpoint layout (`convert_official_state_dict` / `to_official_state_dict`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from ovbench.data.vocabulary import Vocabulary
from ovbench.interface import IGNORE_INDEX
from ovbench_adapters.common.param_groups import head_and_clip_groups
from ovbench_adapters.common.official_checkpoint import OfficialCheckpointSegmenter
from ovbench_methods.common.clip_cost_model import ClipCostVolumeConfig

__all__ = ["ClipCostVolumeSegmenter", "OFFICIAL_PREFIX"]

#: Every key of the authors' detectron2 checkpoints starts here or at a top-level module.
OFFICIAL_PREFIX = "sem_seg_head."


class ClipCostVolumeSegmenter(OfficialCheckpointSegmenter):
    """Interface half shared by the CAT-Seg and GSNet segmenters (see module docstring)."""

    method_name: ClassVar[str] = "clip-cost-volume"
    config_class: ClassVar[type[ClipCostVolumeConfig]] = ClipCostVolumeConfig
    official_prefixes: ClassVar[tuple[str, ...]] = (OFFICIAL_PREFIX,)
    #: The shifted-window masks are persistent buffers (official files carry them) but a
    #: function of the configuration only.
    derived_buffers: ClassVar[tuple[str, ...]] = (".attn_mask",)

    def forward_logits(self, images: Tensor, vocabulary: Vocabulary) -> Tensor:
        """(N,3,h,w) float RGB in 0..255 -> (N,T,h',w') logits (96^2 for a 384^2 view)."""
        return self.model(images, self.class_names(vocabulary))

    def loss(self, images: Tensor, targets: Tensor, vocabulary: Vocabulary) -> dict[str, Tensor]:
        """Per-pixel BCE; IGNORE_INDEX and ids >= T are all-negative targets (or masked out)."""
        loss = self.model.loss(
            images, targets, self.class_names(vocabulary), ignore_index=IGNORE_INDEX, mask_ignored=self.config.mask_ignored
        )
        return {"loss_sem_seg": loss}

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """New modules at base_lr; trainable CLIP weights at base_lr x clip_multiplier; frozen
        weights (GSNet's RSIB) in no group."""
        return head_and_clip_groups(
            self.model.head_parameters(), self.model.clip_parameters(), base_lr, weight_decay, self.config.clip_multiplier
        )
