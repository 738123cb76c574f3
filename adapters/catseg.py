"""Adapter for `catseg`: binds `methods.catseg` (CAT-Seg, CVPR 2024) to the harness interface.

It turns a `Vocabulary` into name tuples, targets into the per-pixel BCE the method trains
with, the model's parameters into the official optimiser groups (CLIP q/v at 0.01x), and
checkpoints into the model's keys: ovbench checkpoints and the authors' detectron2 files
(``model_base.pth`` / ``model_large.pth``). Plain errors from `methods/` become
`ovbench.errors` with one line each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from torch import Tensor

from methods.catseg.model import CatSegConfigError, CatSegModel, build_catseg_model
from methods.common.clip import LAST_BLOCK_MODES
from methods.common.clip_loading import ClipConfigError, ClipLoadingError
from methods.common.state_dict import state_dict_mismatch
from methods.common.clip_qkv import CLIP_FINETUNE_MODES, SplitQKVError, split_packed_qkv
from methods.common.cost_aggregation import ATTENTION_TYPES, CostAggregationError
from adapters.templates import resolve_templates, template_choices
from methods.common.prompts import UnknownTemplateSetError
from methods.common.text import SYNONYM_MODES
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError, ConfigError
from ovbench.interface import IGNORE_INDEX, OpenVocabSegmenter, load_torch_file

if TYPE_CHECKING:
    from ovbench.eval.inference import InferenceMode

__all__ = ["CatSegConfig", "CatSegSegmenter", "convert_official_state_dict", "to_official_state_dict"]

#: Prefixes of the official detectron2 state dict (catseg.md section 9).
OFFICIAL_CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
OFFICIAL_HEAD_PREFIX = "sem_seg_head.predictor.transformer."
OFFICIAL_TOP_LEVEL = ("upsample1.", "upsample2.")
#: Keys of an OpenAI CLIP that belong to its text tower (the rest is `visual.*`).
TEXT_TOWER_PREFIXES = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection")
#: Official CLIP entries CAT-Seg never uses; dropped on load.
UNUSED_CLIP_KEYS = ("logit_scale",)
#: Buffers computed from the configuration alone (Swin shift masks).
DERIVED_BUFFERS = (".attn_mask",)


@dataclass
class CatSegConfig:
    """Model section of `configs/methods/catseg.yaml`; defaults are the published ViT-B/16
    setting (configs/vitb_384.yaml of the official code)."""

    #: open_clip model name of the CLIP (OpenAI ViT-B/16).
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
    #: CLIP patch grid = image_size / patch (FEATURE_RESOLUTION); checked against CLIP.
    feature_resolution: list[int] = field(default_factory=lambda: [24, 24])
    #: 0-based blocks whose outputs feed upsample1 / upsample2 (ViT-B [3, 7], ViT-L [7, 15]).
    guidance_blocks: list[int] = field(default_factory=lambda: [3, 7])
    #: dense last block: "catseg" = v-only, out_proj, + block-input CLS, + MLP (official).
    last_block: str = "catseg"
    #: which CLIP weights train: "attention" = q/v of both towers (official), "full", "frozen".
    clip_finetune: str = "attention"
    #: learning-rate multiplier of the trainable CLIP weights (SOLVER.CLIP_MULTIPLIER).
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
    #: pad the class axis to this many learned tokens, keep the top pad_len classes above it; 0 disables both.
    pad_len: int = 256
    text_guidance_proj_dim: int = 128
    appearance_guidance_proj_dim: int = 128
    decoder_dims: list[int] = field(default_factory=lambda: [64, 32])
    #: widths of upsample1 / upsample2 (decoder guidance before projection).
    decoder_guidance_dims: list[int] = field(default_factory=lambda: [256, 128])
    decoder_guidance_proj_dims: list[int] = field(default_factory=lambda: [32, 16])
    #: leave ignored pixels out of the BCE (official: they count as all-negative targets).
    mask_ignored: bool = False

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""

        def fail(name: str, expected: str) -> None:
            raise ConfigError(f"catseg: {name} must be {expected}, got {getattr(self, name)!r}")

        def is_int(value: Any, minimum: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

        def is_pair(value: Any, minimum: int = 1) -> bool:
            return isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v, minimum) for v in value)

        if not isinstance(self.arch, str) or not self.arch:
            fail("arch", "an open_clip model name")
        if self.clip_weights is not None and (not isinstance(self.clip_weights, str) or not self.clip_weights.strip()):
            fail("clip_weights", "a tag, a file path or null")
        if self.model_config is not None and not isinstance(self.model_config, dict):
            fail("model_config", "a mapping or null")
        for name in ("image_size", "feature_resolution", "decoder_dims", "decoder_guidance_dims", "decoder_guidance_proj_dims"):
            if not is_pair(getattr(self, name)):
                fail(name, "a list of two positive integers")
        for name in ("pooling_sizes", "eval_pooling_sizes"):
            if getattr(self, name) is not None and not is_pair(getattr(self, name)):
                fail(name, "a list of two positive integers or null")
        if not is_pair(self.guidance_blocks, 0):
            fail("guidance_blocks", "two block indices")
        for name in ("hidden_dim", "num_heads", "num_layers", "window_size", "text_guidance_proj_dim", "appearance_guidance_proj_dim"):
            if not is_int(getattr(self, name), 1):
                fail(name, "a positive integer")
        for name in ("pad_multiple", "pad_len"):
            if not is_int(getattr(self, name), 0):
                fail(name, "a non-negative integer")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"catseg: hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")
        choices = {
            "last_block": LAST_BLOCK_MODES,
            "clip_finetune": CLIP_FINETUNE_MODES,
            "synonyms": SYNONYM_MODES,
            "attention_type": ATTENTION_TYPES,
        }
        for name, allowed in choices.items():
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
        if not isinstance(self.mask_ignored, bool):
            fail("mask_ignored", "true or false")


class CatSegSegmenter(OpenVocabSegmenter):
    """CAT-Seg behind the uniform interface."""

    method_name = "catseg"
    config_class = CatSegConfig

    def __init__(
        self,
        config: CatSegConfig,
        inference: InferenceMode | None = None,
        trust_checkpoints: bool = False,
    ) -> None:
        super().__init__(inference)
        if not isinstance(config, CatSegConfig):
            raise ConfigError(f"catseg: expected a CatSegConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        try:
            self.model: CatSegModel = build_catseg_model(
                arch=config.arch,
                clip_weights=config.clip_weights,
                model_config=config.model_config,
                quick_gelu=config.quick_gelu,
                templates=resolve_templates(config.templates),
                trusted=trust_checkpoints,
                image_size=tuple(config.image_size),
                pad_multiple=config.pad_multiple,
                guidance_blocks=tuple(config.guidance_blocks),
                last_block=config.last_block,
                clip_finetune=config.clip_finetune,
                synonyms=config.synonyms,
                feature_resolution=tuple(config.feature_resolution),
                hidden_dim=config.hidden_dim,
                num_heads=config.num_heads,
                num_layers=config.num_layers,
                window_size=config.window_size,
                pooling_sizes=config.pooling_sizes,
                eval_pooling_sizes=config.eval_pooling_sizes,
                attention_type=config.attention_type,
                pad_len=config.pad_len,
                text_guidance_proj_dim=config.text_guidance_proj_dim,
                appearance_guidance_proj_dim=config.appearance_guidance_proj_dim,
                decoder_dims=tuple(config.decoder_dims),
                decoder_guidance_dims=tuple(config.decoder_guidance_dims),
                decoder_guidance_proj_dims=tuple(config.decoder_guidance_proj_dims),
            )
        except ClipLoadingError as exc:
            raise CheckpointError(f"catseg: {exc}") from None
        except (ClipConfigError, CatSegConfigError, SplitQKVError, CostAggregationError, UnknownTemplateSetError) as exc:
            raise ConfigError(f"catseg: {exc}") from None

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
        """Head and upsamplers at base_lr; trainable CLIP weights at base_lr x clip_multiplier."""
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
        """Load an ovbench checkpoint ({"model": segmenter state}) or the official detectron2
        file ({"model": {"sem_seg_head.predictor....": ...}}); strict, one error line."""
        payload = load_torch_file(path, trusted=trusted)
        state = payload.get("model", payload) if isinstance(payload, Mapping) else None
        if not isinstance(state, Mapping) or not state:
            raise CheckpointError(f"{path}: not a state dict or a {{'model': state_dict}} checkpoint")
        if any(isinstance(key, str) and key.startswith("sem_seg_head.") for key in state):
            try:
                model_state = convert_official_state_dict(state)
            except SplitQKVError as exc:
                raise CheckpointError(f"{path}: {exc}") from None
            source = "official CAT-Seg checkpoint"
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
            raise CheckpointError(f"{source} does not fit catseg: {mismatch}")
        self.model.load_state_dict(state, strict=True)


def convert_official_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Official detectron2 CAT-Seg keys -> `CatSegModel` keys.

    ``sem_seg_head.predictor.clip_model.visual.*`` -> ``image_encoder.visual.*``; its text-tower
    keys -> ``text_encoder.*``; ``sem_seg_head.predictor.transformer.*`` -> ``transformer.*``;
    ``upsample1/2.*`` unchanged; ``clip_model.logit_scale`` dropped (unused). Packed
    ``in_proj_weight`` entries (an OpenAI-layout CLIP) are split into q/k/v. Keys that fit
    none of these are passed through unchanged, so that the loader reports them.
    """
    converted: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(OFFICIAL_CLIP_PREFIX):
            rest = key[len(OFFICIAL_CLIP_PREFIX) :]
            if rest in UNUSED_CLIP_KEYS:
                continue
            if rest.startswith("visual."):
                converted["image_encoder." + rest] = value
            elif rest.startswith(TEXT_TOWER_PREFIXES):
                converted["text_encoder." + rest] = value
            else:
                converted[key] = value
        elif key.startswith(OFFICIAL_HEAD_PREFIX):
            converted["transformer." + key[len(OFFICIAL_HEAD_PREFIX) :]] = value
        else:
            converted[key] = value
    return split_packed_qkv(converted)


def to_official_state_dict(model_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`CatSegModel` keys -> the official detectron2 layout (inverse of `convert_official_state_dict`,
    without ``logit_scale``); used to export weights for the authors' code and by the tests."""
    official: dict[str, Tensor] = {}
    for key, value in model_state.items():
        if key.startswith("image_encoder."):
            official[OFFICIAL_CLIP_PREFIX + key[len("image_encoder.") :]] = value
        elif key.startswith("text_encoder."):
            official[OFFICIAL_CLIP_PREFIX + key[len("text_encoder.") :]] = value
        elif key.startswith("transformer."):
            official[OFFICIAL_HEAD_PREFIX + key[len("transformer.") :]] = value
        else:
            official[key] = value
    return official
