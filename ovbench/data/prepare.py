"""Converters from the publishers' raw releases to the benchmark's on-disk layout
(`ovbench data prepare potsdam|floodnet --raw DIR --out ROOT`).

Both converters are idempotent and atomic:
- every output file is written under a temporary name in its own folder and renamed into
  place once complete, so an interrupted run leaves only temporary files, which no reader
  lists (they do not end in the dataset's suffix) and the next run deletes;
- an output that already exists and is complete is left alone (same bytes, same mtime), so
  a second run changes nothing and a resumed run only does what is missing.
Two converters writing into the same output folder at once are not supported (each
deletes the other's temporary files).

Potsdam follows mmsegmentation's converter (tools/dataset_converters/potsdam.py), whose crop
names the GSNet evaluation set carries (`2_10_0_2048_512_2560.png`), including two of its
quirks, each with a flag for the clean behaviour (docs/datasets.md#potsdam-preparation):
- crop origins step by the crop size, not by the stride: the stride only decides how many
  origins there are, and origins past the tile are pulled back to its edge (so a 6000-pixel
  side gives origins 0, 512, ..., 5120 and 5488: 144 distinct crops per tile). `honor_stride`
  steps by the stride instead.
- label colours are matched through the key 4R + 3G + 2B rather than the exact triple, so a
  stray colour with the same key takes that class. `exact_colours` compares triples.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ovbench.errors import ConfigError, DataError
from ovbench.fileio import atomic_write_bytes, remove_stale_temp_files

__all__ = [
    "POTSDAM_CLASSES",
    "POTSDAM_COLOURS",
    "POTSDAM_TRAIN_TILES",
    "POTSDAM_VAL_TILES",
    "POTSDAM_IMAGE_DIR",
    "POTSDAM_MASK_DIR",
    "FLOODNET_IMAGE_DIR",
    "FLOODNET_MASK_DIR",
    "PrepareReport",
    "potsdam_crop_boxes",
    "potsdam_crop_name",
    "potsdam_labels_from_colours",
    "prepare_potsdam",
    "prepare_floodnet",
    "PREPARERS",
]

# --------------------------------------------------------------------------- constants

#: The benchmark's Potsdam evaluator classes in id order, with their colour in the ISPRS labels.
POTSDAM_CLASSES: tuple[str, ...] = ("impervious surface", "building", "low vegetation", "tree", "car", "clutter")
POTSDAM_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),  # impervious surfaces
    (0, 0, 255),  # building
    (0, 255, 255),  # low vegetation
    (0, 255, 0),  # tree
    (255, 255, 0),  # car
    (255, 0, 0),  # clutter/background
)
#: Label value for pixels whose colour is no class (black boundaries of the "noBoundary"
#: labels, stray colours): the benchmark's Potsdam ignore value, which is what mmsegmentation's
#: "0 + reduce_zero_label" amounts to at evaluation.
POTSDAM_IGNORE = 5

#: mmsegmentation's Potsdam split (tile ids "<a>_<b>"); every other tile goes to val there.
POTSDAM_TRAIN_TILES: tuple[str, ...] = (
    "2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12",
    "6_10", "6_11", "6_12", "6_7", "6_8", "6_9", "7_10", "7_11", "7_12", "7_7", "7_8", "7_9",
)
POTSDAM_VAL_TILES: tuple[str, ...] = (
    "5_15", "6_15", "6_13", "3_13", "4_14", "6_14", "5_14", "2_13", "4_15", "2_14", "5_13", "4_13", "3_14", "7_13",
)

POTSDAM_IMAGE_DIR = "PotsdamSplit/img_dir/val"
POTSDAM_MASK_DIR = "PotsdamSplit/ann_dir/val"
FLOODNET_IMAGE_DIR = "FloodNet/val+test/img"
FLOODNET_MASK_DIR = "FloodNet/val+test/lbl"

_POTSDAM_TILE = re.compile(r"^top_potsdam_(\d+)_(\d+)_(RGB|label)\.tif{1,2}$", re.IGNORECASE)

_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error)


# --------------------------------------------------------------------------- report


@dataclass
class PrepareReport:
    dataset: str
    image_dir: Path
    mask_dir: Path
    #: source units converted (Potsdam tiles, FloodNet image/label pairs)
    sources: int = 0
    written: int = 0
    skipped: int = 0  # outputs already present and complete
    removed_temporaries: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def outputs(self) -> int:
        return self.written + self.skipped


# --------------------------------------------------------------------------- atomic outputs


def _png_is_complete(path: Path, width: int | None = None, height: int | None = None) -> bool:
    """A PNG with a valid signature and header whose last chunk is IEND (what a cut-off write
    lacks), of the expected size when given. Reads 33 + 12 bytes, decodes nothing."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(33)
            handle.seek(0, os.SEEK_END)
            if handle.tell() < 45:
                return False
            handle.seek(-12, os.SEEK_END)
            tail = handle.read(12)
    except OSError:
        return False
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return False
    if tail != b"\x00\x00\x00\x00IEND\xaeB`\x82":
        return False
    w, h = struct.unpack(">II", head[16:24])
    return (width is None or w == width) and (height is None or h == height)


