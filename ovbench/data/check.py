"""Dataset inspection: `ovbench data check` (decode every file, collect every problem) and
`ovbench data info` (what a dataset is and where it was found, reading headers only).

`check_dataset` decodes every image and mask fully, so a truncated file is caught here and
not halfway through an evaluation. Problems are collected, never raised one at a time: the
report keeps a count per kind and the first few examples of each, so a dataset with 50,000
bad files still gives a short, complete answer. It also builds the per-class pixel histogram
of the masks as the evaluator will see them.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from ovbench.errors import DataError, first_line

__all__ = [
    "ISSUE_KINDS",
    "CheckIssue",
    "CheckReport",
    "HistogramRow",
    "check_dataset",
    "DatasetInfo",
    "SizeStats",
    "describe_dataset",
]

#: Kinds of problems, in the order a report lists them, with their headings.
ISSUE_KINDS: dict[str, str] = {
    "image_without_mask": "images without a mask",
    "mask_without_image": "masks without an image",
    "unreadable_image": "unreadable or truncated images",
    "unreadable_mask": "unreadable or truncated masks",
    "bad_mask_format": "masks that are not single-channel label maps",
    "size_mismatch": "image/mask size mismatches",
    "bad_label_values": "masks with values outside the evaluator classes",
}

#: Examples kept per kind; the rest are only counted.
DEFAULT_MAX_LISTED = 20

# Decoding releases the GIL, so a few threads keep a disk and several cores busy.
_DEFAULT_WORKERS = min(8, os.cpu_count() or 1)

_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class CheckIssue:
    kind: str
    path: str
    detail: str


@dataclass(frozen=True)
class HistogramRow:
    """One row of the class histogram; `class_id` None marks the ignore value when it is not
    a class id (e.g. 255)."""

    class_id: int | None
    value: int
    name: str
    pixels: int
    share: float  # of all mask pixels checked
    images: int  # masks containing at least one such pixel
    ignored: bool


@dataclass
class CheckReport:
    """The outcome of `check_dataset`: issue counts and examples, and the label histogram."""

    dataset: str
    class_names: list[str]
    ignore_index: int
    pairs: int = 0
    #: pairs whose image and mask both decoded (the histogram covers their masks)
    decoded_pairs: int = 0
    max_listed: int = DEFAULT_MAX_LISTED
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[CheckIssue]] = field(default_factory=dict)
    class_pixels: np.ndarray | None = None  # int64 (num classes,)
    class_images: np.ndarray | None = None  # int64 (num classes,)
    ignore_pixels: int = 0
    ignore_images: int = 0
    #: mask value -> pixels, for values that are neither a class id nor the ignore value
    invalid_pixels: Counter = field(default_factory=Counter)
    total_pixels: int = 0

    def __post_init__(self) -> None:
        n = len(self.class_names)
        if self.class_pixels is None:
            self.class_pixels = np.zeros(n, dtype=np.int64)
        if self.class_images is None:
            self.class_images = np.zeros(n, dtype=np.int64)

    def add(self, kind: str, path: str | Path, detail: str = "") -> None:
        if kind not in ISSUE_KINDS:
            raise ValueError(f"unknown issue kind {kind!r}")
        self.counts[kind] += 1
        listed = self.examples.setdefault(kind, [])
        if len(listed) < self.max_listed:
            listed.append(CheckIssue(kind, str(path), detail))

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    @property
    def problems(self) -> int:
        return sum(self.counts.values())

    def count(self, kind: str) -> int:
        return self.counts.get(kind, 0)

    def histogram(self) -> list[HistogramRow]:
        """Evaluator classes in id order, then the ignore value if it is not a class id."""
        total = max(self.total_pixels, 1)
        rows = []
        for class_id, name in enumerate(self.class_names):
            pixels = int(self.class_pixels[class_id])
            rows.append(
                HistogramRow(class_id, class_id, name, pixels, pixels / total, int(self.class_images[class_id]),
                             ignored=class_id == self.ignore_index)
            )
        if not 0 <= self.ignore_index < len(self.class_names):
            rows.append(
                HistogramRow(None, self.ignore_index, "(ignore)", self.ignore_pixels, self.ignore_pixels / total,
                             self.ignore_images, ignored=True)
            )
        return rows

    def _add_mask_counts(self, values: np.ndarray, counts: np.ndarray) -> None:
        """Fold one mask's (unique values, pixel counts) into the histogram."""
        n = len(self.class_names)
        self.total_pixels += int(counts.sum())
        is_class = (values >= 0) & (values < n)
        self.class_pixels[values[is_class]] += counts[is_class]
        self.class_images[values[is_class]] += 1
        is_ignore = values == self.ignore_index
        if is_ignore.any():
            self.ignore_pixels += int(counts[is_ignore].sum())
            self.ignore_images += 1
        invalid = ~is_class & ~is_ignore
        for value, count in zip(values[invalid].tolist(), counts[invalid].tolist()):
            self.invalid_pixels[value] += count


