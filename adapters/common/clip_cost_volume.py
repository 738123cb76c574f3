"""What the CAT-Seg and GSNet adapters share: a segmenter base that maps the interface onto
`ovbench_methods.common.clip_cost_model.SplitClipCostModel` (class names, per-pixel BCE, the
official optimiser groups, strict checkpoint loading of ovbench and detectron2 files).

Subclasses name the method (`method_name`), point at its config dataclass (`config_class`,
defined next to the model in `ovbench_methods`), build the model (`build_model`) and convert
the official checkpoint layout (`convert_official_state_dict` / `to_official_state_dict`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from torch import Tensor, nn

from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError, first_line
from ovbench.interface import IGNORE_INDEX, ConfiguredSegmenter, load_torch_file
from ovbench_adapters.common.templates import resolve_templates
from ovbench_methods.common.clip_cost_model import ClipCostVolumeConfig
from ovbench_methods.common.errors import MethodConfigError, WeightsError
from ovbench_methods.common.state_dict import state_dict_mismatch

__all__ = ["ClipCostVolumeSegmenter", "OFFICIAL_PREFIX"]

#: Every key of the authors' detectron2 checkpoints starts here or at a top-level module.
OFFICIAL_PREFIX = "sem_seg_head."
#: Buffers computed from the configuration alone (Swin shift masks).
DERIVED_BUFFERS = (".attn_mask",)


class ClipCostVolumeSegmenter(ConfiguredSegmenter):
    """Interface half shared by the CAT-Seg and GSNet segmenters (see module docstring)."""

    method_name: ClassVar[str] = "clip-cost-volume"
    config_class: ClassVar[type[ClipCostVolumeConfig]] = ClipCostVolumeConfig
    #: how an official detectron2 file of this method is named in messages.
    official_checkpoint_name: ClassVar[str] = "official checkpoint"

    #: the method's builder, `build(config, templates=..., trusted=...)`, from ovbench_methods.
    build_method_model: ClassVar[Callable[..., nn.Module]]

    def build_model(self, config: Any, trusted: bool) -> nn.Module:
        # Template-set names ovbench keeps as data (configs/vocab/) become their template lists here.
        return type(self).build_method_model(config, templates=resolve_templates(config.templates), trusted=trusted)

    @staticmethod
    def convert_official_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def class_names(vocabulary: Vocabulary) -> tuple[tuple[str, ...], ...]:
        """Each class as (name, *synonyms); the model keeps the first unless told to average."""
        return tuple(cls.all_names for cls in vocabulary)

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
        groups = []
        head = self.model.head_parameters()
        clip = self.model.clip_parameters()
        if head:
            groups.append({"params": head, "lr": base_lr, "weight_decay": weight_decay})
        if clip:
            groups.append({"params": clip, "lr": base_lr * float(self.config.clip_multiplier), "weight_decay": weight_decay})
        return groups

    # ---------------------------------------------------------------- checkpoints
    def load_checkpoint(self, path: str | Path, trusted: bool = False) -> None:
        """Load an ovbench checkpoint ({"model": segmenter state}) or the authors' detectron2
        file ({"model": {"sem_seg_head.predictor....": ...}}); strict, one error line."""
        self._load_payload(load_torch_file(path, trusted=trusted), path)

    def _load_payload(self, payload: Any, path: str | Path) -> None:
        state = payload.get("model", payload) if isinstance(payload, Mapping) else None
        if not isinstance(state, Mapping) or not state:
            raise CheckpointError(f"{path}: not a state dict or a {{'model': state_dict}} checkpoint")
        if any(isinstance(key, str) and key.startswith(OFFICIAL_PREFIX) for key in state):
            try:
                model_state = self.convert_official_state_dict(state)
            except (MethodConfigError, WeightsError) as exc:  # a file whose tensors cannot be converted
                raise CheckpointError(f"{path}: {first_line(exc)}") from None
            source = self.official_checkpoint_name
        elif all(isinstance(key, str) and key.startswith("model.") for key in state):
            model_state = {key[len("model.") :]: value for key, value in state.items()}
            source = "ovbench checkpoint"
        else:
            model_state = dict(state)
            source = "state dict"
        self._load_model_state(model_state, f"{path} ({source})")

    def _load_model_state(self, state: Mapping[str, Any], source: str) -> None:
        expected = self.model.state_dict()
        state = dict(state)
        # The shifted-window masks are persistent buffers (official files carry them) but a
        # function of the configuration only: a file without them loses nothing.
        for key in expected:
            if key.endswith(DERIVED_BUFFERS) and key not in state:
                state[key] = expected[key]
        mismatch = state_dict_mismatch(state, expected)
        if mismatch:
            raise CheckpointError(f"{source} does not fit this {self.method_name} configuration: {mismatch}")
        self.model.load_state_dict(state, strict=True)
