"""CAT-Seg (Cho et al., CVPR 2024), the CLIP-only version that also tunes the text encoder.

Notes: docs/methods/catseg.md; official code cvlab-kaist/CAT-Seg at 6d3a188. Pipeline at full
scale (ViT-B/16, T classes, batch B):

1. CLIP image path (`ClipImageEncoder.encode_resized`): CLIP mean/std, zero-pad to a multiple
   of 32, bilinear to 384^2, pos-embed bicubic 14^2 -> 24^2, blocks 1-11, the dense last
   block ("catseg" mode), ln_post + proj on every token, CLS dropped -> (B, 512, 24, 24).
   Outputs of blocks 4 and 8 (``resblocks[3]``, ``[7]``) -> `upsample1` ConvT(768->256, k2 s2)
   and `upsample2` ConvT(768->128, k4 s4): decoder guidance at 48^2 and 96^2.
2. Text: "A photo of a {} in the scene", first synonym, encoded with gradients every
   training step (its q/v weights train), cached per vocabulary in evaluation -> (B, T, P, 512).
3. Head (`CatSegAggregator`, the official ``sem_seg_head.predictor.transformer``): cosine
   cost volume -> conv1 7x7 per class -> 2 aggregator layers -> Up1, Up2, head ->
   logits (B, T, 96, 96).

Both CLIP towers use split q/k/v attention; only q and v weights train (at 0.01x the rate).
"""

from __future__ import annotations

from ovbench_methods.common.errors import MethodConfigError
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.clip_cost_model import (
    SplitClipCostModel,
    create_clip_and_tokenizer,
    crop_to_image,
    resolve_template_list,
)
from ovbench_methods.common.cost_aggregation import (
    MASKED_LOGIT,
    AggregatorLayer,
    Up,
    cosine_cost_volume,
    embed_cost_volume,
    gather_classes,
    scatter_classes,
    select_top_classes,
)
from ovbench_methods.catseg.config import CatSegConfig
from ovbench_methods.common.text import ClassNames, Tokenizer


class CatSegConfigError(MethodConfigError):
    """Settings that do not describe a valid CAT-Seg model."""


