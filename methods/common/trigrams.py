"""A fixed, weight-free embedding of text: unit-length counts of hashed character trigrams.

Not part of any published method: the small trainable methods (the adding-a-method example,
the tests' engine method) use it to give every class name, seen or unseen, a vector without a
text encoder. Names sharing trigrams get similar vectors.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["trigram_bag"]


@lru_cache(maxsize=4096)
def trigram_bag(text: str, bins: int = 256) -> Tensor:
    """Unit-length counts of the hashed character trigrams of "  text  " (lower case), `bins`
    long. Cached: callers must not modify the returned tensor."""
    bag = torch.zeros(bins)
    padded = f"  {text.lower()}  "
    for i in range(len(padded) - 2):
        digest = hashlib.blake2s(padded[i : i + 3].encode(), digest_size=4).digest()
        bag[int.from_bytes(digest, "little") % bins] += 1.0
    return bag / bag.norm()
