"""Build an open_clip CLIP model from a name, a local checkpoint, or a pretrained tag.

`create_clip(arch, weights, model_config, trusted)` accepts:

- ``weights=None``: random initialisation of `model_config` (explicit open_clip config) or
  of the named architecture `arch`;
- an existing file:
  - an OpenAI checkpoint, i.e. the TorchScript archive OpenAI ships (read with
    `torch.jit.load`, only its state dict is used) or a state dict carrying OpenAI's
    ``input_resolution`` / ``context_length`` / ``vocab_size`` entries; its architecture is
    inferred from tensor shapes with OpenAI's conventions (64-wide heads, QuickGELU) unless
    `model_config` is given (shapes cannot tell the head count of non-standard models);
  - an open_clip checkpoint: a state dict, ``{"state_dict": ...}`` as open_clip training
    saves it (``module.`` prefixes from DDP are stripped), or ``.safetensors``; the
    architecture is `model_config` or `arch`;
  pickles load with ``weights_only=True`` unless `trusted`;
- otherwise an open_clip pretrained tag of `arch` ("openai", "laion2b_s34b_b88k", ...),
  downloaded by open_clip.

Every failure is one line: `ClipConfigError` for a bad name or config, `ClipLoadingError`
for a file that cannot be read or does not fit, `ClipWeightsUnavailableError` when a tag's
weights cannot be fetched (offline). The harness adapters translate them.
"""

from __future__ import annotations

from ovbench_methods.common.errors import MethodConfigError, WeightsError
import logging

import copy
import difflib
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import open_clip
import torch

from ovbench_methods.common.state_dict import state_dict_mismatch
from torch import Tensor, nn

#: Entries OpenAI's checkpoints carry besides the weights.
OPENAI_METADATA_KEYS: tuple[str, ...] = ("input_resolution", "context_length", "vocab_size")

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pkl")


class ClipConfigError(MethodConfigError):
    """An unknown architecture or tag, or an invalid explicit model config."""


class ClipLoadingError(WeightsError):
    """A CLIP checkpoint is missing, unreadable, or does not fit the model."""


