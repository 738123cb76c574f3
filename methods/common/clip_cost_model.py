"""What CAT-Seg and GSNet share around their heads: the CLIP they are built from and the
trainable split-q/k/v towers that produce the cost volume's two sides.

- `create_clip_and_tokenizer`: the CLIP both official codes build (OpenAI's CLIP class, so
  QuickGELU on a named architecture without a pretrained tag, RemoteCLIP included) and its
  tokenizer.
- `SplitClipCostModel`: base module holding ``image_encoder`` (split q/k/v visual tower),
  ``text_encoder`` and the template class encoder; the parameter groups (trainable CLIP vs
  everything else), text caching that is valid only while the text tower is not training,
  the dense CLIP map with its guidance upsamplers, and the per-pixel BCE loss.

Subclasses own their heads and state-dict names; the names defined here (``image_encoder``,
``text_encoder``, ``upsample1``, ``upsample2``) are the ones both official layouts map to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import open_clip
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.clip import ClipImageEncoder, DenseImageFeatures, LastBlockMode
from ovbench_methods.common.clip_loading import create_clip, create_tokenizer, looks_like_file
from ovbench_methods.common.clip_qkv import ClipFinetuneMode, attach_zero_grad, set_clip_finetuning, split_qkv_attention
from ovbench_methods.common.cost_aggregation import AttentionType, per_pixel_bce_loss
from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.prompts import get_templates, validate_templates
from ovbench_methods.common.text import ClassNames, ClipTextEncoder, SynonymMode, TemplateClassEncoder, Tokenizer

__all__ = [
    "ClipCostVolumeConfig",
    "SplitClipCostModel",
    "create_clip_and_tokenizer",
    "crop_to_image",
    "resolve_template_list",
    "set_mlp_activation",
]


Pair = tuple[int, int]


@dataclass
class ClipCostVolumeConfig:
    """Settings CAT-Seg and GSNet share: a split-q/k/v CLIP and a cost-aggregation head.

    The defaults are the published ViT-B/16 setting (configs/vitb_384.yaml of both official
    codes); this class is the only place they are written. Subclasses add their own fields.
    Field types are checked by whoever builds the config from a file (ovbench's loader checks
    every annotation, `Literal` choices included); `__post_init__` checks ranges and the
    relations between fields.
    """

    #: open_clip model name of the CLIP (OpenAI ViT-B/16; RemoteCLIP rows ViT-B-32).
    arch: str = "ViT-B-16"
    #: an open_clip pretrained tag, a path to an OpenAI `.pt` / open_clip checkpoint, or None = random init.
    clip_weights: str | None = "openai"
    #: explicit open_clip config {embed_dim, vision_cfg, text_cfg, quick_gelu} (tiny models); overrides arch.
    model_config: dict[str, Any] | None = None
    #: force QuickGELU for a named arch without a pretrained tag (OpenAI CLIP uses it); None = arch default.
    quick_gelu: bool | None = True
    #: CLIP input (h, w): every view is zero-padded, then stretched to it (ViT-B 384, ViT-L 336).
    image_size: Pair = (384, 384)
    #: zero-padding multiple before the stretch (detectron2 MASK_FORMER.SIZE_DIVISIBILITY 32).
    pad_multiple: int = 32
    #: cost-volume grid (FEATURE_RESOLUTION) = image_size / patch; checked against the model.
    feature_resolution: Pair = (24, 24)
    #: 0-based CLIP blocks whose outputs feed upsample1 / upsample2 (ViT-B [3, 7], ViT-L [7, 15]).
    guidance_blocks: tuple[int, int] = (3, 7)
    #: dense last block: "catseg" = v-only, out_proj, + block-input CLS, + MLP (official).
    last_block: LastBlockMode = "catseg"
    #: which CLIP weights train: "attention" = q/v of both towers (official), "full", "frozen".
    clip_finetune: ClipFinetuneMode = "attention"
    #: learning-rate multiplier of the trainable CLIP weights (SOLVER.CLIP_MULTIPLIER): 2e-4 x 0.01.
    clip_multiplier: float = 0.01
    #: a template-set name or a list of templates; P = their number.
    templates: str | list[str] = "single"
    #: "first" synonym only (official) or "average" the embeddings of all synonyms.
    synonyms: SynonymMode = "first"
    hidden_dim: int = 128
    num_heads: int = 4
    num_layers: int = 2
    #: Swin window (shift = window // 2).
    window_size: int = 12
    #: class-attention average pooling in training; eval_pooling_sizes in evaluation (eval.sh: [1, 1]).
    pooling_sizes: Pair | None = (2, 2)
    eval_pooling_sizes: Pair | None = (1, 1)
    #: class attention: "linear" (official) or "full".
    attention_type: AttentionType = "linear"
    #: pad the class axis to this many learned tokens when shorter (CAT-Seg also keeps only the
    #: top pad_len classes when longer); 0 disables.
    pad_len: int = 256
    text_guidance_proj_dim: int = 128
    appearance_guidance_proj_dim: int = 128
    decoder_dims: Pair = (64, 32)
    #: widths of the raw decoder guidance (upsample1 / upsample2 outputs).
    decoder_guidance_dims: Pair = (256, 128)
    #: leave ignored pixels out of the BCE (official: they count as all-negative targets).
    mask_ignored: bool = False

    #: fields that must be at least 1 (the others that hold integers may be 0); subclasses extend.
    positive_fields: ClassVar[tuple[str, ...]] = (
        "image_size", "feature_resolution", "hidden_dim", "num_heads", "num_layers", "window_size",
        "pooling_sizes", "eval_pooling_sizes", "text_guidance_proj_dim", "appearance_guidance_proj_dim",
        "decoder_dims", "decoder_guidance_dims",
    )

    def __post_init__(self) -> None:
        for name in self.positive_fields:
            value = getattr(self, name)
            values = value if isinstance(value, (tuple, list)) else () if value is None else (value,)
            if any(isinstance(v, int) and v < 1 for v in values):
                raise MethodConfigError(f"{name} must be positive, got {_plain(value)}")
        for name in ("pad_multiple", "pad_len", "guidance_blocks"):
            value = getattr(self, name)
            if any(isinstance(v, int) and v < 0 for v in (value if isinstance(value, (tuple, list)) else (value,))):
                raise MethodConfigError(f"{name} must not be negative, got {_plain(value)}")
        if self.clip_multiplier < 0:
            raise MethodConfigError(f"clip_multiplier must not be negative, got {self.clip_multiplier}")
        if isinstance(self.clip_weights, str) and not self.clip_weights.strip():
            raise MethodConfigError("clip_weights must be a tag, a file path or null, got an empty string")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def set_mlp_activation(clip: nn.Module, activation: type[nn.Module]) -> int:
    """Use `activation` in every transformer MLP of `clip` (both towers); returns how many.

    The activation holds no weights, so swapping it after loading is exact. This is how an
    open_clip-format file loaded into a named architecture (RemoteCLIP, which the official
    codes load into OpenAI's CLIP class) or a random-init named architecture gets QuickGELU,
    without giving up the loader's shape inference for OpenAI `.pt` files.
    """
    swapped = 0
    for module in clip.modules():
        mlp = getattr(module, "mlp", None)
        if isinstance(mlp, nn.Sequential) and hasattr(mlp, "gelu"):
            mlp.gelu = activation()
            swapped += 1
    return swapped


def create_clip_and_tokenizer(
    arch: str = "ViT-B-16",
    clip_weights: str | None = "openai",
    model_config: Mapping[str, Any] | None = None,
    quick_gelu: bool | None = True,
    trusted: bool = False,
) -> tuple[nn.Module, Tokenizer]:
    """The CLIP model (`create_clip`) and its tokenizer.

    `quick_gelu` forces the MLP activation of a named architecture built without a pretrained
    tag (random init or a weights file): OpenAI's CLIP class, which the official codes use,
    has QuickGELU. Pretrained tags set their own; an explicit `model_config` carries its own.
    """
    clip = create_clip(arch, clip_weights, model_config, trusted=trusted)
    is_tag = clip_weights is not None and not looks_like_file(clip_weights)
    if model_config is None and quick_gelu is not None and not is_tag:
        set_mlp_activation(clip, open_clip.transformer.QuickGELU if quick_gelu else nn.GELU)
    return clip, create_tokenizer(arch, clip, model_config)


def resolve_template_list(templates: str | Sequence[str]) -> list[str]:
    """A template-set name or a list of templates -> the validated list."""
    return get_templates(templates) if isinstance(templates, str) else validate_templates(templates)


def crop_to_image(logits: Tensor, image_size: tuple | None, padded_size: tuple | None) -> Tensor:
    """Logits over the zero-padded canvas -> logits over the image part only."""
    if image_size is None or padded_size is None or tuple(image_size) == tuple(padded_size):
        return logits
    canvas = F.interpolate(logits, size=tuple(padded_size), mode="bilinear", align_corners=False)
    return canvas[..., : image_size[0], : image_size[1]]


def _clear_text_cache_after_load(module: "SplitClipCostModel", incompatible_keys: Any) -> None:
    # A module-level function rather than a lambda keeps the model picklable.
    module.clear_text_cache()


class SplitClipCostModel(nn.Module):
    """Base of the CLIP cost-volume models (see module docstring).

    Args:
        clip: an open_clip CLIP (ViT image tower); converted to split q/k/v in place.
        tokenizer: prompt strings -> token ids.
        templates: prompt templates (P cost channels).
        config: the method's settings; this base reads `last_block`, `clip_finetune` and
            `synonyms` (and keeps the whole config as ``self.config``).
        config_error: the exception class a subclass reports bad settings with.
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Tokenizer,
        templates: Sequence[str],
        config: ClipCostVolumeConfig,
        config_error: type[Exception] = MethodConfigError,
    ) -> None:
        super().__init__()
        self.config = config
        self._config_error = config_error
        split_qkv_attention(clip)
        set_clip_finetuning(clip, config.clip_finetune)
        self.image_encoder = ClipImageEncoder(clip.visual)
        self.text_encoder = ClipTextEncoder(clip)
        self.templates = validate_templates(templates)
        self.class_encoder = TemplateClassEncoder(tokenizer, self.templates, config.synonyms)
        self.last_block = config.last_block
        self.register_load_state_dict_post_hook(_clear_text_cache_after_load)

    # ------------------------------------------------------------ construction
    def clip_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The CLIP patch grid of an (h, w) input; the input must be a multiple of the patch."""
        patch_h, patch_w = self.image_encoder.patch_size
        if image_size[0] % patch_h or image_size[1] % patch_w:
            raise self._config_error(f"image_size {image_size} is not a multiple of the CLIP patch {(patch_h, patch_w)}")
        return image_size[0] // patch_h, image_size[1] // patch_w

    def check_guidance_blocks(self, guidance_blocks: Sequence[int]) -> tuple[int, int]:
        """Two 0-based CLIP block indices before the (dense) last block."""
        blocks = tuple(int(b) for b in guidance_blocks)
        last = self.image_encoder.num_blocks - 1
        if len(blocks) != 2 or not all(0 <= b < last for b in blocks):
            raise self._config_error(f"guidance_blocks must be two CLIP block indices in 0..{last - 1}, got {list(guidance_blocks)}")
        return blocks  # type: ignore[return-value]

    def make_clip_upsamplers(self, guidance_dims: Sequence[int]) -> tuple[nn.ConvTranspose2d, nn.ConvTranspose2d]:
        """`upsample1` ConvT(width -> g1, k2 s2) and `upsample2` ConvT(width -> g2, k4 s4):
        the CLIP decoder guidance at 2x and 4x the grid."""
        width = self.image_encoder.width
        return (
            nn.ConvTranspose2d(width, guidance_dims[0], kernel_size=2, stride=2),
            nn.ConvTranspose2d(width, guidance_dims[1], kernel_size=4, stride=4),
        )

    # ---------------------------------------------------------------- parameters
    def _clip_parameter_ids(self) -> set[int]:
        return {id(p) for p in self.image_encoder.parameters()} | {id(p) for p in self.text_encoder.parameters()}

    def clip_parameters(self) -> list[nn.Parameter]:
        """Trainable CLIP parameters (q/v weights of both towers with the official setting)."""
        towers = list(self.image_encoder.parameters()) + list(self.text_encoder.parameters())
        return [p for p in towers if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters outside CLIP (everything the subclass adds)."""
        clip_ids = self._clip_parameter_ids()
        return [p for p in self.parameters() if p.requires_grad and id(p) not in clip_ids]

    # ---------------------------------------------------------------------- text
    def train(self, mode: bool = True) -> "SplitClipCostModel":
        # Cached evaluation embeddings go stale as soon as training changes the text tower.
        if mode:
            self.class_encoder.clear_embeddings()
        return super().train(mode)

    def clear_text_cache(self) -> None:
        self.class_encoder.clear_embeddings()

    def class_embeddings(self, classes: ClassNames) -> Tensor:
        """(T, P, D) L2-normalised; re-encoded with gradients in training, cached in evaluation."""
        return self.class_encoder(self.text_encoder, classes, cache=not self.training)

    def batched_class_embeddings(self, classes: ClassNames, like: Tensor) -> Tensor:
        """(B, T, P, D) class embeddings on the device of `like` (B = its batch size)."""
        text = self.class_embeddings(classes).to(like.device)
        return text.unsqueeze(0).expand(like.shape[0], -1, -1, -1)

    # ------------------------------------------------------------------- image
    def encode_clip(
        self,
        images: Tensor,
        image_size: tuple[int, int],
        pad_multiple: int,
        guidance_blocks: Sequence[int],
        upsamplers: tuple[nn.Module, nn.Module] | None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None, DenseImageFeatures]:
        """The dense CLIP map (B, D, h, w) in fp32, the upsampled guidance of `guidance_blocks`
        (None without `upsamplers`) and the raw features (image and padded sizes)."""
        blocks = tuple(guidance_blocks) if upsamplers is not None else ()
        features = self.image_encoder.encode_resized(images, image_size, pad_multiple, self.last_block, blocks)
        dense = features.dense.float()
        if self.training and self.last_block != "attention":
            # The official dense last block computes q and discards it: its q weight gets an
            # exact zero gradient (AdamW still decays it) and DDP sees it used.
            dense = attach_zero_grad(dense, self.image_encoder.blocks[-1].attn.q_proj_weight)
        guidance = None
        if upsamplers is not None:
            guidance = (
                upsamplers[0](features.block_maps[blocks[0]].float()),
                upsamplers[1](features.block_maps[blocks[1]].float()),
            )
        return dense, guidance, features

    # -------------------------------------------------------------------- loss
    def loss(
        self, images: Tensor, targets: Tensor, classes: ClassNames, ignore_index: int = 255, mask_ignored: bool = False
    ) -> Tensor:
        """Per-pixel BCE of the logits upsampled to the targets' size (official: ignored pixels
        are all-negative targets and stay in the mean; `mask_ignored` leaves them out)."""
        return per_pixel_bce_loss(self(images, classes), targets, ignore_index, mask_ignored)
