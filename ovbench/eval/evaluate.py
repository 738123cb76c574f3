"""Evaluate a segmenter on datasets: batched prediction, the confusion matrix, records."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from ovbench.data.base import SegmentationDataset
from ovbench.errors import OvbenchError
from ovbench.eval.inference import LogitsShapeError
from ovbench.eval.metrics import ConfusionMatrix, SegmentationMetrics
from ovbench.progress import ProgressReporter
from ovbench.results.per_image import PerImageCounts


#: The most float elements of predicted scores (B, T, H, W) asked for in one predict call.
#: A batch whose scores would exceed it is predicted a few images at a time (at least one):
#: with a large vocabulary the scores, not the images, are what fills memory (8 images of
#: 512x512 with 2000 classes would be 16.8 GB of scores for one argmax). 2**28 = 1 GiB.
MAX_SCORE_ELEMENTS = 1 << 28


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise OvbenchError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise OvbenchError(f"device {device} requested but CUDA is not available on this machine")
    return resolved


def iter_batches(dataset: SegmentationDataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """(images (B,3,H,W) float 0..255, masks (B,H,W) int64, the B sample names); a batch only
    holds images of one size, so datasets with mixed sizes are batched as far as their order
    allows."""
    if batch_size < 1:
        raise OvbenchError(f"batch size must be at least 1, got {batch_size}")
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    names: list[str] = []

    def flush():
        batch_images = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
        batch_masks = torch.from_numpy(np.stack(masks))
        batch_names = list(names)
        images.clear()
        masks.clear()
        names.clear()
        return batch_images, batch_masks, batch_names

    for index in range(len(dataset)):
        sample = dataset[index]
        if images and (sample["image"].shape != images[0].shape or len(images) == batch_size):
            yield flush()
        images.append(sample["image"])
        masks.append(sample["mask"])
        names.append(str(sample.get("name", index)))
    if images:
        yield flush()


@dataclass
class DatasetResult:
    dataset: str
    metrics: SegmentationMetrics
    num_images: int
    wall_time_s: float
    #: each image's true/false positives and false negatives per class (for the bootstrap)
    per_image: PerImageCounts | None = None
    #: the method's inference settings for this set (`OpenVocabSegmenter.use_eval_set`)
    inference_settings: dict = field(default_factory=dict)


def evaluate_dataset(
    segmenter,
    dataset: SegmentationDataset,
    *,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    progress: ProgressReporter | None = None,
) -> DatasetResult:
    """Predict every image with the dataset's own vocabulary and score it."""
    start = time.perf_counter()
    vocabulary = dataset.vocabulary
    confusion = ConfusionMatrix(len(dataset.class_names), dataset.ignore_index, device=device)
    segmenter.eval()
    use_eval_set = getattr(segmenter, "use_eval_set", None)
    settings = dict(use_eval_set(dataset.name, vocabulary) or {}) if callable(use_eval_set) else {}
    task = progress.add_task(f"eval {dataset.name}", total=len(dataset), unit="img") if progress else None
    done = 0
    image_names: list[str] = []
    image_counts: list[np.ndarray] = []
    for batch_images, batch_masks, batch_names in iter_batches(dataset, batch_size):
        image_names += batch_names
        per_image = len(vocabulary) * batch_images.shape[2] * batch_images.shape[3]
        step = max(1, MAX_SCORE_ELEMENTS // per_image)
        for first in range(0, batch_images.shape[0], step):
            images = batch_images[first : first + step].to(device)
            expected = (images.shape[0], len(vocabulary), images.shape[2], images.shape[3])
            # a wrong shape is a bug in the method's adapter: one line naming it, not a traceback
            name = getattr(segmenter, "display_name", None) or type(segmenter).__name__
            try:
                scores = segmenter.predict(images, vocabulary)
            except LogitsShapeError as exc:
                raise OvbenchError(f"{name}: {exc} (predict must return (B,T,H,W) = {expected})") from None
            if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != expected:
                got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
                raise OvbenchError(f"{name}: predict returned scores of shape {got}, expected (B,T,H,W) = {expected}")
            labels = scores.argmax(dim=1)
            del scores  # free the (B, T, H, W) stack before the next predict call allocates one
            image_counts.append(confusion.update(labels, batch_masks[first : first + step].to(device), per_image=True))
            done += images.shape[0]
        if progress:
            progress.advance(task, batch_images.shape[0])
    if progress:
        progress.finish(task)
    metrics = confusion.compute(dataset.class_names)
    per_image = PerImageCounts(
        eval_set=dataset.name, class_names=list(dataset.class_names), image_names=image_names,
        counts=np.concatenate(image_counts) if image_counts else np.zeros((0, 3, len(dataset.class_names)), np.int64),
    )
    return DatasetResult(dataset.name, metrics, done, time.perf_counter() - start, per_image, settings)
