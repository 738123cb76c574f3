"""Mask pooling: one feature vector per mask, the mean of a dense map over the mask.

EBSeg classifies each query a second way by pooling a dense map with the query's own mask:
its decoder pools the mask features with the binarised mask logits of the same resolution,
and at inference it pools CLIP's dense map with the final masks resized bilinearly to that
map (docs/methods/mask-proposal-core.md#mask-pooling). Both divide the masked sum by the
mask's pixel count plus 1e-8, so an empty mask pools to the zero vector.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch.nn.functional as F
from torch import Tensor

from ovbench_methods.common.errors import MethodConfigError

__all__ = ["MaskBinarization", "MASK_POOLING_EPS", "mask_pool"]

#: Added to the mask area before dividing, as the official code does.
MASK_POOLING_EPS = 1e-8

#: How masks become pooling weights:
#: - "logit": logit > 0 (EBSeg's decoder-side pooling);
#: - "sigmoid": sigmoid(logit) > 0.5 (EBSeg's inference-side pooling; equal to "logit" except
#:   for tiny positive logits whose sigmoid rounds to 0.5);
#: - "probability": the masks are probabilities, thresholded at `threshold`;
#: - "soft": the masks are used as given, as non-negative weights.
MaskBinarization = Literal["logit", "sigmoid", "probability", "soft"]


def mask_pool(
    features: Tensor,
    masks: Tensor,
    *,
    binarize: MaskBinarization = "logit",
    threshold: float = 0.5,
    resize_masks: bool = False,
    eps: float = MASK_POOLING_EPS,
) -> Tensor:
    """Pool features (B,C,h,w) with masks (B,Q,H,W) -> (B,Q,C): sum(w * f) / (sum(w) + eps).

    With `resize_masks` the masks are first resized to (h, w) bilinearly (align_corners
    False), before binarisation, as EBSeg resizes its mask logits to CLIP's grid; otherwise
    (H, W) must equal (h, w). Binarised masks carry no gradient; the features do.
    """
    if features.dim() != 4 or masks.dim() != 4 or features.shape[0] != masks.shape[0]:
        raise MethodConfigError(
            f"mask_pool needs features (B,C,h,w) and masks (B,Q,H,W), got {tuple(features.shape)} and {tuple(masks.shape)}"
        )
    if binarize not in get_args(MaskBinarization):
        raise MethodConfigError(f"mask binarization must be one of {list(get_args(MaskBinarization))}, got {binarize!r}")
    if masks.shape[-2:] != features.shape[-2:]:
        if not resize_masks:
            raise MethodConfigError(
                f"masks {tuple(masks.shape[-2:])} and features {tuple(features.shape[-2:])} differ in size; "
                "pass resize_masks=True to resize the masks"
            )
        floating = masks if masks.is_floating_point() else masks.float()
        masks = F.interpolate(floating, size=features.shape[-2:], mode="bilinear", align_corners=False)
    if binarize == "logit":
        weights = (masks.detach() > 0).to(features.dtype)
    elif binarize == "sigmoid":
        weights = (masks.detach().sigmoid() > 0.5).to(features.dtype)
    elif binarize == "probability":
        weights = (masks.detach() > threshold).to(features.dtype)
    else:
        weights = masks.to(features.dtype)
    area = weights.sum(dim=(-2, -1), keepdim=True)
    # (B,Q,hw) @ (B,hw,C): the weighted sum over pixels for every mask at once.
    return (weights / (area + eps)).flatten(2) @ features.flatten(2).transpose(1, 2)