# --------------------------------------------------------------------------- decoding


def _suffix(dataset: Any, spec: Any, attribute: str) -> str:
    """The suffix the reader pairs files with (a spec may list alternatives; the dataset
    knows which one it used)."""
    value = getattr(dataset, attribute, None)
    if not isinstance(value, str):
        value = getattr(spec, attribute, "")
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return value if isinstance(value, str) else ""


_EXIF_ORIENTATION = 0x0112


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation the reader applies (like detectron2's
    read_image): orientations 5-8 swap the sides."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block: the reader would ignore it as well
        orientation = 1
    width, height = img.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _decode_image(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) of a fully decoded RGB-convertible image, or (None, why not)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode != "RGB":
                img.convert("RGB")  # what the reader does; fails for modes it cannot convert
            return _oriented_size(img), None
    except FileNotFoundError:
        return None, "file not found"
    except _DECODE_ERRORS as exc:
        return None, first_line(exc)


def _decode_mask(path: Path) -> tuple[np.ndarray | None, str | None, str | None]:
    """(label array, None, None), or (None, issue kind, why)."""
    try:
        with Image.open(path) as img:
            img.load()
            array = np.asarray(img)
    except FileNotFoundError:
        return None, "unreadable_mask", "file not found"
    except _DECODE_ERRORS as exc:
        return None, "unreadable_mask", first_line(exc)
    if array.ndim != 2:
        return None, "bad_mask_format", f"expected a single-channel label map, got shape {array.shape}"
    if not np.issubdtype(array.dtype, np.integer):
        return None, "bad_mask_format", f"expected integer labels, got {array.dtype}"
    return array, None, None


@dataclass
class _PairResult:
    index: int
    issues: list[tuple[str, str, str]]
    values: np.ndarray | None = None
    counts: np.ndarray | None = None


def _reads_rasters(dataset: Any) -> bool:
    """A spec with bands / scaling / nodata reads its images through the raster readers
    (16-bit and multi-band files), which PIL alone would call unreadable."""
    spec = getattr(dataset, "spec", None)
    return callable(getattr(dataset, "read_image", None)) and getattr(spec, "raster", None) is not None


def _decode_raster(dataset: Any, index: int) -> tuple[tuple[int, int] | None, str | None]:
    try:
        rgb = dataset.read_image(index).rgb
    except DataError as exc:
        return None, str(exc)
    return (rgb.shape[1], rgb.shape[0]), None


