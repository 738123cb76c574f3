"""GSNet (Ye, Zhuge, Zhang; AAAI 2025): the whole model, assembled from its parts.

Notes: docs/methods/gsnet.md; official code yecy749/GSNet at aca7224 (`gs_net/GSNet.py`,
`GSNetPredictor.py`, `RIPD.py`). Pipeline at full scale (T classes, batch B):

1. One canvas for both image streams: CLIP-normalised pixels, zero-padded to a multiple of 32
   (detectron2's ImageList), stretched bilinearly to each stream's input size.
2. Generalist stream (CAT-Seg's CLIP path): split q/k/v OpenAI ViT-B/16 at 384², dense last
   block → (B, 512, 24, 24); blocks 4 and 8 → `upsample1` ConvT(768→256, k2 s2) and
   `upsample2` ConvT(768→128, k4 s4), the CLIP decoder guidance.
3. Specialist stream (RSIB): frozen DINO ViT-B/8 at 384² on the *same CLIP-normalised* canvas
   (docs/methods/gsnet.md#rsib-sees-clip-normalised-input; `dino_input_norm="imagenet"` is
   the clean option), every block read
   after the final LayerNorm; `RsibProjections`: block 12 → `dino_down_sample` (B, 512, 24²),
   blocks 4 and 8 → `dino_decod_proj1/2`, the RSIB decoder guidance.
4. Text: "A photo of a {} in the scene", first synonym, encoded with gradients each training
   step (its q/v weights train), cached per vocabulary in evaluation.
5. `GsNetAggregator` (the official ``sem_seg_head.predictor.transformer``, class `RIPD`): two
   cosine cost volumes fused by QGFF, two CAT-Seg aggregator layers (appearance guidance =
   Conv3×3 on the CLIP map, or on the RSIB map when there is no CLIP image stream, as the
   official code does for Table 3 row C), then the RIPD decoder → logits (B, T, 96, 96).

Table 3 of the paper is a set of configurations of this one model: `use_clip` / a DINO or
not (which image streams exist), `fusion_type` (how they meet the text), and
`clip_decoder_guidance` / `rsib_decoder_guidance` (which streams the RIPD decoder integrates;
the official DECODER_{CLIP,DINO}_GUIDANCE_DIMS set to 0). Where the official code builds a
module only for some settings (upsamplers, RSIB projections, fusion convolutions), so does
this one, so that state dicts keep the official layout in every row.

Errors are `GsNetConfigError` (ValueError) with one line; the adapter translates them.
"""

from __future__ import annotations

from ovbench_methods.common.errors import MethodConfigError
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.clip import pad_to_multiple
from ovbench_methods.common.clip_cost_model import (
    SplitClipCostModel,
    create_clip_and_tokenizer,
    crop_to_image,
    resolve_template_list,
)
from ovbench_methods.common.cost_aggregation import AggregatorLayer
from ovbench_methods.common.dino import DinoVisionTransformer, build_dino, resize_pos_embed
from ovbench_methods.common.text import ClassNames, Tokenizer
from ovbench_methods.gsnet.decoder import RipdDecoder
from ovbench_methods.gsnet.config import TWO_STREAM_FUSIONS, GsNetConfig
from ovbench_methods.gsnet.fusion import CostFusion, RsibProjections, build_cost_fusion

__all__ = [
    "TWO_STREAM_FUSIONS",
    "GsNetAggregator",
    "GsNetConfigError",
    "GsNetModel",
    "build_gsnet_model",
]

class GsNetConfigError(MethodConfigError):
    """Settings that do not describe a valid GSNet model."""


def _pair(value: Sequence[int], what: str) -> tuple[int, int]:
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise GsNetConfigError(f"{what} must be two positive integers, got {list(value)}")
    return pair  # type: ignore[return-value]


