"""Adapters that each break one promise of the contract (tests/test_contract.py).

Each subclasses the tests' trainable method (tests/trainable_adapter.py) and changes one
thing, so that `ovbench check-adapter tests/tiny-trainable.yaml adapter=broken_adapters:NAME`
fails exactly one row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovbench.data.vocabulary import Vocabulary
from trainable_adapter import TinyTrainableSegmenter


class HalfResolutionSegmenter(TinyTrainableSegmenter):
    """Returns scores at half the input resolution (forgets the final resize)."""

    @torch.no_grad()
    def predict(self, images, vocabulary):
        scores = super().predict(images, vocabulary)
        return F.avg_pool2d(scores, 2)


class SortedVocabularySegmenter(TinyTrainableSegmenter):
    """Scores the classes in alphabetical order, whatever order the vocabulary gives."""

    def forward_logits(self, images, vocabulary):
        return super().forward_logits(images, Vocabulary(sorted(vocabulary, key=lambda c: c.name)))


class ForgottenParameterSegmenter(TinyTrainableSegmenter):
    """Adds a trainable per-class bias but builds its optimiser groups before adding it."""

    def __init__(self, config, inference=None):
        super().__init__(config, inference)
        self.score_bias = nn.Parameter(torch.zeros(()))

    def forward_logits(self, images, vocabulary):
        return super().forward_logits(images, vocabulary) + self.score_bias

    def param_groups(self, base_lr, weight_decay):
        params = [p for name, p in self.named_parameters() if p.requires_grad and name != "score_bias"]
        return [{"params": params, "lr": base_lr, "weight_decay": weight_decay}]


# In-process only (tests/test_contract.py): the rows the executable tests above do not reach.


class DeadParameterSegmenter(TinyTrainableSegmenter):
    """Trains a head it never uses: the optimiser holds a parameter no gradient reaches."""

    def __init__(self, config, inference=None):
        super().__init__(config, inference)
        self.unused_head = nn.Linear(config.embed_dim, 1)


class FrozenInGroupsSegmenter(TinyTrainableSegmenter):
    """Freezes its text projection but still hands it to the optimiser."""

    def __init__(self, config, inference=None):
        super().__init__(config, inference)
        self.text_projection.requires_grad_(False)

    def param_groups(self, base_lr, weight_decay):
        return [{"params": list(self.parameters()), "lr": base_lr, "weight_decay": weight_decay}]


class BatchNormalisedSegmenter(TinyTrainableSegmenter):
    """Standardises the logits over the whole batch: an image's scores depend on its neighbours."""

    def forward_logits(self, images, vocabulary):
        logits = super().forward_logits(images, vocabulary)
        return (logits - logits.mean()) / (logits.std() + 1e-6) if not self.training else logits
