"""Open-vocabulary classification of query embeddings against text embeddings.

The classifier of SAN, OV-Seg, SCAN and EBSeg is the vocabulary's prompt-ensembled text
embeddings plus one learned "no object" row; a query's logits are its scaled cosine with
every row (docs/methods/mask-classification.md#open-vocabulary-classifier).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.errors import MethodConfigError

__all__ = [
    "BackgroundEmbedding",
    "BackgroundNormalization",
    "cosine_class_logits",
    "ensemble_template_embeddings",
]

#: "all": the rows are stacked, then every row is L2-normalised (SAN, EBSeg);
#: "background": only the learned row is normalised before it is appended (OV-Seg, SCAN).
BackgroundNormalization = Literal["all", "background"]


def ensemble_template_embeddings(per_template: Tensor) -> Tensor:
    """Class embeddings (T,D) from per-template text embeddings (T,P,D): each template's
    embedding L2-normalised, averaged over the P templates, L2-normalised again
    (docs/methods/mask-classification.md#template-ensemble)."""
    if per_template.dim() != 3:
        raise MethodConfigError(f"per-template embeddings must be (T,P,D), got {tuple(per_template.shape)}")
    return F.normalize(F.normalize(per_template, dim=-1).mean(dim=1), dim=-1)


class BackgroundEmbedding(nn.Module):
    """The learned "no object" text embedding, appended as the last classifier row.

    `embedding` is a (1, dim) parameter, the shape of SAN/EBSeg's `bg_embed` and of
    OV-Seg/SCAN's `non_object_embedding`, so an official tensor loads unchanged under this
    module's key. It starts N(0, init_std^2); `init_std` None means dim^-0.5 (SAN, EBSeg);
    OV-Seg and SCAN pass the text transformer's width^-0.5
    (docs/methods/mask-classification.md#background-embedding).
    """

    def __init__(self, dim: int, init_std: float | None = None, normalization: BackgroundNormalization = "all") -> None:
        super().__init__()
        if dim < 1:
            raise MethodConfigError(f"background embedding dim must be positive, got {dim}")
        if normalization not in get_args(BackgroundNormalization):
            raise MethodConfigError(
                f"background normalization must be one of {list(get_args(BackgroundNormalization))}, got {normalization!r}"
            )
        std = dim**-0.5 if init_std is None else float(init_std)
        if std <= 0:
            raise MethodConfigError(f"background init_std must be positive, got {std}")
        self.init_std = std
        self.normalization: BackgroundNormalization = normalization
        self.embedding = nn.Parameter(torch.empty(1, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding, std=self.init_std)

    def forward(self, class_embeddings: Tensor) -> Tensor:
        """The classifier (T+1, D): the T class embeddings (normally unit already) with the
        learned row appended, normalised by the official rule of `normalization`."""
        if class_embeddings.dim() != 2 or class_embeddings.shape[-1] != self.embedding.shape[-1]:
            raise MethodConfigError(
                f"class embeddings must be (T,{self.embedding.shape[-1]}), got {tuple(class_embeddings.shape)}"
            )
        background = self.embedding.to(class_embeddings.dtype)
        if self.normalization == "background":
            return torch.cat([class_embeddings, F.normalize(background, dim=-1)], dim=0)
        return F.normalize(torch.cat([class_embeddings, background], dim=0), dim=-1)


def cosine_class_logits(
    query_embeddings: Tensor, class_weights: Tensor, scale: float | Tensor, normalize_queries: bool = True
) -> Tensor:
    """Logits (B,Q,T+1) = scale x <query (B,Q,D), class row (T+1,D)>, the queries first
    L2-normalised when `normalize_queries` (all four methods do). `scale` is a float (OV-Seg,
    SCAN: 100) or a tensor such as CLIP's ``logit_scale.exp()`` (SAN, EBSeg)."""
    if query_embeddings.dim() != 3 or class_weights.dim() != 2 or query_embeddings.shape[-1] != class_weights.shape[-1]:
        raise MethodConfigError(
            f"need query embeddings (B,Q,D) and class weights (T+1,D), got "
            f"{tuple(query_embeddings.shape)} and {tuple(class_weights.shape)}"
        )
    queries = F.normalize(query_embeddings, dim=-1) if normalize_queries else query_embeddings
    return torch.einsum("bqd,td->bqt", queries, class_weights.to(queries.dtype)) * scale