class GsNetAggregator(nn.Module):
    """Cost fusion, aggregation and the RIPD decoder (official `RIPD`, ``predictor.transformer``).

    forward(CLIP map (B, C, h, w) or None, RSIB map (B, C, h, w) or None, text (B, T, P, C),
    CLIP guidance pair or None, RSIB guidance pair or None) -> logits (B, T, 4h, 4w).

    State-dict names below ``fusion.`` and ``decoder.`` are the official ones one level down
    (the official module keeps `conv1`, `Fusiondecoder1`, ... directly; the adapter maps them).
    Unlike CAT-Seg there is no top-k class pruning: the class axis is padded to `pad_len`
    learned tokens when shorter, and left as it is when longer.
    """

    def __init__(
        self,
        config: GsNetConfig,
        *,
        feat_dim: int,
        prompt_channels: int,
        feature_resolution: tuple[int, int],
    ) -> None:
        super().__init__()
        hidden_dim = config.hidden_dim
        self.fusion: CostFusion = build_cost_fusion(
            config.fusion_type, feat_dim=feat_dim, hidden_dim=hidden_dim, prompt_channels=prompt_channels
        )
        # APPEARANCE_GUIDANCE_DIM / TEXT_GUIDANCE_DIM are the CLIP embedding width (512): the
        # appearance map is the CLIP (or RSIB, row C) map the cost volume is computed from.
        self.guidance_projection = nn.Sequential(
            nn.Conv2d(feat_dim, config.appearance_guidance_proj_dim, kernel_size=3, stride=1, padding=1), nn.ReLU()
        )
        self.text_guidance_projection = nn.Sequential(nn.Linear(feat_dim, config.text_guidance_proj_dim), nn.ReLU())
        self.layers = nn.ModuleList(
            AggregatorLayer(
                hidden_dim=hidden_dim,
                text_guidance_dim=config.text_guidance_proj_dim,
                appearance_guidance_dim=config.appearance_guidance_proj_dim,
                num_heads=config.num_heads,
                resolution=feature_resolution,
                window_size=config.window_size,
                pooling_size=config.pooling_sizes,
                eval_pooling_size=config.eval_pooling_sizes,
                attention_type=config.attention_type,
                pad_len=config.pad_len,
            )
            for _ in range(config.num_layers)
        )
        self.decoder = RipdDecoder(
            hidden_dim=hidden_dim,
            decoder_dims=tuple(config.decoder_dims),
            decoder_guidance_dims=tuple(config.decoder_guidance_dims),
            decoder_clip_guidance_proj_dims=tuple(config.decoder_clip_guidance_proj_dims),
            decoder_dino_guidance_proj_dims=tuple(config.decoder_rsib_guidance_proj_dims),
            use_clip_guidance=config.clip_decoder_guidance,
            use_dino_guidance=config.rsib_decoder_guidance,
        )

    @property
    def fusion_type(self) -> str:
        return self.fusion.fusion_type

    def forward(
        self,
        clip_feats: Tensor | None,
        rsib_feats: Tensor | None,
        text_feats: Tensor,
        clip_guidance: Sequence[Tensor] | None = None,
        rsib_guidance: Sequence[Tensor] | None = None,
    ) -> Tensor:
        embedded = self.fusion(clip_feats, rsib_feats, text_feats)
        appearance_source = clip_feats if clip_feats is not None else rsib_feats
        appearance = self.guidance_projection(appearance_source)
        text_guidance = self.text_guidance_projection(F.normalize(text_feats.mean(dim=-2), dim=-1))
        for layer in self.layers:
            embedded = layer(embedded, appearance, text_guidance)
        return self.decoder(embedded, clip_guidance, rsib_guidance)


