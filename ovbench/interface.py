"""The uniform interface every method is reached through."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator

import torch
from torch import Tensor, nn

from ovbench.config import check_instance
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError, ConfigError, OvbenchError, first_line
from ovbench_methods.common.errors import MethodConfigError, WeightsError
from ovbench_methods.common.state_dict import state_dict_mismatch

if TYPE_CHECKING:
    from ovbench.eval.inference import InferenceMode

__all__ = [
    "IGNORE_INDEX",
    "ConfiguredSegmenter",
    "OpenVocabSegmenter",
    "Vocabulary",
    "load_torch_file",
    "method_errors",
]

#: the value of ignored pixels in the targets `loss` receives, whatever the dataset's own ignore
#: value (LandDiscover50K 0, Potsdam 5, FAST 255): the engine remaps it, so adapters need not know
#: each dataset's rule. Target values >= the vocabulary size are also to be treated as ignored.
IGNORE_INDEX = 255


def load_torch_file(path: str | Path, trusted: bool = False) -> Any:
    """torch.load with weights_only=True unless the user vouches for the file.

    A pickle can run arbitrary code, so untrusted files only load tensors and plain
    containers; a file that needs more fails with one line telling how to opt out.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # torch raises several unrelated types for bad files
        hint = "" if trusted else " (if you trust this file, pass --trust-checkpoint to load it without weights_only)"
        raise CheckpointError(f"cannot load checkpoint {path}: {first_line(exc)}{hint}") from None


@contextmanager
def method_errors(name: str) -> Iterator[None]:
    """Translate the two base errors of `ovbench_methods` into ovbench errors, one line each:
    a `WeightsError` is a `CheckpointError`, a `MethodConfigError` a `ConfigError`."""
    try:
        yield
    except WeightsError as exc:
        raise CheckpointError(f"{name}: {first_line(exc)}") from None
    except MethodConfigError as exc:
        raise ConfigError(f"{name}: {first_line(exc)}") from None


