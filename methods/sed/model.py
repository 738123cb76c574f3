"""SED (Xie et al., CVPR 2024): a simple encoder-decoder for open-vocabulary segmentation.

Notes: docs/methods/sed.md; official code xb534/SED at db20d93. Pipeline at full scale
(ConvNeXt-B, T classes, batch B, 768^2 input):

1. Image path (`ClipConvNextEncoder`): CLIP mean/std, bilinear stretch to 768^2
   (docs/methods/sed.md#stretch-to-768), the open_clip ConvNeXt trunk -> res2 128@192^2,
   res3 256@96^2, res4 512@48^2, res5 1024@24^2, and the dense embedding (res5 -> norm_pre
   -> per-pixel LayerNorm -> proj) (B, 640, 24, 24). res2-res4 are detached before they
   guide the decoder, so the encoder learns only through the cost volume.
2. Text: 80 ImageNet templates, synonyms averaged within each template, frozen tower, cached
   per vocabulary -> (B, T, 80, 640).
3. Head (`SedAggregator`, the official ``sem_seg_head.predictor.transformer``): cosine cost
   volume without temperature (docs/methods/sed.md#logit-scale-not-applied) -> conv1 ->
   three decoder stages with image and cost guidance -> logits (B, T, 192, 192) plus three
   auxiliary outputs at 24^2, 48^2, 96^2.

The whole image tower trains (at 0.01x the rate); the text tower and logit_scale are frozen.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.clip_convnext import ClipConvNextEncoder, disable_stochastic_depth
from ovbench_methods.common.clip_cost_model import crop_to_image, resolve_template_list
from ovbench_methods.common.clip_loading import create_clip, create_tokenizer
from ovbench_methods.common.cost_aggregation import per_pixel_bce_loss
from ovbench_methods.common.text import ClassNames, ClipTextEncoder, TemplateClassEncoder, Tokenizer
from ovbench_methods.sed.config import SedConfig, SedConfigError
from ovbench_methods.sed.decoder import SedAggregator, SedOutputs

__all__ = ["OFFICIAL_COST_GUIDANCE_CHANNELS", "SedModel", "build_sed_model", "LOSS_NAMES"]

#: The official cost-guidance chain starts from exactly this many channels
#: (docs/methods/sed.md#eighty-cost-guidance-channels).
OFFICIAL_COST_GUIDANCE_CHANNELS = 80

#: Loss names of the four outputs, as the official code logs them (main, head0, head1, head2).
LOSS_NAMES: tuple[str, ...] = ("loss_sem_seg_0", "loss_sem_seg_1", "loss_sem_seg_2", "loss_sem_seg_3")


def _clear_text_cache_after_load(module: "SedModel", incompatible_keys: Any) -> None:
    # A module-level function (not a lambda) keeps the model picklable.
    module.class_encoder.clear_embeddings()


class SedModel(nn.Module):
    """SED around an open_clip ConvNeXt CLIP (see module docstring).

    State-dict names: ``image_encoder.visual.*`` and ``text_encoder.*`` plus ``logit_scale``
    are the official ``sem_seg_head.predictor.clip_model.{visual.*, <text tower>, logit_scale}``;
    ``transformer.*`` is ``sem_seg_head.predictor.transformer.*``
    (docs/methods/sed.md#checkpoint-layout).

    Args:
        clip: an open_clip CLIP whose visual tower is a timm ConvNeXt (`TimmModel`).
        tokenizer: prompt strings -> token ids.
        templates: prompt templates (P cost channels).
        config: the settings (`SedConfig`).
    """

    def __init__(self, clip: nn.Module, tokenizer: Tokenizer, templates: Sequence[str], config: SedConfig) -> None:
        super().__init__()
        self.config = config
        if not config.stochastic_depth:
            disable_stochastic_depth(clip.visual)
        self.image_encoder = ClipConvNextEncoder(clip.visual)
        self.text_encoder = ClipTextEncoder(clip)
        scale = getattr(clip, "logit_scale", None)
        if not isinstance(scale, nn.Parameter):
            raise SedConfigError("the CLIP model has no logit_scale parameter")
        # Kept (frozen) because the official checkpoint holds it; see apply_logit_scale.
        self.logit_scale = scale
        self.templates = resolve_template_list(templates)
        self.class_encoder = TemplateClassEncoder(tokenizer, self.templates, config.synonyms)
        self.image_size = (int(config.image_size[0]), int(config.image_size[1]))
        self.input_resize = config.input_resize

        res2, res3, res4, _ = self.image_encoder.stage_channels
        if tuple(config.decoder_guidance_dims) != (res4, res3, res2):
            raise SedConfigError(
                f"decoder_guidance_dims {list(config.decoder_guidance_dims)} must be the encoder's res4, res3, res2 "
                f"widths {[res4, res3, res2]}"
            )
        projection = getattr(self.text_encoder, "text_projection", None)
        text_dim = int(projection.shape[-1]) if isinstance(projection, Tensor) else None
        if text_dim is not None and text_dim != self.image_encoder.output_dim:
            raise SedConfigError(f"text embedding width {text_dim} differs from the image embedding width {self.image_encoder.output_dim}")
        prompts = len(self.templates)
        if config.derive_cost_guidance_channels:
            chain_channels = prompts
        elif prompts != OFFICIAL_COST_GUIDANCE_CHANNELS:
            raise SedConfigError(
                f"the official cost-guidance chain takes exactly {OFFICIAL_COST_GUIDANCE_CHANNELS} channels, one per template, "
                f"but there are {prompts} templates; set derive_cost_guidance_channels: true"
            )
        else:
            chain_channels = OFFICIAL_COST_GUIDANCE_CHANNELS
        self.transformer = SedAggregator(
            prompt_channels=prompts,
            cost_guidance_channels=chain_channels,
            hidden_dim=config.hidden_dim,
            decoder_dims=tuple(config.decoder_dims),
            decoder_guidance_dims=tuple(config.decoder_guidance_dims),
            decoder_guidance_proj_dims=tuple(config.decoder_guidance_proj_dims),
            num_heads=config.num_heads,
            attention_type=config.attention_type,
            pooling_sizes=tuple(config.pooling_sizes),
            eval_pooling_sizes=tuple(config.eval_pooling_sizes),
            kernel_sizes=tuple(config.kernel_sizes),
            layer_scale_init=config.layer_scale_init,
            apply_logit_scale=config.apply_logit_scale,
            fast_inference=config.fast_inference,
            top_k=config.top_k,
        )
        self.set_finetuning(config.clip_finetune)
        self.register_load_state_dict_post_hook(_clear_text_cache_after_load)

    # ---------------------------------------------------------------- parameters
    def set_finetuning(self, mode: str) -> None:
        """Freeze the text tower and logit_scale; the visual tower per `mode` (official
        CLIP_FINETUNE: "full" trains every visual weight, "full_res5" only stage 4)."""
        for param in self.text_encoder.parameters():
            param.requires_grad_(False)
        self.logit_scale.requires_grad_(False)
        for name, param in self.image_encoder.named_parameters():
            if mode == "full":
                param.requires_grad_(True)
            elif mode == "full_res5":
                param.requires_grad_("stages.3." in name)
            elif mode == "frozen":
                param.requires_grad_(False)
            else:
                raise SedConfigError(f"unknown clip_finetune {mode!r}; expected full, full_res5 or frozen")

    def clip_parameters(self) -> list[nn.Parameter]:
        """Trainable image-tower parameters (all of them with the official setting)."""
        return [p for p in self.image_encoder.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable decoder parameters (``transformer.*``)."""
        return [p for p in self.transformer.parameters() if p.requires_grad]

    # ---------------------------------------------------------------------- text
    def clear_text_cache(self) -> None:
        self.class_encoder.clear_embeddings()

    def class_embeddings(self, classes: ClassNames) -> Tensor:
        """(T, P, D) L2-normalised; the tower is frozen, so always cached per vocabulary."""
        return self.class_encoder(self.text_encoder, classes, cache=True)

    # --------------------------------------------------------------------- image
    def prepare_pixels(self, images: Tensor) -> tuple[Tensor, tuple[int, int], tuple[int, int]]:
        """0..255 views -> normalised encoder input, the view's (h, w) and the canvas (h, w)."""
        pixels = self.image_encoder.normalize(images)
        size = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        if self.input_resize == "stretch":
            if size != self.image_size:
                pixels = F.interpolate(pixels, size=self.image_size, mode="bilinear", align_corners=False)
            return pixels, size, size
        stride = self.image_encoder.stride
        pad_h, pad_w = (-size[0]) % stride, (-size[1]) % stride
        if pad_h or pad_w:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
        return pixels, size, (size[0] + pad_h, size[1] + pad_w)

    def _run(self, images: Tensor, classes: ClassNames) -> tuple[SedOutputs, tuple[int, int], tuple[int, int]]:
        pixels, size, canvas = self.prepare_pixels(images)
        features = self.image_encoder.forward_pixels(pixels)
        dense = features.dense.float()
        # Official: the guidance maps are detached copies (docs/methods/sed.md#detached-skips).
        guidance = [features.stages[name].detach().float() for name in ("res4", "res3", "res2")]
        text = self.class_embeddings(classes).to(dense.device)
        text = text.unsqueeze(0).expand(dense.shape[0], -1, -1, -1)
        return self.transformer(dense, text, guidance, self.logit_scale), size, canvas

    def outputs(self, images: Tensor, classes: ClassNames) -> SedOutputs:
        """(B, 3, h, w) RGB 0..255 -> all four outputs (see `SedOutputs`); with
        ``input_resize: pad`` each is cropped to the view (and brought to its resolution)."""
        outputs, size, canvas = self._run(images, classes)
        if size == canvas:
            return outputs
        return SedOutputs(*(crop_to_image(output, size, canvas) for output in outputs))

    def forward(self, images: Tensor, classes: ClassNames) -> Tensor:
        """(B, 3, h, w) RGB 0..255 -> (B, T, h', w') logits (192^2 for the 768^2 encoder input)."""
        return self.outputs(images, classes).logits

    # ---------------------------------------------------------------------- loss
    def loss(
        self, images: Tensor, targets: Tensor, classes: ClassNames, ignore_index: int = 255, mask_ignored: bool = False
    ) -> dict[str, Tensor]:
        """Per-pixel BCE of each of the four outputs, each upsampled to the targets' size, weight
        1 each, named as the official code logs them. Official: ignored pixels are all-negative
        targets and stay in the mean (`mask_ignored` leaves them out; docs/methods/sed.md#loss)."""
        return {
            name: per_pixel_bce_loss(output, targets, ignore_index, mask_ignored)
            for name, output in zip(LOSS_NAMES, self.outputs(images, classes))
        }


def build_sed_model(config: SedConfig, templates: str | Sequence[str] | None = None, trusted: bool = False) -> SedModel:
    """Create the open_clip ConvNeXt CLIP (`create_clip`: a tag, a file or random init) and its
    tokenizer, and build SED around them. `templates` (a template-set name or a list)
    replaces `config.templates` when a caller has resolved it further."""
    if not isinstance(config, SedConfig):
        raise SedConfigError(f"expected a SedConfig, got {type(config).__name__}")
    clip = create_clip(config.arch, config.clip_weights, config.model_config, trusted=trusted)
    tokenizer = create_tokenizer(config.arch, clip, config.model_config)
    return SedModel(clip, tokenizer, config.templates if templates is None else templates, config)
