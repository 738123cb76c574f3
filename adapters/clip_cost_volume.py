"""What the CAT-Seg and GSNet adapters share: the config fields of a split-q/k/v CLIP with a
cost-aggregation head, their validation, and a segmenter base that maps the interface onto
`ovbench_methods.common.clip_cost_model.SplitClipCostModel` (class names, per-pixel BCE, the official
optimiser groups, strict checkpoint loading of ovbench and detectron2 files).

Subclasses name the method (`method_name`), add their own fields and checks, build the model
(`build_model`) and convert the official checkpoint layout (`convert_official_state_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, NoReturn

from torch import Tensor, nn

from ovbench_adapters.templates import template_choices
from ovbench_methods.common.clip import LAST_BLOCK_MODES
from ovbench_methods.common.clip_qkv import CLIP_FINETUNE_MODES, SplitQKVError
from ovbench_methods.common.cost_aggregation import ATTENTION_TYPES
from ovbench_methods.common.state_dict import state_dict_mismatch
from ovbench_methods.common.text import SYNONYM_MODES
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError, ConfigError
from ovbench.interface import IGNORE_INDEX, OpenVocabSegmenter, load_torch_file

if TYPE_CHECKING:
    from ovbench.eval.inference import InferenceMode

__all__ = ["ClipCostVolumeConfig", "ClipCostVolumeSegmenter", "OFFICIAL_PREFIX"]

#: Every key of the authors' detectron2 checkpoints starts here or at a top-level module.
OFFICIAL_PREFIX = "sem_seg_head."
#: Buffers computed from the configuration alone (Swin shift masks).
DERIVED_BUFFERS = (".attn_mask",)


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_path_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and bool(value.strip()))


def _is_pair(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v, minimum) for v in value)


@dataclass
class ClipCostVolumeConfig:
    """Fields shared by `configs/methods/catseg.yaml` and `gsnet.yaml`; defaults are the
    published ViT-B/16 setting (configs/vitb_384.yaml of both official codes)."""

    #: validation messages start with it (set by each subclass).
    method_name: ClassVar[str] = "clip-cost-volume"

    #: open_clip model name of the CLIP (OpenAI ViT-B/16; RemoteCLIP rows ViT-B-32).
    arch: str = "ViT-B-16"
    #: an open_clip pretrained tag, a path to an OpenAI `.pt` / open_clip checkpoint, or None = random init.
    clip_weights: str | None = "openai"
    #: explicit open_clip config {embed_dim, vision_cfg, text_cfg, quick_gelu} (tiny models); overrides arch.
    model_config: dict[str, Any] | None = None
    #: force QuickGELU for a named arch without a pretrained tag (OpenAI CLIP uses it); null = arch default.
    quick_gelu: bool | None = True
    #: CLIP input (h, w): every view is padded, then stretched to it (ViT-B 384, ViT-L 336).
    image_size: list[int] = field(default_factory=lambda: [384, 384])
    #: zero-padding multiple before the stretch (detectron2 MASK_FORMER.SIZE_DIVISIBILITY 32).
    pad_multiple: int = 32
    #: cost-volume grid (FEATURE_RESOLUTION) = image_size / patch; checked against the model.
    feature_resolution: list[int] = field(default_factory=lambda: [24, 24])
    #: 0-based CLIP blocks whose outputs feed upsample1 / upsample2 (ViT-B [3, 7], ViT-L [7, 15]).
    guidance_blocks: list[int] = field(default_factory=lambda: [3, 7])
    #: dense last block: "catseg" = v-only, out_proj, + block-input CLS, + MLP (official).
    last_block: str = "catseg"
    #: which CLIP weights train: "attention" = q/v of both towers (official), "full", "frozen".
    clip_finetune: str = "attention"
    #: learning-rate multiplier of the trainable CLIP weights (SOLVER.CLIP_MULTIPLIER): 2e-4 x 0.01.
    clip_multiplier: float = 0.01
    #: a template-set name (methods/common/prompts.py) or a list of templates; P = their number.
    templates: str | list[str] = "single"
    #: "first" synonym only (official) or "average" the embeddings of all synonyms.
    synonyms: str = "first"
    hidden_dim: int = 128
    num_heads: int = 4
    num_layers: int = 2
    #: Swin window (shift = window // 2).
    window_size: int = 12
    #: class-attention average pooling in training; eval_pooling_sizes in evaluation (eval.sh: [1, 1]).
    pooling_sizes: list[int] | None = field(default_factory=lambda: [2, 2])
    eval_pooling_sizes: list[int] | None = field(default_factory=lambda: [1, 1])
    #: class attention: "linear" (official) or "full".
    attention_type: str = "linear"
    #: pad the class axis to this many learned tokens when shorter (CAT-Seg also keeps only the
    #: top pad_len classes when longer); 0 disables.
    pad_len: int = 256
    text_guidance_proj_dim: int = 128
    appearance_guidance_proj_dim: int = 128
    decoder_dims: list[int] = field(default_factory=lambda: [64, 32])
    #: widths of the raw decoder guidance (upsample1 / upsample2 outputs).
    decoder_guidance_dims: list[int] = field(default_factory=lambda: [256, 128])
    #: leave ignored pixels out of the BCE (official: they count as all-negative targets).
    mask_ignored: bool = False

    #: fields holding two positive integers; subclasses extend.
    pair_fields: ClassVar[tuple[str, ...]] = ("image_size", "feature_resolution", "decoder_dims", "decoder_guidance_dims")
    #: fields that must be true or false; subclasses extend.
    bool_fields: ClassVar[tuple[str, ...]] = ("mask_ignored",)

    def choices(self) -> dict[str, tuple[str, ...]]:
        """Fields restricted to a set of names; subclasses extend."""
        return {
            "last_block": LAST_BLOCK_MODES,
            "clip_finetune": CLIP_FINETUNE_MODES,
            "synonyms": SYNONYM_MODES,
            "attention_type": ATTENTION_TYPES,
        }

    def fail(self, name: str, expected: str) -> NoReturn:
        raise ConfigError(f"{self.method_name}: {name} must be {expected}, got {getattr(self, name)!r}")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        fail = self.fail
        if not isinstance(self.arch, str) or not self.arch:
            fail("arch", "an open_clip model name")
        if not is_path_or_null(self.clip_weights):
            fail("clip_weights", "a tag, a file path or null")
        if self.model_config is not None and not isinstance(self.model_config, dict):
            fail("model_config", "a mapping or null")
        for name in self.pair_fields:
            if not _is_pair(getattr(self, name)):
                fail(name, "a list of two positive integers")
        for name in ("pooling_sizes", "eval_pooling_sizes"):
            if getattr(self, name) is not None and not _is_pair(getattr(self, name)):
                fail(name, "a list of two positive integers or null")
        if not _is_pair(self.guidance_blocks, 0):
            fail("guidance_blocks", "two block indices")
        for name in ("hidden_dim", "num_heads", "num_layers", "window_size", "text_guidance_proj_dim", "appearance_guidance_proj_dim"):
            if not _is_int(getattr(self, name), 1):
                fail(name, "a positive integer")
        for name in ("pad_multiple", "pad_len"):
            if not _is_int(getattr(self, name), 0):
                fail(name, "a non-negative integer")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"{self.method_name}: hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")
        for name, allowed in self.choices().items():
            if getattr(self, name) not in allowed:
                fail(name, f"one of {', '.join(allowed)}")
        if isinstance(self.templates, str):
            if self.templates not in template_choices():
                fail("templates", f"a template set ({', '.join(template_choices())}) or a list of templates")
        elif not isinstance(self.templates, list) or not self.templates:
            fail("templates", "a template-set name or a non-empty list of templates")
        multiplier = self.clip_multiplier
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or multiplier < 0:
            fail("clip_multiplier", "a non-negative number")
        if self.quick_gelu is not None and not isinstance(self.quick_gelu, bool):
            fail("quick_gelu", "true, false or null")
        for name in self.bool_fields:
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")

    def clip_kwargs(self) -> dict[str, Any]:
        """The shared fields as keyword arguments of the `build_*_model` functions (without
        the template resolution and trust flag, which the segmenter adds)."""
        return {
            "arch": self.arch,
            "clip_weights": self.clip_weights,
            "model_config": self.model_config,
            "quick_gelu": self.quick_gelu,
            "image_size": tuple(self.image_size),
            "pad_multiple": self.pad_multiple,
            "guidance_blocks": tuple(self.guidance_blocks),
            "last_block": self.last_block,
            "clip_finetune": self.clip_finetune,
            "synonyms": self.synonyms,
            "feature_resolution": tuple(self.feature_resolution),
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "window_size": self.window_size,
            "pooling_sizes": self.pooling_sizes,
            "eval_pooling_sizes": self.eval_pooling_sizes,
            "attention_type": self.attention_type,
            "pad_len": self.pad_len,
            "text_guidance_proj_dim": self.text_guidance_proj_dim,
            "appearance_guidance_proj_dim": self.appearance_guidance_proj_dim,
            "decoder_dims": tuple(self.decoder_dims),
            "decoder_guidance_dims": tuple(self.decoder_guidance_dims),
        }


class ClipCostVolumeSegmenter(OpenVocabSegmenter):
    """Interface half shared by the CAT-Seg and GSNet segmenters (see module docstring)."""

    method_name: ClassVar[str] = "clip-cost-volume"
    config_class: ClassVar[type[ClipCostVolumeConfig]] = ClipCostVolumeConfig
    #: how an official detectron2 file of this method is named in messages.
    official_checkpoint_name: ClassVar[str] = "official checkpoint"
    #: plain errors of `methods/` that mean an unreadable or unfitting weights file / a bad setting.
    checkpoint_errors: ClassVar[tuple[type[Exception], ...]] = ()
    config_errors: ClassVar[tuple[type[Exception], ...]] = ()

    def __init__(
        self,
        config: ClipCostVolumeConfig,
        inference: InferenceMode | None = None,
        trust_checkpoints: bool = False,
    ) -> None:
        super().__init__(inference)
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{self.method_name}: expected a {self.config_class.__name__}, got {type(config).__name__}")
        config.validate()
        self.config = config
        try:
            self.model = self.build_model(config, trust_checkpoints)
        except self.checkpoint_errors as exc:
            raise CheckpointError(f"{self.method_name}: {exc}") from None
        except self.config_errors as exc:
            raise ConfigError(f"{self.method_name}: {exc}") from None

    def build_model(self, config: Any, trusted: bool) -> nn.Module:
        raise NotImplementedError

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
            except SplitQKVError as exc:
                raise CheckpointError(f"{path}: {exc}") from None
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
