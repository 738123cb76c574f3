"""Datasets stored as a folder of images and a folder of single-channel label maps,
paired by file stem (the layout of every benchmark evaluation set)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ovbench.data.base import Sample
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import ConfigError, DataError


@dataclass
class FolderDatasetSpec:
    """Where a folder dataset lives relative to the data root, and how to read its labels."""

    name: str
    image_dir: str
    mask_dir: str
    vocabulary: list[Any]
    ignore_index: int
    image_suffix: str = ".png"
    mask_suffix: str = ".png"
    #: evaluator classes when they extend the queried vocabulary (Potsdam clutter, FLAIR other)
    class_names: list[str] | None = None
    kind: str = "folder"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind != "folder":
            raise ConfigError(f"dataset {self.name}: kind must be 'folder', got {self.kind!r}")


def read_rgb(path: Path) -> np.ndarray:
    """An RGB image as uint8 (H,W,3); one clear error for missing, corrupt or truncated files."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not halfway through a batch
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None


def read_label_map(path: Path) -> np.ndarray:
    """A single-channel label map as int64 (H,W)."""
    try:
        with Image.open(path) as img:
            img.load()
            array = np.asarray(img)
    except FileNotFoundError:
        raise DataError(f"{path}: mask file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode mask ({exc})") from None
    if array.ndim != 2:
        raise DataError(f"{path}: mask must be single-channel, got shape {array.shape}")
    return array.astype(np.int64)


class FolderDataset:
    """Images and masks paired by stem; files are listed at construction, decoded on access."""

    def __init__(self, spec: FolderDatasetSpec, data_root: str | Path):
        self.spec = spec
        self.name = spec.name
        self.vocabulary = Vocabulary(spec.vocabulary)
        self.class_names = list(spec.class_names) if spec.class_names else self.vocabulary.names
        if len(self.class_names) < len(self.vocabulary):
            raise ConfigError(
                f"dataset {spec.name}: class_names has {len(self.class_names)} entries, fewer than "
                f"the {len(self.vocabulary)} vocabulary classes"
            )
        self.ignore_index = spec.ignore_index
        root = Path(data_root)
        self.image_dir = root / spec.image_dir
        self.mask_dir = root / spec.mask_dir
        for folder, what in ((self.image_dir, "image"), (self.mask_dir, "mask")):
            if not folder.is_dir():
                raise DataError(f"dataset {spec.name}: {what} folder not found: {folder}")
        images = self._stems(self.image_dir, spec.image_suffix)
        masks = self._stems(self.mask_dir, spec.mask_suffix)
        # Like detectron2's load_sem_seg, the pairs are the stems present in both folders.
        self.stems = sorted(images.keys() & masks.keys())
        if not self.stems:
            raise DataError(
                f"dataset {spec.name}: no image/mask pairs ({len(images)} '*{spec.image_suffix}' in "
                f"{self.image_dir}, {len(masks)} '*{spec.mask_suffix}' in {self.mask_dir})"
            )
        self.unpaired_images = sorted(images.keys() - masks.keys())
        self.unpaired_masks = sorted(masks.keys() - images.keys())

    @staticmethod
    def _stems(folder: Path, suffix: str) -> dict[str, str]:
        # os.scandir avoids a stat per file: listing 50K files stays well under a second
        with os.scandir(folder) as entries:
            return {e.name[: -len(suffix)]: e.name for e in entries if e.name.endswith(suffix)}

    def __len__(self) -> int:
        return len(self.stems)

    def image_path(self, index: int) -> Path:
        return self.image_dir / f"{self.stems[index]}{self.spec.image_suffix}"

    def mask_path(self, index: int) -> Path:
        return self.mask_dir / f"{self.stems[index]}{self.spec.mask_suffix}"

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self.stems):
            raise IndexError(index)
        image_path, mask_path = self.image_path(index), self.mask_path(index)
        image = read_rgb(image_path)
        mask = read_label_map(mask_path)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path.name} "
                f"is {image.shape[1]}x{image.shape[0]}"
            )
        return {"image": image, "mask": mask, "name": self.stems[index]}
