"""The training data stream: a deterministic function of (seed, global sample position).

Position p is sample p of an endless sequence of epochs; epoch e visits the dataset in a
permutation seeded by (seed, e), and the augmentation of position p draws from a generator
seeded by (seed, p). So what an iteration sees depends neither on the number of data-loader
workers nor on the number of processes, and resuming at iteration k needs nothing but k.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ovbench.data.base import SegmentationDataset
from ovbench.errors import ConfigError, DataError
from ovbench.interface import IGNORE_INDEX

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]

_PERMUTATION_STREAM = 0
_AUGMENT_STREAM = 1


class TrainSamples(Dataset):
    def __init__(self, dataset: SegmentationDataset, transform: Transform | None, seed: int):
        if len(dataset) == 0:
            raise DataError(f"training set {dataset.name} is empty")
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self._epoch = -1
        self._order: np.ndarray | None = None

    def index_of(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.dataset))
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, _PERMUTATION_STREAM, epoch]).permutation(len(self.dataset))
            self._epoch = epoch
        return int(self._order[offset])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.dataset[self.index_of(position)]
        image, mask = sample["image"], sample["mask"]
        if self.transform is not None:
            image, mask = self.transform(image, mask, np.random.default_rng([self.seed, _AUGMENT_STREAM, position]))
        # one ignore value for every adapter, whatever the dataset's own (label padding included)
        mask = np.where(mask == self.dataset.ignore_index, IGNORE_INDEX, mask)
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), torch.from_numpy(np.ascontiguousarray(mask))


class PositionBatches(Sampler[list[int]]):
    """This process's micro-batches, iteration by iteration, from `start_iteration` on.

    Iteration i covers global positions [i*B, (i+1)*B); micro-step m of rank r takes the
    slice starting at i*B + (m*world + r)*micro.
    """

    def __init__(self, start_iteration: int, iterations: int, global_batch: int, grad_accum: int, rank: int, world_size: int):
        per_step = world_size * grad_accum
        if global_batch % per_step:
            raise ConfigError(
                f"train.batch_size {global_batch} is not divisible by processes x grad_accum = {world_size} x {grad_accum}"
            )
        self.micro = global_batch // per_step
        self.start, self.iterations = start_iteration, iterations
        self.global_batch, self.grad_accum, self.rank, self.world = global_batch, grad_accum, rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        for iteration in range(self.start, self.iterations):
            base = iteration * self.global_batch
            for micro_step in range(self.grad_accum):
                first = base + (micro_step * self.world + self.rank) * self.micro
                yield list(range(first, first + self.micro))

    def __len__(self) -> int:
        return (self.iterations - self.start) * self.grad_accum


def _collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    shapes = {tuple(image.shape) for image, _ in batch}
    if len(shapes) > 1:
        raise DataError(f"training images of different sizes in one batch {sorted(shapes)}: enable cropping (train.transform.crop_size)")
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; python and numpy follow it so
    # any stray global randomness in a dataset is reproducible too.
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_train_loader(samples: TrainSamples, batches: PositionBatches, num_workers: int, seed: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        samples,
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=_seed_worker,
        # a private generator: creating the loader must not consume the global torch RNG,
        # whose state the checkpoint restores for the model
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
        persistent_workers=False,
    )