class ClipWeightsUnavailableError(ClipLoadingError):
    """A pretrained tag's weights could not be fetched (typically: no network)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return dict(state_dict)


# --------------------------------------------------------------------- building
def check_arch(arch: str) -> None:
    """Raise `ClipConfigError` unless `arch` names a built-in open_clip model config."""
    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ClipConfigError(f"unknown open_clip architecture {arch!r}{hint}")


def build_clip(arch: str, model_config: Mapping[str, Any] | None = None, quick_gelu: bool | None = None) -> nn.Module:
    """A randomly initialised CLIP from `model_config`, or from the built-in config of `arch`.

    `quick_gelu` overrides the config's activation (OpenAI weights need QuickGELU).
    """
    if model_config is not None:
        config = copy.deepcopy(dict(model_config))
        source = "model_config"
    else:
        check_arch(arch)
        config = copy.deepcopy(open_clip.get_model_config(arch))
        source = f"open_clip config {arch!r}"
    if quick_gelu is not None:
        config["quick_gelu"] = quick_gelu
    if "multimodal_cfg" in config:
        raise ClipConfigError(f"{source} describes a CoCa model; only contrastive CLIP models are supported")
    custom_text = bool(config.pop("custom_text", False)) or "hf_model_name" in config.get("text_cfg", {})
    model_class = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    try:
        model = model_class(**config)
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise ClipConfigError(f"invalid CLIP {source}: {_first_line(exc)}") from None
    return model.eval()


def create_tokenizer(
    arch: str, model: nn.Module, model_config: Mapping[str, Any] | None = None
) -> Callable[[list[str]], Tensor]:
    """A tokenizer that works offline for `model`.

    CLIP's BPE tokenizer ships inside open_clip, so it is used with the model's context
    length unless the named architecture declares another tokenizer (HF / SigLIP), which
    open_clip then resolves.
    """
    text_tower = getattr(model, "text", None)
    context_length = int(getattr(model, "context_length", 0) or getattr(text_tower, "context_length", 77))
    if model_config is None and arch in open_clip.list_models():
        text_cfg = open_clip.get_model_config(arch).get("text_cfg", {})
        if text_cfg.get("hf_tokenizer_name") or "siglip" in arch.lower():
            try:
                return open_clip.get_tokenizer(arch, context_length=context_length)
            except Exception as exc:  # network / hub errors come in many types
                raise ClipWeightsUnavailableError(
                    f"could not load the tokenizer of {arch} ({_first_line(exc)}); "
                    "it must be downloaded once while online"
                ) from None
    return open_clip.SimpleTokenizer(context_length=context_length)


# ---------------------------------------------------------------------- reading
def is_torchscript_archive(path: Path) -> bool:
    """True for a TorchScript zip (OpenAI's `.pt` files), False for a plain torch.save zip."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.endswith("/constants.pkl") for name in names) and any("/code/" in name for name in names)


def read_clip_checkpoint(path: str | Path, trusted: bool = False) -> tuple[dict[str, Tensor], bool]:
    """Read a CLIP checkpoint file -> (state dict without OpenAI metadata, is_openai_layout)."""
    path = Path(path)
    if not path.is_file():
        raise ClipLoadingError(f"CLIP weights file not found: {path}")
    is_openai = False
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload: Any = load_file(str(path), device="cpu")
        elif is_torchscript_archive(path):
            # OpenAI distributes TorchScript archives; only the weights are taken, no code is run.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the only reader
                payload = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
            is_openai = True
        else:
            payload = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # torch/safetensors raise many unrelated types for bad files
        hint = ""
        if not trusted and "weights_only" in str(exc):
            hint = " (if you trust this file, pass --trust-checkpoint to load it without weights_only)"
        raise ClipLoadingError(f"cannot read CLIP weights {path}: {_first_line(exc)}{hint}") from None

    if isinstance(payload, Mapping) and isinstance(payload.get("state_dict"), Mapping):
        payload = payload["state_dict"]
    if not isinstance(payload, Mapping) or not payload:
        raise ClipLoadingError(f"{path}: not a CLIP state dict (got {type(payload).__name__})")
    non_tensors = [key for key, value in payload.items() if not isinstance(value, Tensor)]
    if non_tensors:
        raise ClipLoadingError(f"{path}: not a CLIP state dict; non-tensor entries such as {non_tensors[:3]}")
    state = _strip_prefix(payload, "module.")
    is_openai = is_openai or any(key in state for key in OPENAI_METADATA_KEYS)
    for key in OPENAI_METADATA_KEYS:
        state.pop(key, None)
    return state, is_openai


def infer_openai_config(state_dict: Mapping[str, Tensor], source: str = "checkpoint") -> dict[str, Any]:
    """The open_clip model config of an OpenAI-layout ViT state dict, from its tensor shapes.

    Head counts are not visible in the shapes; OpenAI's models all use 64-wide heads, so
    that rule is applied (pass an explicit model config for anything else).
    """
    needed = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "text_projection",
              "positional_embedding", "token_embedding.weight", "ln_final.weight")
    missing = [key for key in needed if key not in state_dict]
    if missing:
        resnet = any(key.startswith("visual.layer1.") for key in state_dict)
        if resnet:
            what = "a ResNet CLIP (dense CLIP needs a ViT)"
        else:
            what = f"not an OpenAI ViT CLIP state dict (no {missing[0]})"
        raise ClipLoadingError(f"{source}: {what}")

    def count_blocks(prefix: str) -> int:
        return len({key[len(prefix) :].split(".")[0] for key in state_dict if key.startswith(prefix)})

    conv = state_dict["visual.conv1.weight"]
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = int(state_dict["ln_final.weight"].shape[0])
    mlp_ratio = state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width
    return {
        "embed_dim": int(state_dict["text_projection"].shape[1]),
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": patch * grid,
            "layers": count_blocks("visual.transformer.resblocks."),
            "width": width,
            "patch_size": patch,
            "head_width": 64,
            "mlp_ratio": mlp_ratio,
        },
        "text_cfg": {
            "context_length": int(state_dict["positional_embedding"].shape[0]),
            "vocab_size": int(state_dict["token_embedding.weight"].shape[0]),
            "width": text_width,
            "heads": max(text_width // 64, 1),
            "layers": count_blocks("transformer.resblocks."),
        },
    }


