"""Dense access to open_clip ConvNeXt image towers (the counterpart of `clip.ClipImageEncoder`).

open_clip builds its ConvNeXt CLIPs (``convnext_base_w_320``, ``convnext_large_d_320``, ...)
as a `TimmModel`: a timm ConvNeXt ``trunk`` whose classifier is removed, followed by an
adapter ``head`` (here a bias-free ``proj`` Linear into the joint space). Stock open_clip only
returns the pooled embedding; `ClipConvNextEncoder` wraps the same unmodified module and
returns what dense methods (SED) need instead:

- the stem output and the four stage outputs ``res2``..``res5`` (strides 4, 8, 16, 32);
- the dense embedding: ``res5`` -> ``trunk.norm_pre`` -> the trunk head's LayerNorm applied
  at every pixel -> the adapter head (dropout, ``proj``) at every pixel, i.e. the pooled
  CLIP embedding computed for each position of the stride-32 grid instead of their mean
  (docs/methods/sed.md#dense-convnext-embedding).

Because the wrapped module is open_clip's own, its parameter names are unchanged
(``visual.trunk.*``, ``visual.head.proj.weight``) and open_clip / official checkpoints load
into it by name. Images arrive as RGB on the 0..255 scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.clip import (
    CLIP_PIXEL_MEAN,
    CLIP_PIXEL_STD,
    DenseClipError,
    normalize_pixels,
    register_pixel_statistics,
)

__all__ = ["ClipConvNextEncoder", "ConvNextFeatures", "disable_stochastic_depth"]


@dataclass
class ConvNextFeatures:
    """One dense pass of `ClipConvNextEncoder`.

    `stages` holds ``{"stem": ..., "res2": ..., "res5": ...}`` maps (N, C_i, h_i, w_i) in
    network order; `dense` is the per-pixel CLIP embedding (N, D, h5, w5), not normalised.
    """

    stages: dict[str, Tensor]
    dense: Tensor


def disable_stochastic_depth(module: nn.Module) -> int:
    """Set every timm `DropPath` in `module` to rate 0 (an exact identity); returns how many.

    Stock open_clip 3.x configures ``convnext_base_w_320`` with ``timm_drop_path: 0.1``; the
    open_clip release the SED authors bundle (2.10.1) has no such entry, so its trunk trains
    without stochastic depth (docs/methods/sed.md#no-stochastic-depth).
    """
    count = 0
    for child in module.modules():
        if type(child).__name__ == "DropPath" and hasattr(child, "drop_prob"):
            child.drop_prob = 0.0
            count += 1
    return count


class ClipConvNextEncoder(nn.Module):
    """An open_clip `TimmModel` ConvNeXt image tower with dense outputs (see module docstring).

    Args:
        visual: ``clip_model.visual`` of an open_clip ConvNeXt CLIP; owned by this module.
        pixel_mean, pixel_std: per-channel statistics on the 0..255 scale (CLIP's by default).
    """

    #: names of the returned maps, in network order
    STAGE_NAMES: tuple[str, ...] = ("stem", "res2", "res3", "res4", "res5")

    def __init__(
        self,
        visual: nn.Module,
        pixel_mean: Sequence[float] = CLIP_PIXEL_MEAN,
        pixel_std: Sequence[float] = CLIP_PIXEL_STD,
    ) -> None:
        super().__init__()
        trunk = getattr(visual, "trunk", None)
        head = getattr(visual, "head", None)
        missing = [name for name in ("stem", "stages", "norm_pre", "head") if not hasattr(trunk, name)]
        if trunk is None or missing:
            raise DenseClipError(
                f"dense ConvNeXt CLIP needs an open_clip TimmModel around a timm ConvNeXt; "
                f"{type(visual).__name__} lacks {['trunk'] if trunk is None else missing}"
            )
        if len(trunk.stages) != 4:
            raise DenseClipError(f"expected a ConvNeXt trunk with 4 stages, got {len(trunk.stages)}")
        trunk_head = trunk.head
        if not isinstance(getattr(trunk_head, "norm", None), nn.LayerNorm):
            raise DenseClipError("the ConvNeXt trunk head has no LayerNorm (a head_norm_first trunk is not supported)")
        if not isinstance(getattr(trunk_head, "pre_logits", nn.Identity()), nn.Identity) or not isinstance(
            getattr(trunk_head, "fc", nn.Identity()), nn.Identity
        ):
            raise DenseClipError("the ConvNeXt trunk head must end at its LayerNorm (no pre-logits MLP, no classifier)")
        if not isinstance(getattr(head, "proj", None), nn.Linear):
            raise DenseClipError("the dense ConvNeXt embedding needs an open_clip 'linear' projection head (timm_proj: linear)")
        self.visual = visual
        register_pixel_statistics(self, pixel_mean, pixel_std)

    # ----------------------------------------------------------------- geometry
    @property
    def trunk(self) -> nn.Module:
        return self.visual.trunk

    @property
    def stage_channels(self) -> tuple[int, int, int, int]:
        """Widths of res2..res5 (ConvNeXt-B: 128, 256, 512, 1024)."""
        widths = []
        for stage in self.trunk.stages:
            norm = stage.blocks[-1].norm
            widths.append(int(norm.normalized_shape[0]))
        return tuple(widths)  # type: ignore[return-value]

    @property
    def output_dim(self) -> int:
        """Width D of the joint image-text space (ConvNeXt-B w/320: 640)."""
        return int(self.visual.head.proj.out_features)

    #: total stride of res5 (stem /4, then three /2 downsamples)
    stride: int = 32

    # ------------------------------------------------------------------ pixels
    def normalize(self, images: Tensor) -> Tensor:
        """(N,3,H,W) RGB on the 0..255 scale -> normalised float pixels in the trunk's dtype."""
        return normalize_pixels(self, images, self.trunk.stem[0].weight.dtype)

    # ----------------------------------------------------------------- forward
    def dense_embedding(self, res5: Tensor) -> Tensor:
        """(N, C5, h, w) last-stage map -> (N, D, h, w): the pooled CLIP head applied per pixel.

        The trunk head normally average-pools, LayerNorms and flattens; on a single pixel the
        pooling is the identity, so its LayerNorm over channels is all that remains, then
        the adapter head (dropout, proj) as a Linear over channels.
        """
        x = self.trunk.norm_pre(res5)
        norm = self.trunk.head.norm
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        x = self.trunk.head.drop(x) if hasattr(self.trunk.head, "drop") else x
        x = self.visual.head(x)
        return x.permute(0, 3, 1, 2)

    def forward_pixels(self, pixels: Tensor) -> ConvNextFeatures:
        """Normalised pixels (sides multiples of 32) -> stem, res2..res5 and the dense embedding."""
        x = self.trunk.stem(pixels)
        stages = {"stem": x}
        for index, stage in enumerate(self.trunk.stages):
            x = stage(x)
            stages[f"res{index + 2}"] = x
        return ConvNextFeatures(stages=stages, dense=self.dense_embedding(x))

    def forward(self, images: Tensor) -> ConvNextFeatures:
        """(N,3,H,W) 0..255 images with sides multiples of 32 -> `ConvNextFeatures`."""
        height, width = images.shape[-2:]
        if height % self.stride or width % self.stride:
            raise DenseClipError(f"ConvNeXt input {height}x{width} is not a multiple of its stride {self.stride}")
        return self.forward_pixels(self.normalize(images))
