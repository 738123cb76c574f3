"""Adapter for `gsnet`: binds `ovbench_methods.gsnet` (GSNet, AAAI 2025) to the harness interface.

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
from typing import Any, ClassVar, Mapping

from torch import Tensor

from ovbench_adapters.catseg import convert_official_state_dict as convert_catseg_state_dict
from ovbench_adapters.catseg import to_official_state_dict as catseg_to_official
from ovbench_adapters.clip_cost_volume import ClipCostVolumeConfig, ClipCostVolumeSegmenter, is_path_or_null
from ovbench_adapters.templates import resolve_templates
from ovbench_methods.common.clip_loading import ClipConfigError, ClipLoadingError
from ovbench_methods.common.clip_qkv import SplitQKVError
from ovbench_methods.common.cost_aggregation import CostAggregationError
from ovbench_methods.common.dino import (
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
from ovbench_methods.common.prompts import UnknownTemplateSetError
from ovbench_methods.gsnet.decoder import DecoderInputError
from ovbench_methods.gsnet.fusion import FUSION_TYPES, FusionInputError
from ovbench_methods.gsnet.model import GsNetConfigError, GsNetModel, build_gsnet_model
from ovbench.errors import CheckpointError
from ovbench.interface import load_torch_file

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


@dataclass
class GsNetConfig(ClipCostVolumeConfig):
    """Model section of `configs/methods/gsnet.yaml` (the shared CLIP and aggregator fields are
    documented on `ClipCostVolumeConfig`); defaults are the published setting (configs/vitb_384.yaml
    of yecy749/GSNet). GSNet pads the class axis to `pad_len` but never prunes it."""

    method_name: ClassVar[str] = "gsnet"

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
    #: RIPD integrates the CLIP guidance (DECODER_CLIP_GUIDANCE_DIMS non-zero); rows G, I: false.
    clip_decoder_guidance: bool = True
    #: RIPD integrates the RSIB guidance (DECODER_DINO_GUIDANCE_DIMS non-zero); rows G, H: false.
    rsib_decoder_guidance: bool = True
    #: widths each stream's decoder guidance is projected to before each RIPD stage.
    decoder_clip_guidance_proj_dims: list[int] = field(default_factory=lambda: [32, 16])
    decoder_rsib_guidance_proj_dims: list[int] = field(default_factory=lambda: [32, 16])

    pair_fields: ClassVar[tuple[str, ...]] = (
        *ClipCostVolumeConfig.pair_fields, "dino_image_size", "decoder_clip_guidance_proj_dims", "decoder_rsib_guidance_proj_dims"
    )
    bool_fields: ClassVar[tuple[str, ...]] = (
        *ClipCostVolumeConfig.bool_fields, "use_clip", "use_rsib", "clip_decoder_guidance", "rsib_decoder_guidance"
    )

    def choices(self) -> dict[str, tuple[str, ...]]:
        return {
            **super().choices(),
            "fusion_type": FUSION_TYPES,
            "dino_input_norm": tuple(INPUT_NORMS),
            "dino_pos_embed_resize": POS_EMBED_RESIZE_MODES,
            "dino_finetune": FINETUNE_MODES,
            "dino_key_check": KEY_CHECKS,
        }

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        super().validate()
        if not is_path_or_null(self.dino_weights):
            self.fail("dino_weights", "a file path or null")
        if any(d % 16 for d in self.decoder_dims):
            self.fail("decoder_dims", "two multiples of 16 (the decoder's GroupNorm uses C/16 groups)")
        if isinstance(self.dino_arch, str):
            if self.dino_arch not in DINO_VARIANTS:
                self.fail("dino_arch", f"one of {', '.join(DINO_VARIANTS)} or a mapping of DINO architecture fields")
        elif not isinstance(self.dino_arch, dict):
            self.fail("dino_arch", "a DINO variant name or a mapping")

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


class GsNetSegmenter(ClipCostVolumeSegmenter):
    """GSNet behind the uniform interface."""

    method_name = "gsnet"
    config_class = GsNetConfig
    official_checkpoint_name = "official GSNet checkpoint"
    checkpoint_errors = (ClipLoadingError, DinoCheckpointError)
    config_errors = (
        ClipConfigError, DinoConfigError, DinoInputError, GsNetConfigError, SplitQKVError, CostAggregationError,
        FusionInputError, DecoderInputError, UnknownTemplateSetError,
    )
    model: GsNetModel

    def build_model(self, config: GsNetConfig, trusted: bool) -> GsNetModel:
        # Resolved first: an unset $RSIB_CKPT or a missing file fails before any weights are read.
        dino_weights = config.resolved_dino_weights()
        return build_gsnet_model(
            templates=resolve_templates(config.templates),
            trusted=trusted,
            use_rsib=config.use_rsib,
            dino_arch=config.dino_arch,
            dino_weights=dino_weights,
            dino_input_norm=config.dino_input_norm,
            dino_pos_embed_resize=config.dino_pos_embed_resize,
            dino_finetune=config.dino_finetune,
            dino_key_check=config.dino_key_check,
            use_clip=config.use_clip,
            dino_image_size=tuple(config.dino_image_size),
            fusion_type=config.fusion_type,
            clip_decoder_guidance=config.clip_decoder_guidance,
            rsib_decoder_guidance=config.rsib_decoder_guidance,
            decoder_clip_guidance_proj_dims=tuple(config.decoder_clip_guidance_proj_dims),
            decoder_rsib_guidance_proj_dims=tuple(config.decoder_rsib_guidance_proj_dims),
            **config.clip_kwargs(),
        )

    @staticmethod
    def convert_official_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
        return convert_official_state_dict(state)

    # ---------------------------------------------------------------- checkpoints
    def load_checkpoint(self, path: str | Path, trusted: bool = False) -> None:
        """Load an ovbench checkpoint ({"model": segmenter state}), the official detectron2
        GSNet file ({"model": {"sem_seg_head.predictor....": ...}}) — both strict, one error
        line — or an RSIB/DINO checkpoint, which replaces the RSIB weights only."""
        payload = load_torch_file(path, trusted=trusted)
        if _looks_like_dino(payload):
            self._load_rsib(payload, str(path))
        else:
            self._load_payload(payload, path)

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
