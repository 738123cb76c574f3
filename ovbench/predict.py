"""Tiled prediction of any vocabulary on any image or scene (`ovbench predict`,
docs/predict.md).

A scene is cut into tiles (default 1024 px, neighbours sharing `overlap` pixels). Each tile
goes through the method's own inference recipe (`segmenter.predict`, whole image or sliding
window as its YAML says), its labels are the argmax over classes, and only the tile's centre
(half the overlap trimmed on each inner side) is kept, so tile borders, where a model sees
the least context, never decide a label. Memory is one tile's (T, tile, tile) scores, never
the scene's (T, H, W): labels and score maps go to their files tile by tile (rasterio
windowed writes; for PNG and tifffile outputs the label map, one byte per pixel, is held),
and the overlay is filled from each tile at its own, possibly reduced, resolution.

Every output of an input is written to a temporary file beside its target and renamed into
place only when the whole input has been predicted: nothing half-written is left behind.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ovbench.data.raster import RasterPlan, RasterSettings, RasterSource, open_raster, plan_raster, rasterio_available
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import ConfigError, DataError, StorageError, VocabularyError, describe_os_error
from ovbench.fileio import TEMP_PREFIX, TEMP_SUFFIX
from ovbench.palette import IGNORE_COLOUR, class_colours

__all__ = [
    "DEFAULT_OUT_DIR",
    "DEFAULT_OVERLAP",
    "DEFAULT_OVERLAY_SIDE",
    "DEFAULT_TILE",
    "PredictOptions",
    "PredictionResult",
    "PreparedInput",
    "TileWindow",
    "label_dtype",
    "parse_classes",
    "plan_tiles",
    "resolved_overlap",
    "predict_inputs",
    "predict_scene",
    "full_stack_bytes",
    "prepare_inputs",
]

DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 128
#: overlays of larger scenes are reduced (nearest neighbour) to this longer side
DEFAULT_OVERLAY_SIDE = 2048
#: relative to the working directory
DEFAULT_OUT_DIR = Path("predictions")
#: weight of the class colour over the image in the overlay
OVERLAY_ALPHA = 0.5
#: GDAL's block cache while predicting, in bytes (rasterio passes GDAL_CACHEMAX to
#: GDALSetCacheMax64, so a small number means bytes, not MB): its default, 5% of RAM, would keep
#: gigabytes of decoded and written blocks resident
GDAL_CACHE_BYTES = 32 * 2**20


# --------------------------------------------------------------------------- vocabulary


def parse_classes(text: str) -> Vocabulary:
    """``"road,building|house,flooded road"``: classes separated by commas, synonyms of a class
    by ``|`` (extra text queries for the same class); or the path of a YAML/JSON vocabulary."""
    stripped = (text or "").strip()
    if not stripped:
        raise VocabularyError('--classes is empty: give class names separated by commas, e.g. --classes "road,building,water"')
    if stripped.lower().endswith((".yaml", ".yml", ".json")) and Path(stripped).is_file():
        return Vocabulary.from_file(stripped)
    entries = []
    for position, item in enumerate(stripped.split(",")):
        names = [name.strip() for name in item.split("|")]
        if not all(names):
            raise VocabularyError(f"--classes: empty class name at position {position + 1} in {text!r}")
        entries.append(names)
    return Vocabulary(entries)


def label_dtype(classes: int) -> tuple[np.dtype, int]:
    """(label raster dtype, its nodata value): uint8 and 255 up to 255 classes, else uint16 and 65535."""
    if classes <= 255:
        return np.dtype(np.uint8), 255
    if classes <= 65535:
        return np.dtype(np.uint16), 65535
    raise VocabularyError(f"{classes} classes do not fit a uint16 label raster (at most 65535)")


# --------------------------------------------------------------------------- tiles


@dataclass(frozen=True)
class TileWindow:
    """A tile: the window read and predicted, and the part of it whose labels are kept (scene
    coordinates). The kept parts of all tiles cover the scene exactly once."""

    top: int
    left: int
    height: int
    width: int
    keep_top: int
    keep_left: int
    keep_bottom: int
    keep_right: int

    @property
    def read_window(self) -> tuple[int, int, int, int]:
        return self.top, self.left, self.height, self.width

    @property
    def kept_in_tile(self) -> tuple[slice, slice]:
        return (slice(self.keep_top - self.top, self.keep_bottom - self.top),
                slice(self.keep_left - self.left, self.keep_right - self.left))


def _axis_tiles(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, size, keep_from, keep_to) along one axis."""
    if length <= tile:
        return [(0, length, 0, length)]
    stride = tile - overlap
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)  # flush with the edge: every tile is full size
    # neighbours split their shared strip in the middle
    bounds = [0] + [(starts[i] + tile + starts[i + 1]) // 2 for i in range(len(starts) - 1)] + [length]
    return [(start, tile, bounds[i], bounds[i + 1]) for i, start in enumerate(starts)]


def plan_tiles(height: int, width: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> list[TileWindow]:
    """Row-major tiles over a height x width scene (a side shorter than `tile` is one tile)."""
    check_tiling(tile, overlap)
    rows, cols = _axis_tiles(height, tile, overlap), _axis_tiles(width, tile, overlap)
    return [
        TileWindow(top, left, th, tw, kt, kl, kb, kr)
        for top, th, kt, kb in rows
        for left, tw, kl, kr in cols
    ]


def resolved_overlap(options: "PredictOptions") -> int:
    """The overlap asked for, else DEFAULT_OVERLAP capped at a quarter of the tile."""
    if options.overlap is not None:
        return options.overlap
    return min(DEFAULT_OVERLAP, options.tile // 4) if isinstance(options.tile, int) else DEFAULT_OVERLAP


def check_tiling(tile: int, overlap: int) -> None:
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 32:
        raise ConfigError(f"--tile must be an integer of at least 32 pixels, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= tile // 2:
        raise ConfigError(f"--overlap must be between 0 and half the tile ({tile // 2}), got {overlap!r}")


# --------------------------------------------------------------------------- inputs


@dataclass
class PredictOptions:
    out_dir: Path = DEFAULT_OUT_DIR
    tile: int = DEFAULT_TILE
    #: None: DEFAULT_OVERLAP, at most a quarter of the tile
    overlap: int | None = None
    score_maps: bool = False
    overlay_max_side: int = DEFAULT_OVERLAY_SIDE
    raster: RasterSettings = field(default_factory=RasterSettings)
    reader: str = "auto"
    #: stored in each input's metadata file
    method: str = ""
    checkpoint: str | None = None


@dataclass
class PreparedInput:
    """An input checked before any model is built: its reader, its resolved raster plan and
    where its outputs go."""

    path: Path
    reader: str
    height: int
    width: int
    description: str
    plan: RasterPlan
    georeferenced: bool
    outputs: dict[str, Path]


@dataclass
class PredictionResult:
    input: Path
    reader: str
    plan: str
    height: int
    width: int
    tiles: int
    outputs: dict[str, Path]
    seconds: float
    overlay_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)


_CLI_BANDS_HINT = "--bands 3,2,1"
_CLI_SCALING_HINT = "--percentiles 2,98 or --scale-range 0,3000"


def _output_paths(path: Path, out_dir: Path, reader: str, score_maps: bool) -> dict[str, Path]:
    stem = path.stem
    label_suffix = ".png" if reader == "pillow" else ".tif"
    outputs = {
        "labels": out_dir / f"{stem}_labels{label_suffix}",
        "overlay": out_dir / f"{stem}_overlay.png",
        "metadata": out_dir / f"{stem}_prediction.json",
    }
    if score_maps:
        outputs["scores"] = out_dir / f"{stem}_scores.tif"
    return outputs


def prepare_inputs(paths: Sequence[str | Path], options: PredictOptions) -> list[PreparedInput]:
    """Open every input, check it against the raster settings and resolve them (percentiles
    become values): every bad input fails here, before a model is built."""
    if not paths:
        raise ConfigError("no input images given")
    check_tiling(options.tile, resolved_overlap(options))
    if options.overlay_max_side < 16:
        raise ConfigError(f"--overlay-max-side must be at least 16, got {options.overlay_max_side}")
    prepared: list[PreparedInput] = []
    stems: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        with ExitStack() as stack:
            _gdal_env(stack)
            source = stack.enter_context(open_raster(path, options.reader))
            plan = plan_raster(source, options.raster, bands_hint=_CLI_BANDS_HINT, scaling_hint=_CLI_SCALING_HINT)
            item = PreparedInput(
                path=path, reader=source.reader, height=source.height, width=source.width,
                description=source.describe(), plan=plan, georeferenced=source.georeferenced,
                outputs=_output_paths(path, Path(options.out_dir), source.reader, options.score_maps),
            )
        if path.stem in stems:
            raise ConfigError(f"inputs {stems[path.stem]} and {path} would write the same outputs ({path.stem}_*); rename one")
        stems[path.stem] = path
        prepared.append(item)
    return prepared


# --------------------------------------------------------------------------- staging


class _Staging:
    """Temporary files beside their targets, renamed into place together by `commit`."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def temp_for(self, target: Path) -> Path:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
        except OSError as exc:
            raise StorageError(describe_os_error(exc, "cannot write")) from None
        os.close(fd)
        temp = Path(name)
        _readable_by_others(temp)
        self._pending.append((temp, target))
        return temp

    def commit(self) -> None:
        try:
            for temp, target in self._pending:
                os.replace(temp, target)
        except OSError as exc:
            raise StorageError(describe_os_error(exc, "cannot write")) from None
        finally:
            self.discard()

    def discard(self) -> None:
        for temp, _ in self._pending:
            temp.unlink(missing_ok=True)
        self._pending = []


def _readable_by_others(path: Path) -> None:
    # mkstemp makes 0600 files; outputs get the mode a plain open() would give them
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.chmod(path, 0o666 & ~mask)
    except OSError:
        pass


# --------------------------------------------------------------------------- sinks


class _LabelSink:
    """Where a scene's labels go: a GeoTIFF written window by window (rasterio inputs, which
    keep their CRS and transform), or a held label map written at the end as PNG (pillow
    inputs) or TIFF with the input's GeoTIFF tags copied (tifffile inputs)."""

    def __init__(self, item: PreparedInput, source: RasterSource, dtype: np.dtype, nodata: int,
                 staging: _Staging, stack: ExitStack, tags: dict[str, str]):
        self.target = item.outputs["labels"]
        self.temp = staging.temp_for(self.target)
        self.kind = "geotiff" if source.reader == "rasterio" else ("png" if self.target.suffix == ".png" else "tiff")
        self.dtype, self.nodata = dtype, nodata
        self.source = source
        self.array: np.ndarray | None = None
        if self.kind == "geotiff":
            profile = _geotiff_profile(item.height, item.width, 1, dtype, source, nodata)
            self.dataset = stack.enter_context(_rasterio_write(self.temp, profile))
            self.dataset.update_tags(**tags)
        else:
            self.array = np.full((item.height, item.width), nodata, dtype=dtype)

    def write(self, labels: np.ndarray, tile: TileWindow) -> None:
        if self.array is not None:
            self.array[tile.keep_top:tile.keep_bottom, tile.keep_left:tile.keep_right] = labels
            return
        from rasterio.windows import Window

        window = Window(tile.keep_left, tile.keep_top, labels.shape[1], labels.shape[0])
        self.dataset.write(labels[None], window=window)

    def finish(self) -> None:
        if self.array is None:
            return
        buffer = io.BytesIO()
        if self.kind == "png":
            from PIL import Image

            image = Image.fromarray(self.array if self.dtype == np.uint8 else self.array.astype(np.uint16), mode=None)
            image.save(buffer, format="PNG")
        else:
            import tifffile

            tifffile.imwrite(buffer, self.array, photometric="minisblack", compression="zlib",
                             extratags=_geo_extratags(self.source) + [_nodata_tag(str(self.nodata))])
        _write_bytes(self.temp, buffer.getvalue())
        self.array = None


class _ScoreSink:
    """Per-class score maps, float32, one band per class, written tile by tile: a tiled GeoTIFF
    through rasterio, else an uncompressed TIFF whose band rows are written in place."""

    def __init__(self, item: PreparedInput, source: RasterSource, classes: int, names: list[str],
                 staging: _Staging, stack: ExitStack):
        self.target = item.outputs["scores"]
        self.temp = staging.temp_for(self.target)
        self.height, self.width, self.classes = item.height, item.width, classes
        # a tifffile-read input keeps its GeoTIFF tags only through tifffile
        if rasterio_available() and source.reader != "tifffile":
            profile = _geotiff_profile(item.height, item.width, classes, np.dtype(np.float32), source, float("nan"))
            profile.update(compress="deflate", zlevel=1, predictor=3, interleave="band")
            self.dataset = stack.enter_context(_rasterio_write(self.temp, profile))
            self.dataset.descriptions = tuple(names)
            self.handle = None
        else:
            import tifffile

            self.dataset = None
            tifffile.imwrite(self.temp, shape=(classes, item.height, item.width), dtype=np.float32,
                             photometric="minisblack", planarconfig="separate",
                             extratags=_geo_extratags(source) + [_nodata_tag("nan")],
                             metadata=None)
            with tifffile.TiffFile(self.temp) as written:
                self.offset = written.series[0].dataoffset
            if self.offset is None:
                raise StorageError(f"cannot write {self.target}: the score TIFF is not contiguous")
            self.handle = stack.enter_context(open(self.temp, "r+b"))

    def write(self, scores: np.ndarray, tile: TileWindow) -> None:
        """`scores` (T, h, w) float32 of the kept part of `tile`."""
        if self.dataset is not None:
            from rasterio.windows import Window

            window = Window(tile.keep_left, tile.keep_top, scores.shape[2], scores.shape[1])
            self.dataset.write(scores, window=window)
            return
        row_bytes, fd = self.width * 4, self.handle.fileno()
        for band in range(self.classes):
            for row in range(scores.shape[1]):
                at = self.offset + (band * self.height + tile.keep_top + row) * row_bytes + tile.keep_left * 4
                os.pwrite(fd, np.ascontiguousarray(scores[band, row]).tobytes(), at)


@contextmanager
def _rasterio_write(path: Path, profile: dict[str, Any]) -> Iterator[Any]:
    import rasterio

    try:
        dataset = rasterio.open(path, "w", **profile)
    except Exception as exc:
        raise StorageError(f"cannot write {path}: {exc}") from None
    try:
        yield dataset
    finally:
        dataset.close()


def _geotiff_profile(height: int, width: int, count: int, dtype: np.dtype, source: RasterSource, nodata: float) -> dict[str, Any]:
    profile: dict[str, Any] = dict(driver="GTiff", height=height, width=width, count=count, dtype=dtype.name,
                                   nodata=nodata, compress="deflate", tiled=True, blockxsize=256, blockysize=256,
                                   BIGTIFF="IF_SAFER")
    if height < 256 or width < 256:
        profile.update(tiled=False)
        profile.pop("blockxsize")
        profile.pop("blockysize")
    if source.reader == "rasterio" and source.georeferenced:
        profile.update(crs=source.crs, transform=source.transform)
    return profile


#: GeoTIFF tags a label TIFF written by tifffile carries over (pixel scale, tie points,
#: transformation, geokey directory and its double / ASCII parameters)
_GEO_TAG_CODES = (33550, 33922, 34264, 34735, 34736, 34737)


def _geo_extratags(source: RasterSource) -> list[tuple]:
    page_tags = getattr(getattr(source, "_file", None), "pages", None)
    if not page_tags:
        return []
    tags = source._file.pages[0].tags
    extratags = []
    for code in _GEO_TAG_CODES:
        tag = tags.get(code)
        if tag is not None:
            value = tag.value
            count = len(value) if isinstance(value, (tuple, list, bytes)) else (len(value) + 1 if isinstance(value, str) else 1)
            extratags.append((code, int(tag.dtype), count, value, True))
    return extratags


def _nodata_tag(value: str) -> tuple:
    # GDAL_NODATA, the ASCII tag GDAL and rasterio read a TIFF's nodata value from
    return (42113, "s", 0, value, True)


def _write_bytes(path: Path, data: bytes) -> None:
    try:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise StorageError(describe_os_error(exc, "cannot write")) from None


# --------------------------------------------------------------------------- overlay


class _Overlay:
    """The image blended with its class colours at a reduced size (nearest neighbour: overlay
    pixel (i, j) shows scene pixel (floor((i + 0.5) H / h), floor((j + 0.5) W / w))), filled
    tile by tile from the kept parts."""

    def __init__(self, height: int, width: int, max_side: int, colours: np.ndarray):
        factor = min(1.0, max_side / max(height, width))
        self.height, self.width = max(1, round(height * factor)), max(1, round(width * factor))
        self.rows = ((np.arange(self.height) + 0.5) * height / self.height).astype(np.int64)
        self.cols = ((np.arange(self.width) + 0.5) * width / self.width).astype(np.int64)
        self.image = np.zeros((self.height, self.width, 3), np.uint8)
        self.table = np.concatenate([colours, np.asarray([IGNORE_COLOUR], np.uint8)]).astype(np.float32)
        self.reduced = (self.height, self.width) != (height, width)

    def add(self, rgb: np.ndarray, labels: np.ndarray, tile: TileWindow) -> None:
        """`rgb` (h,w,3) and `labels` (h,w) of the tile's kept part."""
        i0, i1 = np.searchsorted(self.rows, [tile.keep_top, tile.keep_bottom])
        j0, j1 = np.searchsorted(self.cols, [tile.keep_left, tile.keep_right])
        if i0 == i1 or j0 == j1:
            return
        rows = self.rows[i0:i1] - tile.keep_top
        cols = self.cols[j0:j1] - tile.keep_left
        picked = labels[np.ix_(rows, cols)].astype(np.int64)
        index = np.where(picked < len(self.table) - 1, picked, len(self.table) - 1)
        colour = self.table[index]
        image = rgb[np.ix_(rows, cols)].astype(np.float32)
        blended = image * (1 - OVERLAY_ALPHA) + colour * OVERLAY_ALPHA
        blended[picked >= len(self.table) - 1] = IGNORE_COLOUR
        self.image[i0:i1, j0:j1] = np.floor(blended + 0.5).astype(np.uint8)

    def png(self) -> bytes:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.image).save(buffer, format="PNG")
        return buffer.getvalue()


# --------------------------------------------------------------------------- prediction


def _gdal_env(stack: ExitStack) -> None:
    if rasterio_available():
        import rasterio

        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))