def _check_file_pair(dataset: Any, index: int) -> _PairResult:
    image_path, mask_path = Path(dataset.image_path(index)), Path(dataset.mask_path(index))
    issues: list[tuple[str, str, str]] = []
    size, why = _decode_raster(dataset, index) if _reads_rasters(dataset) else _decode_image(image_path)
    if size is None:
        issues.append(("unreadable_image", str(image_path), why or ""))
    mask, kind, why = _decode_mask(mask_path)
    if mask is None:
        issues.append((kind or "unreadable_mask", str(mask_path), why or ""))
        return _PairResult(index, issues)
    read_mask = getattr(dataset, "read_mask", None)
    if callable(read_mask):
        # a reader that maps raw values to class ids: count what the evaluator will see
        try:
            mask = np.asarray(read_mask(index))
        except DataError as exc:
            issues.append(("unreadable_mask", str(mask_path), str(exc)))
            return _PairResult(index, issues)
    if size is not None and (mask.shape[1], mask.shape[0]) != size:
        issues.append(("size_mismatch", str(mask_path),
                       f"mask is {mask.shape[1]}x{mask.shape[0]}, image {image_path.name} is {size[0]}x{size[1]}"))
    values, counts = _value_counts(mask)
    return _PairResult(index, issues, values, counts)


