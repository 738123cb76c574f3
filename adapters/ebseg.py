"""Adapter for `ebseg`: binds `ovbench_methods.ebseg` (EBSeg, CVPR 2024) to the harness interface.

Training goes through `MaskClassificationSegmenter` (per-class target masks, the set
criterion with EBSeg's two class heads, plus the SSC loss). Inference balances the three class
embeddings per class by whether the class was named in training
(docs/methods/ebseg.md#seen-and-unseen-classes): the seen names are those of the training
vocabulary the weights come from (the run's training set and protocol, which the harness
passes to `use_training_origin`, with COCO-Stuff's for the authors' COCO-Stuff training files), and the record
of every evaluation set lists which of its classes counted as seen.

Checkpoints: ovbench files and the authors' ``EBSeg_base.pth`` (docs/methods/ebseg.md#checkpoint-layout),
converted here; the CLIP part shares SAN's layout, with the surgery blocks' attention under
other names and ``ln_post`` / ``proj`` held by both CLIP modules.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor

from ovbench.data.vocabulary import Vocabulary
from ovbench.eval.inference import MaskScores
from ovbench.results.seen_unseen import normalise_name, training_names
from ovbench_adapters.common.mask_classification import MaskClassificationSegmenter
from ovbench_adapters.san import EXTRACTOR, REC_HEAD, published_feature_last_layer
from ovbench_adapters.san import convert_official_state_dict as san_from_official
from ovbench_adapters.san import to_official_state_dict as san_to_official
from ovbench_methods.common.errors import WeightsError
from ovbench_methods.ebseg.config import EbsegConfig
from ovbench_methods.ebseg.model import EbsegModel, build_ebseg_model

__all__ = ["EbsegSegmenter", "OFFICIAL_PREFIXES", "convert_official_state_dict", "seen_class_flags", "to_official_state_dict"]

#: Key prefixes that mark the official EBSeg state dict; ``backbone.`` and ``sem_seg_head.``
#: keep their official names in `EbsegModel` too.
OFFICIAL_PREFIXES = (EXTRACTOR, REC_HEAD, "ov_classifier.")

#: The training set the authors' released weights were trained on, and its class count.
OFFICIAL_TRAIN_SET = "coco-stuff-train"
COCO_STUFF_CLASSES = 171

#: The surgery blocks' attention (an own module with `qkv` and `proj`) against CLIP's
#: `nn.MultiheadAttention` names.
_SURGERY_ATTENTION = (("attn.qkv.weight", "attn.in_proj_weight"), ("attn.qkv.bias", "attn.in_proj_bias"),
                      ("attn.proj.weight", "attn.out_proj.weight"), ("attn.proj.bias", "attn.out_proj.bias"))
_BLOCK = re.compile(r"resblocks\.(\d+)\.(.+)")
#: ln_post and proj: one module in the official model, reachable from both CLIP wrappers.
_SHARED_TAIL = ("ln_post.weight", "ln_post.bias", "proj")


def _rename_block_attention(key: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if key.endswith("." + old):
            return key[: -len(old)] + new
    return key


def convert_official_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Official EBSeg keys -> `EbsegModel` keys.

    - the surgery blocks' ``attn.qkv`` / ``attn.proj`` -> ``attn.in_proj_*`` / ``attn.out_proj.*``;
    - the extractor's copies of ``ln_post`` / ``proj`` are dropped (the official model holds one
      module under both names; a file where the copies differ is refused);
    - then SAN's conversion of ``clip_visual_extractor.``, ``clip_rec_head.``, ``ov_classifier.``;
      ``backbone.*`` and ``sem_seg_head.*`` keep their names.
    """
    renamed: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith((EXTRACTOR, REC_HEAD)) and _BLOCK.match(key.split(".", 1)[1]):
            key = _rename_block_attention(key, _SURGERY_ATTENTION)
        renamed[key] = value
    for name in _SHARED_TAIL:
        copy = renamed.pop(EXTRACTOR + name, None)
        kept = renamed.get(REC_HEAD + name)
        if copy is not None and isinstance(copy, Tensor) and isinstance(kept, Tensor):
            if copy.shape != kept.shape or not torch.equal(copy, kept):
                raise WeightsError(f"{EXTRACTOR}{name} differs from {REC_HEAD}{name}; the official model holds one module there")
        elif copy is not None and kept is None:
            renamed[REC_HEAD + name] = copy
    return san_from_official(renamed)


def _count_blocks(model_state: Mapping[str, Tensor]) -> int:
    prefix = "image_encoder.visual.transformer.resblocks."
    return len({key[len(prefix):].split(".", 1)[0] for key in model_state if key.startswith(prefix)})


