"""The base of the adapters whose models live in `ovbench_methods` and whose authors released
weights (CAT-Seg, GSNet, SAN, SED, ...):

- building: the method's builder (`build_method_model(config, templates=..., trusted=...)`)
  with template-set names ovbench keeps as data resolved to their lists;
- class names: each vocabulary class as (name, *synonyms), the model decides what to use;
- checkpoints: one `load_checkpoint` that takes an ovbench checkpoint, a bare state dict, or
  the authors' own file, whose keys the adapter converts (`convert_official_state_dict`);
  strict, with one error line on any mismatch.

Subclasses say how an official file is recognised (`official_prefixes`: a file with a key
starting with one of them is official), how to name it in messages (`official_checkpoint_name`),
which buffers an official file may lack because they follow from the configuration
(`derived_buffers`), and supply the two converters as static methods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Collection, Mapping, Sequence

from torch import Tensor, nn

from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError, first_line
from ovbench.interface import ConfiguredSegmenter, load_torch_file
from ovbench_adapters.common.templates import resolve_templates
from ovbench_methods.common.errors import MethodConfigError, WeightsError
from ovbench_methods.common.state_dict import state_dict_mismatch

__all__ = [
    "CLIP_TEXT_TOWER_PREFIXES",
    "OfficialCheckpointSegmenter",
    "detectron2_clip_renames",
    "inverse_renames",
    "rename_prefixes",
]


class OfficialCheckpointSegmenter(ConfiguredSegmenter):
    """A configured segmenter that also loads its authors' checkpoints (see module docstring)."""

    #: key prefixes that mark a file as the authors' (detectron2 files: "sem_seg_head.").
    official_prefixes: ClassVar[tuple[str, ...]] = ("sem_seg_head.",)
    #: how an official file of this method is named in messages.
    official_checkpoint_name: ClassVar[str] = "official checkpoint"
    #: key suffixes of buffers computed from the configuration alone (e.g. Swin shift masks):
    #: a file without them loses nothing, so they are taken from the built model.
    derived_buffers: ClassVar[tuple[str, ...]] = ()
    #: the method's builder, `build(config, templates=..., trusted=...)`, from ovbench_methods.
    build_method_model: ClassVar[Callable[..., nn.Module]]

    def build_model(self, config: Any, trusted: bool) -> nn.Module:
        # Template-set names ovbench keeps as data (configs/vocab/) become their template lists here.
        return type(self).build_method_model(config, templates=resolve_templates(config.templates), trusted=trusted)

    @staticmethod
    def class_names(vocabulary: Vocabulary) -> tuple[tuple[str, ...], ...]:
        """Each class as (name, *synonyms); the model decides whether to use the synonyms."""
        return tuple(cls.all_names for cls in vocabulary)

    @staticmethod
    def convert_official_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
        """The authors' keys -> this adapter's model keys."""
        raise NotImplementedError

    @staticmethod
    def to_official_state_dict(model_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """This adapter's model keys -> the authors' layout (inverse of the above)."""
        raise NotImplementedError

    def is_official_state(self, state: Mapping[str, Any]) -> bool:
        return any(isinstance(key, str) and key.startswith(self.official_prefixes) for key in state)

    def load_checkpoint(self, path: str | Path, trusted: bool = False) -> None:
        """Load an ovbench checkpoint ({"model": segmenter state}), a bare model state dict or
        the authors' file ({"model": {official keys}} or the bare official dict); strict."""
        self._load_payload(load_torch_file(path, trusted=trusted), path)

    def _load_payload(self, payload: Any, path: str | Path) -> None:
        state = payload.get("model", payload) if isinstance(payload, Mapping) else None
        if not isinstance(state, Mapping) or not state:
            raise CheckpointError(f"{path}: not a state dict or a {{'model': state_dict}} checkpoint")
        if self.is_official_state(state):
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
        if self.derived_buffers:
            for key in expected:
                if key.endswith(self.derived_buffers) and key not in state:
                    state[key] = expected[key]
        mismatch = state_dict_mismatch(state, expected)
        if mismatch:
            raise CheckpointError(f"{source} does not fit this {self.method_name} configuration: {mismatch}")
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # e.g. a non-tensor value where a tensor belongs
            raise CheckpointError(f"{source} does not fit this {self.method_name} configuration: {first_line(exc)}") from None


def rename_prefixes(
    state: Mapping[str, Any], renames: Sequence[tuple[str, str]], drop: Collection[str] = ()
) -> dict[str, Any]:
    """Rename each key by the first (old prefix, new prefix) pair it starts with; keys listed in
    `drop` are left out, and keys no pair fits are kept unchanged, so that the strict loader
    names them. Swapping the pairs gives the inverse conversion."""
    renamed: dict[str, Any] = {}
    for key, value in state.items():
        if key in drop:
            continue
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return renamed


def inverse_renames(renames: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (new, old) pairs undoing `renames`."""
    return [(new, old) for old, new in renames]


def detectron2_clip_renames(clip_prefix: str, head_prefix: str, head_name: str = "transformer.") -> list[tuple[str, str]]:
    """The renames of the detectron2 cost-volume layouts (CAT-Seg, GSNet, SED): the CLIP under
    `clip_prefix` split into ``image_encoder.visual.*`` and the text tower ``text_encoder.*``,
    and the head under `head_prefix` to `head_name`."""
    return [
        (clip_prefix + "visual.", "image_encoder.visual."),
        *((clip_prefix + part, "text_encoder." + part) for part in CLIP_TEXT_TOWER_PREFIXES),
        (head_prefix, head_name),
    ]


#: Keys of an OpenAI / open_clip CLIP that belong to its text tower (the rest is `visual.*`
#: and `logit_scale`).
CLIP_TEXT_TOWER_PREFIXES = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection")