def _encode_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- Potsdam geometry


def _origins(length: int, crop: int, stride: int, honor_stride: bool) -> list[int]:
    steps = -(-(length - crop) // stride)  # ceil
    count = steps if steps * stride + crop >= length else steps + 1
    step = stride if honor_stride else crop  # mmsegmentation multiplies by the crop size
    origins = []
    for k in range(count + 1):
        start = k * step
        if start + crop > length:
            start = length - crop
        if start not in origins:
            origins.append(start)
    return origins


def potsdam_crop_boxes(height: int, width: int, crop_size: int = 512, stride: int = 256,
                       honor_stride: bool = False) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the distinct crops mmsegmentation's Potsdam converter cuts from a
    `height` x `width` tile, row by row (its order; repeated boxes, which it writes twice
    under the same name, appear once)."""
    for name, value in (("crop_size", crop_size), ("stride", stride)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if height < crop_size or width < crop_size:
        raise DataError(f"tile of {width}x{height} is smaller than the {crop_size}x{crop_size} crop")
    rows = _origins(height, crop_size, stride, honor_stride)
    cols = _origins(width, crop_size, stride, honor_stride)
    return [(x, y, x + crop_size, y + crop_size) for y in rows for x in cols]


def potsdam_crop_name(tile: str, box: tuple[int, int, int, int]) -> str:
    """`<a>_<b>_<x0>_<y0>_<x1>_<y1>.png`, the converter's file name of one crop."""
    return f"{tile}_{box[0]}_{box[1]}_{box[2]}_{box[3]}.png"


def _colour_key(rgb: np.ndarray) -> np.ndarray:
    # mmsegmentation reads the label BGR and weights (B, G, R) by (2, 3, 4)
    rgb = rgb.astype(np.int32)
    return 4 * rgb[..., 0] + 3 * rgb[..., 1] + 2 * rgb[..., 2]


def potsdam_labels_from_colours(rgb: np.ndarray, exact_colours: bool = False,
                                unmatched_value: int = POTSDAM_IGNORE) -> tuple[np.ndarray, int]:
    """ISPRS colour-coded label (H, W, 3) uint8 -> (uint8 class ids in `POTSDAM_CLASSES`
    order, number of pixels that matched no class and got `unmatched_value`)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"Potsdam label must be an RGB image, got shape {rgb.shape}")
    if not 0 <= unmatched_value <= 255:
        raise ConfigError(f"unmatched_value must fit a uint8 label map, got {unmatched_value}")
    labels = np.full(rgb.shape[:2], unmatched_value, dtype=np.uint8)
    matched = np.zeros(rgb.shape[:2], dtype=bool)
    if exact_colours:
        for class_id, colour in enumerate(POTSDAM_COLOURS):
            hit = np.all(rgb == np.array(colour, dtype=rgb.dtype), axis=-1)
            labels[hit] = class_id
            matched |= hit
    else:
        key = _colour_key(rgb)
        for class_id, colour in enumerate(POTSDAM_COLOURS):
            hit = key == int(_colour_key(np.array(colour)))
            labels[hit] = class_id
            matched |= hit
    return labels, int((~matched).sum())


# --------------------------------------------------------------------------- Potsdam sources


@dataclass(frozen=True)
class _Source:
    """A raw file on disk or a member of a zip archive."""

    path: Path
    member: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    def read_bytes(self) -> bytes:
        if self.member is None:
            return self.path.read_bytes()
        with zipfile.ZipFile(self.path) as archive:
            return archive.read(self.member)

    def header_size(self) -> tuple[int, int]:
        """(width, height) from the TIFF header, without decoding pixels."""
        try:
            if self.member is None:
                with Image.open(self.path) as img:
                    return img.size
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as handle:
                with Image.open(handle) as img:
                    return img.size
        except (zipfile.BadZipFile, KeyError, *_DECODE_ERRORS) as exc:
            raise DataError(f"{self}: cannot read the TIFF header ({exc})") from None


def _find_potsdam_sources(raw: Path) -> tuple[dict[str, _Source], dict[str, _Source]]:
    """tile id -> RGB source, tile id -> label source; files anywhere under `raw`, or
    members of the release's zip archives (2_Ortho_RGB.zip, 5_Labels_all.zip) there."""
    images: dict[str, _Source] = {}
    labels: dict[str, _Source] = {}

    def register(name: str, source: _Source) -> None:
        match = _POTSDAM_TILE.match(name)
        if not match:
            return
        tile = f"{int(match.group(1))}_{int(match.group(2))}"
        target = labels if match.group(3).lower() == "label" else images
        if tile in target and target[tile] != source:
            raise DataError(f"Potsdam tile {tile} {match.group(3)} found twice: {target[tile]} and {source}")
        target[tile] = source

    for path in sorted(raw.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as archive:
                    members = archive.namelist()
            except zipfile.BadZipFile as exc:
                raise DataError(f"{path}: not a readable zip archive ({exc})") from None
            for member in members:
                register(Path(member).name, _Source(path, member))
        else:
            register(path.name, _Source(path))
    return images, labels


def _read_tile(source: _Source) -> np.ndarray:
    """A Potsdam tile as uint8 (H, W, 3): tifffile when installed, PIL otherwise."""
    data = source.read_bytes()
    array = None
    try:
        import tifffile  # optional: handles every TIFF variant the ISPRS tiles come in
    except ImportError:
        tifffile = None
    if tifffile is not None:
        try:
            array = tifffile.imread(io.BytesIO(data))
        except Exception as exc:  # tifffile raises a variety of errors for broken files
            raise DataError(f"{source}: cannot decode TIFF ({exc})") from None
        if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
            array = np.moveaxis(array, 0, -1)  # planar (C, H, W) storage
    else:
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                array = np.asarray(img.convert("RGB") if img.mode not in ("RGB", "RGBA") else img)
        except _DECODE_ERRORS as exc:
            raise DataError(f"{source}: cannot decode TIFF ({exc})") from None
    if array.dtype != np.uint8:
        raise DataError(f"{source}: expected 8-bit samples, got {array.dtype}")
    if array.ndim != 3 or array.shape[2] < 3:
        raise DataError(f"{source}: expected an RGB tile, got shape {array.shape}")
    return np.ascontiguousarray(array[..., :3])


def _select_tiles(tiles: str | Iterable[str], available: Iterable[str]) -> list[str]:
    available = set(available)
    if isinstance(tiles, str):
        if tiles == "all":
            wanted = sorted(available, key=lambda t: tuple(int(p) for p in t.split("_")))
            return wanted
        if tiles == "val":
            wanted = list(POTSDAM_VAL_TILES)
        elif tiles == "train":
            wanted = list(POTSDAM_TRAIN_TILES)
        else:
            wanted = [t.strip() for t in tiles.split(",") if t.strip()]
    else:
        wanted = list(tiles)
    bad = [t for t in wanted if not re.fullmatch(r"\d+_\d+", t)]
    if bad or not wanted:
        raise ConfigError(f"tiles: expected all, val, train or a comma list like 2_13,3_14; got {tiles!r}")
    return wanted


def prepare_potsdam(raw: str | Path, out: str | Path, *, tiles: str | Iterable[str] = "all", crop_size: int = 512,
                    stride: int = 256, honor_stride: bool = False, exact_colours: bool = False,
                    unmatched_value: int = POTSDAM_IGNORE, progress=None) -> PrepareReport:
    """Cut ISPRS Potsdam tiles into the benchmark's crops under `out`/PotsdamSplit.

    `raw` holds `top_potsdam_<a>_<b>_RGB.tif` and `top_potsdam_<a>_<b>_label.tif` (extracted
    anywhere below it, or inside the release's zip archives). `tiles`: "all" (every tile
    with both files; the GSNet set `potsdam_all` counts 38), "val" (mmsegmentation's 14
    validation tiles), "train", or a list of tile ids.
    """
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise DataError(f"Potsdam raw folder not found: {raw}")
    images, labels = _find_potsdam_sources(raw)
    if not images and not labels:
        raise DataError(
            f"no Potsdam tiles under {raw}: expected top_potsdam_<a>_<b>_RGB.tif and top_potsdam_<a>_<b>_label.tif "
            "(from 2_Ortho_RGB.zip and 5_Labels_all.zip), extracted or as the zips"
        )
    report = PrepareReport("potsdam", out / POTSDAM_IMAGE_DIR, out / POTSDAM_MASK_DIR)
    selected = _select_tiles(tiles, images.keys() & labels.keys())
    for tile in selected:
        if tile not in images or tile not in labels:
            missing = [what for what, table in (("RGB", images), ("label", labels)) if tile not in table]
            report.warnings.append(f"tile {tile}: no {' or '.join(missing)} file under {raw}; skipped")
    if isinstance(tiles, str) and tiles == "all":
        for tile in sorted(images.keys() ^ labels.keys()):
            what = "label" if tile in images else "RGB"
            report.warnings.append(f"tile {tile}: no {what} file under {raw}; skipped")
    selected = [t for t in selected if t in images and t in labels]
    if not selected:
        raise DataError(f"none of the requested Potsdam tiles ({tiles}) has both an RGB and a label file under {raw}")

    for folder in (report.image_dir, report.mask_dir):
        folder.mkdir(parents=True, exist_ok=True)
        report.removed_temporaries += remove_stale_temp_files(folder)

    task = progress.add_task("prepare potsdam", total=len(selected)) if progress is not None else None
    for tile in selected:
        _prepare_potsdam_tile(tile, images[tile], labels[tile], report, crop_size, stride, honor_stride,
                              exact_colours, unmatched_value)
        report.sources += 1
        if progress is not None:
            progress.advance(task, status=tile)
    if progress is not None:
        progress.finish(task)
    return report


def _prepare_potsdam_tile(tile: str, image_source: _Source, label_source: _Source, report: PrepareReport,
                          crop_size: int, stride: int, honor_stride: bool, exact_colours: bool,
                          unmatched_value: int) -> None:
    width, height = image_source.header_size()
    label_size = label_source.header_size()
    if label_size != (width, height):
        raise DataError(f"Potsdam tile {tile}: label is {label_size[0]}x{label_size[1]} but the RGB tile is {width}x{height}")
    boxes = potsdam_crop_boxes(height, width, crop_size, stride, honor_stride)
    names = [potsdam_crop_name(tile, box) for box in boxes]
    image_done = [_png_is_complete(report.image_dir / n, crop_size, crop_size) for n in names]
    mask_done = [_png_is_complete(report.mask_dir / n, crop_size, crop_size) for n in names]
    if all(image_done) and all(mask_done):
        report.skipped += 2 * len(names)
        return  # nothing to do: the tiles are not even decoded
    rgb = _read_tile(image_source) if not all(image_done) else None
    ids = None
    if not all(mask_done):
        colours = _read_tile(label_source)
        ids, unmatched = potsdam_labels_from_colours(colours, exact_colours, unmatched_value)
        del colours
        if unmatched:
            report.warnings.append(
                f"tile {tile}: {unmatched} label pixels match no class colour; written as {unmatched_value} (ignored)"
            )
    for box, name, has_image, has_mask in zip(boxes, names, image_done, mask_done):
        x0, y0, x1, y1 = box
        for done, array, folder in ((has_image, rgb, report.image_dir), (has_mask, ids, report.mask_dir)):
            if done:
                report.skipped += 1
                continue
            atomic_write_bytes(folder / name, _encode_png(np.ascontiguousarray(array[y0:y1, x0:x1])))
            report.written += 1


# --------------------------------------------------------------------------- FloodNet

#: Raw release layout (FloodNet-Supervised_v1.0): <split>/<split>-org-img/<id>.jpg and
#: <split>/<split>-label-img/<id>_lab.png, labels single-channel class ids 0-9.
FLOODNET_SPLITS = ("val", "test")
_FLOODNET_LABEL_SUFFIXES = ("_lab.png", ".png")


def _floodnet_root(raw: Path) -> Path:
    for candidate in (raw, raw / "FloodNet-Supervised_v1.0"):
        if all((candidate / s / f"{s}-org-img").is_dir() for s in FLOODNET_SPLITS):
            return candidate
    expected = ", ".join(f"{s}/{s}-org-img and {s}/{s}-label-img" for s in FLOODNET_SPLITS)
    raise DataError(f"FloodNet raw release not found under {raw}: expected {expected} (in {raw} or {raw}/FloodNet-Supervised_v1.0)")


def _floodnet_pairs(root: Path, split: str, report: PrepareReport) -> list[tuple[str, Path, Path]]:
    image_dir, label_dir = root / split / f"{split}-org-img", root / split / f"{split}-label-img"
    if not label_dir.is_dir():
        raise DataError(f"FloodNet {split} labels not found: {label_dir}")
    images = {p.stem: p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg")}
    labels: dict[str, Path] = {}
    for path in label_dir.iterdir():
        if not path.is_file():
            continue
        for suffix in _FLOODNET_LABEL_SUFFIXES:
            if path.name.endswith(suffix):
                labels.setdefault(path.name[: -len(suffix)], path)
                break
    for stem in sorted(images.keys() - labels.keys()):
        report.warnings.append(f"{images[stem]}: no label {stem}_lab.png in {label_dir}; skipped")
    for stem in sorted(labels.keys() - images.keys()):
        report.warnings.append(f"{labels[stem]}: no image {stem}.jpg in {image_dir}; skipped")
    return [(stem, images[stem], labels[stem]) for stem in sorted(images.keys() & labels.keys())]


def _check_floodnet_label(path: Path) -> None:
    try:
        with Image.open(path) as img:
            mode = img.mode
    except _DECODE_ERRORS as exc:
        raise DataError(f"{path}: cannot read label ({exc})") from None
    if mode not in ("L", "P", "I", "I;16"):
        raise DataError(
            f"{path}: label is a {mode} image; expected single-channel class ids (the colour masks are a different release)"
        )


def _copy_if_needed(source: Path, target: Path, report: PrepareReport, check: Callable[[Path], None] | None = None) -> None:
    """Byte copy, skipped when `target` already holds a file of the same size."""
    size = source.stat().st_size
    if target.is_file() and target.stat().st_size == size:
        report.skipped += 1
        return
    if check is not None:
        check(source)
    data = source.read_bytes()
    if len(data) != size:
        raise DataError(f"{source}: changed while being read")
    atomic_write_bytes(target, data)
    report.written += 1


def prepare_floodnet(raw: str | Path, out: str | Path, *, progress=None) -> PrepareReport:
    """Merge FloodNet's val and test splits into `out`/FloodNet/val+test/{img,lbl}.

    `raw` is FloodNet-Supervised_v1.0/ (or its parent). Images are copied byte for byte (JPEG
    stays JPEG); labels `<id>_lab.png` become `<id>.png` so images and labels pair by stem.
    """
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise DataError(f"FloodNet raw folder not found: {raw}")
    root = _floodnet_root(raw)
    report = PrepareReport("floodnet", out / FLOODNET_IMAGE_DIR, out / FLOODNET_MASK_DIR)
    pairs: list[tuple[str, Path, Path]] = []
    seen: dict[str, str] = {}
    for split in FLOODNET_SPLITS:
        for stem, image, label in _floodnet_pairs(root, split, report):
            if stem in seen:
                raise DataError(f"FloodNet image id {stem} is in both {seen[stem]} and {split}: cannot merge into val+test")
            seen[stem] = split
            pairs.append((stem, image, label))
    if not pairs:
        raise DataError(f"no FloodNet image/label pairs under {root}")
    for folder in (report.image_dir, report.mask_dir):
        folder.mkdir(parents=True, exist_ok=True)
        report.removed_temporaries += remove_stale_temp_files(folder)
    task = progress.add_task("prepare floodnet", total=len(pairs)) if progress is not None else None
    for stem, image, label in pairs:
        _copy_if_needed(image, report.image_dir / f"{stem}.jpg", report)
        _copy_if_needed(label, report.mask_dir / f"{stem}.png", report, check=_check_floodnet_label)
        report.sources += 1
        if progress is not None:
            progress.advance(task)
    if progress is not None:
        progress.finish(task)
    return report


#: dataset name -> converter(raw, out, **options)
PREPARERS: dict[str, Callable[..., PrepareReport]] = {
    "potsdam": prepare_potsdam,
    "floodnet": prepare_floodnet,
}


def prepare(name: str, raw: str | Path, out: str | Path, **options: Any) -> PrepareReport:
    if name not in PREPARERS:
        raise ConfigError(f"no converter for '{name}'; available: {', '.join(PREPARERS)}")
    return PREPARERS[name](raw, out, **options)