def predict_scene(segmenter, item: PreparedInput, vocabulary: Vocabulary, options: PredictOptions,
                  device: Any = "cpu", progress=None) -> PredictionResult:
    """Predict one prepared input tile by tile and write its outputs (see the module docstring)."""
    import torch

    started = time.perf_counter()
    classes = len(vocabulary)
    dtype, label_nodata = label_dtype(classes)
    colours = class_colours(classes)
    overlap = resolved_overlap(options)
    tiles = plan_tiles(item.height, item.width, options.tile, overlap)
    staging = _Staging()
    notes: list[str] = []
    tags = {"ovbench_classes": json.dumps(vocabulary.names), "ovbench_method": options.method}
    task = progress.add_task(f"predict {item.path.name}", total=len(tiles), unit="tile") if progress is not None else None
    try:
        with ExitStack() as stack:
            _gdal_env(stack)
            source = stack.enter_context(open_raster(item.path, item.reader))
            labels_sink = _LabelSink(item, source, dtype, label_nodata, staging, stack, tags)
            scores_sink = _ScoreSink(item, source, classes, vocabulary.names, staging, stack) if options.score_maps else None
            overlay = _Overlay(item.height, item.width, options.overlay_max_side, colours)
            for tile in tiles:
                rgb, valid = item.plan.read(source, tile.read_window)
                batch = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device=device, dtype=torch.float32)
                scores = segmenter.predict(batch, vocabulary)
                if tuple(scores.shape) != (1, classes, tile.height, tile.width):
                    raise DataError(
                        f"{item.path}: the method returned scores of shape {tuple(scores.shape)} for a "
                        f"{tile.width}x{tile.height} tile of {classes} classes"
                    )
                rows, cols = tile.kept_in_tile
                kept = scores[0, :, rows, cols]
                labels = kept.argmax(0).to("cpu").numpy().astype(dtype)
                kept_valid = valid[rows, cols] if valid is not None else None
                if kept_valid is not None:
                    labels[~kept_valid] = label_nodata
                labels_sink.write(labels, tile)
                if scores_sink is not None:
                    values = kept.to(device="cpu", dtype=torch.float32).numpy()
                    if kept_valid is not None:
                        values = np.where(kept_valid[None], values, np.float32(np.nan))
                    scores_sink.write(values, tile)
                del scores, kept, batch
                overlay.add(rgb[rows, cols], labels, tile)
                if progress is not None:
                    progress.advance(task)
            labels_sink.finish()
        overlay_temp = staging.temp_for(item.outputs["overlay"])
        _write_bytes(overlay_temp, overlay.png())
        if item.georeferenced and labels_sink.kind == "png":
            notes.append("georeferencing not kept: a PNG label map carries none")
        if overlay.reduced:
            notes.append(f"overlay reduced to {overlay.width}x{overlay.height} (--overlay-max-side {options.overlay_max_side})")
        metadata = _metadata(item, vocabulary, colours, dtype, label_nodata, options, overlap, len(tiles), source, overlay)
        metadata_temp = staging.temp_for(item.outputs["metadata"])
        _write_bytes(metadata_temp, (json.dumps(metadata, indent=2) + "\n").encode("utf-8"))
        staging.commit()
    except BaseException:
        staging.discard()
        raise
    finally:
        if progress is not None:
            progress.finish(task)
    return PredictionResult(
        input=item.path, reader=item.reader, plan=item.plan.describe(), height=item.height, width=item.width,
        tiles=len(tiles), outputs=dict(item.outputs), seconds=time.perf_counter() - started,
        overlay_size=(overlay.width, overlay.height), notes=notes,
    )


