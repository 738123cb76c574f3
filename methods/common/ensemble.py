"""Combining a mask's in-vocabulary and CLIP class probabilities.

OV-Seg and SCAN score each proposal twice: the proposal network's own classifier (the
"in-vocabulary" branch, trained on the training classes) and CLIP on the masked crop. The
two are mixed geometrically, p = p_in^(1 - lambda) * p_clip^lambda, with p_clip = 1 for a
mask that had no crop, and the result is not renormalised
(docs/methods/mask-proposal-core.md#geometric-ensemble). SCAN then optionally suppresses the
"no object" mass on some vocabularies (docs/methods/mask-proposal-core.md#void-suppression).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ovbench_methods.common.errors import MethodConfigError

__all__ = [
    "clip_branch_probs",
    "ensemble_class_probs",
    "geometric_ensemble",
    "in_vocab_probs",
    "scatter_valid_rows",
    "suppress_void",
]


def in_vocab_probs(class_logits: Tensor) -> Tensor:
    """The proposal classifier's probabilities (..., K) from its K+1 logits: softmax over
    all K+1, then the "no object" column (last) dropped."""
    _check_logits(class_logits)
    return class_logits.softmax(dim=-1)[..., :-1]


def clip_branch_probs(clip_logits: Tensor) -> Tensor:
    """CLIP's probabilities (..., K) from its K+1 crop logits: the "no object" column (last)
    dropped first, then softmax over the K classes, the reverse of `in_vocab_probs`."""
    _check_logits(clip_logits)
    return clip_logits[..., :-1].softmax(dim=-1)


def scatter_valid_rows(valid_rows: Tensor, valid: Tensor, fill: float = 1.0) -> Tensor:
    """Rows (V,K) of the valid masks put back at their places among all masks (..., Q, K);
    `valid` (..., Q) bool with V True entries; other rows are `fill`."""
    if valid.dtype != torch.bool:
        raise MethodConfigError(f"valid must be a bool tensor, got {valid.dtype}")
    count = int(valid.sum())
    if valid_rows.dim() != 2 or valid_rows.shape[0] != count:
        raise MethodConfigError(
            f"need one row per valid mask ({count}, K), got {tuple(valid_rows.shape)}"
        )
    full = valid_rows.new_full((*valid.shape, valid_rows.shape[-1]), fill)
    full[valid] = valid_rows
    return full


def geometric_ensemble(in_vocab: Tensor, clip_valid: Tensor, valid: Tensor, weight: float) -> Tensor:
    """p_in^(1 - weight) * p_clip^weight for all masks (..., Q, K).

    in_vocab (..., Q, K) probabilities; clip_valid (V, K) CLIP probabilities of the V valid
    masks in mask order; valid (..., Q) bool. Invalid masks take p_clip = 1, so their row is
    p_in^(1 - weight). Weight 0 gives p_in itself, weight 1 CLIP's probabilities on the valid
    masks (and all ones on the invalid ones). Not renormalised.
    """
    _check_weight(weight)
    if in_vocab.shape[:-1] != valid.shape:
        raise MethodConfigError(
            f"in-vocabulary probabilities {tuple(in_vocab.shape)} and valid flags {tuple(valid.shape)} disagree"
        )
    if clip_valid.dim() != 2 or clip_valid.shape[-1] != in_vocab.shape[-1]:
        raise MethodConfigError(
            f"CLIP probabilities must be (V,{in_vocab.shape[-1]}), got {tuple(clip_valid.shape)}"
        )
    clip_full = scatter_valid_rows(clip_valid.to(in_vocab.dtype), valid, fill=1.0)
    return in_vocab.pow(1.0 - weight) * clip_full.pow(weight)


def ensemble_class_probs(
    in_vocab: Tensor,
    clip_valid: Tensor,
    valid: Tensor,
    weight: float,
    *,
    zero_weight_clip_only: bool = True,
) -> tuple[Tensor, Tensor]:
    """OV-Seg's and SCAN's choice of class probabilities -> (probabilities, kept masks).

    A positive weight gives the geometric ensemble of every mask, all kept. The official code
    reads a weight of exactly 0 as "CLIP alone" rather than as "in-vocabulary alone": the
    probabilities are CLIP's, for the valid masks only, and `kept` (..., Q) bool selects
    those masks (OV-Seg's demo runs this way). `zero_weight_clip_only` False reads 0 as the
    formula does, p_in for every mask.
    """
    _check_weight(weight)
    if weight == 0 and zero_weight_clip_only:
        if clip_valid.dim() != 2 or clip_valid.shape[0] != int(valid.sum()):
            raise MethodConfigError(
                f"need one CLIP row per valid mask ({int(valid.sum())}, K), got {tuple(clip_valid.shape)}"
            )
        return clip_valid.to(in_vocab.dtype), valid.clone()
    return geometric_ensemble(in_vocab, clip_valid, valid, weight), torch.ones_like(valid)


def suppress_void(class_probs: Tensor, class_logits: Tensor, eps: float = 1e-8) -> Tensor:
    """SCAN's "no object" suppression of ensembled probabilities (..., K) -> (..., K).

    The probabilities are renormalised as a distribution (softmax of their log), scaled by
    1 - p_void with p_void the in-vocabulary classifier's "no object" probability (last
    column of the softmax of `class_logits` (..., K+1)), p_void appended, and the K+1 values
    passed through log(. + eps) and a softmax; the "no object" column is dropped again.
    """
    _check_logits(class_logits)
    if class_logits.shape[:-1] != class_probs.shape[:-1] or class_logits.shape[-1] != class_probs.shape[-1] + 1:
        raise MethodConfigError(
            f"class logits must be (..., K+1) for probabilities (..., K), got {tuple(class_logits.shape)} "
            f"and {tuple(class_probs.shape)}"
        )
    void = class_logits.softmax(dim=-1)[..., -1:]
    rescaled = class_probs.log().softmax(dim=-1) * (1.0 - void)
    with_void = torch.cat([rescaled, void], dim=-1)
    return (with_void + eps).log().softmax(dim=-1)[..., :-1]


def _check_logits(logits: Tensor) -> None:
    if logits.dim() < 1 or logits.shape[-1] < 2:
        raise MethodConfigError(f"class logits must end in K+1 >= 2 columns, got {tuple(logits.shape)}")


def _check_weight(weight: float) -> None:
    if not 0.0 <= float(weight) <= 1.0:
        raise MethodConfigError(f"ensemble weight must be in [0, 1], got {weight}")
