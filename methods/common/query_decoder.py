"""The query decoders of the mask-proposal methods, with their mask and class-embedding heads
(docs/methods/mask-proposal-core.md#query-decoders).

Both decoders turn a fixed set of learned queries into one mask and one class embedding per
query, once per supervised layer:

- `DetrQueryDecoder` is OV-Seg's open-vocabulary MaskFormer predictor: a DETR decoder (no
  encoder layers) over the backbone's last feature map
  (docs/methods/mask-proposal-core.md#detr-query-decoder).
- `MaskedAttentionDecoder` is Mask2Former's multi-scale masked-attention decoder as SCAN and
  EBSeg build it (docs/methods/mask-proposal-core.md#masked-attention-decoder).

Open-vocabulary: the class head is an MLP that ends in the CLIP embedding width D, not in
class logits; the method compares its output with text embeddings afterwards. Module names
follow the official predictors, so the part of an official checkpoint under
``sem_seg_head.predictor.`` loads with no missing or unexpected keys once that prefix is
stripped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.errors import MethodConfigError
from ovbench_methods.common.mlp import ProjectionMLP
from ovbench_methods.common.position_encoding import SinePositionEncoding

__all__ = [
    "DetrDecoderLayer",
    "DetrQueryDecoder",
    "MaskedAttentionDecoder",
    "QueryDecoderOutput",
    "masked_attention_mask",
]


@dataclass
class QueryDecoderOutput:
    """Predictions in supervision order: the deep-supervision ones first, the final one last.

    class_embeddings: (B, Q, D) per prediction; empty when the decoder has no class head.
    mask_logits: (B, Q, H, W) per prediction, at the resolution of the mask features.
    query_features: the layer-normed (B, Q, hidden) query states the heads read, per prediction;
    kept for calibration heads that work on the queries themselves.
    """

    class_embeddings: list[Tensor]
    mask_logits: list[Tensor]
    query_features: list[Tensor] | None = None


# --------------------------------------------------------------------------- shared helpers


def _xavier_fill_matrices(module: nn.Module) -> None:
    """Xavier-uniform on every parameter with more than one dimension (biases and norms keep
    their defaults), as the official transformers reset themselves."""
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


def _projection_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 1x1 input projection with detectron2's "c2 xavier" fill: Kaiming-uniform with a=1 on the
    weight, zero bias."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.zeros_(conv.bias)
    return conv


def _with_pos(tensor: Tensor, pos: Tensor | None) -> Tensor:
    return tensor if pos is None else tensor + pos


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise MethodConfigError(f"query decoder setting {name} must be at least 1, got {value}")


def _check_heads(hidden_dim: int, nheads: int) -> None:
    if hidden_dim % nheads:
        raise MethodConfigError(f"query decoder hidden_dim {hidden_dim} is not divisible by nheads {nheads}")


def _check_mask_features(mask_features: Tensor, mask_dim: int, batch: int) -> None:
    if mask_features.dim() != 4 or mask_features.shape[1] != mask_dim or mask_features.shape[0] != batch:
        raise MethodConfigError(
            f"mask features must be ({batch}, {mask_dim}, H, W), got {tuple(mask_features.shape)}"
        )


# --------------------------------------------------------------------------- DETR decoder (OV-Seg)


class DetrDecoderLayer(nn.Module):
    """One DETR decoder layer: self-attention over the queries, cross-attention to the image,
    feed-forward; each with dropout, a residual and a LayerNorm (norm1, norm2, norm3), applied
    after the residual (post-norm, the published setting) or to the block's input (``pre_norm``).

    Sequences are (length, batch, channels). Queries get their positional embedding added to
    query and key of both attentions; image keys get the image's."""

    def __init__(self, hidden_dim: int, nheads: int, dim_feedforward: int, dropout: float, pre_norm: bool = False) -> None:
        super().__init__()
        self.pre_norm = bool(pre_norm)
        self.self_attn = nn.MultiheadAttention(hidden_dim, nheads, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(hidden_dim, nheads, dropout=dropout)
        self.linear1 = nn.Linear(hidden_dim, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, hidden_dim)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.norm3 = nn.LayerNorm(hidden_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        queries: Tensor,
        memory: Tensor,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        if self.pre_norm:
            return self._forward_pre_norm(queries, memory, pos, query_pos, memory_key_padding_mask)
        q = k = _with_pos(queries, query_pos)
        attended = self.self_attn(q, k, value=queries)[0]
        queries = self.norm1(queries + self.dropout1(attended))
        attended = self.multihead_attn(
            query=_with_pos(queries, query_pos),
            key=_with_pos(memory, pos),
            value=memory,
            key_padding_mask=memory_key_padding_mask,
        )[0]
        queries = self.norm2(queries + self.dropout2(attended))
        hidden = self.linear2(self.dropout(F.relu(self.linear1(queries))))
        return self.norm3(queries + self.dropout3(hidden))

    def _forward_pre_norm(
        self, queries: Tensor, memory: Tensor, pos: Tensor | None, query_pos: Tensor | None, memory_key_padding_mask: Tensor | None
    ) -> Tensor:
        normed = self.norm1(queries)
        q = k = _with_pos(normed, query_pos)
        queries = queries + self.dropout1(self.self_attn(q, k, value=normed)[0])
        normed = self.norm2(queries)
        attended = self.multihead_attn(
            query=_with_pos(normed, query_pos),
            key=_with_pos(memory, pos),
            value=memory,
            key_padding_mask=memory_key_padding_mask,
        )[0]
        queries = queries + self.dropout2(attended)
        hidden = self.linear2(self.dropout(F.relu(self.linear1(self.norm3(queries)))))
        return queries + self.dropout3(hidden)


class _DetrDecoder(nn.Module):
    """The layer stack and the LayerNorm shared by every layer's output (``decoder.norm``)."""

    def __init__(self, layer: DetrDecoderLayer, num_layers: int, hidden_dim: int) -> None:
        super().__init__()
        # Clones of one freshly built layer, as the official stack is made: the matrices are
        # re-drawn afterwards, the Linear biases stay equal across layers at initialisation.
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_dim)

    def forward(
        self,
        queries: Tensor,
        memory: Tensor,
        pos: Tensor | None,
        query_pos: Tensor | None,
        memory_key_padding_mask: Tensor | None,
    ) -> list[Tensor]:
        """Each layer's output after the shared norm, (Q, B, C) each, first layer first."""
        normed = []
        for layer in self.layers:
            queries = layer(queries, memory, pos=pos, query_pos=query_pos, memory_key_padding_mask=memory_key_padding_mask)
            normed.append(self.norm(queries))
        return normed


class _DetrEncoder(nn.Module):
    """The official transformer's encoder as MaskFormer and OV-Seg build it: zero layers. Only
    with ``pre_norm`` does it own something, a final LayerNorm (``transformer.encoder.norm``)
    that the image features then pass through; post-norm it leaves them unchanged."""

    def __init__(self, hidden_dim: int, pre_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim) if pre_norm else None

    def forward(self, memory: Tensor) -> Tensor:
        return memory if self.norm is None else self.norm(memory)


class _DetrTransformer(nn.Module):
    """Holds the encoder and decoder under the official module paths ``transformer.encoder``
    and ``transformer.decoder``."""

    def __init__(self, hidden_dim: int, nheads: int, dim_feedforward: int, dropout: float, num_layers: int, pre_norm: bool) -> None:
        super().__init__()
        self.encoder = _DetrEncoder(hidden_dim, pre_norm)
        layer = DetrDecoderLayer(hidden_dim, nheads, dim_feedforward, dropout, pre_norm)
        self.decoder = _DetrDecoder(layer, num_layers, hidden_dim)
        _xavier_fill_matrices(self)


class DetrQueryDecoder(nn.Module):
    """OV-Seg's query decoder: DETR over one feature map (res5), open-vocabulary class head.

    feature (B, in_channels, h, w) -> 1x1 `input_proj` to hidden (only when the widths differ,
    or with ``enforce_input_project``) + sine positional encoding; `query_embed` positions for
    Q zero-initialised queries; `dec_layers` decoder layers; every layer's output, after the
    shared norm, goes through `mask_embed` (dotted with the mask features) and `class_embed`
    (an embedding of width ``class_embed_dim``). With ``deep_supervision`` (the official
    setting) all layers are predicted, otherwise only the last. Post-norm layers by default, as
    published; ``pre_norm`` gives the official pre-norm variant.
    """

    def __init__(
        self,
        in_channels: int = 2048,
        *,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        dec_layers: int = 6,
        pre_norm: bool = False,
        mask_dim: int = 256,
        class_embed_dim: int = 512,
        class_hidden_dim: int = 1024,
        class_layers: int = 2,
        deep_supervision: bool = True,
        enforce_input_project: bool = False,
        class_head: bool = True,
    ) -> None:
        super().__init__()
        _check_positive(
            in_channels=in_channels, hidden_dim=hidden_dim, num_queries=num_queries, nheads=nheads,
            dim_feedforward=dim_feedforward, dec_layers=dec_layers, mask_dim=mask_dim,
            class_embed_dim=class_embed_dim, class_hidden_dim=class_hidden_dim, class_layers=class_layers,
        )
        _check_heads(hidden_dim, nheads)
        if not 0.0 <= dropout < 1.0:
            raise MethodConfigError(f"query decoder dropout must be in [0, 1), got {dropout}")
        self.in_channels = int(in_channels)
        self.hidden_dim = int(hidden_dim)
        self.num_queries = int(num_queries)
        self.mask_dim = int(mask_dim)
        self.deep_supervision = bool(deep_supervision)

        self.pe_layer = SinePositionEncoding(hidden_dim // 2, normalize=True)
        self.transformer = _DetrTransformer(hidden_dim, nheads, dim_feedforward, dropout, dec_layers, pre_norm)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if in_channels != hidden_dim or enforce_input_project:
            self.input_proj: nn.Module = _projection_conv(in_channels, hidden_dim)
        else:
            self.input_proj = nn.Identity()
        self.mask_embed = ProjectionMLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.class_embed = ProjectionMLP(hidden_dim, class_hidden_dim, class_embed_dim, class_layers) if class_head else None

    def forward(self, feature: Tensor, mask_features: Tensor, padding_mask: Tensor | None = None) -> QueryDecoderOutput:
        """feature (B, in_channels, h, w), mask_features (B, mask_dim, H, W), padding_mask
        (B, h, w) with True on padding or None. OV-Seg passes no padding mask (the official
        default); with one, padded pixels are left out of the position count and of the
        cross-attention keys, as in DETR."""
        if feature.dim() != 4 or feature.shape[1] != self.in_channels:
            raise MethodConfigError(
                f"the DETR query decoder takes (B, {self.in_channels}, h, w) features, got {tuple(feature.shape)}"
            )
        batch = feature.shape[0]
        _check_mask_features(mask_features, self.mask_dim, batch)
        if padding_mask is not None and tuple(padding_mask.shape) != (batch, *feature.shape[-2:]):
            raise MethodConfigError(
                f"padding mask must be {(batch, *feature.shape[-2:])}, got {tuple(padding_mask.shape)}"
            )

        pos = self.pe_layer(feature, padding_mask).flatten(2).permute(2, 0, 1)
        memory = self.transformer.encoder(self.input_proj(feature).flatten(2).permute(2, 0, 1))
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        queries = torch.zeros_like(query_pos)
        key_padding = None if padding_mask is None else padding_mask.flatten(1)
        normed = self.transformer.decoder(queries, memory, pos, query_pos, key_padding)
        if not self.deep_supervision:
            normed = normed[-1:]

        states = torch.stack(normed).transpose(1, 2)  # (L, B, Q, C)
        masks = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(states), mask_features)
        classes = [] if self.class_embed is None else list(self.class_embed(states).unbind(0))
        return QueryDecoderOutput(
            class_embeddings=classes,
            mask_logits=list(masks.unbind(0)),
            query_features=list(states.unbind(0)),
        )


# --------------------------------------------------------------------------- masked attention (SCAN, EBSeg)


def masked_attention_mask(mask_logits: Tensor, size: Sequence[int], num_heads: int) -> Tensor:
    """The cross-attention mask of the next masked-attention layer from the current masks.

    mask_logits (B, Q, H, W) are resized bilinearly (align_corners False) to the next level's
    (h, w); a pixel is blocked (True) where sigmoid < 0.5. A query whose mask blocks every pixel
    is let through everywhere instead (otherwise its softmax has nothing to attend to). The
    mask is repeated per head, image-major, as (B·num_heads, Q, h·w), and carries no gradient.
    """
    if mask_logits.dim() != 4:
        raise MethodConfigError(f"mask logits must be (B, Q, H, W), got {tuple(mask_logits.shape)}")
    resized = F.interpolate(mask_logits.detach(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    blocked = resized.sigmoid().flatten(2) < 0.5
    blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
    return blocked.unsqueeze(1).repeat(1, num_heads, 1, 1).flatten(0, 1)


class _SelfAttentionLayer(nn.Module):
    """Self-attention over the queries (positions added to query and key), residual, LayerNorm
    after the residual or (``pre_norm``) on the input."""

    def __init__(self, hidden_dim: int, nheads: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.pre_norm = bool(pre_norm)
        self.self_attn = nn.MultiheadAttention(hidden_dim, nheads, dropout=dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        _xavier_fill_matrices(self)

    def forward(self, queries: Tensor, query_pos: Tensor | None) -> Tensor:
        source = self.norm(queries) if self.pre_norm else queries
        q = k = _with_pos(source, query_pos)
        queries = queries + self.dropout(self.self_attn(q, k, value=source)[0])
        return queries if self.pre_norm else self.norm(queries)


class _CrossAttentionLayer(nn.Module):
    """Masked cross-attention from the queries to one feature level, residual, LayerNorm after
    the residual or (``pre_norm``) on the queries' input."""

    def __init__(self, hidden_dim: int, nheads: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.pre_norm = bool(pre_norm)
        self.multihead_attn = nn.MultiheadAttention(hidden_dim, nheads, dropout=dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)
        _xavier_fill_matrices(self)

    def forward(self, queries: Tensor, memory: Tensor, attn_mask: Tensor | None, pos: Tensor | None, query_pos: Tensor | None) -> Tensor:
        source = self.norm(queries) if self.pre_norm else queries
        attended = self.multihead_attn(
            query=_with_pos(source, query_pos), key=_with_pos(memory, pos), value=memory, attn_mask=attn_mask
        )[0]
        queries = queries + self.dropout(attended)
        return queries if self.pre_norm else self.norm(queries)


class _FFNLayer(nn.Module):
    """Two-layer ReLU feed-forward block, residual, LayerNorm after the residual or
    (``pre_norm``) on the input."""

    def __init__(self, hidden_dim: int, dim_feedforward: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.pre_norm = bool(pre_norm)
        self.linear1 = nn.Linear(hidden_dim, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        _xavier_fill_matrices(self)

    def forward(self, queries: Tensor) -> Tensor:
        source = self.norm(queries) if self.pre_norm else queries
        queries = queries + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(source)))))
        return queries if self.pre_norm else self.norm(queries)


class MaskedAttentionDecoder(nn.Module):
    """Mask2Former's multi-scale masked-attention decoder with an open-vocabulary class head.

    Layer i reads feature level i mod 3 (each level: `input_proj` to hidden when the widths
    differ, + `level_embed`, sine positions) with cross-attention restricted to the current
    masks' foreground, then self-attention, then a feed-forward block (dropout 0, post-norm).
    The heads (`decoder_norm`, then `class_embed` and `mask_embed`) run on the learned initial
    queries and after every layer, so there are ``dec_layers + 1`` predictions. ``pre_norm``
    gives the official pre-norm variant of the layers (unpublished for these methods).

    ``dec_layers`` is the number of layers built. Mask2Former and EBSeg build DEC_LAYERS − 1 = 9
    (the default); SCAN passes DEC_LAYERS = 10 unchanged and builds 10
    (docs/methods/scan.md#quirks), so pass ``dec_layers=10`` for SCAN's released weights.
    """

    def __init__(
        self,
        in_channels: int = 256,
        *,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 9,
        pre_norm: bool = False,
        mask_dim: int = 256,
        class_embed_dim: int = 512,
        class_hidden_dim: int = 1024,
        class_layers: int = 2,
        num_feature_levels: int = 3,
        enforce_input_project: bool = False,
        class_head: bool = True,
    ) -> None:
        super().__init__()
        _check_positive(
            in_channels=in_channels, hidden_dim=hidden_dim, num_queries=num_queries, nheads=nheads,
            dim_feedforward=dim_feedforward, mask_dim=mask_dim,
            class_embed_dim=class_embed_dim, class_hidden_dim=class_hidden_dim, class_layers=class_layers,
            num_feature_levels=num_feature_levels,
        )
        if dec_layers < 0:
            raise MethodConfigError(f"query decoder setting dec_layers must be at least 0, got {dec_layers}")
        _check_heads(hidden_dim, nheads)
        self.in_channels = int(in_channels)
        self.hidden_dim = int(hidden_dim)
        self.num_heads = int(nheads)
        self.num_layers = int(dec_layers)
        self.num_queries = int(num_queries)
        self.mask_dim = int(mask_dim)
        self.num_feature_levels = int(num_feature_levels)

        self.pe_layer = SinePositionEncoding(hidden_dim // 2, normalize=True)
        self.transformer_self_attention_layers = nn.ModuleList()
        self.transformer_cross_attention_layers = nn.ModuleList()
        self.transformer_ffn_layers = nn.ModuleList()
        for _ in range(dec_layers):
            self.transformer_self_attention_layers.append(_SelfAttentionLayer(hidden_dim, nheads, 0.0, pre_norm))
            self.transformer_cross_attention_layers.append(_CrossAttentionLayer(hidden_dim, nheads, 0.0, pre_norm))
            self.transformer_ffn_layers.append(_FFNLayer(hidden_dim, dim_feedforward, 0.0, pre_norm))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        project = in_channels != hidden_dim or enforce_input_project
        self.input_proj = nn.ModuleList(
            _projection_conv(in_channels, hidden_dim) if project else nn.Identity() for _ in range(num_feature_levels)
        )
        self.mask_embed = ProjectionMLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.class_embed = ProjectionMLP(hidden_dim, class_hidden_dim, class_embed_dim, class_layers) if class_head else None

    def _heads(self, queries: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """(Q, B, C) query states -> normed (B, Q, C) states, class embeddings, mask logits."""
        normed = self.decoder_norm(queries).transpose(0, 1)
        classes = None if self.class_embed is None else self.class_embed(normed)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(normed), mask_features)
        return normed, classes, masks

    def forward(self, multi_scale_features: Sequence[Tensor], mask_features: Tensor) -> QueryDecoderOutput:
        """multi_scale_features: the pixel decoder's levels, coarsest first as it returns them,
        each (B, in_channels, h_l, w_l); mask_features (B, mask_dim, H, W)."""
        if len(multi_scale_features) != self.num_feature_levels:
            raise MethodConfigError(
                f"the masked-attention decoder takes {self.num_feature_levels} feature levels, got {len(multi_scale_features)}"
            )
        batch = multi_scale_features[0].shape[0]
        for level in multi_scale_features:
            if level.dim() != 4 or level.shape[0] != batch or level.shape[1] != self.in_channels:
                raise MethodConfigError(
                    f"each feature level must be ({batch}, {self.in_channels}, h, w), got {tuple(level.shape)}"
                )
        _check_mask_features(mask_features, self.mask_dim, batch)

        sizes = [tuple(level.shape[-2:]) for level in multi_scale_features]
        memories, positions = [], []
        for index, level in enumerate(multi_scale_features):
            positions.append(self.pe_layer(level).flatten(2).permute(2, 0, 1))
            projected = self.input_proj[index](level).flatten(2) + self.level_embed.weight[index][None, :, None]
            memories.append(projected.permute(2, 0, 1))

        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        queries = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)

        states, classes, masks = [], [], []

        def record(current: Tensor) -> Tensor:
            normed, class_embeddings, mask_logits = self._heads(current, mask_features)
            states.append(normed)
            masks.append(mask_logits)
            if class_embeddings is not None:
                classes.append(class_embeddings)
            return mask_logits

        mask_logits = record(queries)
        for index in range(self.num_layers):
            level = index % self.num_feature_levels
            attn_mask = masked_attention_mask(mask_logits, sizes[level], self.num_heads)
            queries = self.transformer_cross_attention_layers[index](
                queries, memories[level], attn_mask, positions[level], query_pos
            )
            queries = self.transformer_self_attention_layers[index](queries, query_pos)
            queries = self.transformer_ffn_layers[index](queries)
            mask_logits = record(queries)
        return QueryDecoderOutput(class_embeddings=classes, mask_logits=masks, query_features=states)