def load_clip_state_dict(model: nn.Module, state_dict: dict[str, Tensor], source: str, target: str) -> None:
    """Load strictly; any missing, unexpected or mis-shaped key is one clear `ClipLoadingError`."""
    from open_clip.model import resize_pos_embed

    state = dict(state_dict)
    # A checkpoint trained at another resolution only differs in its pos-embed grid.
    if hasattr(getattr(model, "visual", None), "grid_size"):
        resize_pos_embed(state, model)
    expected = model.state_dict()
    if "logit_scale" in state and "logit_scale" in expected:
        state["logit_scale"] = state["logit_scale"].reshape(expected["logit_scale"].shape)
    mismatch = state_dict_mismatch(state, expected)
    if mismatch:
        raise ClipLoadingError(f"{source} does not fit {target}: {mismatch}")
    model.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------ entry
def looks_like_file(weights: str) -> bool:
    """Whether `weights` names a file (exists, has a path separator or a checkpoint suffix)
    rather than an open_clip pretrained tag."""
    path = Path(weights).expanduser()
    return path.exists() or "/" in weights or "\\" in weights or path.suffix.lower() in _CHECKPOINT_SUFFIXES


def load_clip_file(
    path: str | Path, arch: str, model_config: Mapping[str, Any] | None = None, trusted: bool = False
) -> nn.Module:
    """A CLIP model with the weights of a local checkpoint file (see module docstring)."""
    path = Path(path).expanduser()
    state, is_openai = read_clip_checkpoint(path, trusted=trusted)
    if model_config is not None:
        model, target = build_clip(arch, model_config), "the given model_config"
    elif is_openai:
        model = build_clip(arch, infer_openai_config(state, str(path)))
        target = "the architecture inferred from its shapes"
    else:
        model, target = build_clip(arch), f"open_clip architecture {arch!r} (set arch to the checkpoint's)"
    load_clip_state_dict(model, state, str(path), target)
    return model.eval()


def create_clip_from_tag(arch: str, tag: str, model_config: Mapping[str, Any] | None = None) -> nn.Module:
    """A CLIP model with open_clip's pretrained weights `tag` of `arch` (downloads once)."""
    if model_config is not None:
        raise ClipConfigError(
            f"pretrained tag {tag!r} belongs to a named architecture; drop model_config or pass a weights file"
        )
    check_arch(arch)
    known_tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in known_tags:
        listed = ", ".join(known_tags) if known_tags else "none"
        raise ClipConfigError(
            f"CLIP weights {tag!r}: not an existing file and not a pretrained tag of {arch} (its tags: {listed})"
        )
    # open_clip only warns when the architecture's activation differs from the tag's
    # (OpenAI weights were trained with QuickGELU), so the tag's setting is forced here.
    quick_gelu = bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
    # open_clip logs a failed download as an error before raising; the raised error carries
    # the same text, so its log line would only repeat it.
    previous_disable = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        model = open_clip.create_model(arch, pretrained=tag, force_quick_gelu=quick_gelu, require_pretrained=True)
    except Exception as exc:  # hub, HTTP and file errors all mean "not available here"
        raise ClipWeightsUnavailableError(
            f"could not fetch CLIP weights {arch}/{tag} ({_first_line(exc)}); "
            "download them where there is network access and pass the local file with --clip-weights PATH"
        ) from None
    finally:
        logging.disable(previous_disable)
    return model.eval()


def create_clip(
    arch: str,
    weights: str | None,
    model_config: Mapping[str, Any] | None = None,
    trusted: bool = False,
) -> nn.Module:
    """An open_clip CLIP model: random (`weights=None`), from a file, or from a pretrained tag."""
    if weights is None:
        return build_clip(arch, model_config)
    if not isinstance(weights, str) or not weights.strip():
        raise ClipConfigError(f"CLIP weights must be a tag, a file path or None, got {weights!r}")
    if looks_like_file(weights):
        return load_clip_file(weights, arch, model_config, trusted=trusted)
    return create_clip_from_tag(arch, weights, model_config)
