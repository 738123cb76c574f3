"""EBSeg's SSC loss (docs/methods/ebseg.md#ssc-loss): the matched queries' A embeddings
should relate to each other as their classes' text embeddings do.

Per image, with the final prediction's matching: the Gram matrix of the matched queries' A
embeddings (as the decoder returns them: unit vectors times the learned scale, so the scale
enters squared, as in the official code) against the cosine matrix of the text embeddings of
their target classes; mean squared error, averaged over the batch. An image with no matched
query has an empty error whose mean is NaN; as in the official code, a NaN anywhere makes the
batch's SSC loss 0.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ovbench_methods.common.errors import MethodConfigError

__all__ = ["ssc_loss", "text_affinity"]


def text_affinity(class_embeddings: Tensor) -> Tensor:
    """(T, D) class embeddings -> (T, T) cosine matrix, without gradient."""
    unit = F.normalize(class_embeddings.detach(), dim=-1)
    return unit @ unit.T


def ssc_loss(
    embeddings: Tensor,
    indices: Sequence[tuple[Tensor, Tensor]],
    labels: Sequence[Tensor],
    affinity: Tensor,
) -> Tensor:
    """embeddings (B, Q, D); per image the matching (query indices, target indices) and the
    target class ids (G,); affinity (T, T) -> the batch's SSC loss (a scalar)."""
    if embeddings.dim() != 3 or len(indices) != embeddings.shape[0] or len(labels) != embeddings.shape[0]:
        raise MethodConfigError(
            f"SSC needs (B, Q, D) embeddings with one matching and one label set per image, got "
            f"{tuple(embeddings.shape)}, {len(indices)} matchings, {len(labels)} label sets"
        )
    per_image = []
    for image, (query_index, target_index) in enumerate(indices):
        matched = embeddings[image].index_select(0, query_index.to(embeddings.device))
        classes = labels[image].to(affinity.device)[target_index.to(affinity.device)]
        if classes.numel() and int(classes.max()) >= affinity.shape[0]:
            raise MethodConfigError(
                f"SSC target class {int(classes.max())} is outside the {affinity.shape[0]}-class text affinity"
            )
        if classes.numel() == 0:
            # The official nn.MSELoss of two empty matrices: NaN, which zeroes the batch below.
            per_image.append(embeddings.new_full((), float("nan")))
            continue
        target = affinity.index_select(0, classes).index_select(1, classes)
        per_image.append(F.mse_loss(matched @ matched.T, target.to(matched.dtype)))
    loss = torch.stack(per_image).sum() / embeddings.shape[0]
    if torch.isnan(loss):
        return embeddings.new_zeros(())
    return loss
