"""Adapter for `gsnet`: binds `ovbench_methods.gsnet` (GSNet, AAAI 2025) to the harness interface.

It turns a `Vocabulary` into name tuples, targets into the per-pixel BCE GSNet trains with,
the model's parameters into the paper's optimiser groups (CLIP q/v at 0.01x = 2e-6, new
modules at 2e-4, the RSIB frozen and in no group), and checkpoints into the model's keys:
ovbench checkpoints, the authors' detectron2 GSNet file and, separately, the RSIB (DINO)
checkpoint the official code reads from ``$RSIB_CKPT``. The settings are `GsNetConfig`,
defined with the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from ovbench.errors import CheckpointError
from ovbench.interface import load_torch_file
from ovbench_adapters.catseg import convert_official_state_dict as convert_catseg_state_dict
from ovbench_adapters.catseg import to_official_state_dict as catseg_to_official
from ovbench_adapters.common.clip_cost_volume import ClipCostVolumeSegmenter
from ovbench_methods.common.dino import extract_dino_state_dict, load_dino_state_dict
from ovbench_methods.common.errors import WeightsError
from ovbench_methods.gsnet.config import RSIB_PUBLISHED, GsNetConfig
from ovbench_methods.gsnet.model import GsNetModel, build_gsnet_model

__all__ = [
    "RSIB_PUBLISHED",
    "GsNetConfig",
    "GsNetSegmenter",
    "convert_official_state_dict",
    "to_official_state_dict",
]

#: Official names one level up from ours: ``transformer.<name>`` -> ``transformer.fusion.<name>`` etc.
FUSION_KEYS = ("conv1", "conv2", "fusion_corr", "fusion_feats", "simple_concatenation_corr_embed")
DECODER_KEYS = ("CLIP_decoder_guidance_projection", "DINO_decoder_guidance_projection", "Fusiondecoder1", "Fusiondecoder2", "head")
RSIB_PROJECTION_KEYS = ("dino_down_sample", "dino_decod_proj1", "dino_decod_proj2")
#: Keys every DINO ViT state dict has (after `teacher` / `module.` / `backbone.` are taken off).
DINO_MARKER_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight")


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


class GsNetSegmenter(ClipCostVolumeSegmenter):
    """GSNet behind the uniform interface."""

    method_name = "gsnet"
    config_class = GsNetConfig
    official_checkpoint_name = "official GSNet checkpoint"
    model: GsNetModel

    build_method_model = staticmethod(build_gsnet_model)
    convert_official_state_dict = staticmethod(convert_official_state_dict)
    to_official_state_dict = staticmethod(to_official_state_dict)

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
        except WeightsError as exc:
            raise CheckpointError(str(exc)) from None
        dino.set_finetune(self.config.dino_finetune)
