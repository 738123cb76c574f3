"""What the mask-classification adapters share (SAN now; OV-Seg, SCAN and EBSeg next): a
segmenter base that maps the interface onto a model predicting Q (class, mask) pairs.

- training: the (B,H,W) semantic targets become per-image sets of class masks (one binary
  mask per class present; ignored pixels and ids >= T belong to none), which the model's
  set criterion matches against its queries;
- inference: the model's per-query class logits and mask logits become `MaskScores` for the
  "masks" inference mode (`ovbench.eval.inference.MaskClassification`), which resizes the
  masks to the image and combines them with the classes there;
- checkpoints: ovbench files and the authors' files (`OfficialCheckpointSegmenter`).

The model must provide `loss(images, targets, class_names) -> dict[str, Tensor]` (weighted
losses) and `predict_masks(images, class_names)`, returning an object with `class_logits`
(N,Q,T+1; the last column is no-object), `mask_logits` (N,Q,h,w) and `padded_size` (the
canvas the masks cover). Methods that calibrate class probabilities (OV-Seg's and SCAN's
CLIP ensemble, EBSeg's seen/unseen balancing) override `class_probabilities`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from ovbench.data.vocabulary import Vocabulary
from ovbench.eval.inference import MaskClassification, MaskScores
from ovbench.interface import IGNORE_INDEX
from ovbench_adapters.common.official_checkpoint import OfficialCheckpointSegmenter
from ovbench_methods.common.mask_semantic import semantic_to_instance_targets

__all__ = ["MaskClassificationSegmenter"]

#: `forward_logits` shows the model the image as given (no test-time resize).
_AS_GIVEN = MaskClassification(short_side=None)


class MaskClassificationSegmenter(OfficialCheckpointSegmenter):
    """Interface half shared by the mask-classification segmenters (see module docstring)."""

    method_name: ClassVar[str] = "mask-classification"

    def class_probabilities(self, prediction: Any) -> Tensor:
        """(N,Q,T) per-query class probabilities: softmax over T + no-object, no-object dropped."""
        return prediction.class_logits.float().softmax(dim=-1)[..., :-1]

    def forward_masks(self, images: Tensor, vocabulary: Vocabulary) -> MaskScores:
        prediction = self.model.predict_masks(images, self.class_names(vocabulary))
        return MaskScores(self.class_probabilities(prediction), prediction.mask_logits, tuple(prediction.padded_size))

    def forward_logits(self, images: Tensor, vocabulary: Vocabulary) -> Tensor:
        """(N,3,h,w) -> (N,T,h,w) semantic scores of the image as given (masks resized to it, then
        combined with the classes: the "masks" mode without its test-time resize)."""
        return _AS_GIVEN(lambda views: self.forward_masks(views, vocabulary), images)

    def loss(self, images: Tensor, targets: Tensor, vocabulary: Vocabulary) -> dict[str, Tensor]:
        """The model's set-criterion losses against one binary mask per class present."""
        instance_targets = semantic_to_instance_targets(targets, len(vocabulary), IGNORE_INDEX)
        return self.model.loss(images, instance_targets, self.class_names(vocabulary))
