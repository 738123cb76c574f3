"""SED's head: cost embedding, guidance projections and the hierarchical decoder.

Notes: docs/methods/sed.md#pipeline. Module and parameter names are the official ones
(xb534/SED ``sed/modeling/transformer/model.py``: ``Aggregator``, ``Up``), so the authors'
``sem_seg_head.predictor.transformer.*`` keys load by name.

Shapes use B images, T classes, P templates and the res5 grid h x w (24^2 at 768^2):

- `conv1` embeds the (B, P, T, h, w) cosine volume per class -> (B, 128, T, h, w);
- `decoder_guidance_projection[i]`: Conv3x3 + ReLU of res4 / res3 / res2 -> image guidance;
- `decoder_corr_guidance_projection[i]`: a chain of ConvT(k2, s2) + ReLU over the raw volume,
  per class -> cost guidance at 2h, 4h, 8h;
- `decoder1..3` (`SedUp`): ConvNeXt block -> class attention -> ConvT up -> concat image and
  cost guidance -> DoubleConv, doubling the resolution each time -> (B*T, 16, 8h, 8w);
- `head` on the last stage; `head0..2` on the detached inputs of the three stages
  (docs/methods/sed.md#auxiliary-heads-on-detached-features).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.cost_aggregation import ClassTransformerLayer, Up, cosine_cost_volume, embed_cost_volume
from ovbench_methods.sed.config import SedConfigError

__all__ = [
    "ChannelsLastLayerNorm",
    "ConvNextBlock",
    "REJECTED_LOGIT",
    "SedAggregator",
    "SedOutputs",
    "SedUp",
    "top_k_union",
]

#: The logit a class rejected by early rejection gets: its sigmoid is exactly 0 in float32,
#: which is what the official fast path writes (a zero probability), while staying finite
#: so that resizing the scores never meets inf * 0
#: (docs/methods/sed.md#top-k-early-rejection).
REJECTED_LOGIT = -1.0e4


class SedOutputs(NamedTuple):
    """The four outputs, in the official order (losses ``loss_sem_seg_0..3``).

    `logits` (B, T, 8h, 8w) from the last stage; `aux0` (B, T, h, w), `aux1` (B, T, 2h, 2w)
    and `aux2` (B, T, 4h, 4w) from the auxiliary heads.
    """

    logits: Tensor
    aux0: Tensor
    aux1: Tensor
    aux2: Tensor


class ChannelsLastLayerNorm(nn.Module):
    """LayerNorm over the last axis with `weight` / `bias`, deliberately not an `nn.LayerNorm`.

    The official decoder block uses its own LayerNorm class; detectron2's optimiser (and
    ovbench's) exempts only `nn.LayerNorm` instances from weight decay, so these weights
    decay like any other (docs/methods/sed.md#weight-decay).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class ConvNextBlock(nn.Module):
    """ConvNeXt V1 block without drop path: depthwise conv (k x k) -> LayerNorm -> Linear
    (x4) -> GELU -> Linear -> layer scale gamma -> residual. Input and output (N, C, H, W).

    `layer_scale_init` 0 leaves gamma out (as the official block does for a value of 0).
    """

    def __init__(self, dim: int, kernel_size: int = 9, layer_scale_init: float = 1.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = ChannelsLastLayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init))) if layer_scale_init > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = y * self.gamma
        return x + y.permute(0, 3, 1, 2)


