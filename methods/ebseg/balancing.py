"""EBSeg's inference-time balancing of its three class embeddings and the void step
(docs/methods/ebseg.md#adab-balancing).

Per query, A (the decoder's embedding), B (CLIP's recognition head) and D (CLIP's surgery map
pooled under the final mask) each give class probabilities over the T classes, the no-object
column left out. Their weighted geometric mean is taken with exponents that depend on whether
the class was named in training ("seen"); unseen classes lean on CLIP (at the published
exponents A's own exponent is 0 for them). The result goes through log and softmax, is scaled
by 1 - p_void, where p_void is A's no-object probability, and p_void is appended again. The
official code returns log(that + 1e-8), which its semantic step softmaxes once more; so does
this module.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ovbench_methods.common.errors import MethodConfigError

__all__ = ["BALANCE_EPS", "balanced_class_logits"]

#: Added before each log, as the official code does.
BALANCE_EPS = 1e-8


def balanced_class_logits(
    logits_a: Tensor,
    logits_b: Tensor,
    logits_d: Tensor,
    seen: Tensor,
    alpha: float,
    beta: float,
    gamma: float,
) -> Tensor:
    """(N, Q, T+1) logits of A, B and D (the last column is no-object) and a (T,) seen flag
    -> (N, Q, T+1) balanced log-probabilities with the void step applied."""
    if not (logits_a.shape == logits_b.shape == logits_d.shape) or logits_a.dim() != 3:
        raise MethodConfigError(
            f"A, B and D logits must share one (N, Q, T+1) shape, got {tuple(logits_a.shape)}, "
            f"{tuple(logits_b.shape)}, {tuple(logits_d.shape)}"
        )
    num_classes = logits_a.shape[-1] - 1
    if seen.shape != (num_classes,):
        raise MethodConfigError(f"the seen flags must be ({num_classes},), got {tuple(seen.shape)}")
    prob_a = logits_a[..., :-1].softmax(-1)
    prob_b = logits_b[..., :-1].softmax(-1)
    prob_d = logits_d[..., :-1].softmax(-1)
    seen = seen.to(prob_a.dtype)
    seen_part = torch.log(BALANCE_EPS + prob_a ** (1 - alpha - gamma) * prob_d**alpha * prob_b**gamma) * seen
    unseen_part = torch.log(BALANCE_EPS + prob_a ** (1 - beta - gamma) * prob_d**beta * prob_b**gamma) * (1 - seen)
    void = logits_a.softmax(-1)[..., -1:]
    balanced = torch.cat([(seen_part + unseen_part).softmax(-1) * (1 - void), void], dim=-1)
    return torch.log(balanced + BALANCE_EPS)
