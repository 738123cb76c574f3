"""Datasets stored as a folder of images and a folder of single-channel label maps,
paired by file stem (the layout of LandDiscover50K and of every benchmark evaluation set).

Files are listed once, at construction (names only: no stat, no decoding), and decoded on
access, so a 50K-image training set costs a list of 50K short strings in memory.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ovbench.data.base import Sample
from ovbench.data.raster import TIFF_SUFFIXES, RasterImage, RasterSettings, open_raster, read_raster_rgb
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import ConfigError, DataError
from ovbench.fileio import atomic_write_text

#: how a named vocabulary's documented aliases are used (see configs/vocab/landdiscover.yaml)
VOCABULARY_ALIAS_MODES = ("off", "synonyms", "replace")

_EXIF_ORIENTATION = 0x0112


@dataclass
class FolderLayout:
    """One place a dataset may live: its image and mask folders, relative to the data root."""

    image_dir: str
    mask_dir: str


@dataclass
class FolderDatasetSpec:
    """Where a folder dataset lives relative to the data root, and how to read its labels."""

    name: str
    image_dir: str = ""
    mask_dir: str = ""
    #: the text queries in class-id order, or the name of a file in configs/vocab/
    vocabulary: list[Any] | str | None = None
    #: the mask value left out of the metric (and of the loss)
    ignore_index: int | None = None
    image_suffix: str = ".png"
    #: one suffix, or alternatives tried in order (the first that pairs any file wins)
    mask_suffix: str | list[str] = ".png"
    #: evaluator classes when they extend the queried vocabulary (Potsdam clutter, FLAIR other);
    #: by default the named vocabulary's `evaluator_classes`, else the vocabulary itself
    class_names: list[str] | None = None
    #: alternative (image_dir, mask_dir) pairs when the data is published in several layouts;
    #: the first whose two folders exist wins
    layouts: list[FolderLayout] = field(default_factory=list)
    #: the mask folder is shared with a larger set and the image folder selects the samples
    #: (LandDiscover subsets, per-source sets): masks without an image are not a problem
    masks_superset: bool = False
    #: off | synonyms | replace: whether the named vocabulary's documented aliases are used
    vocabulary_aliases: str = "off"
    #: the names the official code registers the set under (accepted as dataset names too)
    registered_names: list[str] = field(default_factory=list)
    #: where the data is published and how to unpack it
    published: str = ""
    #: raster images (docs/datasets.md#raster-images): the 1-based bands used as R, G, B
    #: (`[3, 2, 1]`), or one band shown as grey; unset: 8-bit RGB-like images only
    bands: list[int] | None = None
    #: how values become 0..255: none, {percentiles: [2, 98]} or {range: [0, 3000]} (one pair
    #: per band also accepted); required for 16-bit and float images
    scaling: str | dict[str, Any] | None = None
    #: the value of missing pixels, which become ignored pixels in the mask: unset = what the
    #: file declares (GeoTIFF nodata), a number (or nan) overrides it, none switches it off
    nodata: float | str | None = None
    kind: str = "folder"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"dataset {self.name}"
        if self.kind != "folder":
            raise ConfigError(f"{where}: kind must be 'folder', got {self.kind!r}")
        if self.vocabulary is None:
            raise ConfigError(f"{where}: vocabulary is required (class names, or a file name under configs/vocab/)")
        if self.ignore_index is None or isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int):
            raise ConfigError(f"{where}: ignore_index is required and must be an integer, got {self.ignore_index!r}")
        self.layouts = [
            layout if isinstance(layout, FolderLayout) else FolderLayout(**layout) for layout in self.layouts
        ]
        if self.layouts and (self.image_dir or self.mask_dir):
            raise ConfigError(f"{where}: give either image_dir/mask_dir or layouts, not both")
        if not self.layouts and not (self.image_dir and self.mask_dir):
            raise ConfigError(f"{where}: image_dir and mask_dir are required (or a list of layouts)")
        if not self.image_suffix or not all(self.mask_suffixes):
            raise ConfigError(f"{where}: file suffixes must not be empty")
        self.raster  # a malformed bands/scaling/nodata is the spec's fault, found at load time
        if self.vocabulary_aliases not in VOCABULARY_ALIAS_MODES:
            raise ConfigError(
                f"{where}: vocabulary_aliases must be one of {', '.join(VOCABULARY_ALIAS_MODES)}, "
                f"got {self.vocabulary_aliases!r}"
            )

    @property
    def raster(self) -> RasterSettings | None:
        """The raster reading settings, or None when the spec sets none of bands/scaling/nodata
        (then images are read as 8-bit RGB by `read_rgb`)."""
        if self.bands is None and self.scaling is None and self.nodata is None:
            return None
        return RasterSettings.from_values(self.bands, self.scaling, self.nodata, where=f"dataset {self.name}")

    @property
    def candidate_layouts(self) -> list[FolderLayout]:
        return list(self.layouts) or [FolderLayout(self.image_dir, self.mask_dir)]

    @property
    def mask_suffixes(self) -> list[str]:
        return [self.mask_suffix] if isinstance(self.mask_suffix, str) else list(self.mask_suffix)


def read_rgb(path: Path) -> np.ndarray:
    """An RGB image as uint8 (H,W,3); one clear error for missing, corrupt or truncated files.

    Like detectron2's `read_image` (which loaded the published numbers' inputs), an EXIF
    orientation tag is applied.
    """
    try:
        with Image.open(path) as img:
            unsupported = _unsupported_layout(img)
            if unsupported:
                raise DataError(_unsupported_message(path, unsupported))
            img.load()  # decode now: a truncated file fails here, not halfway through a batch
            if img.getexif().get(_EXIF_ORIENTATION, 1) in range(2, 9):
                img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        found = _raster_layout(path) if isinstance(exc, UnidentifiedImageError) else None
        if found:
            raise DataError(_unsupported_message(path, found)) from None
        raise DataError(f"{path}: cannot decode image ({exc})") from None


def _unsupported_message(path: Path, found: str) -> str:
    return (
        f"{path}: unsupported image ({found}); ovbench reads 8-bit RGB, RGBA, grayscale or palette "
        "images: convert it to 8-bit RGB first, or map its bands in the dataset spec "
        "(bands: [3, 2, 1], scaling: {percentiles: [2, 98]}; docs/datasets.md#raster-images)"
    )


def _raster_layout(path: Path) -> str | None:
    """'4 bands of uint16' for a TIFF PIL cannot open (GDAL writes multi-band 16-bit TIFFs PIL
    does not identify) but the raster readers can; None for anything else."""
    if Path(path).suffix.lower() not in TIFF_SUFFIXES:
        return None
    try:
        with open_raster(path) as source:
            return f"{source.count} band{'s' if source.count != 1 else ''} of {source.dtype}"
    except (DataError, ConfigError):
        return None


_EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}
_TIFF_SAMPLES_PER_PIXEL, _TIFF_EXTRA_SAMPLES = 277, 338
_TIFF_ALPHA = (1, 2)  # ExtraSamples: associated / unassociated alpha


def _unsupported_layout(img: Image.Image) -> str | None:
    """What is found ("4 bands of uint16") when an image is not 8 bits per band RGB-like.

    PIL reduces 16-bit RGB PNG/TIFF to 8 bits by dropping the low byte and reads a 4-band
    multispectral TIFF as RGBA without a word; both give wrong pixels, so they are refused.
    The raw mode of the first tile (known before decoding) tells the stored bit depth.
    """
    rawmode = ""
    if img.tile:
        args = img.tile[0].args
        rawmode = args[0] if isinstance(args, tuple) and args and isinstance(args[0], str) else str(args or "")
    depth = re.search(r";(\d+)([A-Z]*)", rawmode)
    bits = int(depth.group(1)) if depth else 8
    bands = len(img.getbands())
    tags = getattr(img, "tag_v2", None)
    if tags is not None:
        bands = int(tags.get(_TIFF_SAMPLES_PER_PIXEL, bands))
    if img.mode not in _EIGHT_BIT_MODES or bits > 8:
        if img.mode == "F" or (depth and "F" in depth.group(2)):
            dtype = f"float{bits if bits > 8 else 32}"
        else:
            dtype = f"{'int' if depth and 'S' in depth.group(2) else 'uint'}{bits if bits > 8 else 32}"
        return f"{bands} band{'s' if bands != 1 else ''} of {dtype}"
    if tags is not None and bands > 3:
        extra = tags.get(_TIFF_EXTRA_SAMPLES, ())
        extra = extra if isinstance(extra, tuple) else (extra,)
        if bands > 4 or not extra or any(kind not in _TIFF_ALPHA for kind in extra):
            return f"{bands} bands of uint8, the ones after the third not alpha"
    return None


def read_label_map(path: Path) -> np.ndarray:
    """A single-channel label map as int64 (H,W); palette PNGs give their indices."""
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


def read_file_list(path: str | Path, strip_suffixes: Iterable[str] = ()) -> list[str]:
    """Stems from a text file, one per line; blank lines and `#` comments are skipped.

    A line may also name a file (`abc.png`): any of `strip_suffixes` is removed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"file list not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read file list ({exc})") from None
    suffixes = [s for s in strip_suffixes if s]
    stems: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stem = line.strip()
        if not stem or stem.startswith("#"):
            continue
        for suffix in suffixes:
            if stem.endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
                break
        if stem in first_line:
            raise DataError(f"{path}:{number}: stem {stem!r} repeats line {first_line[stem]}")
        first_line[stem] = number
        stems.append(stem)
    if not stems:
        raise DataError(f"{path}: file list names no samples")
    return stems