def _metadata(item: PreparedInput, vocabulary: Vocabulary, colours: np.ndarray, dtype: np.dtype, nodata: int,
              options: PredictOptions, overlap: int, tiles: int, source: RasterSource, overlay: _Overlay) -> dict[str, Any]:
    crs = source.crs.to_string() if getattr(source, "crs", None) is not None else None
    transform = list(source.transform)[:6] if getattr(source, "transform", None) is not None and item.georeferenced else None
    return {
        "input": str(item.path),
        "reader": item.reader,
        "size": [item.width, item.height],
        "method": options.method,
        "checkpoint": options.checkpoint,
        "classes": [
            {"label": index, "name": cls.name, "synonyms": list(cls.synonyms), "colour": [int(c) for c in colours[index]]}
            for index, cls in enumerate(vocabulary)
        ],
        "label_dtype": dtype.name,
        "label_nodata": nodata,
        "raster": item.plan.to_plain(),
        "tile": options.tile,
        "overlap": overlap,
        "tiles": tiles,
        "crs": crs,
        "transform": transform,
        "overlay_size": [overlay.width, overlay.height],
        "outputs": {kind: path.name for kind, path in item.outputs.items()},
    }


def predict_inputs(segmenter, items: Sequence[PreparedInput], vocabulary: Vocabulary, options: PredictOptions,
                   device: Any = "cpu", progress=None) -> list[PredictionResult]:
    """`predict_scene` for each prepared input, in order."""
    return [predict_scene(segmenter, item, vocabulary, options, device, progress) for item in items]


def full_stack_bytes(classes: int, height: int, width: int) -> int:
    """What the scene's float32 (T, H, W) score stack would take (for reports; never allocated)."""
    return 4 * classes * height * width