class SedUp(Up):
    """One decoder stage (official `Up`): ConvNeXt block and class attention at the input
    resolution, then `Up`'s ConvT(in -> in - g) x2, concat of the image guidance (B, g, ...)
    and the cost guidance (B*T, g, ...), DoubleConv(in + g -> out).

    The class attention has no text guidance, no class padding and no pruning.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        guidance_channels: int,
        num_heads: int = 4,
        attention_type: str = "linear",
        pooling_size: Sequence[int] = (2, 2),
        eval_pooling_size: Sequence[int] = (1, 1),
        kernel_size: int = 9,
        layer_scale_init: float = 1.0,
    ) -> None:
        super().__init__(in_channels, out_channels, (guidance_channels, guidance_channels))
        self.cnext = ConvNextBlock(in_channels, kernel_size, layer_scale_init)
        self.attention = ClassTransformerLayer(
            in_channels, 0, num_heads, attention_type, pooling_size, eval_pooling_size, pad_len=0
        )

    def forward(self, x: Tensor, image_guidance: Tensor, cost_guidance: Tensor) -> Tensor:  # type: ignore[override]
        """x (B*T, in, h, w) with B = image_guidance.shape[0] -> (B*T, out, 2h, 2w)."""
        batch = image_guidance.shape[0]
        x = self.cnext(x)
        volume = x.unflatten(0, (batch, -1)).transpose(1, 2)
        x = self.attention(volume, None).transpose(1, 2).flatten(0, 1)
        return super().forward(x, [image_guidance, cost_guidance])


def top_k_union(scores: Tensor, k: int) -> Tensor:
    """(T,) bool: the classes among the k best at any pixel of any image of (B, T, H, W) scores.

    The official rule (`get_valid_idx_from_mask`): rank classes per pixel, keep every class
    that reaches the top k somewhere in the batch.
    """
    classes = scores.shape[1]
    k = min(k, classes)
    best = scores.topk(k, dim=1).indices
    return torch.bincount(best.flatten(), minlength=classes) > 0


class SedAggregator(nn.Module):
    """Cost embedding, guidance and decoder (official ``Aggregator``); see the module docstring.

    forward(dense image embedding (B, C, h, w), text (B, T, P, C), image guidance [res4, res3,
    res2]) -> `SedOutputs`. With `fast_inference` (evaluation only) the auxiliary heads reject
    classes stage by stage and only the logits are meaningful (`forward_fast`).
    """

    def __init__(
        self,
        *,
        prompt_channels: int,
        cost_guidance_channels: int,
        hidden_dim: int,
        decoder_dims: Sequence[int],
        decoder_guidance_dims: Sequence[int],
        decoder_guidance_proj_dims: Sequence[int],
        num_heads: int,
        attention_type: str,
        pooling_sizes: Sequence[int],
        eval_pooling_sizes: Sequence[int],
        kernel_sizes: Sequence[int],
        layer_scale_init: float,
        apply_logit_scale: bool = False,
        fast_inference: bool = False,
        top_k: int = 1,
    ) -> None:
        super().__init__()
        if not (len(decoder_dims) == len(decoder_guidance_dims) == len(decoder_guidance_proj_dims) == len(kernel_sizes) == 3):
            raise SedConfigError("SED's decoder has three stages: decoder_dims, guidance dims and kernel_sizes need 3 entries")
        proj = tuple(int(d) for d in decoder_guidance_proj_dims)
        self.apply_logit_scale = apply_logit_scale
        self.fast_inference = fast_inference
        self.top_k = int(top_k)
        self.conv1 = nn.Conv2d(prompt_channels, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.decoder_guidance_projection = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, p, kernel_size=3, stride=1, padding=1), nn.ReLU())
            for d, p in zip(decoder_guidance_dims, proj)
        )
        # The chain's inputs: the raw volume (80 channels officially), then each previous output.
        chain_inputs = (cost_guidance_channels, proj[0], proj[1])
        self.decoder_corr_guidance_projection = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(d, p, kernel_size=2, stride=2), nn.ReLU()) for d, p in zip(chain_inputs, proj)
        )
        widths = (hidden_dim, *decoder_dims)
        self.decoder1, self.decoder2, self.decoder3 = (
            SedUp(widths[i], widths[i + 1], proj[i], num_heads, attention_type, pooling_sizes, eval_pooling_sizes,
                  kernel_sizes[i], layer_scale_init)
            for i in range(3)
        )
        self.head0 = nn.Conv2d(widths[0], 1, kernel_size=3, stride=1, padding=1)
        self.head1 = nn.Conv2d(widths[1], 1, kernel_size=3, stride=1, padding=1)
        self.head2 = nn.Conv2d(widths[2], 1, kernel_size=3, stride=1, padding=1)
        self.head = nn.Conv2d(widths[3], 1, kernel_size=3, stride=1, padding=1)

    @property
    def stages(self) -> tuple[SedUp, SedUp, SedUp]:
        return self.decoder1, self.decoder2, self.decoder3

    @property
    def aux_heads(self) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
        return self.head0, self.head1, self.head2

    # ------------------------------------------------------------------ pieces
    def cost_guidance(self, cost: Tensor) -> list[Tensor]:
        """(B, P, T, h, w) raw cosine volume -> per-class guidance (B*T, g_i, 2^i h, 2^i w)."""
        x = cost.transpose(1, 2).flatten(0, 1)
        maps = []
        for projection in self.decoder_corr_guidance_projection:
            x = projection(x)
            maps.append(x)
        return maps

    def image_guidance(self, guidance: Sequence[Tensor]) -> list[Tensor]:
        """[res4, res3, res2] (detached encoder maps) -> projected image guidance per stage."""
        return [projection(g) for projection, g in zip(self.decoder_guidance_projection, guidance)]

    @staticmethod
    def per_class_map(head: nn.Module, x: Tensor, batch: int) -> Tensor:
        """A 1-channel head on (B*T, C, H, W) -> (B, T, H, W)."""
        return head(x).view(batch, -1, *x.shape[-2:])

    # ----------------------------------------------------------------- forward
    def forward(
        self, image_features: Tensor, text_features: Tensor, guidance: Sequence[Tensor], logit_scale: Tensor | None = None
    ) -> SedOutputs:
        # The raw volume feeds both conv1 and the cost-guidance chain.
        cost = cosine_cost_volume(image_features, text_features)
        if self.apply_logit_scale and logit_scale is not None:
            cost = cost * logit_scale.exp().clamp(max=100)
        embedded = embed_cost_volume(cost, self.conv1)
        image_guidance = self.image_guidance(guidance)
        cost_guidance = self.cost_guidance(cost)
        if self.fast_inference and not self.training:
            return self.forward_fast(embedded, image_guidance, cost_guidance)
        return self.decode(embedded, image_guidance, cost_guidance)

    def decode(self, embedded: Tensor, image_guidance: Sequence[Tensor], cost_guidance: Sequence[Tensor]) -> SedOutputs:
        """(B, C, T, h, w) cost embedding -> all four outputs (official `conv_decoder`)."""
        batch = embedded.shape[0]
        x = embedded.transpose(1, 2).flatten(0, 1)
        aux = []
        for stage, aux_head, image_g, cost_g in zip(self.stages, self.aux_heads, image_guidance, cost_guidance):
            # The auxiliary heads read a detached copy: their losses train the heads only
            # (docs/methods/sed.md#auxiliary-heads-on-detached-features).
            aux.append(self.per_class_map(aux_head, x.detach(), batch))
            x = stage(x, image_g, cost_g)
        return SedOutputs(self.per_class_map(self.head, x, batch), *aux)

    def forward_fast(self, embedded: Tensor, image_guidance: Sequence[Tensor], cost_guidance: Sequence[Tensor]) -> SedOutputs:
        """Early rejection (official `fast_conv_decoder`): after each auxiliary head only the
        union of the per-pixel top-k classes goes on to the next stage; rejected classes get
        `REJECTED_LOGIT`. The auxiliary outputs are returned for the classes they scored at
        that stage, the others also filled with `REJECTED_LOGIT`."""
        batch, _, classes = embedded.shape[:3]
        kept = torch.arange(classes, device=embedded.device)
        x = embedded.transpose(1, 2).flatten(0, 1)
        aux = []
        for stage, aux_head, image_g, cost_g in zip(self.stages, self.aux_heads, image_guidance, cost_guidance):
            scores = self.per_class_map(aux_head, x, batch)
            aux.append(self._scatter(scores, kept, classes))
            keep = top_k_union(scores, self.top_k)
            kept = kept[keep]
            x = x.unflatten(0, (batch, -1))[:, keep].flatten(0, 1)
            # The cost guidance is per (image, class): pick the surviving classes.
            cost_g = cost_g.unflatten(0, (batch, classes))[:, kept].flatten(0, 1)
            x = stage(x, image_g, cost_g)
        return SedOutputs(self._scatter(self.per_class_map(self.head, x, batch), kept, classes), *aux)

    @staticmethod
    def _scatter(scores: Tensor, kept: Tensor, classes: int) -> Tensor:
        if scores.shape[1] == classes:
            return scores
        out = scores.new_full((scores.shape[0], classes, *scores.shape[2:]), REJECTED_LOGIT)
        out[:, kept] = scores
        return out
