"""The adapter half OV-Seg and SCAN share: inference through the model's two-stage
`predict_semantic` (proposals classified again by CLIP, docs/methods/mask-proposal-core.md#two-stage-inference),
per-evaluation-set CLIP-branch settings, and optimiser groups with a backbone multiplier.

The YAML's inference mode is "whole" with no stretch (`size: null`) and the official test
resize (short side, max size): the model returns semantic scores at the resized image and
the mode resizes them bilinearly to the original, the order of the official code.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable, ClassVar, Collection, Mapping, Sequence

import torch
from torch import Tensor

from ovbench.data.vocabulary import Vocabulary
from ovbench_adapters.common.mask_classification import MaskClassificationSegmenter
from ovbench_adapters.common.official_checkpoint import CLIP_TEXT_TOWER_PREFIXES, inverse_renames, rename_prefixes
from ovbench_adapters.common.param_groups import head_and_clip_groups
from ovbench_methods.common.crop_and_mask import CLIP_MEAN_UNIT, CLIP_STD_UNIT
from ovbench_methods.common.two_stage import settings_for_eval_set

__all__ = [
    "CLIP_ADAPTER_RENAMES",
    "DERIVED_OFFICIAL_KEYS",
    "TwoStageSegmenter",
    "from_two_stage_layout",
    "to_two_stage_layout",
]

_CLIP = "clip_adapter.clip_model."
#: The CLIP adapter's part of both official layouts (OV-Seg's and SCAN's `clip_adapter`):
#: the crop CLIP's visual tower, its text tower, its temperature and the no-object row.
CLIP_ADAPTER_RENAMES: list[tuple[str, str]] = [
    (_CLIP + "visual.", "image_encoder.visual."),
    (_CLIP + "logit_scale", "clip_logit_scale"),
    *((_CLIP + part, "classifier.text_encoder." + part) for part in CLIP_TEXT_TOWER_PREFIXES),
    ("clip_adapter.non_object_embedding", "classifier.non_object.embedding"),
]
#: Official entries that follow from settings, not weights: the criterion's class weights (a
#: function of the training vocabulary's size) and the CLIP adapter's pixel statistics.
DERIVED_OFFICIAL_KEYS = ("criterion.empty_weight", "clip_adapter.pixel_mean", "clip_adapter.pixel_std")

Converter = Callable[[Mapping[str, Any]], dict[str, Any]]


def _split_backbone(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    backbone = {key[len("backbone."):]: value for key, value in state.items() if key.startswith("backbone.")}
    return backbone, {key: value for key, value in state.items() if not key.startswith("backbone.")}


def from_two_stage_layout(
    state: Mapping[str, Any], renames: Sequence[tuple[str, str]], backbone_from_official: Converter,
    drop: Collection[str] = DERIVED_OFFICIAL_KEYS,
) -> dict[str, Any]:
    """An official OV-Seg / SCAN state dict -> model keys: ``backbone.*`` through the
    backbone's converter, the rest by prefix (`renames`, first match wins), `drop` left out;
    keys that fit nothing pass through so that the strict loader names them."""
    backbone, rest = _split_backbone(state)
    converted = {"backbone." + key: value for key, value in backbone_from_official(backbone).items()} if backbone else {}
    renamed = rename_prefixes(rest, renames, drop=drop)
    if isinstance(renamed.get("clip_logit_scale"), Tensor):
        renamed["clip_logit_scale"] = renamed["clip_logit_scale"].reshape(())
    converted.update(renamed)
    return converted


def to_two_stage_layout(
    model_state: Mapping[str, Tensor], renames: Sequence[tuple[str, str]], backbone_to_official: Converter
) -> dict[str, Tensor]:
    """Model keys -> the official layout (the inverse of `from_two_stage_layout`), with the CLIP
    adapter's pixel statistics as the official module holds them (CLIP's mean and std x 255)."""
    backbone, rest = _split_backbone(model_state)
    official = {"backbone." + key: value for key, value in backbone_to_official(backbone).items()}
    official.update(rename_prefixes(rest, inverse_renames(renames)))
    official["clip_adapter.pixel_mean"] = torch.tensor(CLIP_MEAN_UNIT).reshape(1, 3, 1, 1) * 255.0
    official["clip_adapter.pixel_std"] = torch.tensor(CLIP_STD_UNIT).reshape(1, 3, 1, 1) * 255.0
    return official


class TwoStageSegmenter(MaskClassificationSegmenter):
    """Base of the OV-Seg and SCAN segmenters (see module docstring). The config needs
    `clip_branch` (the settings dataclass), `per_eval_set` and `backbone_multiplier`."""

    method_name: ClassVar[str] = "two-stage"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._eval_set: str | None = None

    def clip_settings(self) -> Any:
        """The CLIP-branch settings in force: the config's, with the current set's overrides."""
        return settings_for_eval_set(self.config.clip_branch, self.config.per_eval_set, self._eval_set)

    def use_eval_set(self, name: str | None, vocabulary: Vocabulary | None = None) -> dict[str, Any]:
        self._eval_set = name
        return {"clip_branch": asdict(self.clip_settings())}

    def forward_logits(self, images: Tensor, vocabulary: Vocabulary) -> Tensor:
        """(N,3,h,w) -> (N,T,h,w) semantic scores of the two-stage inference at the input size."""
        return self.model.predict_semantic(images, self.class_names(vocabulary), self.clip_settings())

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Backbone at base_lr x `backbone_multiplier` (OV-Seg R101c 0.1; Swin-B and SCAN 1.0),
        everything else that trains at base_lr; CLIP is frozen and in no group."""
        return head_and_clip_groups(
            self.model.head_parameters(), self.model.backbone_parameters(), base_lr, weight_decay, self.config.backbone_multiplier
        )
