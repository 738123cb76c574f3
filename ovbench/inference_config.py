"""The inference section of a method's YAML as a plain dataclass.

Kept free of torch (and outside `ovbench.eval`) so that reading and listing configs does
not load the evaluation code; `ovbench.eval.inference` re-exports it and turns it into an
inference mode (`build_inference`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["InferenceConfig"]


@dataclass
class InferenceConfig:
    """The inference section of a method's YAML.

    Fields that a mode does not use are ignored by it (a whole-image config may keep the
    sliding-window defaults). `size` may be None: the whole-image mode then runs at the
    (short-side resized) input size, and the sliding window tiles that size directly.
    """

    #: "whole" | "sliding" | "masks" (mask-classification methods: per-query classes and masks).
    mode: str = "whole"
    #: whole: the (h, w) the image is stretched to; sliding: the stretch before tiling.
    size: list[int] | None = field(default_factory=lambda: [640, 640])
    #: sliding: side of the square tiles.
    window: int = 384
    #: sliding: step between tile origins; int(384 * 0.667) = 256 in CAT-Seg/GSNet.
    stride: int = 256
    #: sliding: side of the extra whole-image view; None leaves it out.
    global_view: int | None = 384
    #: sliding: weight of the global view in (1 - w) * tiles + w * global.
    global_weight: float = 0.5
    #: "none" | "sigmoid" | "softmax", applied to each view's upsampled logits.
    activation: str = "none"
    #: detectron2 test mapper: resize the short side to this before anything else.
    short_side: int | None = None
    #: cap on the long side for the short-side resize (ignored without short_side).
    max_size: int | None = None
    #: whole: upsample the logits to `size` before the activation (CAT-Seg's whole-image path);
    #: False activates at the model's output resolution and resizes the scores straight to
    #: H x W (SED's official inference).
    upsample_logits: bool = True

    @classmethod
    def catseg_sliding(cls) -> InferenceConfig:
        """The official CAT-Seg / GSNet evaluation (eval.sh; docs/datasets.md#sliding-window-protocol)."""
        return cls(
            mode="sliding",
            size=[640, 640],
            window=384,
            stride=256,
            global_view=384,
            global_weight=0.5,
            activation="sigmoid",
            short_side=640,
            max_size=2560,
        )