class GsNetModel(SplitClipCostModel):
    """GSNet: split-q/k/v CLIP + frozen DINO RSIB + `GsNetAggregator` (see module docstring).

    State-dict names (official in brackets): ``image_encoder.visual.*`` and ``text_encoder.*``
    [``sem_seg_head.predictor.clip_model.*``], ``transformer.*`` [``sem_seg_head.predictor.
    transformer.*``, one level flatter], ``upsample1/2`` [same], ``dino_model.*`` [same],
    ``rsib_projections.dino_*`` [top-level ``dino_*``].

    Args:
        clip: an open_clip CLIP (ViT image tower); converted to split q/k/v in place. Its text
            tower always serves the queries; its image tower only with `config.use_clip`.
        tokenizer: prompt strings -> token ids.
        templates: prompt templates (P cost channels).
        dino: the RSIB (`DinoVisionTransformer`), or None for the CLIP-only rows A and B;
            present exactly when `config.use_rsib`.
        config: the settings (`GsNetConfig`); its stream, fusion and guidance fields already
            fit together (the config checks that itself).
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Tokenizer,
        templates: Sequence[str],
        dino: DinoVisionTransformer | None,
        config: GsNetConfig,
    ) -> None:
        if (dino is not None) != config.use_rsib:
            raise GsNetConfigError(f"use_rsib is {config.use_rsib} but {'a' if dino is not None else 'no'} DINO was given")
        super().__init__(clip, tokenizer, templates, config, config_error=GsNetConfigError)
        self.use_clip = bool(config.use_clip)
        if not self.use_clip:
            # Row C never runs the CLIP image tower: its q/v weights would get no gradient
            # (the official optimiser skips them), and DDP needs every trainable weight used.
            self.image_encoder.requires_grad_(False)
        feat_dim = int(self.image_encoder.output_dim)

        self.pad_multiple = int(config.pad_multiple)
        self.image_size = _pair(config.image_size, "image_size")
        self.dino_image_size = _pair(config.dino_image_size, "dino_image_size")
        grids = []
        if self.use_clip:
            grids.append(("CLIP", self.clip_grid(self.image_size)))
        self.dino_model = dino
        if dino is not None:
            grids.append(("RSIB", self._rsib_cost_grid(dino)))
        if len(grids) == 2 and grids[0][1] != grids[1][1]:
            raise GsNetConfigError(
                f"the CLIP grid {grids[0][1]} (image_size {self.image_size}) and the RSIB cost grid {grids[1][1]} "
                f"(dino_image_size {self.dino_image_size} / patch {dino.patch_size} / 2) must be equal"
            )
        self.feature_resolution: tuple[int, int] = grids[0][1]
        if tuple(config.feature_resolution) != self.feature_resolution:
            raise GsNetConfigError(
                f"feature_resolution {tuple(config.feature_resolution)} does not match the image streams' grid {self.feature_resolution}"
            )

        self.guidance_blocks = self.check_guidance_blocks(config.guidance_blocks)
        guidance_dims = _pair(config.decoder_guidance_dims, "decoder_guidance_dims")
        self.upsample1: nn.Module | None
        self.upsample2: nn.Module | None
        if config.clip_decoder_guidance:
            self.upsample1, self.upsample2 = self.make_clip_upsamplers(guidance_dims)
        else:
            self.upsample1 = None
            self.upsample2 = None
        if dino is not None:
            try:
                self.rsib_projections: RsibProjections | None = RsibProjections(
                    embed_dim=dino.width,
                    feat_dim=feat_dim,
                    guidance_dims=guidance_dims,
                    depth=dino.num_blocks,
                    decoder_guidance=config.rsib_decoder_guidance,
                )
            except ValueError as exc:
                raise GsNetConfigError(str(exc)) from None
        else:
            self.rsib_projections = None

        self.transformer = GsNetAggregator(
            config, feat_dim=feat_dim, prompt_channels=len(self.templates), feature_resolution=self.feature_resolution
        )

    # ---------------------------------------------------------------- validation
    def _rsib_cost_grid(self, dino: DinoVisionTransformer) -> tuple[int, int]:
        """The RSIB grid after `dino_down_sample` (stride 2); checks the pos-embed resize fits."""
        height, width = self.dino_image_size
        if height % (2 * dino.patch_size) or width % (2 * dino.patch_size):
            raise GsNetConfigError(
                f"dino_image_size {self.dino_image_size} must be a multiple of twice the DINO patch ({dino.patch_size})"
            )
        grid = (height // dino.patch_size, width // dino.patch_size)
        try:
            with torch.no_grad():
                resize_pos_embed(dino.pos_embed.detach(), grid, dino.pos_embed_resize)
        except ValueError as exc:
            raise GsNetConfigError(str(exc)) from None
        return grid[0] // 2, grid[1] // 2

    # ------------------------------------------------------------------- streams
    def _clip_stream(self, images: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None, tuple, tuple]:
        upsamplers = (self.upsample1, self.upsample2) if self.upsample1 is not None and self.upsample2 is not None else None
        dense, guidance, features = self.encode_clip(images, self.image_size, self.pad_multiple, self.guidance_blocks, upsamplers)
        return dense, guidance, features.image_size, features.padded_size

    def _rsib_stream(self, images: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None, tuple, tuple]:
        dino, projections = self.dino_model, self.rsib_projections
        assert dino is not None and projections is not None
        pixels = pad_to_multiple(dino.normalize(images), self.pad_multiple)
        padded = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        if padded != self.dino_image_size:
            pixels = F.interpolate(pixels, size=self.dino_image_size, mode="bilinear", align_corners=False)
        frozen = not any(p.requires_grad for p in dino.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            features = dino.features(pixels, projections.blocks_needed)
        maps = {index: feats.float() for index, feats in features.maps.items()}
        cost_map, guidance = projections(maps)
        return cost_map, guidance, (int(images.shape[-2]), int(images.shape[-1])), padded

    # ------------------------------------------------------------------- forward
    def forward(self, images: Tensor, classes: ClassNames) -> Tensor:
        """(B, 3, h, w) RGB 0..255 -> (B, T, h', w') logits over the image (4x the feature grid)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise GsNetConfigError(f"GSNet expects images (B,3,H,W), got {tuple(images.shape)}")
        clip_feats = clip_guidance = rsib_feats = rsib_guidance = None
        image_size = padded_size = None
        if self.use_clip:
            clip_feats, clip_guidance, image_size, padded_size = self._clip_stream(images)
        if self.dino_model is not None:
            rsib_feats, rsib_guidance, image_size, padded_size = self._rsib_stream(images)
        reference = clip_feats if clip_feats is not None else rsib_feats
        text = self.batched_class_embeddings(classes, reference)
        logits = self.transformer(clip_feats, rsib_feats, text, clip_guidance, rsib_guidance)
        return crop_to_image(logits, image_size, padded_size)


def build_gsnet_model(config: GsNetConfig, templates: str | Sequence[str] | None = None, trusted: bool = False) -> GsNetModel:
    """Create CLIP (`create_clip_and_tokenizer`, as CAT-Seg does) and, with `use_rsib`, the DINO
    RSIB (`build_dino`, loading `config.resolved_dino_weights()`; None = random init), then
    build GSNet around them. `templates` replaces `config.templates` when a caller has resolved
    it further.

    The DINO is built first so that a missing RSIB file fails before CLIP weights are read.
    """
    dino = None
    if config.use_rsib:
        dino = build_dino(
            config.dino_arch,
            config.resolved_dino_weights(),
            input_norm=config.dino_input_norm,
            pos_embed_resize=config.dino_pos_embed_resize,
            finetune=config.dino_finetune,
            key_check=config.dino_key_check,
            trusted=trusted,
        )
    clip, tokenizer = create_clip_and_tokenizer(config.arch, config.clip_weights, config.model_config, config.quick_gelu, trusted)
    return GsNetModel(clip, tokenizer, resolve_template_list(config.templates if templates is None else templates), dino, config)