def to_official_state_dict(
    model_state: Mapping[str, Tensor], rec_first_layer: int | None = None, surgery_first_layer: int | None = None
) -> dict[str, Tensor]:
    """`EbsegModel` keys -> the official layout (inverse of `convert_official_state_dict`).

    The split of CLIP's blocks is not visible in the keys: None means the published rules
    (recognition head = the last quarter of the blocks, surgery from block layers // 6 + 1);
    `EbsegSegmenter.official_state_dict` passes the configured values."""
    num_blocks = _count_blocks(model_state)
    split = published_feature_last_layer(num_blocks) if rec_first_layer is None else int(rec_first_layer)
    surgery_start = (num_blocks // 6 + 1 if surgery_first_layer is None else int(surgery_first_layer)) - 1
    official = san_to_official(model_state, split)
    inverse = tuple((new, old) for old, new in _SURGERY_ATTENTION)
    converted: dict[str, Tensor] = {}
    for key, value in official.items():
        for module, first_surgery_block in ((EXTRACTOR, surgery_start), (REC_HEAD, 0)):
            match = _BLOCK.match(key[len(module):]) if key.startswith(module) else None
            if match and int(match.group(1)) >= first_surgery_block:
                key = _rename_block_attention(key, inverse)
        converted[key] = value
    for name in _SHARED_TAIL:
        if REC_HEAD + name in converted:
            converted[EXTRACTOR + name] = converted[REC_HEAD + name]
    return converted


def seen_class_flags(vocabulary: Vocabulary, seen_names: frozenset[str]) -> list[bool]:
    """Per class of `vocabulary`: True when one of its names (name or synonym) is a training
    name, compared the way ovbench's seen/unseen tables compare them (`normalise_name`)."""
    return [any(normalise_name(name) in seen_names for name in cls.all_names) for cls in vocabulary]


class EbsegSegmenter(MaskClassificationSegmenter):
    """EBSeg behind the uniform interface."""

    method_name = "ebseg"
    config_class = EbsegConfig
    official_prefixes: ClassVar[tuple[str, ...]] = OFFICIAL_PREFIXES
    official_checkpoint_name = "official EBSeg checkpoint"
    model: EbsegModel

    build_method_model = staticmethod(build_ebseg_model)
    convert_official_state_dict = staticmethod(convert_official_state_dict)
    to_official_state_dict = staticmethod(to_official_state_dict)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._origin: tuple[str | None, str | None] = (None, None)
        self._official_weights = False

    def official_state_dict(self) -> dict[str, Tensor]:
        """This model's weights in the official layout, split where the configuration splits CLIP."""
        return to_official_state_dict(self.model.state_dict(), self.config.rec_first_layer, self.model.surgery_first_layer)

    def _load_payload(self, payload: Any, path: Any) -> None:
        super()._load_payload(payload, path)
        state = payload.get("model", payload) if isinstance(payload, Mapping) else {}
        # The authors' training files keep the criterion's class weights: 171 classes + no-object
        # says the weights were trained on COCO-Stuff-171, whose names then count as seen.
        weights = state.get("criterion.empty_weight") if self.is_official_state(state) else None
        self._official_weights = isinstance(weights, Tensor) and weights.numel() == COCO_STUFF_CLASSES + 1

    # ------------------------------------------------------------ seen classes
    def use_training_origin(self, train_set: str | None, protocol: str | None) -> None:
        self._origin = (train_set, protocol)

    def seen_names(self) -> frozenset[str]:
        """Every (normalised) class name the current weights were trained with."""
        train_set, protocol = self._origin
        names = set(training_names(train_set, protocol))
        if self._official_weights:
            names |= training_names(OFFICIAL_TRAIN_SET, None)
        return frozenset(names)

    def seen_origin(self) -> str:
        train_set, protocol = self._origin
        parts = [f"{train_set} ({protocol})"] if train_set and protocol != "zeroshot" else []
        if protocol == "finetune":
            parts.append("coco-stuff (finetune start)")
        if self._official_weights:
            parts.append(f"{OFFICIAL_TRAIN_SET} (official weights)")
        return ", ".join(parts) or "nothing (untrained weights: every class is unseen)"

    def use_eval_set(self, name: str | None, vocabulary: Vocabulary | None = None) -> dict[str, Any]:
        settings: dict[str, Any] = {"balancing": asdict(self.config.balancing), "seen_from": self.seen_origin()}
        if vocabulary is not None:
            flags = seen_class_flags(vocabulary, self.seen_names())
            settings["seen_classes"] = [cls.name for cls, seen in zip(vocabulary, flags) if seen]
            settings["unseen_classes"] = [cls.name for cls, seen in zip(vocabulary, flags) if not seen]
        return settings

    def forward_masks(self, images: Tensor, vocabulary: Vocabulary) -> MaskScores:
        seen = torch.tensor(seen_class_flags(vocabulary, self.seen_names()), dtype=torch.bool)
        prediction = self.model.predict_masks(images, self.class_names(vocabulary), seen=seen)
        return MaskScores(self.class_probabilities(prediction), prediction.mask_logits, tuple(prediction.padded_size))
