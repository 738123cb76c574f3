"""Inference modes: how a method's raw per-view forward becomes per-class scores at input size.

A method exposes one thing to evaluation, a `Forward`: a batch of RGB views in 0..255 in,
per-class logits at whatever resolution the model likes out. An `InferenceMode` decides which
views to show it (the whole image stretched to a fixed size, or overlapping tiles plus a
global view), turns the logits into scores and brings them back to the input resolution.
Which mode a method uses, and with which sizes, is data in its YAML (`InferenceConfig`).

Two recipes matter for the paper's tables:

* `WholeImage`: optionally resize the short side (detectron2's test mapper), stretch to a
  fixed size, forward, upsample, activate, resize to H x W (SED: 768^2 and sigmoid).
* `MaskClassification`: the mask-classification methods (SAN, OV-Seg, SCAN, EBSeg): the
  forward returns per-query class probabilities and mask logits (`MaskScores`); the masks
  are brought to the input resolution first and combined with the classes there, as
  detectron2's semantic post-processing does when it runs before inference.
* `SlidingWindow`: the CAT-Seg / GSNet evaluation
  (docs/datasets.md#sliding-window-protocol): stretch to 640 x 640, cut 384^2 tiles at
  stride 256 plus a 384^2 global view, run every view of every image in one batched forward,
  upsample each to 384, sigmoid, average overlapping tiles, blend 50/50 with the global view
  upsampled to 640, resize to H x W.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from typing import NamedTuple, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ovbench.errors import ConfigError, OvbenchError
from ovbench.inference_config import InferenceConfig

__all__ = [
    "ACTIVATIONS",
    "MODES",
    "Forward",
    "InferenceConfig",
    "InferenceMode",
    "MaskClassification",
    "MaskScores",
    "SlidingWindow",
    "WholeImage",
    "build_inference",
    "shortest_edge_size",
    "tile_offsets",
    "tile_starts",
]

#: (N,3,h,w) float RGB in 0..255 -> (N,T,h',w') logits at any resolution h',w'.
Forward = Callable[[Tensor], Tensor]

#: Names accepted by `InferenceConfig.mode`.
MODES = ("whole", "sliding", "masks")
#: Names accepted by `InferenceConfig.activation`; applied per view, before any averaging.
ACTIVATIONS = ("none", "sigmoid", "softmax")

Size = tuple[int, int]

#: The most float elements of upsampled scores a mode holds besides its output. Logits come
#: at the model's resolution (e.g. (N, T, 8, 8)) and only become large when upsampled: with
#: T = 2000 classes a (2, T, 128, 128) stack is 524 MB before it is even resized to the
#: image. Every step after the forward (upsample, activation, tile folding, blending, resize)
#: treats each class on its own (softmax needs the sum over classes, taken in a first pass),
#: so the modes run those steps on chunks of classes sized to this bound and write each
#: chunk into the output: memory is the output plus one chunk, whatever T. A vocabulary
#: that fits in one chunk takes the plain unchunked path. 2**24 floats = 64 MiB.
SCORE_CHUNK_ELEMENTS = 1 << 24


@runtime_checkable
class InferenceMode(Protocol):
    """Turns a per-view forward into scores at the input resolution."""

    def __call__(self, forward: Forward, images: Tensor) -> Tensor:
        """(B,3,H,W) float RGB in 0..255 -> (B,T,H,W) scores."""
        ...


# --------------------------------------------------------------------------- geometry


def tile_starts(length: int, window: int, stride: int) -> list[int]:
    """Origins of the tiles along one axis so that every index in [0, length) is covered.

    Starts run 0, stride, 2*stride, ... while a tile still fits; if the last one stops short
    of the edge, one more tile flush with the edge is added. When (length - window) is a
    multiple of stride this is exactly torch.nn.Unfold's grid (640/384/256 -> [0, 256]);
    otherwise Unfold would silently drop the border, which the flush tile keeps.
    """
    _require_positive_int(length, "size")
    _require_positive_int(window, "window")
    _require_positive_int(stride, "stride")
    if window > length:
        raise ConfigError(f"window {window} is larger than the image side {length} it should tile")
    if stride > window:
        raise ConfigError(f"stride {stride} is larger than window {window}: tiles would leave gaps")
    last = length - window
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def tile_offsets(height: int, width: int, window: int, stride: int) -> list[Size]:
    """(top, left) of every tile over a height x width canvas, row-major like nn.Unfold."""
    return [
        (top, left)
        for top in tile_starts(height, window, stride)
        for left in tile_starts(width, window, stride)
    ]


def shortest_edge_size(height: int, width: int, short_side: int, max_size: int | None = None) -> Size:
    """Output (h, w) of detectron2's ResizeShortestEdge for one fixed short side.

    The short side becomes `short_side`, the aspect ratio is kept, and if the long side would
    exceed `max_size` both are scaled down so that it equals it; sides are rounded half up.
    """
    scale = short_side / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max_size is not None and max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


# --------------------------------------------------------------------------- modes


class WholeImage:
    """One view per image: the image stretched to `size` (aspect ignored).

    Steps: optional short-side resize, bilinear stretch to `size`, forward, bilinear upsample
    of the logits to `size`, activation, bilinear resize to the original H x W. With `size`
    None the forward sees the (short-side resized) image as it is. With `upsample_logits`
    False the activation runs on the logits at the model's own resolution, which are then
    resized straight to H x W (SED's official order).
    """

    def __init__(
        self,
        size: Sequence[int] | int | None = (640, 640),
        activation: str = "none",
        short_side: int | None = None,
        max_size: int | None = None,
        upsample_logits: bool = True,
    ):
        self.size: Size | None = None if size is None else _parse_size(size)
        self.activation = _parse_activation(activation)
        self.short_side, self.max_size = _parse_short_side(short_side, max_size)
        if not isinstance(upsample_logits, bool):
            raise ConfigError(f"inference upsample_logits must be true or false, got {upsample_logits!r}")
        self.upsample_logits = upsample_logits

    def __call__(self, forward: Forward, images: Tensor) -> Tensor:
        """(B,3,H,W) float RGB in 0..255 -> (B,T,H,W) scores."""
        images = _check_images(images)
        height, width = images.shape[-2:]
        prepared = _resize_short_side(images, self.short_side, self.max_size)
        view_size = self.size or _spatial(prepared)
        logits = _call_forward(forward, _resize(prepared, view_size), "whole-image views")
        batch, classes = logits.shape[:2]
        activation_size = view_size if self.upsample_logits else _spatial(logits)
        chunks = _class_chunks(classes, batch * activation_size[0] * activation_size[1])
        scores = _upsampled_scores(logits, activation_size, self.activation, chunks)
        return _assemble(chunks, (_resize(part, (height, width)) for part in scores))

    def __repr__(self) -> str:
        return (
            f"WholeImage(size={self.size}, activation={self.activation!r}, "
            f"short_side={self.short_side}, max_size={self.max_size}, upsample_logits={self.upsample_logits})"
        )


class MaskScores(NamedTuple):
    """What a mask-classification forward returns for a batch of N views.

    `class_probs` (N, Q, T): each query's probability for each queried class (no-object
    column already removed, any method-specific calibration applied); `mask_logits`
    (N, Q, h, w): each query's mask over the padded canvas of `padded_size` (Hp, Wp), whose
    top-left (h_in, w_in) corner is the view the forward was given.
    """

    class_probs: Tensor
    mask_logits: Tensor
    padded_size: Size


class MaskClassification:
    """Aspect-preserving single-scale inference of the mask-classification methods.

    Steps (SAN's official test path, no tiling): optional
    short-side resize (detectron2 test mapper), forward on the resized image, bilinear
    upsample of the mask logits to the padded canvas, crop to the resized image, bilinear
    resize to the original H x W, sigmoid, then scores = sum over queries of class
    probability x mask probability. The masks are brought to full resolution before they
    are combined, as detectron2's semantic post-processing does "before inference".
    Classes are combined in chunks, so memory is the output, the Q full-size masks and one
    chunk, whatever T.
    """

    #: the segmenter's predict hands this mode its `forward_masks`, not `forward_logits`.
    wants_masks = True

    def __init__(self, short_side: int | None = 640, max_size: int | None = 2560):
        self.short_side, self.max_size = _parse_short_side(short_side, max_size)

    def __call__(self, forward: Callable[[Tensor], MaskScores], images: Tensor) -> Tensor:
        """(B,3,H,W) float RGB in 0..255 -> (B,T,H,W) scores."""
        images = _check_images(images)
        height, width = images.shape[-2:]
        prepared = _resize_short_side(images, self.short_side, self.max_size)
        out = forward(prepared)
        if not isinstance(out, MaskScores):
            raise LogitsShapeError(f"the masks forward must return MaskScores, got {type(out).__name__}")
        probs, masks = out.class_probs, out.mask_logits
        if probs.ndim != 3 or masks.ndim != 4 or probs.shape[:2] != masks.shape[:2] or probs.shape[0] != images.shape[0]:
            raise LogitsShapeError(
                f"MaskScores of {images.shape[0]} views must hold class_probs (N,Q,T) and mask_logits (N,Q,h,w) "
                f"with the same N and Q; got {tuple(probs.shape)} and {tuple(masks.shape)}"
            )
        in_h, in_w = _spatial(prepared)
        masks = _resize(masks.float(), tuple(out.padded_size))[..., :in_h, :in_w]
        masks = _resize(masks, (height, width)).sigmoid()
        probs = probs.float()
        classes = probs.shape[-1]
        chunks = _class_chunks(classes, images.shape[0] * height * width)
        return _assemble(chunks, (torch.einsum("nqt,nqhw->nthw", probs[..., part], masks) for part in chunks))

    def __repr__(self) -> str:
        return f"MaskClassification(short_side={self.short_side}, max_size={self.max_size})"


class SlidingWindow:
    """Overlapping square tiles plus an optional global view, the CAT-Seg / GSNet recipe.

    Steps: optional short-side resize; bilinear stretch to `size` (aspect ignored); tiles of
    `window` at `stride` (see `tile_starts`); a global view, the short-side resized image
    stretched to `global_view`; every view of every image in one forward call (views of one
    image are consecutive, tiles row-major then the global view); each view's logits
    upsampled to its own side and activated; tiles folded back by summing and dividing by
    how many tiles cover each pixel; the global scores upsampled to `size` and blended as
    (1 - global_weight) * tiles + global_weight * global; bilinear resize to H x W.

    If `global_view` differs from `window`, the views have two shapes and the forward is
    called twice (tiles, then global views).
    """

    def __init__(
        self,
        size: Sequence[int] | int | None = (640, 640),
        window: int = 384,
        stride: int = 256,
        global_view: int | None = 384,
        global_weight: float = 0.5,
        activation: str = "sigmoid",
        short_side: int | None = None,
        max_size: int | None = None,
    ):
        self.size: Size | None = None if size is None else _parse_size(size)
        self.window = _require_positive_int(window, "window")
        self.stride = _require_positive_int(stride, "stride")
        if self.stride > self.window:
            raise ConfigError(f"stride {stride} is larger than window {window}: tiles would leave gaps")
        self.global_view = None if global_view is None else _require_positive_int(global_view, "global_view")
        self.global_weight = _parse_weight(global_weight)
        self.activation = _parse_activation(activation)
        self.short_side, self.max_size = _parse_short_side(short_side, max_size)
        if self.size is not None:
            # A fixed canvas can be checked now instead of on the first image.
            self._check_canvas(self.size)

    def __call__(self, forward: Forward, images: Tensor) -> Tensor:
        """(B,3,H,W) float RGB in 0..255 -> (B,T,H,W) scores."""
        images = _check_images(images)
        batch = images.shape[0]
        height, width = images.shape[-2:]
        prepared = _resize_short_side(images, self.short_side, self.max_size)
        canvas_size = self.size or _spatial(prepared)
        self._check_canvas(canvas_size)
        canvas = _resize(prepared, canvas_size)

        window = self.window
        offsets = tile_offsets(*canvas_size, window, self.stride)
        num_tiles = len(offsets)
        tiles = torch.stack([canvas[:, :, top : top + window, left : left + window] for top, left in offsets], dim=1)
        del canvas

        # Only the logits (at the model's resolution) of every view are kept; scores are
        # upsampled, folded and blended class chunk by class chunk (SCORE_CHUNK_ELEMENTS).
        global_logits: Tensor | None = None
        if self.global_view is None:
            tile_logits = _call_forward(forward, tiles.flatten(0, 1), "tile views")
        else:
            # Official code builds the global view from the mapper output, not the stretched canvas.
            global_image = _resize(prepared, (self.global_view, self.global_view))
            if self.global_view == window:
                views = torch.cat([tiles, global_image.unsqueeze(1)], dim=1).flatten(0, 1)
                logits = _call_forward(forward, views, "tile and global views").unflatten(0, (batch, num_tiles + 1))
                tile_logits, global_logits = logits[:, :num_tiles].flatten(0, 1), logits[:, num_tiles]
                del logits
            else:
                tile_logits = _call_forward(forward, tiles.flatten(0, 1), "tile views")
                global_logits = _call_forward(forward, global_image, "global views")
                if global_logits.shape[1] != tile_logits.shape[1]:
                    raise LogitsShapeError(
                        f"forward returned {tile_logits.shape[1]} classes for tiles but "
                        f"{global_logits.shape[1]} for the global views"
                    )
        del tiles

        # Floats held per class: the tile scores, the folded canvas and the global view at
        # its own size and at the canvas size.
        canvas_pixels = canvas_size[0] * canvas_size[1]
        per_class = batch * (num_tiles * window * window + 2 * canvas_pixels)
        if self.global_view is not None:
            per_class += batch * self.global_view * self.global_view
        chunks = _class_chunks(tile_logits.shape[1], per_class)
        tile_chunks = _upsampled_scores(tile_logits, (window, window), self.activation, chunks)
        global_chunks: Iterable[Tensor | None] = repeat(None)
        if global_logits is not None:
            global_side = (self.global_view, self.global_view)
            global_chunks = _upsampled_scores(global_logits, global_side, self.activation, chunks)

        def blended_chunks() -> Iterator[Tensor]:
            for tile_scores, global_scores in zip(tile_chunks, global_chunks):
                blended = self._fold(tile_scores.unflatten(0, (batch, num_tiles)), offsets, canvas_size)
                del tile_scores
                if global_scores is not None:
                    blended.mul_(1.0 - self.global_weight)
                    blended.add_(_resize(global_scores, canvas_size), alpha=self.global_weight)
                yield _resize(blended, (height, width))

        return _assemble(chunks, blended_chunks())

    def _fold(self, tile_scores: Tensor, offsets: list[Size], canvas_size: Size) -> Tensor:
        """Overlap-average (B,L,T,w,w) tiles onto a (B,T,h,w) canvas.

        Summing tile by tile into one canvas keeps memory at one canvas, where nn.Fold would
        need the (B, T*w*w, L) column matrix of all classes as well.
        """
        batch, _, classes = tile_scores.shape[:3]
        window = self.window
        summed = tile_scores.new_zeros((batch, classes, *canvas_size))
        coverage = tile_scores.new_zeros(canvas_size)
        for index, (top, left) in enumerate(offsets):
            summed[:, :, top : top + window, left : left + window] += tile_scores[:, index]
            coverage[top : top + window, left : left + window] += 1
        return summed.div_(coverage)

    def _check_canvas(self, canvas_size: Size) -> None:
        if min(canvas_size) < self.window:
            raise ConfigError(
                f"sliding window: the image resized to {canvas_size[0]}x{canvas_size[1]} is smaller than "
                f"window {self.window}; raise size or lower window"
            )

    def __repr__(self) -> str:
        return (
            f"SlidingWindow(size={self.size}, window={self.window}, stride={self.stride}, "
            f"global_view={self.global_view}, global_weight={self.global_weight}, "
            f"activation={self.activation!r}, short_side={self.short_side}, max_size={self.max_size})"
        )


def build_inference(config: InferenceConfig) -> InferenceMode:
    """The inference mode a config describes; bad values raise ConfigError naming the field."""
    if not isinstance(config, InferenceConfig):
        raise ConfigError(f"inference config must be an InferenceConfig, got {type(config).__name__}")
    if config.mode == "whole":
        return WholeImage(
            size=config.size,
            activation=config.activation,
            short_side=config.short_side,
            max_size=config.max_size,
            upsample_logits=config.upsample_logits,
        )
    if config.mode == "masks":
        return MaskClassification(short_side=config.short_side, max_size=config.max_size)
    if config.mode == "sliding":
        return SlidingWindow(
            size=config.size,
            window=config.window,
            stride=config.stride,
            global_view=config.global_view,
            global_weight=config.global_weight,
            activation=config.activation,
            short_side=config.short_side,
            max_size=config.max_size,
        )
    raise ConfigError(f"inference mode must be one of {', '.join(MODES)}; got {config.mode!r}")


# --------------------------------------------------------------------------- helpers


def _require_positive_int(value: object, name: str) -> int:
    # bool is an int subclass; `window: true` in YAML is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"inference {name} must be a positive integer, got {value!r}")
    return value


def _parse_size(size: Sequence[int] | int) -> Size:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2:
        raise ConfigError(f"inference size must be [height, width] (or one int), got {size!r}")
    return _require_positive_int(size[0], "size"), _require_positive_int(size[1], "size")


def _parse_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ConfigError(f"inference activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
    return activation


def _parse_weight(weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
        raise ConfigError(f"inference global_weight must be a number in [0, 1], got {weight!r}")
    return float(weight)


def _parse_short_side(short_side: int | None, max_size: int | None) -> tuple[int | None, int | None]:
    if short_side is None:
        # max_size only caps a short-side resize; a config that switches that off may keep it.
        return None, None
    short_side = _require_positive_int(short_side, "short_side")
    if max_size is not None:
        max_size = _require_positive_int(max_size, "max_size")
    return short_side, max_size


def _check_images(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise OvbenchError(f"inference expects images of shape (B,3,H,W), got {shape}")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise OvbenchError(f"inference got an empty image batch of shape {tuple(images.shape)}")
    # Bilinear resampling is only defined for floating tensors (uint8 images are common input).
    return images if images.is_floating_point() else images.float()


def _spatial(tensor: Tensor) -> Size:
    return int(tensor.shape[-2]), int(tensor.shape[-1])


def _resize(tensor: Tensor, size: Size, antialias: bool = False) -> Tensor:
    """Bilinear, align_corners False; a no-op (not a copy) when the size already matches."""
    if _spatial(tensor) == tuple(size):
        return tensor
    return F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)


def _resize_short_side(images: Tensor, short_side: int | None, max_size: int | None) -> Tensor:
    if short_side is None:
        return images
    target = shortest_edge_size(*_spatial(images), short_side, max_size)
    # detectron2 resizes with PIL, which low-pass filters when shrinking; antialias mimics that.
    return _resize(images, target, antialias=True)


def _class_chunks(num_classes: int, elements_per_class: int) -> list[slice]:
    """Consecutive class ranges of at most SCORE_CHUNK_ELEMENTS floats each (at least one class)."""
    step = max(1, SCORE_CHUNK_ELEMENTS // max(1, elements_per_class))
    return [slice(start, min(start + step, num_classes)) for start in range(0, num_classes, step)]


def _upsampled_scores(logits: Tensor, size: Size, activation: str, chunks: list[slice]) -> Iterator[Tensor]:
    """(N, T, h, w) logits -> the activated (N, c, *size) scores of each class chunk in turn.

    With one chunk this is exactly `_activate(_resize(logits, size))`. With several, softmax
    takes its normaliser in a first pass (the running logsumexp over class chunks at `size`)
    and yields exp(logit - logsumexp), equal to softmax to float rounding.
    """
    if len(chunks) == 1:
        yield _activate(_resize(logits, size), activation)
        return
    log_norm: Tensor | None = None
    if activation == "softmax":
        for part in chunks:
            partial = _resize(logits[:, part], size).logsumexp(dim=1, keepdim=True)
            log_norm = partial if log_norm is None else torch.logaddexp(log_norm, partial)
    for part in chunks:
        upsampled = _resize(logits[:, part], size)
        # Out of place: with `size` already the logits' size, _resize returns the logits themselves.
        yield (upsampled - log_norm).exp_() if log_norm is not None else _activate(upsampled, activation)


def _assemble(chunks: list[slice], parts: Iterable[Tensor]) -> Tensor:
    """Write each class chunk's (N, c, H, W) scores into one (N, T, H, W) output; one chunk is returned as is."""
    output: Tensor | None = None
    for part, scores in zip(chunks, parts):
        if len(chunks) == 1:
            return scores
        if output is None:
            output = scores.new_empty((scores.shape[0], chunks[-1].stop, *scores.shape[2:]))
        output[:, part] = scores
    assert output is not None
    return output


class LogitsShapeError(RuntimeError):
    """A forward returned logits that are not (N,T,h,w): a bug in the method's adapter, which
    evaluation reports as one line naming the method (`ovbench check-adapter` names the row)."""


def _call_forward(forward: Forward, views: Tensor, what: str) -> Tensor:
    logits = forward(views)
    if not isinstance(logits, Tensor) or logits.ndim != 4 or logits.shape[0] != views.shape[0]:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise LogitsShapeError(
            f"forward on {views.shape[0]} {what} must return (N,T,h,w) logits with N={views.shape[0]}, got {got}"
        )
    # Scores are averaged and blended; do that in float32 even if the model ran in half precision.
    return logits.float()


def _activate(logits: Tensor, activation: str) -> Tensor:
    if activation == "sigmoid":
        return logits.sigmoid()
    if activation == "softmax":
        return logits.softmax(dim=1)
    return logits