def _value_counts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, pixel counts) of a label map, both int64."""
    if mask.dtype in (np.uint8, np.uint16) and mask.size:
        # a counting pass instead of np.unique's sort: 12-megapixel FloodNet masks in milliseconds
        counts = np.bincount(mask.ravel(), minlength=1)
        values = np.flatnonzero(counts)
        return values.astype(np.int64), counts[values].astype(np.int64)
    values, counts = np.unique(mask, return_counts=True)
    return values.astype(np.int64), counts.astype(np.int64)


def _check_sample(dataset: Any, index: int) -> _PairResult:
    """Datasets without files (toyland): check what the reader returns."""
    name = f"{dataset.name}[{index}]"
    try:
        sample = dataset[index]
    except DataError as exc:
        return _PairResult(index, [("unreadable_image", name, str(exc))])
    image, mask = np.asarray(sample["image"]), np.asarray(sample["mask"])
    name = str(sample.get("name", name))
    issues = []
    if mask.ndim != 2:
        return _PairResult(index, [("bad_mask_format", name, f"mask shape {mask.shape}")])
    if image.shape[:2] != mask.shape:
        issues.append(("size_mismatch", name, f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {image.shape[1]}x{image.shape[0]}"))
    values, counts = _value_counts(mask)
    return _PairResult(index, issues, values, counts)


def _ordered_results(function, dataset: Any, count: int, workers: int) -> Iterator[_PairResult]:
    if workers <= 1 or count <= 1:
        for index in range(count):
            yield function(dataset, index)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # a bounded window of pending decodes keeps memory flat on 50K-file datasets
        pending: deque = deque()
        next_index = 0
        while next_index < count or pending:
            while next_index < count and len(pending) < 4 * workers:
                pending.append(pool.submit(function, dataset, next_index))
                next_index += 1
            yield pending.popleft().result()


def _format_invalid(values: np.ndarray, counts: np.ndarray, limit: int = 5) -> str:
    order = np.argsort(-counts, kind="stable")[:limit]
    parts = [f"{int(values[i])} ({int(counts[i])} px)" for i in order]
    more = len(values) - len(order)
    return ", ".join(parts) + (f" and {more} more values" if more > 0 else "")


def check_dataset(dataset: Any, progress=None, max_listed: int = DEFAULT_MAX_LISTED,
                  workers: int | None = None) -> CheckReport:
    """Decode every image and mask of `dataset` and report every problem found.

    `dataset` is a folder dataset (with `image_path(i)`, `mask_path(i)`, `unpaired_images`,
    `unpaired_masks`) or any dataset that yields samples (then only the samples are checked).
    `progress` is an `ovbench.progress.ProgressReporter` (or None). Nothing is raised for bad
    files: they are collected in the report, `max_listed` examples per kind.
    """
    if max_listed < 0:
        raise ValueError(f"max_listed must be >= 0, got {max_listed}")
    class_names = list(dataset.class_names)
    ignore_index = int(dataset.ignore_index)
    report = CheckReport(str(dataset.name), class_names, ignore_index, max_listed=max_listed)
    has_files = callable(getattr(dataset, "image_path", None)) and callable(getattr(dataset, "mask_path", None))
    if has_files:
        image_dir = getattr(dataset, "image_dir", None)
        mask_dir = getattr(dataset, "mask_dir", None)
        spec = getattr(dataset, "spec", None)
        image_suffix = _suffix(dataset, spec, "image_suffix")
        mask_suffix = _suffix(dataset, spec, "mask_suffix")
        for stem in getattr(dataset, "unpaired_images", []):
            where = Path(image_dir) / f"{stem}{image_suffix}" if image_dir is not None else stem
            report.add("image_without_mask", where, f"no '{stem}{mask_suffix}' in {mask_dir}")
        for stem in getattr(dataset, "unpaired_masks", []):
            where = Path(mask_dir) / f"{stem}{mask_suffix}" if mask_dir is not None else stem
            report.add("mask_without_image", where, f"no '{stem}{image_suffix}' in {image_dir}")
    count = len(dataset)
    report.pairs = count
    function = _check_file_pair if has_files else _check_sample
    task = progress.add_task(f"check {dataset.name}", total=count) if progress is not None else None
    for result in _ordered_results(function, dataset, count, _DEFAULT_WORKERS if workers is None else workers):
        for kind, path, detail in result.issues:
            report.add(kind, path, detail)
        if result.values is not None:
            decoded = not any(kind in ("unreadable_image", "unreadable_mask", "bad_mask_format") for kind, _, _ in result.issues)
            report.decoded_pairs += int(decoded)
            values, counts = result.values, result.counts
            report._add_mask_counts(values, counts)
            bad = ((values < 0) | (values >= len(class_names))) & (values != ignore_index)
            if bad.any():
                where = str(dataset.mask_path(result.index)) if has_files else f"{dataset.name}[{result.index}]"
                report.add("bad_label_values", where,
                           f"values {_format_invalid(values[bad], counts[bad])} are neither a class id "
                           f"(0..{len(class_names) - 1}) nor the ignore value {ignore_index}")
        if progress is not None:
            progress.advance(task)
    if progress is not None:
        progress.finish(task)
    return report


# --------------------------------------------------------------------------- info


@dataclass(frozen=True)
class SizeStats:
    """Image sizes of a sample of files, read from their headers (nothing decoded)."""

    sampled: int
    unreadable: int
    min_width: int
    max_width: int
    min_height: int
    max_height: int
    median_width: float
    median_height: float
    #: ((width, height), files) for the most common sizes, most common first
    common: list[tuple[tuple[int, int], int]]
    modes: dict[str, int]


@dataclass
class DatasetInfo:
    name: str
    kind: str  # "folder" or "embedded"
    spec: dict[str, Any]
    data_root: str | None
    image_dir: str | None
    mask_dir: str | None
    #: which of the spec's alternative layouts matched, in words (None if there is only one)
    layout: str | None
    pairs: int
    unpaired_images: int
    unpaired_masks: int
    image_sizes: SizeStats | None
    mask_sizes: SizeStats | None
    vocabulary: list[tuple[str, tuple[str, ...]]]
    class_names: list[str]
    ignore_index: int
    ignore_name: str | None  # the class the ignore value names, if it is a class id


def _header_sizes(paths: list[Path]) -> SizeStats | None:
    if not paths:
        return None
    sizes: list[tuple[int, int]] = []
    modes: Counter = Counter()
    unreadable = 0
    for path in paths:
        try:
            with Image.open(path) as img:  # reads the header only; no pixel is decoded
                sizes.append(_oriented_size(img))
                modes[img.mode] += 1
        except _DECODE_ERRORS:
            unreadable += 1
    if not sizes:
        return SizeStats(len(paths), unreadable, 0, 0, 0, 0, 0.0, 0.0, [], {})
    widths = np.array([s[0] for s in sizes])
    heights = np.array([s[1] for s in sizes])
    return SizeStats(
        sampled=len(paths), unreadable=unreadable,
        min_width=int(widths.min()), max_width=int(widths.max()),
        min_height=int(heights.min()), max_height=int(heights.max()),
        median_width=float(np.median(widths)), median_height=float(np.median(heights)),
        common=Counter(sizes).most_common(3), modes=dict(modes),
    )


def _evenly_spaced(count: int, sample: int) -> list[int]:
    if count <= sample:
        return list(range(count))
    return sorted(set(np.linspace(0, count - 1, sample).round().astype(int).tolist()))


def _spec_dict(spec: Any) -> dict[str, Any]:
    from ovbench.config import to_plain

    plain = to_plain(spec) if spec is not None else {}
    return plain if isinstance(plain, dict) else {"spec": plain}


def _field(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


def _layout_description(dataset: Any) -> str | None:
    """Which of a spec's alternative layouts matched (e.g. FAST's two); None when the spec
    has only one."""
    spec = getattr(dataset, "spec", None)
    alternatives = list(getattr(spec, "layouts", None) or [])
    if len(alternatives) < 2:
        return None
    matched = getattr(dataset, "layout", None)
    image_dir = Path(getattr(dataset, "image_dir", ""))
    mask_dir = Path(getattr(dataset, "mask_dir", ""))
    for position, layout in enumerate(alternatives, start=1):
        image_rel, mask_rel = _field(layout, "image_dir"), _field(layout, "mask_dir")
        if image_rel is None or mask_rel is None:
            continue
        same = (
            (_field(matched, "image_dir"), _field(matched, "mask_dir")) == (image_rel, mask_rel)
            if matched is not None
            else image_dir.as_posix().endswith(Path(image_rel).as_posix())
            and mask_dir.as_posix().endswith(Path(mask_rel).as_posix())
        )
        if same:
            return f"layout {position} of {len(alternatives)}: {image_rel} + {mask_rel}"
    return f"none of the spec's {len(alternatives)} layouts recognised"


def describe_dataset(dataset: Any, data_root: str | Path | None = None, sample: int = 100) -> DatasetInfo:
    """What `ovbench data info` shows. Image sizes come from the headers of up to `sample`
    evenly spaced files; nothing is decoded."""
    root = Path(data_root) if data_root is not None else None
    has_files = callable(getattr(dataset, "image_path", None))
    spec = _spec_dict(getattr(dataset, "spec", None))
    vocabulary = [(c.name, tuple(c.synonyms)) for c in dataset.vocabulary.classes]
    class_names = list(dataset.class_names)
    ignore_index = int(dataset.ignore_index)
    ignore_name = class_names[ignore_index] if 0 <= ignore_index < len(class_names) else None
    if not has_files:
        for key in ("seed", "size", "num_images"):
            if hasattr(dataset, key):
                spec.setdefault(key, getattr(dataset, key))
        return DatasetInfo(
            name=str(dataset.name), kind="embedded", spec=spec, data_root=None, image_dir=None, mask_dir=None,
            layout=None, pairs=len(dataset), unpaired_images=0, unpaired_masks=0, image_sizes=None,
            mask_sizes=None, vocabulary=vocabulary, class_names=class_names, ignore_index=ignore_index,
            ignore_name=ignore_name,
        )
    indices = _evenly_spaced(len(dataset), sample)
    return DatasetInfo(
        name=str(dataset.name), kind=str(spec.get("kind", "folder")), spec=spec,
        data_root=str(getattr(dataset, "data_root", None) or root or "") or None,
        image_dir=str(getattr(dataset, "image_dir", "")) or None,
        mask_dir=str(getattr(dataset, "mask_dir", "")) or None,
        layout=_layout_description(dataset),
        pairs=len(dataset),
        unpaired_images=len(getattr(dataset, "unpaired_images", [])),
        unpaired_masks=len(getattr(dataset, "unpaired_masks", [])),
        image_sizes=_header_sizes([Path(dataset.image_path(i)) for i in indices]),
        mask_sizes=_header_sizes([Path(dataset.mask_path(i)) for i in indices]),
        vocabulary=vocabulary, class_names=class_names, ignore_index=ignore_index, ignore_name=ignore_name,
    )