class OpenVocabSegmenter(nn.Module, ABC):
    """One method behind one contract.

    Subclasses implement `forward_logits`, the model's raw per-class logits for a batch of
    views at the model's input size; `predict` composes it with the inference mode the
    method's YAML chose (whole image or sliding window), so every method returns scores at
    the input resolution. `forward` computes the training loss so that DistributedDataParallel
    (which only synchronises through `forward`) can wrap a segmenter directly.
    """

    #: registry name of the method, e.g. "clip-dense"
    method_name: str = ""

    def __init__(self, inference: "InferenceMode | None" = None):
        super().__init__()
        self.inference = inference

    @abstractmethod
    def forward_logits(self, images: Tensor, vocabulary: Vocabulary) -> Tensor:
        """(N,3,h,w) float RGB in 0..255 -> (N,T,h',w') logits, any output resolution."""

    @torch.no_grad()
    def predict(self, images: Tensor, vocabulary: Vocabulary) -> Tensor:
        """(B,3,H,W) float RGB in 0..255 -> (B,T,H,W) scores; argmax is the label map."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise OvbenchError(f"predict expects images of shape (B,3,H,W), got {tuple(images.shape)}")
        if self.inference is None:
            raise OvbenchError(f"{self.method_name or type(self).__name__}: no inference mode configured")
        with method_errors(self.display_name):
            if getattr(self.inference, "wants_masks", False):
                return self.inference(lambda views: self.forward_masks(views, vocabulary), images)
            return self.inference(lambda views: self.forward_logits(views, vocabulary), images)

    def forward_masks(self, images: Tensor, vocabulary: Vocabulary) -> Any:
        """Mask-classification methods: (N,3,h,w) -> `ovbench.eval.inference.MaskScores`, for
        the "masks" inference mode. Other methods do not implement it."""
        raise OvbenchError(f"{self.display_name} has no per-query masks; its YAML must not choose inference mode 'masks'")

    def use_eval_set(self, name: str | None, vocabulary: Vocabulary | None = None) -> dict[str, Any]:
        """Called before each evaluation set with its name and vocabulary (None after the
        last): a method with per-set inference settings (OV-Seg's and SCAN's λ and mask
        threshold, EBSeg's seen classes) switches to them here and returns what it uses,
        which goes into that set's record. The default has no such settings and returns {}."""
        return {}

    def use_training_origin(self, train_set: str | None, protocol: str | None) -> None:
        """Called before evaluation with what the current weights were trained on (the
        training set's name and the protocol; None and "zeroshot" for untrained weights).
        Methods whose inference treats classes named in training differently (EBSeg's
        seen/unseen balancing) take their seen names from it; the default ignores it."""

    @property
    def display_name(self) -> str:
        return self.method_name or type(self).__name__

    @classmethod
    def is_training_free(cls) -> bool:
        """A method that does not implement `loss` is evaluated as it is, never trained."""
        return cls.loss is OpenVocabSegmenter.loss

    def loss(self, images: Tensor, targets: Tensor, vocabulary: Vocabulary) -> dict[str, Tensor]:
        """Training losses; `targets` (B,H,W) int64 class ids with IGNORE_INDEX for ignored
        pixels. Training-free methods do not implement it."""
        raise OvbenchError(f"{self.method_name or type(self).__name__} is training-free and has no loss")

    def forward(self, images: Tensor, targets: Tensor, vocabulary: Vocabulary) -> dict[str, Tensor]:
        with method_errors(self.display_name):
            return self.loss(images, targets, vocabulary)

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser groups; the default trains every parameter that requires grad at base_lr."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": base_lr, "weight_decay": weight_decay}] if params else []

    def load_checkpoint(self, path: str | Path, trusted: bool = False) -> None:
        """Load an ovbench checkpoint ({"model": state_dict, ...}); adapters extend this
        to convert their authors' official layouts."""
        payload = load_torch_file(path, trusted=trusted)
        state = payload.get("model", payload) if isinstance(payload, dict) else None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: not a state dict or a {{'model': state_dict}} checkpoint")
        load_state_dict_checked(self, state, path, self.method_name or type(self).__name__)


def load_state_dict_checked(module: nn.Module, state: dict, path: str | Path, name: str) -> None:
    """Load `state` into `module` only when it fits key for key and shape for shape; otherwise
    one `CheckpointError` line naming the file and what does not fit (torch would raise a
    multi-line RuntimeError for a shape mismatch even with strict=False)."""
    mismatch = state_dict_mismatch(state, module.state_dict())
    if mismatch:
        raise CheckpointError(f"{path}: does not fit {name}: {mismatch}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. a non-tensor value where a tensor belongs
        raise CheckpointError(f"{path}: does not fit {name}: {first_line(exc)}") from None


class ConfiguredSegmenter(OpenVocabSegmenter):
    """An adapter whose model is built from one typed config dataclass.

    Subclasses set `config_class` (the method's own dataclass from `ovbench_methods`, which
    holds the published defaults) and implement `build_model(config, trusted)`; the
    method YAML's `model:` section becomes that dataclass, checked field by field. Errors
    the model raises on purpose (`MethodConfigError`, `WeightsError`) become one-line
    ovbench errors here, so no adapter needs to know its method's exception classes.
    """

    #: the method's config dataclass
    config_class: ClassVar[type]

    def __init__(self, config: Any, inference: "InferenceMode | None" = None, trust_checkpoints: bool = False) -> None:
        super().__init__(inference)
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{self.display_name}: expected a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = check_instance(config, f"{self.display_name} model")
        with method_errors(self.display_name):
            self.model = self.build_model(self.config, trust_checkpoints)

    @abstractmethod
    def build_model(self, config: Any, trusted: bool) -> nn.Module:
        """The method's torch module, built from `config`; `trusted` lets weight files load
        without weights_only."""
