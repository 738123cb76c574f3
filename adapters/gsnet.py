"""Adapter for `gsnet`: binds `methods.gsnet` (GSNet, AAAI 2025) to the harness interface.

It turns a `Vocabulary` into name tuples, targets into the per-pixel BCE GSNet trains with,
the model's parameters into the paper's optimiser groups (CLIP q/v at 0.01x = 2e-6, new
modules at 2e-4, the RSIB frozen and in no group), and checkpoints into the model's keys:
ovbench checkpoints, the authors' detectron2 GSNet file and, separately, the RSIB (DINO)
checkpoint the official code reads from ``$RSIB_CKPT``. Plain errors from `methods/`
become `ovbench.errors` with one line each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from torch import Tensor

from adapters.catseg import convert_official_state_dict as convert_catseg_state_dict
from adapters.catseg import to_official_state_dict as catseg_to_official
from methods.common.clip import LAST_BLOCK_MODES
from methods.common.clip_loading import ClipConfigError, ClipLoadingError
from methods.common.clip_qkv import CLIP_FINETUNE_MODES, SplitQKVError
from methods.common.cost_aggregation import ATTENTION_TYPES, CostAggregationError
from methods.common.dino import (
    DINO_VARIANTS,
    FINETUNE_MODES,
    INPUT_NORMS,
    KEY_CHECKS,
    POS_EMBED_RESIZE_MODES,
    DinoCheckpointError,
    DinoConfigError,
    DinoInputError,
    extract_dino_state_dict,
    load_dino_state_dict,
)
from adapters.templates import resolve_templates, template_choices
from methods.common.prompts import UnknownTemplateSetError
from methods.common.state_dict import state_dict_mismatch
from methods.common.text import SYNONYM_MODES
from methods.gsnet.decoder import DecoderInputError
from methods.gsnet.fusion import FUSION_TYPES, FusionInputError
from methods.gsnet.model import GsNetConfigError, GsNetModel, build_gsnet_model
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import CheckpointError, ConfigError
from ovbench.interface import IGNORE_INDEX, OpenVocabSegmenter, load_torch_file

if TYPE_CHECKING:
    from ovbench.eval.inference import InferenceMode

__all__ = [
    "RSIB_PUBLISHED",
    "GsNetConfig",
    "GsNetSegmenter",
    "convert_official_state_dict",
    "to_official_state_dict",
]

#: Where the authors publish the RSIB weights (the official code reads the path from $RSIB_CKPT).
RSIB_PUBLISHED = "Google Drive, 'Specialist RSI Backbone weights' link in the README of github.com/yecy749/GSNet"
#: Official names one level up from ours: ``transformer.<name>`` -> ``transformer.fusion.<name>`` etc.
FUSION_KEYS = ("conv1", "conv2", "fusion_corr", "fusion_feats", "simple_concatenation_corr_embed")
DECODER_KEYS = ("CLIP_decoder_guidance_projection", "DINO_decoder_guidance_projection", "Fusiondecoder1", "Fusiondecoder2", "head")
RSIB_PROJECTION_KEYS = ("dino_down_sample", "dino_decod_proj1", "dino_decod_proj2")
#: Keys every DINO ViT state dict has (after `teacher` / `module.` / `backbone.` are taken off).
DINO_MARKER_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight")
#: Buffers computed from the configuration alone (Swin shift masks).
DERIVED_BUFFERS = (".attn_mask",)


@dataclass
class GsNetConfig:
    """Model section of `configs/methods/gsnet.yaml`; defaults are the published setting
    (configs/vitb_384.yaml of yecy749/GSNet)."""

    #: open_clip model name of the generalist CLIP (OpenAI ViT-B/16; RemoteCLIP rows ViT-B-32).
    arch: str = "ViT-B-16"
    #: an open_clip pretrained tag, an OpenAI `.pt` / open_clip file, or None = random init.
    clip_weights: str | None = "openai"
    #: explicit open_clip config {embed_dim, vision_cfg, text_cfg, quick_gelu} (tiny models); overrides arch.
    model_config: dict[str, Any] | None = None
    #: force QuickGELU for a named arch without a pretrained tag (OpenAI CLIP uses it); null = arch default.
    quick_gelu: bool | None = True
    #: CLIP input (h, w) (ViT-B/16 384; RemoteCLIP ViT-B/32 768 for the same 24x24 grid).
    image_size: list[int] = field(default_factory=lambda: [384, 384])
    #: zero-padding multiple of the canvas both streams are stretched from (MASK_FORMER.SIZE_DIVISIBILITY).
    pad_multiple: int = 32
    #: cost-volume grid; checked against both streams.
    feature_resolution: list[int] = field(default_factory=lambda: [24, 24])
    #: 0-based CLIP blocks feeding upsample1 / upsample2 (layers 4 and 8).
    guidance_blocks: list[int] = field(default_factory=lambda: [3, 7])
    #: dense last CLIP block: "catseg" = v-only, out_proj, + block-input CLS, + MLP (official).
    last_block: str = "catseg"
    #: "attention" = q/v weights of both CLIP towers train (official), "full", "frozen".
    clip_finetune: str = "attention"
    #: learning-rate multiplier of the trainable CLIP weights (SOLVER.CLIP_MULTIPLIER): 2e-4 x 0.01.
    clip_multiplier: float = 0.01
    #: a template-set name or a list of templates (PROMPT_ENSEMBLE_TYPE "single").
    templates: str | list[str] = "single"
    #: "first" synonym only (official) or "average".
    synonyms: str = "first"
    #: the CLIP image stream (USE_CLIP_CORR); false = Table 3 row C.
    use_clip: bool = True
    #: the DINO specialist stream (USE_DINO_CORR); false = Table 3 rows A, B.
    use_rsib: bool = True
    #: query_guided (QGFF) | simple_concatenation ("Cat") | fusion_query ("Fusion Q") | clip_only | rsib_only.
    fusion_type: str = "query_guided"
    #: DINO variant name (vit_base_8) or a mapping of DinoArch fields (may hold `variant`).
    dino_arch: str | dict[str, Any] = "vit_base_8"
    #: the RSIB checkpoint file (environment variables expand; official: $RSIB_CKPT); null = random init.
    dino_weights: str | None = "$RSIB_CKPT"
    #: RSIB input (h, w); the official pos-embed resize only fits 384 at patch 8.
    dino_image_size: list[int] = field(default_factory=lambda: [384, 384])
    #: "clip" = the RSIB sees the CLIP-normalised image (official quirk #1); "imagenet" = DINO's own statistics.
    dino_input_norm: str = "clip"
    #: "official" (hard-coded 1.717857 bicubic factor, quirk #5) | "dino" | "exact".
    dino_pos_embed_resize: str = "official"
    #: DINO_FINETUNE: "freeze" (official) | "attention" | "full".
    dino_finetune: str = "freeze"
    #: RSIB key check: "missing" (fail on absent weights; loads what the official strict=False load
    #: loads whenever that load was complete), "official" (never fail on names, quirk #6), "strict".
    dino_key_check: str = "missing"
    hidden_dim: int = 128
    num_heads: int = 4
    num_layers: int = 2
    #: Swin window (shift = window // 2).
    window_size: int = 12
    #: class-attention pooling in training; eval_pooling_sizes in evaluation (eval.sh: [1, 1]).
    pooling_sizes: list[int] | None = field(default_factory=lambda: [2, 2])
    eval_pooling_sizes: list[int] | None = field(default_factory=lambda: [1, 1])
    attention_type: str = "linear"
    #: pad the class axis to this many learned tokens when shorter (no top-k pruning in GSNet); 0 disables.
    pad_len: int = 256
    text_guidance_proj_dim: int = 128
    appearance_guidance_proj_dim: int = 128
    decoder_dims: list[int] = field(default_factory=lambda: [64, 32])
    #: widths of the raw decoder guidance of both streams (upsample1/2 and dino_decod_proj1/2 outputs).
    decoder_guidance_dims: list[int] = field(default_factory=lambda: [256, 128])
    #: RIPD integrates the CLIP guidance (DECODER_CLIP_GUIDANCE_DIMS non-zero); rows G, I: false.
    clip_decoder_guidance: bool = True
    #: RIPD integrates the RSIB guidance (DECODER_DINO_GUIDANCE_DIMS non-zero); rows G, H: false.
    rsib_decoder_guidance: bool = True
    decoder_clip_guidance_proj_dims: list[int] = field(default_factory=lambda: [32, 16])
    decoder_rsib_guidance_proj_dims: list[int] = field(default_factory=lambda: [32, 16])
    #: leave ignored pixels out of the BCE (official: they count as all-negative targets, quirk #2).
    mask_ignored: bool = False

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""

        def fail(name: str, expected: str) -> None:
            raise ConfigError(f"gsnet: {name} must be {expected}, got {getattr(self, name)!r}")

        def is_int(value: Any, minimum: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

        def is_pair(value: Any, minimum: int = 1) -> bool:
            return isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v, minimum) for v in value)

        if not isinstance(self.arch, str) or not self.arch:
            fail("arch", "an open_clip model name")
        for name in ("clip_weights", "dino_weights"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                fail(name, "a file path (or tag) or null")
        if self.model_config is not None and not isinstance(self.model_config, dict):
            fail("model_config", "a mapping or null")
        pairs = ("image_size", "dino_image_size", "feature_resolution", "decoder_dims", "decoder_guidance_dims",
                 "decoder_clip_guidance_proj_dims", "decoder_rsib_guidance_proj_dims")
        for name in pairs:
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
            raise ConfigError(f"gsnet: hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}")
        for name in ("decoder_dims",):
            if any(d % 16 for d in getattr(self, name)):
                fail(name, "two multiples of 16 (the decoder's GroupNorm uses C/16 groups)")
        choices = {
            "last_block": LAST_BLOCK_MODES,
            "clip_finetune": CLIP_FINETUNE_MODES,
            "synonyms": SYNONYM_MODES,
            "attention_type": ATTENTION_TYPES,
            "fusion_type": FUSION_TYPES,
            "dino_input_norm": tuple(INPUT_NORMS),
            "dino_pos_embed_resize": POS_EMBED_RESIZE_MODES,
            "dino_finetune": FINETUNE_MODES,
            "dino_key_check": KEY_CHECKS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                fail(name, f"one of {', '.join(allowed)}")
        if isinstance(self.templates, str):
            if self.templates not in template_choices():
                fail("templates", f"a template set ({', '.join(template_choices())}) or a list of templates")
        elif not isinstance(self.templates, list) or not self.templates:
            fail("templates", "a template-set name or a non-empty list of templates")
        if isinstance(self.dino_arch, str):
            if self.dino_arch not in DINO_VARIANTS:
                fail("dino_arch", f"one of {', '.join(DINO_VARIANTS)} or a mapping of DINO architecture fields")
        elif not isinstance(self.dino_arch, dict):
            fail("dino_arch", "a DINO variant name or a mapping")
        multiplier = self.clip_multiplier
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or multiplier < 0:
            fail("clip_multiplier", "a non-negative number")
        if self.quick_gelu is not None and not isinstance(self.quick_gelu, bool):
            fail("quick_gelu", "true, false or null")
        for name in ("use_clip", "use_rsib", "clip_decoder_guidance", "rsib_decoder_guidance", "mask_ignored"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "true or false")

    def resolved_dino_weights(self) -> str | None:
        """`dino_weights` with environment variables and ~ expanded; None without an RSIB or weights.

        An unset variable (the official $RSIB_CKPT) is a CheckpointError telling where the
        file is published; so is a path that does not exist.
        """
        if not self.use_rsib or self.dino_weights is None:
            return None
        raw = self.dino_weights
        expanded = os.path.expanduser(os.path.expandvars(raw))
        if "$" in expanded:
            raise CheckpointError(
                f"gsnet: dino_weights {raw!r} names an unset environment variable; download the RSIB weights "
                f"({RSIB_PUBLISHED}) and set RSIB_CKPT=FILE or model.dino_weights=FILE (null = random init)"
            )
        if not Path(expanded).is_file():
            raise CheckpointError(
                f"gsnet: RSIB checkpoint not found: {expanded} (the RSIB weights are published at {RSIB_PUBLISHED})"
            )
        return expanded


class GsNetSegmenter(OpenVocabSegmenter):
    """GSNet behind the uniform interface."""

    method_name = "gsnet"
    config_class = GsNetConfig

    def __init__(
        self,
        config: GsNetConfig,
        inference: InferenceMode | None = None,
        trust_checkpoints: bool = False,
    ) -> None:
        super().__init__(inference)
        if not isinstance(config, GsNetConfig):
            raise ConfigError(f"gsnet: expected a GsNetConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        dino_weights = config.resolved_dino_weights()
        try:
            self.model: GsNetModel = build_gsnet_model(
                arch=config.arch,
                clip_weights=config.clip_weights,
                model_config=config.model_config,
                quick_gelu=config.quick_gelu,
                templates=resolve_templates(config.templates),
                use_rsib=config.use_rsib,
                dino_arch=config.dino_arch,
                dino_weights=dino_weights,
                dino_input_norm=config.dino_input_norm,
                dino_pos_embed_resize=config.dino_pos_embed_resize,
                dino_finetune=config.dino_finetune,
                dino_key_check=config.dino_key_check,
                trusted=trust_checkpoints,
                use_clip=config.use_clip,
                image_size=tuple(config.image_size),
                dino_image_size=tuple(config.dino_image_size),
                pad_multiple=config.pad_multiple,
                guidance_blocks=tuple(config.guidance_blocks),
                last_block=config.last_block,
                clip_finetune=config.clip_finetune,
                synonyms=config.synonyms,
                fusion_type=config.fusion_type,
                clip_decoder_guidance=config.clip_decoder_guidance,
                rsib_decoder_guidance=config.rsib_decoder_guidance,
                decoder_guidance_dims=tuple(config.decoder_guidance_dims),
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
                decoder_clip_guidance_proj_dims=tuple(config.decoder_clip_guidance_proj_dims),
                decoder_rsib_guidance_proj_dims=tuple(config.decoder_rsib_guidance_proj_dims),
            )
        except (ClipLoadingError, DinoCheckpointError) as exc:
            raise CheckpointError(f"gsnet: {exc}") from None
        except (
            ClipConfigError, DinoConfigError, DinoInputError, GsNetConfigError, SplitQKVError, CostAggregationError,
            FusionInputError, DecoderInputError, UnknownTemplateSetError,
        ) as exc:
            raise ConfigError(f"gsnet: {exc}") from None

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
        """New modules at base_lr; trainable CLIP weights at base_lr x clip_multiplier; the
        frozen RSIB in no group."""
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
        """Load an ovbench checkpoint ({"model": segmenter state}), the official detectron2
        GSNet file ({"model": {"sem_seg_head.predictor....": ...}}) — both strict, one error
        line — or an RSIB/DINO checkpoint, which replaces the RSIB weights only."""
        payload = load_torch_file(path, trusted=trusted)
        if _looks_like_dino(payload):
            self._load_rsib(payload, str(path))
            return
        state = payload.get("model", payload) if isinstance(payload, Mapping) else None
        if not isinstance(state, Mapping) or not state:
            raise CheckpointError(f"{path}: not a state dict or a {{'model': state_dict}} checkpoint")
        if any(isinstance(key, str) and key.startswith("sem_seg_head.") for key in state):
            try:
                model_state = convert_official_state_dict(state)
            except SplitQKVError as exc:
                raise CheckpointError(f"{path}: {exc}") from None
            source = "official GSNet checkpoint"
        elif all(isinstance(key, str) and key.startswith("model.") for key in state):
            model_state = {key[len("model.") :]: value for key, value in state.items()}
            source = "ovbench checkpoint"
        else:
            model_state = dict(state)
            source = "state dict"
        self._load_model_state(model_state, f"{path} ({source})")

    def load_rsib_checkpoint(self, path: str | Path, trusted: bool = False) -> None:
        """Load an RSIB/DINO checkpoint (DINO layout; `teacher`, `module.`, `backbone.` handled)."""
        self._load_rsib(load_torch_file(path, trusted=trusted), str(path))

    def _load_rsib(self, payload: Any, source: str) -> None:
        dino = self.model.dino_model
        if dino is None:
            raise CheckpointError(f"{source}: an RSIB (DINO) checkpoint, but this gsnet configuration has no RSIB (use_rsib: false)")
        try:
            state, took_teacher = extract_dino_state_dict(payload, source)
            load_dino_state_dict(dino, state, key_check=self.config.dino_key_check, source=source, took_teacher=took_teacher)
        except DinoCheckpointError as exc:
            raise CheckpointError(str(exc)) from None
        dino.set_finetune(self.config.dino_finetune)

    def _load_model_state(self, state: Mapping[str, Any], source: str) -> None:
        expected = self.model.state_dict()
        state = dict(state)
        # The Swin shift masks are persistent buffers (official files carry them) computed from
        # the configuration alone: a file without them loses nothing.
        for key in expected:
            if key.endswith(DERIVED_BUFFERS) and key not in state:
                state[key] = expected[key]
        mismatch = state_dict_mismatch(state, expected)
        if mismatch:
            raise CheckpointError(f"{source} does not fit this gsnet configuration: {mismatch}")
        self.model.load_state_dict(state, strict=True)


def _looks_like_dino(payload: Any) -> bool:
    """A DINO training checkpoint ({'teacher': ...}) or a bare DINO ViT state dict."""
    if not isinstance(payload, Mapping):
        return False
    if "teacher" in payload:
        return True
    keys = {str(key).replace("module.", "").replace("backbone.", "") for key in payload}
    return all(marker in keys for marker in DINO_MARKER_KEYS)


def _nest(key: str, prefix: str, names: tuple[str, ...], into: str) -> str | None:
    """``prefix + name.rest`` -> ``into + name.rest`` when `name` is one of `names`."""
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    return into + rest if rest.split(".", 1)[0] in names else None


def convert_official_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Official detectron2 GSNet keys -> `GsNetModel` keys.

    CLIP (``sem_seg_head.predictor.clip_model.*``, split q/k/v; packed OpenAI attention is
    split) and ``sem_seg_head.predictor.transformer.*`` convert as for CAT-Seg; then the
    fusion convolutions move under ``transformer.fusion.``, the decoder parts under
    ``transformer.decoder.``, and the top-level ``dino_down_sample`` / ``dino_decod_proj1/2``
    under ``rsib_projections.``. ``upsample1/2`` and ``dino_model.*`` keep their names. Keys
    that fit none of these pass through unchanged, so the loader reports them.
    """
    converted: dict[str, Any] = {}
    for key, value in convert_catseg_state_dict(state).items():
        new = (
            _nest(key, "transformer.", FUSION_KEYS, "transformer.fusion.")
            or _nest(key, "transformer.", DECODER_KEYS, "transformer.decoder.")
            or _nest(key, "", RSIB_PROJECTION_KEYS, "rsib_projections.")
            or key
        )
        converted[new] = value
    return converted


def to_official_state_dict(model_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`GsNetModel` keys -> the official detectron2 layout (inverse of `convert_official_state_dict`,
    without ``logit_scale``); exports weights for the authors' code and serves the tests."""
    flattened: dict[str, Tensor] = {}
    for key, value in model_state.items():
        for ours, theirs in (("transformer.fusion.", "transformer."), ("transformer.decoder.", "transformer."),
                             ("rsib_projections.", "")):
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
                break
        flattened[key] = value
    return catseg_to_official(flattened)
