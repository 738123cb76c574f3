"""Cost-volume aggregation blocks shared by CAT-Seg, GSNet (and, in part, SED).

Notes: docs/methods/catseg.md#cost-volume-and-embedding,
docs/methods/catseg.md#spatial-aggregation, docs/methods/catseg.md#class-aggregation,
docs/methods/catseg.md#upsampling-decoder and docs/methods/catseg.md#loss.

Shapes use B images, T classes, P prompt templates, C channels and an h x w feature grid; a
cost embedding is (B, C, T, h, w) throughout, so a block can be stacked after any producer of such a volume (CAT-Seg's single cost, GSNet's fused one).

- `cosine_cost_volume`, `embed_cost_volume`: the raw cosine volume and its 7x7 per-class embedding.
- `select_top_classes`, `gather_classes`, `scatter_classes`: CAT-Seg's top-k class pruning.
- `SwinBlockPair` (`SwinBlock`, `WindowAttention`): spatial aggregation with appearance guidance.
- `ClassTransformerLayer` (`ClassAttention`, `LinearAttention`, `FullAttention`): class
  aggregation with text guidance, padding of the class axis, pooling.
- `AggregatorLayer`: one spatial + one class block.
- `Up` (`DoubleConv`): the upsampling decoder stage, taking any list of guidance maps.
- `per_pixel_bce_loss`: the per-pixel binary cross-entropy of these methods.

Module and parameter names are the official ones (CAT-Seg `cat_seg/modeling/transformer/
model.py`), so the authors' checkpoints load by name.
"""

from __future__ import annotations

from ovbench_methods.common.errors import MethodConfigError
from typing import get_args, Literal, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

#: The additive logit the shifted-window mask puts between tokens from different regions
#: (official Swin value, not -inf) and the logit of classes pruned away.
MASKED_LOGIT = -100.0

AttentionType = Literal["linear", "full"]
ATTENTION_TYPES: tuple[str, ...] = get_args(AttentionType)