def _stems(names: Iterable[str], suffix: str) -> set[str]:
    cut = len(suffix)
    return {name[:-cut] for name in names if name.endswith(suffix) and len(name) > cut}


def _list_folder(folder: Path) -> list[str]:
    # names only: os.listdir does no stat per entry, so 50K files list in tens of milliseconds
    try:
        return os.listdir(folder)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None


def _draw(seed: int, stem: str) -> bytes:
    """A stem's rank in the seeded random order: a hash, so a subset depends only on (seed, stem),
    not on numpy's generator algorithms, and a smaller subset is part of any larger one."""
    return hashlib.blake2b(f"{seed}\0{stem}".encode(), digest_size=8).digest()


class FolderDataset:
    """Images and masks paired by stem; files are listed at construction, decoded on access.

    `stems` are the samples, sorted. `unpaired_images` / `unpaired_masks` are the stems that
    have only one of the two files (detectron2's `load_sem_seg` drops them too); for sets whose
    image folder selects from a shared mask folder (`masks_superset`), unpaired masks are
    expected and not listed.
    """

    def __init__(self, spec: FolderDatasetSpec, data_root: str | Path):
        self.spec = spec
        self.name = spec.name
        self.vocabulary, default_class_names = _resolve_vocabulary(spec)
        self.class_names = list(spec.class_names) if spec.class_names else default_class_names
        if len(self.class_names) < len(self.vocabulary):
            raise ConfigError(
                f"dataset {spec.name}: class_names has {len(self.class_names)} entries, fewer than "
                f"the {len(self.vocabulary)} vocabulary classes"
            )
        self.ignore_index: int = spec.ignore_index
        root = Path(data_root)
        if not root.is_dir():
            raise DataError(f"dataset {spec.name}: data root not found: {root}")
        self.data_root = root
        self.layout = self._find_layout(root)
        self.image_dir = root / self.layout.image_dir
        self.mask_dir = root / self.layout.mask_dir
        self.image_suffix = spec.image_suffix

        images = _stems(_list_folder(self.image_dir), spec.image_suffix)
        mask_names = _list_folder(self.mask_dir)
        self.mask_suffix = spec.mask_suffixes[0]
        masks = _stems(mask_names, self.mask_suffix)
        for suffix in spec.mask_suffixes[1:]:
            if images & masks:
                break
            self.mask_suffix, masks = suffix, _stems(mask_names, suffix)
        # Like detectron2's load_sem_seg, the pairs are the stems present in both folders.
        self.stems: list[str] = sorted(images & masks)
        if not self.stems:
            raise DataError(
                f"dataset {spec.name}: no image/mask pairs ({len(images)} '*{spec.image_suffix}' in "
                f"{self.image_dir}, {len(masks)} '*{self.mask_suffix}' in {self.mask_dir})"
            )
        self.unpaired_images: list[str] = sorted(images - masks)
        self.unpaired_masks: list[str] = [] if spec.masks_superset else sorted(masks - images)

    def _find_layout(self, root: Path) -> FolderLayout:
        candidates = self.spec.candidate_layouts
        if len(candidates) == 1:
            layout = candidates[0]
            for folder, what in ((layout.image_dir, "image"), (layout.mask_dir, "mask")):
                if not (root / folder).is_dir():
                    raise DataError(f"dataset {self.spec.name}: {what} folder not found: {root / folder}")
            return layout
        described = []
        for layout in candidates:
            image_dir, mask_dir = root / layout.image_dir, root / layout.mask_dir
            missing = [str(p) for p in (image_dir, mask_dir) if not p.is_dir()]
            if not missing:
                return layout
            described.append(f"{image_dir} + {mask_dir} (missing {' and '.join(missing) if len(missing) < 2 else 'both'})")
        raise DataError(
            f"dataset {self.spec.name}: none of its {len(candidates)} layouts found; expected "
            + " or ".join(described)
        )

    def __len__(self) -> int:
        return len(self.stems)

    def __repr__(self) -> str:
        return f"FolderDataset({self.name!r}, {len(self)} samples, images={self.image_dir}, masks={self.mask_dir})"

    def image_path(self, index: int) -> Path:
        return self.image_dir / f"{self.stems[index]}{self.image_suffix}"

    def mask_path(self, index: int) -> Path:
        return self.mask_dir / f"{self.stems[index]}{self.mask_suffix}"

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self.stems):
            raise IndexError(index)
        image_path, mask_path = self.image_path(index), self.mask_path(index)
        read = self.read_image(index)
        image = read.rgb
        mask = read_label_map(mask_path)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path.name} "
                f"is {image.shape[1]}x{image.shape[0]}"
            )
        if read.valid is not None:
            # nodata pixels have no image to judge: whatever the mask says there is not scored
            mask[~read.valid] = self.ignore_index
        self._check_values(mask, mask_path)
        return {"image": image, "mask": mask, "name": self.stems[index]}

    def read_image(self, index: int) -> RasterImage:
        """Sample `index`'s image with its valid-pixel mask and the reader that read it
        (`pillow` for 8-bit RGB specs; with bands/scaling/nodata set, `ovbench.data.raster`'s
        choice: rasterio for TIFF where installed, else tifffile; pillow for PNG/JPEG)."""
        path = self.image_path(index)
        raster = self.spec.raster
        if raster is None:
            return RasterImage(read_rgb(path), None, "pillow")
        return read_raster_rgb(path, raster, bands_hint="dataset spec bands: [3, 2, 1]",
                               scaling_hint="dataset spec scaling: {percentiles: [2, 98]} or {range: [0, 3000]}")

    def _check_values(self, mask: np.ndarray, path: Path) -> None:
        """Every value must be a class id or the ignore value (detectron2's evaluator and the
        losses fail or mis-count otherwise); min/max keep the common case to two passes."""
        classes = len(self.class_names)
        if mask.size == 0 or (int(mask.min()) >= 0 and int(mask.max()) < classes):
            return
        bad = mask[((mask < 0) | (mask >= classes)) & (mask != self.ignore_index)]
        if bad.size:
            values = np.unique(bad)
            shown = ", ".join(str(v) for v in values[:5]) + (", ..." if values.size > 5 else "")
            raise DataError(
                f"{path}: mask holds value(s) {shown} that are neither class ids 0..{classes - 1} "
                f"nor the ignore value {self.ignore_index}"
            )

    # ------------------------------------------------------------------ subsets and file lists

    def file_list(self) -> list[str]:
        """The stems of this dataset's samples, sorted (what `save_file_list` writes)."""
        return list(self.stems)

    def save_file_list(self, path: str | Path) -> Path:
        """Write the sample stems, one per line (atomically); `NAME:list=PATH` reads it back."""
        path = Path(path)
        atomic_write_text(path, "".join(f"{stem}\n" for stem in self.stems))
        return path

    def random_subset(self, size: int, seed: int = 0, name: str | None = None) -> "FolderDataset":
        """`size` samples drawn without replacement, reproducibly from (seed, stems).

        Each stem's rank is a hash of (seed, stem), so the draw does not depend on library
        versions or on the order files were listed, and for one seed a smaller subset is
        contained in a larger one.
        """
        for value, what, lowest in ((size, "size", 1), (seed, "seed", 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ConfigError(f"dataset {self.name}: subset {what} must be an integer >= {lowest}, got {value!r}")
        if size > len(self.stems):
            raise DataError(
                f"dataset {self.name}: a random subset of {size} asks for more than its {len(self.stems)} image/mask pairs"
            )
        chosen = sorted(self.stems, key=lambda stem: _draw(seed, stem))[:size]
        return self._with_stems(sorted(chosen), name or f"{self.name}:size={size},seed={seed}")

    def restrict(self, stems: Iterable[str], source: str = "the file list", name: str | None = None) -> "FolderDataset":
        """The samples named by `stems` (e.g. read from a file list); every one must be present."""
        wanted = list(stems)
        if not wanted:
            raise DataError(f"dataset {self.name}: {source} names no samples")
        seen: set[str] = set()
        for stem in wanted:
            if stem in seen:
                raise DataError(f"dataset {self.name}: {source} repeats stem {stem!r}")
            seen.add(stem)
        present = set(self.stems)
        missing = [stem for stem in wanted if stem not in present]
        if missing:
            raise DataError(
                f"dataset {self.name}: {len(missing)} of the {len(wanted)} stems in {source} have no image/mask "
                f"pair in {self.image_dir} + {self.mask_dir} (first: {', '.join(missing[:3])})"
            )
        return self._with_stems(sorted(wanted), name or self.name)

    def _with_stems(self, stems: list[str], name: str) -> "FolderDataset":
        subset = copy.copy(self)
        subset.stems = stems
        subset.name = name
        subset.unpaired_images = list(self.unpaired_images)
        subset.unpaired_masks = list(self.unpaired_masks)
        return subset


def _resolve_vocabulary(spec: FolderDatasetSpec) -> tuple[Vocabulary, list[str]]:
    """(queries, default evaluator classes) from an inline list or a named vocabulary file."""
    if isinstance(spec.vocabulary, str):
        from ovbench.data.catalog import load_vocabulary_file  # the catalog imports this module

        vocab_file = load_vocabulary_file(spec.vocabulary)
        return vocab_file.vocabulary(spec.vocabulary_aliases), vocab_file.class_names(spec.vocabulary_aliases)
    if spec.vocabulary_aliases != "off":
        raise ConfigError(
            f"dataset {spec.name}: vocabulary_aliases needs a named vocabulary (configs/vocab/), not an inline list"
        )
    vocabulary = Vocabulary(spec.vocabulary)
    return vocabulary, vocabulary.names