class CatSegAggregator(nn.Module):
    """Cost aggregation and upsampling decoder (official `Aggregator`); names match its keys.

    forward(image features (B, C, h, w), text (B, T, P, C), guidance [appearance (B, C, h, w),
    decoder 1 (B, g1, 2h, 2w), decoder 2 (B, g2, 4h, 4w)]) -> logits (B, T, 4h, 4w).

    With T > `pad_len` > 0 only the `pad_len` classes of highest raw cosine in each image are
    aggregated; the others get logit -100 (official). `pad_len` 0 disables padding and pruning.
    """

    def __init__(
        self,
        *,
        text_guidance_dim: int,
        text_guidance_proj_dim: int,
        appearance_guidance_dim: int,
        appearance_guidance_proj_dim: int,
        decoder_dims: Sequence[int],
        decoder_guidance_dims: Sequence[int],
        decoder_guidance_proj_dims: Sequence[int],
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        pooling_sizes: Sequence[int] | None,
        eval_pooling_sizes: Sequence[int] | None,
        feature_resolution: Sequence[int],
        window_size: int,
        attention_type: str,
        prompt_channel: int,
        pad_len: int,
    ) -> None:
        super().__init__()
        if len(decoder_dims) != 2 or len(decoder_guidance_dims) != 2 or len(decoder_guidance_proj_dims) != 2:
            raise CatSegConfigError("decoder_dims, decoder_guidance_dims and decoder_guidance_proj_dims need two entries each")
        if num_layers < 1:
            raise CatSegConfigError(f"num_layers must be at least 1, got {num_layers}")
        self.hidden_dim = hidden_dim
        self.pad_len = pad_len
        self.layers = nn.ModuleList(
            AggregatorLayer(
                hidden_dim=hidden_dim,
                text_guidance_dim=text_guidance_proj_dim,
                appearance_guidance_dim=appearance_guidance_proj_dim,
                num_heads=num_heads,
                resolution=tuple(feature_resolution),
                window_size=window_size,
                pooling_size=pooling_sizes,
                eval_pooling_size=eval_pooling_sizes,
                attention_type=attention_type,
                pad_len=pad_len,
            )
            for _ in range(num_layers)
        )
        self.conv1 = nn.Conv2d(prompt_channel, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.guidance_projection = (
            nn.Sequential(nn.Conv2d(appearance_guidance_dim, appearance_guidance_proj_dim, 3, padding=1), nn.ReLU())
            if appearance_guidance_dim > 0
            else None
        )
        self.text_guidance_projection = (
            nn.Sequential(nn.Linear(text_guidance_dim, text_guidance_proj_dim), nn.ReLU()) if text_guidance_dim > 0 else None
        )
        use_decoder_guidance = decoder_guidance_dims[0] > 0
        self.decoder_guidance_projection = (
            nn.ModuleList(
                nn.Sequential(nn.Conv2d(d, p, 3, padding=1), nn.ReLU())
                for d, p in zip(decoder_guidance_dims, decoder_guidance_proj_dims)
            )
            if use_decoder_guidance
            else None
        )
        guidance_widths = tuple(decoder_guidance_proj_dims) if use_decoder_guidance else (0, 0)
        self.decoder1 = Up(hidden_dim, decoder_dims[0], guidance_widths[0])
        self.decoder2 = Up(decoder_dims[0], decoder_dims[1], guidance_widths[1])
        self.head = nn.Conv2d(decoder_dims[1], 1, kernel_size=3, stride=1, padding=1)

    def decode(self, x: Tensor, guidance: Sequence[Tensor | None]) -> Tensor:
        """(B, C, T, h, w) aggregated cost -> (B, T, 4h, 4w) logits."""
        batch, _, classes = x.shape[:3]
        per_class = x.transpose(1, 2).flatten(0, 1)
        per_class = self.decoder1(per_class, guidance[0])
        per_class = self.decoder2(per_class, guidance[1])
        return self.head(per_class).view(batch, classes, *per_class.shape[-2:])

    def forward(self, image_features: Tensor, text_features: Tensor, guidance: Sequence[Tensor]) -> Tensor:
        num_classes = text_features.shape[1]
        cost = cosine_cost_volume(image_features, text_features)
        kept = None
        if 0 < self.pad_len < num_classes:
            kept = select_top_classes(cost, self.pad_len)
            text_features = gather_classes(F.normalize(text_features, dim=-1), kept)
            cost = gather_classes(cost, kept, dim=2)
        embedded = embed_cost_volume(cost, self.conv1)

        appearance = self.guidance_projection(guidance[0]) if self.guidance_projection is not None else None
        decoder_guidance: list[Tensor | None] = [None, None]
        if self.decoder_guidance_projection is not None:
            decoder_guidance = [proj(g) for proj, g in zip(self.decoder_guidance_projection, guidance[1:])]
        text_guidance = None
        if self.text_guidance_projection is not None:
            text_guidance = self.text_guidance_projection(F.normalize(text_features.mean(dim=-2), dim=-1))

        for layer in self.layers:
            embedded = layer(embedded, appearance, text_guidance)
        logits = self.decode(embedded, decoder_guidance)
        if kept is not None:
            logits = scatter_classes(logits, kept, num_classes, MASKED_LOGIT)
        return logits


class CatSegModel(SplitClipCostModel):
    """CAT-Seg: split-q/k/v CLIP + upsamplers + `CatSegAggregator` (see module docstring).

    State-dict names: ``image_encoder.visual.*`` and ``text_encoder.*`` are the official
    ``sem_seg_head.predictor.clip_model.{visual.*, <text tower>}``; ``transformer.*`` is
    ``sem_seg_head.predictor.transformer.*``; ``upsample1/2`` are top-level in both.

    Args:
        clip: an open_clip CLIP (ViT image tower); converted to split q/k/v in place.
        tokenizer: prompt strings -> token ids.
        templates: prompt templates (P cost channels).
        config: the settings (`CatSegConfig`); the guidance widths and the grid of the head
            are derived from CLIP and `config.image_size`.
    """

    def __init__(self, clip: nn.Module, tokenizer: Tokenizer, templates: Sequence[str], config: CatSegConfig) -> None:
        super().__init__(clip, tokenizer, templates, config, config_error=CatSegConfigError)
        self.image_size = (int(config.image_size[0]), int(config.image_size[1]))
        self.feature_resolution = self.clip_grid(self.image_size)
        if tuple(config.feature_resolution) != self.feature_resolution:
            raise CatSegConfigError(
                f"feature_resolution {list(config.feature_resolution)} does not match image_size {list(self.image_size)} / patch "
                f"{self.image_encoder.patch_size} = {list(self.feature_resolution)}"
            )
        self.pad_multiple = int(config.pad_multiple)
        self.guidance_blocks = self.check_guidance_blocks(config.guidance_blocks)

        decoder_guidance_dims = tuple(config.decoder_guidance_dims)
        self.upsample1, self.upsample2 = self.make_clip_upsamplers(decoder_guidance_dims)
        embed_dim = self.image_encoder.output_dim
        self.transformer = CatSegAggregator(
            text_guidance_dim=embed_dim,
            text_guidance_proj_dim=config.text_guidance_proj_dim,
            appearance_guidance_dim=embed_dim,
            appearance_guidance_proj_dim=config.appearance_guidance_proj_dim,
            decoder_dims=tuple(config.decoder_dims),
            decoder_guidance_dims=decoder_guidance_dims,
            decoder_guidance_proj_dims=tuple(config.decoder_guidance_proj_dims),
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            hidden_dim=config.hidden_dim,
            pooling_sizes=config.pooling_sizes,
            eval_pooling_sizes=config.eval_pooling_sizes,
            feature_resolution=self.feature_resolution,
            window_size=config.window_size,
            attention_type=config.attention_type,
            prompt_channel=len(self.templates),
            pad_len=config.pad_len,
        )

    def forward(self, images: Tensor, classes: ClassNames) -> Tensor:
        """(B, 3, h, w) RGB 0..255 -> (B, T, h', w') logits over the image (4x the CLIP grid)."""
        dense, guidance, features = self.encode_clip(
            images, self.image_size, self.pad_multiple, self.guidance_blocks, (self.upsample1, self.upsample2)
        )
        assert guidance is not None
        logits = self.transformer(dense, self.batched_class_embeddings(classes, dense), [dense, *guidance])
        return crop_to_image(logits, features.image_size, features.padded_size)


def build_catseg_model(config: CatSegConfig, templates: str | Sequence[str] | None = None, trusted: bool = False) -> CatSegModel:
    """Create the CLIP model and tokenizer (`create_clip_and_tokenizer`, QuickGELU as OpenAI's
    CLIP class has it) and build CAT-Seg around them. `templates` (a template-set name or a
    list of templates) replaces `config.templates` when a caller has resolved it further."""
    clip, tokenizer = create_clip_and_tokenizer(config.arch, config.clip_weights, config.model_config, config.quick_gelu, trusted)
    return CatSegModel(clip, tokenizer, resolve_template_list(config.templates if templates is None else templates), config)