class CostAggregationError(MethodConfigError):
    """Bad shapes or settings for a cost-aggregation block."""


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise CostAggregationError(f"{what} must be a positive int or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


# --------------------------------------------------------------------- cost volume
def cosine_cost_volume(image_features: Tensor, text_features: Tensor) -> Tensor:
    """Cosine similarity of every pixel with every (class, template) embedding, no temperature.

    image_features (B, C, h, w), text_features (B, T, P, C) -> (B, P, T, h, w).
    """
    if image_features.ndim != 4 or text_features.ndim != 4 or image_features.shape[1] != text_features.shape[-1]:
        raise CostAggregationError(
            f"cost volume needs image (B,C,h,w) and text (B,T,P,C) with the same C, "
            f"got {tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    image = F.normalize(image_features, dim=1)
    text = F.normalize(text_features, dim=-1)
    return torch.einsum("bchw,btpc->bpthw", image, text)


def embed_cost_volume(cost: Tensor, conv: nn.Module) -> Tensor:
    """Apply a 2-D conv to each class slice: (B, P, T, h, w) -> (B, C, T, h, w)."""
    batch, _, classes = cost.shape[:3]
    per_class = cost.transpose(1, 2).flatten(0, 1)
    embedded = conv(per_class)
    return embedded.unflatten(0, (batch, classes)).transpose(1, 2)


def select_top_classes(cost: Tensor, keep: int) -> Tensor:
    """(B, keep) indices of the classes with the highest raw cosine anywhere in each image.

    cost (B, P, T, h, w): the maximum runs over templates and pixels, as in CAT-Seg.
    """
    scores = cost.transpose(1, 2).flatten(2).amax(dim=-1)
    return scores.topk(keep, dim=-1).indices


def gather_classes(features: Tensor, indices: Tensor, dim: int = 1) -> Tensor:
    """Pick the classes `indices` (B, K) along axis `dim` (> 0) of a per-image tensor (B, ...)."""
    if dim <= 0 or dim >= features.ndim:
        raise CostAggregationError(f"class axis {dim} must be a non-batch axis of a {features.ndim}-D tensor")
    shape = [1] * features.ndim
    shape[0], shape[dim] = indices.shape
    sizes = [indices.shape[1] if axis == dim else size for axis, size in enumerate(features.shape)]
    return features.gather(dim, indices.view(shape).expand(sizes))


def scatter_classes(logits: Tensor, indices: Tensor, num_classes: int, fill: float = MASKED_LOGIT) -> Tensor:
    """(B, K, H, W) logits of the kept classes -> (B, T, H, W), `fill` for the others."""
    out = logits.new_full((logits.shape[0], num_classes, *logits.shape[2:]), fill)
    index = indices[:, :, None, None].expand(-1, -1, *logits.shape[2:])
    return out.scatter(1, index, logits)


# ------------------------------------------------------------------ spatial (Swin)
def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C), windows row-major within each image."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """The inverse of `window_partition`: (B * nW, window * window, C) -> (B, H, W, C)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def shifted_window_mask(resolution: tuple[int, int], window: int, shift: int) -> Tensor:
    """(nW, window^2, window^2) additive mask of a cyclically shifted window partition:
    0 between tokens of the same original region, `MASKED_LOGIT` across regions."""
    height, width = resolution
    regions = torch.zeros(1, height, width, 1)
    label = 0
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for rows in bands:
        for cols in bands:
            regions[:, rows, cols, :] = label
            label += 1
    labels = window_partition(regions, window).squeeze(-1)
    differs = labels.unsqueeze(1) != labels.unsqueeze(2)
    return torch.zeros(differs.shape).masked_fill_(differs, MASKED_LOGIT)


def _guided_linear(layer: nn.Linear, x: Tensor, guidance: Tensor | None, width: int) -> Tensor:
    """``layer(concat(x, guidance))`` where `guidance` is shared by groups of rows of `x`.

    x (G * R, L, width) and guidance (G, L, g): each guidance row serves R consecutive rows of
    x (e.g. the T classes of an image). The weight is split into its x and guidance columns,
    so the guidance term is computed once per group and broadcast instead of being copied
    and concatenated R times; the sum equals the official concat-then-linear.
    """
    out = F.linear(x, layer.weight[:, :width], layer.bias)
    if layer.in_features == width:
        return out
    if guidance is None:
        raise CostAggregationError(f"{layer.in_features - width}-wide guidance expected, got none")
    guided = F.linear(guidance, layer.weight[:, width:])
    groups = guidance.shape[0]
    return (out.view(groups, -1, *out.shape[1:]) + guided.unsqueeze(1)).view(out.shape)


class WindowAttention(nn.Module):
    """Window self-attention whose queries and keys also see a guidance vector per token.

    q, k = Linear(concat(x, guidance)); v = Linear(x); out = proj(softmax(q k^T / sqrt(d) + mask) v).
    No relative position bias (the official block has none). Computed with SDPA.
    """

    def __init__(self, dim: int, guidance_dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise CostAggregationError(f"hidden dim {dim} is not divisible by {num_heads} heads")
        self.dim = dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim + guidance_dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim + guidance_dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def project(self, x: Tensor, guidance: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-token q, k, v of x (G * R, L, dim) with guidance (G, L, g) shared by R rows."""
        return _guided_linear(self.q, x, guidance, self.dim), _guided_linear(self.k, x, guidance, self.dim), self.v(x)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """Windows (B * nW, N, dim) each; mask (nW, N, N) additive or None -> (B * nW, N, dim), before proj."""
        windows, tokens, _ = q.shape
        num_windows = 1 if mask is None else mask.shape[0]
        heads = self.num_heads

        # Windows go into the head axis, (B, nW * heads, N, d), so that the mask broadcasts
        # over B as a stride-0 batch (which SDPA's fused kernels accept) instead of being
        # copied for every image and class.
        def split(t: Tensor) -> Tensor:
            t = t.view(windows // num_windows, num_windows, tokens, heads, -1)
            return t.permute(0, 1, 3, 2, 4).reshape(windows // num_windows, num_windows * heads, tokens, -1)

        attn_mask = None
        if mask is not None:
            attn_mask = mask.to(q.dtype).unsqueeze(1).expand(-1, heads, -1, -1).reshape(1, num_windows * heads, tokens, tokens)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attn_mask)
        out = out.view(windows // num_windows, num_windows, heads, tokens, -1).permute(0, 1, 3, 2, 4)
        return out.reshape(windows, tokens, self.dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The official call: x (B * nW, N, dim + guidance) already in windows -> (B * nW, N, dim)."""
        guidance = x[..., self.dim :] if x.shape[-1] > self.dim else None
        features = x[..., : self.dim]
        if guidance is None:
            q, k, v = self.project(features, None)
        else:
            q, k, v = (
                F.linear(x, self.q.weight, self.q.bias),
                F.linear(x, self.k.weight, self.k.bias),
                self.v(features),
            )
        return self.proj(self.attend(q, k, v, mask))


class SwinBlock(nn.Module):
    """Pre-LN Swin block with guidance: (shifted) window attention, then MLP (x4, GELU).

    `attn_mask` is a persistent buffer, as in the official block (its checkpoints carry it).
    If the grid is not larger than the window, the whole grid is one unshifted window.
    """

    def __init__(
        self,
        dim: int,
        guidance_dim: int,
        resolution: tuple[int, int],
        num_heads: int = 4,
        window_size: int = 12,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.resolution = _pair(resolution, "feature resolution")
        if min(self.resolution) <= window_size:
            window_size, shift_size = min(self.resolution), 0
        if not 0 <= shift_size < window_size:
            raise CostAggregationError(f"shift {shift_size} must lie in [0, window {window_size})")
        if self.resolution[0] % window_size or self.resolution[1] % window_size:
            raise CostAggregationError(f"feature resolution {self.resolution} is not a multiple of window {window_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, guidance_dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        mask = shifted_window_mask(self.resolution, window_size, shift_size) if shift_size else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """x (B * R, h*w, dim); guidance (B, h*w, G), already normalised, shared by the R
        sequences of each image (its classes), or None."""
        height, width = self.resolution
        batch, length, channels = x.shape
        if length != height * width:
            raise CostAggregationError(f"Swin block built for a {height}x{width} grid got {length} tokens")
        shift, window = self.shift_size, self.window_size
        # q, k, v are per-token maps, so they commute with the roll and the window
        # partition: projecting first lets the guidance term be computed once per image.
        q, k, v = self.attn.project(self.norm1(x), guidance)

        def to_windows(t: Tensor) -> Tensor:
            t = t.view(batch, height, width, -1)
            if shift:
                t = torch.roll(t, shifts=(-shift, -shift), dims=(1, 2))
            return window_partition(t, window)

        out = self.attn.attend(to_windows(q), to_windows(k), to_windows(v), self.attn_mask)
        out = window_reverse(out, window, height, width)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        x = x + self.attn.proj(out.reshape(batch, length, channels))
        return x + self.mlp(self.norm2(x))


class SwinBlockPair(nn.Module):
    """Spatial aggregation: a window block then a shifted-window block, each class slice of
    the cost embedding being its own sequence, with LayerNorm'd appearance guidance
    shared by every class (official `SwinTransformerBlockWrapper`)."""

    def __init__(
        self, dim: int, guidance_dim: int, resolution: tuple[int, int], num_heads: int = 4, window_size: int = 12
    ) -> None:
        super().__init__()
        self.block_1 = SwinBlock(dim, guidance_dim, resolution, num_heads, window_size, shift_size=0)
        self.block_2 = SwinBlock(dim, guidance_dim, resolution, num_heads, window_size, shift_size=window_size // 2)
        self.guidance_norm = nn.LayerNorm(guidance_dim) if guidance_dim > 0 else None

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """x (B, C, T, h, w), guidance (B, G, h, w) or None -> (B, C, T, h, w)."""
        batch, channels, classes, height, width = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).reshape(batch * classes, height * width, channels)
        if guidance is not None and self.guidance_norm is not None:
            # LayerNorm is per token: normalising once per image equals the official
            # repeat-per-class-then-normalise.
            guidance = self.guidance_norm(guidance.flatten(2).transpose(1, 2))
        else:
            guidance = None
        tokens = self.block_1(tokens, guidance)
        tokens = self.block_2(tokens, guidance)
        return tokens.view(batch, classes, height, width, channels).permute(0, 4, 1, 2, 3)


# ------------------------------------------------------------------- class axis
class LinearAttention(nn.Module):
    """Linear attention with the elu + 1 feature map ("Transformers are RNNs"); no parameters.

    queries (N, L, H, D), keys (N, S, H, D), values (N, S, H, V) -> (N, L, H, V).
    """

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        q = F.elu(queries) + 1
        k = F.elu(keys) + 1
        length = values.shape[1]
        # Dividing the values by S and multiplying back (official) keeps fp16 sums in range.
        kv = torch.einsum("nshd,nshv->nhdv", k, values / length)
        normaliser = 1.0 / (torch.einsum("nlhd,nhd->nlh", q, k.sum(dim=1)) + self.eps)
        return torch.einsum("nlhd,nhdv,nlh->nlhv", q, kv, normaliser) * length


class FullAttention(nn.Module):
    """Softmax attention (the official "full" class-attention option), computed with SDPA."""

    def forward(self, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        out = F.scaled_dot_product_attention(queries.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2))
        return out.transpose(1, 2)


class ClassAttention(nn.Module):
    """Multi-head attention across classes: q, k from concat(x, text guidance), v from x, no
    output projection (official `AttentionLayer`)."""

    def __init__(self, hidden_dim: int, guidance_dim: int, num_heads: int = 4, attention_type: str = "linear") -> None:
        super().__init__()
        if attention_type not in ATTENTION_TYPES:
            raise CostAggregationError(f"unknown attention type {attention_type!r}; expected one of {', '.join(ATTENTION_TYPES)}")
        if hidden_dim % num_heads:
            raise CostAggregationError(f"hidden dim {hidden_dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(hidden_dim + guidance_dim, hidden_dim)
        self.k = nn.Linear(hidden_dim + guidance_dim, hidden_dim)
        self.v = nn.Linear(hidden_dim, hidden_dim)
        self.attention = LinearAttention() if attention_type == "linear" else FullAttention()

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """x (B * R, T, C); guidance (B, T, G) shared by the R sequences of each image (its
        pooled positions), or None -> (B * R, T, C)."""
        width = self.v.in_features
        q = _guided_linear(self.q, x, guidance, width).unflatten(-1, (self.num_heads, -1))
        k = _guided_linear(self.k, x, guidance, width).unflatten(-1, (self.num_heads, -1))
        v = self.v(x).unflatten(-1, (self.num_heads, -1))
        return self.attention(q, k, v).flatten(-2)


class ClassTransformerLayer(nn.Module):
    """Class aggregation (official `ClassTransformerLayer`).

    Average-pool each class slice (`pooling_size` in training, `eval_pooling_size` in
    evaluation: the official runs train with [2,2] and evaluate with [1,1]), pad the class
    axis to `pad_len` with a learned token and a learned guidance vector (0 disables), run
    pre-LN class attention and MLP (x4, ReLU) at every pooled position, upsample back
    (bilinear, align_corners=True), drop the padding and add to the input.
    """

    def __init__(
        self,
        hidden_dim: int,
        guidance_dim: int,
        num_heads: int = 4,
        attention_type: str = "linear",
        pooling_size: Sequence[int] | None = (2, 2),
        eval_pooling_size: Sequence[int] | None = (1, 1),
        pad_len: int = 256,
    ) -> None:
        super().__init__()
        self.pooling_size = None if pooling_size is None else _pair(pooling_size, "pooling size")
        self.eval_pooling_size = None if eval_pooling_size is None else _pair(eval_pooling_size, "eval pooling size")
        self.attention = ClassAttention(hidden_dim, guidance_dim, num_heads, attention_type)
        self.MLP = nn.Sequential(nn.Linear(hidden_dim, hidden_dim * 4), nn.ReLU(), nn.Linear(hidden_dim * 4, hidden_dim))
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim)
        if pad_len < 0:
            raise CostAggregationError(f"pad_len must be >= 0, got {pad_len}")
        self.pad_len = pad_len
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, hidden_dim)) if pad_len > 0 else None
        self.padding_guidance = nn.Parameter(torch.zeros(1, 1, guidance_dim)) if pad_len > 0 and guidance_dim > 0 else None

    @property
    def active_pooling(self) -> tuple[int, int] | None:
        size = self.pooling_size if self.training else self.eval_pooling_size
        return None if size is None or size == (1, 1) else size

    def forward(self, x: Tensor, guidance: Tensor | None) -> Tensor:
        """x (B, C, T, h, w), guidance (B, T, G) or None -> (B, C, T, h, w)."""
        batch, channels, classes, height, width = x.shape
        pooling = self.active_pooling
        pooled = x.transpose(1, 2).flatten(0, 1)
        if pooling is not None:
            pooled = F.avg_pool2d(pooled, pooling)
        pooled_h, pooled_w = pooled.shape[-2:]
        # (B * h' * w', T, C): every pooled position is one sequence over the classes.
        tokens = pooled.view(batch, classes, channels, pooled_h * pooled_w).permute(0, 3, 1, 2)
        tokens = tokens.reshape(batch * pooled_h * pooled_w, classes, channels)
        missing = self.pad_len - classes if self.padding_tokens is not None else 0
        if missing > 0:
            tokens = torch.cat([tokens, self.padding_tokens.expand(tokens.shape[0], missing, -1)], dim=1)
        if guidance is not None and missing > 0 and self.padding_guidance is not None:
            guidance = torch.cat([guidance, self.padding_guidance.expand(batch, missing, -1)], dim=1)

        tokens = tokens + self.attention(self.norm1(tokens), guidance)
        tokens = tokens + self.MLP(self.norm2(tokens))

        tokens = tokens[:, :classes]
        out = tokens.view(batch, pooled_h, pooled_w, classes, channels).permute(0, 3, 4, 1, 2).flatten(0, 1)
        if (pooled_h, pooled_w) != (height, width):
            out = F.interpolate(out, size=(height, width), mode="bilinear", align_corners=True)
        return x + out.view(batch, classes, channels, height, width).transpose(1, 2)


class AggregatorLayer(nn.Module):
    """One aggregation layer: spatial Swin pair with appearance guidance, then class attention
    with text guidance. Input and output (B, C, T, h, w)."""

    def __init__(
        self,
        hidden_dim: int = 128,
        text_guidance_dim: int = 128,
        appearance_guidance_dim: int = 128,
        num_heads: int = 4,
        resolution: tuple[int, int] = (24, 24),
        window_size: int = 12,
        pooling_size: Sequence[int] | None = (2, 2),
        eval_pooling_size: Sequence[int] | None = (1, 1),
        attention_type: str = "linear",
        pad_len: int = 256,
    ) -> None:
        super().__init__()
        self.swin_block = SwinBlockPair(hidden_dim, appearance_guidance_dim, resolution, num_heads, window_size)
        self.attention = ClassTransformerLayer(
            hidden_dim, text_guidance_dim, num_heads, attention_type, pooling_size, eval_pooling_size, pad_len
        )

    def forward(self, x: Tensor, appearance_guidance: Tensor | None, text_guidance: Tensor | None) -> Tensor:
        return self.attention(self.swin_block(x, appearance_guidance), text_guidance)


# ---------------------------------------------------------------------- decoder
class DoubleConv(nn.Module):
    """(Conv3x3 without bias -> GroupNorm(C/16) -> ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels < 16:
            raise CostAggregationError(f"decoder stage width {out_channels} is below 16 (GroupNorm uses C/16 groups)")
        groups = out_channels // 16
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """Decoder stage: ConvTranspose (k2, s2) to in - g0 channels, concat guidance maps, DoubleConv.

    `guidance_channels` lists the widths of the guidance maps concatenated after the
    upsampling, in order; the first one sets the transposed conv's width (in - g0), as in
    CAT-Seg (one map: in - g + g = in channels into the DoubleConv) and GSNet's fusion
    decoder (two maps: in - g0 + g0 + g1). Guidance is per image (B, g, H, W) and repeated
    for each of the B*T class slices.
    """

    def __init__(self, in_channels: int, out_channels: int, guidance_channels: int | Sequence[int] = ()) -> None:
        super().__init__()
        widths = (guidance_channels,) if isinstance(guidance_channels, int) else tuple(guidance_channels)
        widths = tuple(w for w in widths if w > 0)
        up_channels = in_channels - (widths[0] if widths else 0)
        if up_channels < 1:
            raise CostAggregationError(f"decoder: guidance width {widths[0]} leaves no channels of {in_channels}")
        self.guidance_channels = widths
        self.up = nn.ConvTranspose2d(in_channels, up_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(up_channels + sum(widths), out_channels)

    def forward(self, x: Tensor, guidance: Tensor | Sequence[Tensor] | None = None) -> Tensor:
        """x (B*T, in, h, w); guidance one map or a list of maps (B or B*T, g_i, 2h, 2w)."""
        x = self.up(x)
        maps = [] if guidance is None else [guidance] if isinstance(guidance, Tensor) else list(guidance)
        if len(maps) != len(self.guidance_channels):
            raise CostAggregationError(f"decoder stage expects {len(self.guidance_channels)} guidance maps, got {len(maps)}")
        if maps:
            # Per-image maps (B rows) are repeated for the T classes of each image; per-class
            # maps (B*T rows, SED's cost guidance) are used as they are.
            x = torch.cat([x, *(g.repeat_interleave(x.shape[0] // g.shape[0], dim=0) for g in maps)], dim=1)
        return self.conv(x)


# ------------------------------------------------------------------------- loss
def per_pixel_bce_loss(
    logits: Tensor, targets: Tensor, ignore_index: int = 255, mask_ignored: bool = False
) -> Tensor:
    """Per-pixel BCE against one-hot targets (docs/methods/catseg.md#loss).

    logits (B, T, h, w) are upsampled bilinearly to the targets' (H, W). Pixels equal to
    `ignore_index`, negative or >= T are ignored: by default (official) they get all-zero
    targets and stay in the mean over pixels x classes; with `mask_ignored` they are left out.
    """
    if targets.ndim != 3 or logits.ndim != 4 or logits.shape[0] != targets.shape[0]:
        raise CostAggregationError(
            f"loss needs logits (B,T,h,w) and targets (B,H,W) of one batch, got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    num_classes = logits.shape[1]
    logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    valid = (targets >= 0) & (targets < num_classes) & (targets != ignore_index)
    one_hot = F.one_hot(torch.where(valid, targets, 0).long(), num_classes).permute(0, 3, 1, 2).to(logits.dtype)
    one_hot = one_hot * valid.unsqueeze(1)
    if not mask_ignored:
        return F.binary_cross_entropy_with_logits(logits, one_hot)
    per_element = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    weight = valid.unsqueeze(1).to(per_element.dtype)
    # Mean over the valid pixels x classes; a batch with no valid pixel contributes zero.
    return (per_element * weight).sum() / (weight.sum() * num_classes).clamp_min(1.0)
