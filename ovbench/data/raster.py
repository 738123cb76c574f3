"""Remote-sensing rasters as the 8-bit RGB a model reads: band selection, scaling of 16-bit
and float imagery, nodata masks (docs/datasets.md#raster-images).

A file is opened by one of three readers, and the reader that read it is reported:

* ``rasterio`` (installed with the ``geo`` extra) for TIFF / GeoTIFF: windowed reads, so a
  large scene is read a tile at a time, and its CRS and transform;
* ``tifffile`` for TIFF when rasterio is not installed (the whole band stack is read, memory-
  mapped where the file is uncompressed; no georeferencing);
* ``pillow`` for PNG and JPEG (and what else PIL decodes), with the EXIF orientation applied
  as `ovbench.data.folder.read_rgb` does.

`RasterSettings` says how to get three 8-bit bands out of a file: which bands are R, G, B,
how values become 0..255 (`Scaling`) and which value marks missing pixels. `RasterPlan` is
those settings resolved against one file (percentiles turned into values); it converts raw
windows into an RGB image and a validity mask.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ovbench.errors import ConfigError, DataError, first_line

__all__ = [
    "MAX_STATISTICS_SIDE",
    "READERS",
    "TIFF_SUFFIXES",
    "RasterImage",
    "RasterPlan",
    "RasterSettings",
    "RasterSource",
    "Scaling",
    "open_raster",
    "parse_bands",
    "parse_nodata",
    "parse_scaling",
    "plan_raster",
    "rasterio_available",
    "read_raster_rgb",
]

#: reader names, in the order `open_raster(reader="auto")` prefers them for TIFF files
READERS = ("rasterio", "tifffile", "pillow")
TIFF_SUFFIXES = (".tif", ".tiff")
#: percentiles are taken over the whole image up to this side, beyond it over a nearest-
#: neighbour decimated copy with about this many pixels on the longer side (~4 M samples), so
#: the statistics of a 10000 x 10000 scene cost a few tens of MB, not the scene
MAX_STATISTICS_SIDE = 2048
#: the nodata setting that switches a file's own nodata value off
NODATA_OFF = "none"

_EIGHT_BIT_DTYPES = ("uint8", "bool")


def rasterio_available() -> bool:
    return importlib.util.find_spec("rasterio") is not None


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Scaling:
    """How raw values become 0..255: ``none`` (values already are 0..255), ``percentile``
    (``low``/``high`` are percentiles of each band's valid pixels) or ``range`` (``low``/``high``
    are values). ``low``/``high`` hold one entry for all bands or one per selected band."""

    kind: str
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    def describe(self) -> str:
        if self.kind == "none":
            return "no scaling"
        pairs = [f"{_number(lo)}/{_number(hi)}" for lo, hi in zip(self.low, self.high)]
        what = "percentiles" if self.kind == "percentile" else "range"
        return f"{what} {', '.join(pairs)}" + (" per band" if len(pairs) == 1 else "")

    def to_plain(self) -> Any:
        if self.kind == "none":
            return "none"
        key = "percentiles" if self.kind == "percentile" else "range"
        pairs = [[lo, hi] for lo, hi in zip(self.low, self.high)]
        return {key: pairs[0] if len(pairs) == 1 else pairs}


def parse_scaling(value: Any, where: str = "scaling") -> Scaling | None:
    """A spec's ``scaling`` value: null (not given), ``none``, ``{percentiles: [2, 98]}``,
    ``{range: [0, 3000]}``, or per band ``{range: [[0, 3000], [0, 2800], [0, 2500]]}``."""
    if value is None:
        return None
    if isinstance(value, Scaling):
        return value
    if isinstance(value, str):
        if value.strip().lower() == "none":
            return Scaling("none")
        raise ConfigError(f"{where}: expected none, {{percentiles: [LOW, HIGH]}} or {{range: [LOW, HIGH]}}, got {value!r}")
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigError(f"{where}: expected none, {{percentiles: [LOW, HIGH]}} or {{range: [LOW, HIGH]}}, got {value!r}")
    (key, pairs), = value.items()
    kinds = {"percentiles": "percentile", "percentile": "percentile", "range": "range"}
    if key not in kinds:
        raise ConfigError(f"{where}: unknown scaling {key!r}; expected percentiles or range")
    kind = kinds[key]
    low, high = _parse_pairs(pairs, f"{where}.{key}")
    for lo, hi in zip(low, high):
        if kind == "percentile" and not (0 <= lo < hi <= 100):
            raise ConfigError(f"{where}.{key}: percentiles must satisfy 0 <= low < high <= 100, got {_number(lo)}, {_number(hi)}")
        if kind == "range" and not lo < hi:
            raise ConfigError(f"{where}.{key}: a range needs low < high, got {_number(lo)}, {_number(hi)}")
    return Scaling(kind, low, high)


def _parse_pairs(pairs: Any, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    def number(item: Any) -> float:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ConfigError(f"{where}: expected numbers, got {item!r}")
        return float(item)

    if isinstance(pairs, (list, tuple)) and len(pairs) == 2 and not any(isinstance(p, (list, tuple)) for p in pairs):
        return (number(pairs[0]),), (number(pairs[1]),)
    if isinstance(pairs, (list, tuple)) and pairs and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        return tuple(number(p[0]) for p in pairs), tuple(number(p[1]) for p in pairs)
    raise ConfigError(f"{where}: expected [LOW, HIGH] or one [LOW, HIGH] per band, got {pairs!r}")


def parse_bands(value: Any, where: str = "bands") -> tuple[int, ...] | None:
    """1-based band numbers used as R, G, B (GDAL's numbering), or one band shown as grey."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        try:
            value = [int(part) for part in parts]
        except ValueError:
            raise ConfigError(f"{where}: expected band numbers separated by commas (e.g. 3,2,1), got {value!r}") from None
    if not isinstance(value, (list, tuple)) or len(value) not in (1, 3):
        raise ConfigError(f"{where}: expected three band numbers (R, G, B) or one (grey), got {value!r}")
    for band in value:
        if isinstance(band, bool) or not isinstance(band, int) or band < 1:
            raise ConfigError(f"{where}: band numbers start at 1, got {band!r}")
    return tuple(value)


def parse_nodata(value: Any, where: str = "nodata") -> tuple[float | None, bool]:
    """(nodata value, whether the file's own nodata is used): null = the file's, a number
    overrides it, ``none`` switches it off."""
    if value is None:
        return None, True
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == NODATA_OFF:
            return None, False
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, nan or none, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, nan or none, got {value!r}")
    return float(value), False


@dataclass(frozen=True)
class RasterSettings:
    """What a dataset spec or `ovbench predict` says about reading its rasters."""

    bands: tuple[int, ...] | None = None
    scaling: Scaling | None = None
    nodata: float | None = None
    #: use the nodata value the file declares (when `nodata` is None)
    use_file_nodata: bool = True

    @classmethod
    def from_values(cls, bands: Any = None, scaling: Any = None, nodata: Any = None, where: str = "") -> "RasterSettings":
        prefix = f"{where}: " if where else ""
        try:
            parsed_bands = parse_bands(bands)
            parsed_scaling = parse_scaling(scaling)
            value, use_file = parse_nodata(nodata)
        except ConfigError as exc:
            raise ConfigError(f"{prefix}{exc}") from None
        settings = cls(parsed_bands, parsed_scaling, value, use_file)
        if parsed_bands and parsed_scaling and parsed_scaling.kind != "none" and len(parsed_scaling.low) not in (1, len(parsed_bands)):
            raise ConfigError(
                f"{prefix}scaling gives {len(parsed_scaling.low)} [LOW, HIGH] pairs for {len(parsed_bands)} bands; "
                "give one pair for all bands or one per band"
            )
        return settings

    @property
    def is_default(self) -> bool:
        """Nothing asked for: 8-bit RGB-like files only, read as `read_rgb` reads them."""
        return self.bands is None and self.scaling is None and self.nodata is None and self.use_file_nodata


# --------------------------------------------------------------------------- sources

Window = tuple[int, int, int, int]  # top, left, height, width


class RasterSource:
    """An opened image file: its size, bands and data type, read a window at a time.

    `read` returns (C, h, w) in the file's data type for 1-based `bands`.
    """

    reader: str = ""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.height = 0
        self.width = 0
        self.count = 0
        self.dtype = "uint8"
        #: the file's declared nodata value, if any
        self.file_nodata: float | None = None
        #: 1-based band number of an alpha band, if the file has one
        self.alpha_band: int | None = None
        #: rasterio CRS / Affine when the reader is rasterio, else None
        self.crs: Any = None
        self.transform: Any = None
        #: the file carries georeferencing (even when this reader cannot keep it)
        self.georeferenced = False

    def read(self, bands: Sequence[int], window: Window | None = None) -> np.ndarray:
        raise NotImplementedError

    def read_sample(self, bands: Sequence[int], max_side: int = MAX_STATISTICS_SIDE) -> np.ndarray:
        """The bands over the whole image, nearest-neighbour decimated to at most `max_side`."""
        step = _decimation_step(self.height, self.width, max_side)
        return self.read(bands)[:, ::step, ::step]

    def describe(self) -> str:
        return f"{self.count} band{'s' if self.count != 1 else ''} of {self.dtype}, {self.width}x{self.height}"

    def close(self) -> None:
        pass

    def __enter__(self) -> "RasterSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _decimation_step(height: int, width: int, max_side: int) -> int:
    return max(1, math.ceil(max(height, width) / max_side))


def _crop(array: np.ndarray, window: Window | None) -> np.ndarray:
    if window is None:
        return array
    top, left, height, width = window
    return array[:, top : top + height, left : left + width]


class _RasterioSource(RasterSource):
    reader = "rasterio"

    def __init__(self, path: Path):
        super().__init__(path)
        import rasterio
        from rasterio.enums import ColorInterp

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # NotGeoreferencedWarning for plain images
                self._dataset = rasterio.open(path)
        except rasterio.errors.RasterioIOError as exc:
            raise DataError(f"{path}: cannot decode image ({first_line(exc)})") from None
        ds = self._dataset
        self.height, self.width, self.count = ds.height, ds.width, ds.count
        self.dtype = str(np.result_type(*ds.dtypes)) if ds.count else "uint8"
        nodata = ds.nodatavals[0] if ds.count else None
        self.file_nodata = None if nodata is None else float(nodata)
        alpha = [i + 1 for i, interp in enumerate(ds.colorinterp) if interp == ColorInterp.alpha]
        self.alpha_band = alpha[0] if alpha else None
        self.crs = ds.crs
        self.transform = ds.transform
        self.georeferenced = ds.crs is not None or not ds.transform.is_identity
        self._colormap = None
        if ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette:
            try:
                self._colormap = ds.colormap(1)
            except ValueError:
                self._colormap = None

    def read(self, bands: Sequence[int], window: Window | None = None) -> np.ndarray:
        from rasterio.windows import Window as RioWindow

        rio_window = None if window is None else RioWindow(window[1], window[0], window[3], window[2])
        try:
            return self._dataset.read(indexes=list(bands), window=rio_window)
        except Exception as exc:  # rasterio raises several types for damaged blocks
            raise DataError(f"{self.path}: cannot decode image ({first_line(exc)})") from None

    def read_sample(self, bands: Sequence[int], max_side: int = MAX_STATISTICS_SIDE) -> np.ndarray:
        step = _decimation_step(self.height, self.width, max_side)
        if step == 1:
            return self.read(bands)
        from rasterio.enums import Resampling

        shape = (len(bands), math.ceil(self.height / step), math.ceil(self.width / step))
        try:
            return self._dataset.read(indexes=list(bands), out_shape=shape, resampling=Resampling.nearest)
        except Exception as exc:
            raise DataError(f"{self.path}: cannot decode image ({first_line(exc)})") from None

    def palette(self) -> np.ndarray | None:
        """A palette band's colour table as (256, 3) uint8, or None."""
        if not self._colormap:
            return None
        table = np.zeros((256, 3), np.uint8)
        for index, colour in self._colormap.items():
            if 0 <= index < 256:
                table[index] = colour[:3]
        return table

    def close(self) -> None:
        self._dataset.close()


#: TIFF tags that carry georeferencing (ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory)
_GEO_TAGS = (33550, 33922, 34264, 34735)
_GDAL_NODATA = 42113


class _TifffileSource(RasterSource):
    reader = "tifffile"

    def __init__(self, path: Path):
        super().__init__(path)
        import tifffile

        try:
            self._file = tifffile.TiffFile(path)
            series = self._file.series[0]
            page = self._file.pages[0]
        except FileNotFoundError:
            raise DataError(f"{path}: image file not found") from None
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error ...
            raise DataError(f"{path}: cannot decode image ({first_line(exc)})") from None
        self._series = series
        shape, axes = tuple(series.shape), series.axes
        if len(shape) == 2:
            self._layout = "YX"
            self.count = 1
            self.height, self.width = shape
        elif len(shape) == 3 and axes[-1] == "S":
            self._layout = "YXS"
            self.height, self.width, self.count = shape
        elif len(shape) == 3:
            self._layout = "SYX"
            self.count, self.height, self.width = shape
        else:
            raise DataError(f"{path}: unsupported TIFF layout (axes {axes}, shape {shape})")
        self.dtype = str(series.dtype)
        nodata = page.tags.get(_GDAL_NODATA)
        if nodata is not None:
            try:
                self.file_nodata = float(str(nodata.value).strip().strip("\x00"))
            except ValueError:
                self.file_nodata = None
        extra = page.extrasamples if isinstance(page.extrasamples, tuple) else (page.extrasamples,)
        if self.count in (2, 4) and extra and int(extra[-1]) in (1, 2):
            self.alpha_band = self.count
        self.georeferenced = any(tag in page.tags for tag in _GEO_TAGS)
        self._array: np.ndarray | None = None

    def _bands_first(self) -> np.ndarray:
        if self._array is None:
            try:
                try:
                    # an uncompressed file maps instead of loading
                    data = self._file.asarray(out="memmap") if self._series.dataoffset is not None else self._file.asarray()
                except (ValueError, TypeError):
                    data = self._file.asarray()
            except Exception as exc:
                raise DataError(f"{self.path}: cannot decode image ({first_line(exc)})") from None
            if self._layout == "YX":
                data = data[None]
            elif self._layout == "YXS":
                data = np.moveaxis(data, -1, 0)
            self._array = data
        return self._array

    def read(self, bands: Sequence[int], window: Window | None = None) -> np.ndarray:
        data = _crop(self._bands_first(), window)
        return np.stack([np.asarray(data[band - 1]) for band in bands])

    def close(self) -> None:
        self._file.close()
        self._array = None


class _PillowSource(RasterSource):
    reader = "pillow"

    def __init__(self, path: Path):
        super().__init__(path)
        from PIL import Image, UnidentifiedImageError

        from ovbench.data.folder import _EXIF_ORIENTATION, _unsupported_layout

        try:
            with Image.open(path) as img:
                self._unsupported = _unsupported_layout(img)
                self._orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
                width, height = img.size
                mode = img.mode
        except FileNotFoundError:
            raise DataError(f"{path}: image file not found") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path}: cannot decode image ({exc})") from None
        if self._orientation in (5, 6, 7, 8):
            width, height = height, width
        self.width, self.height = width, height
        self._mode = mode
        self.count, self.dtype, self.alpha_band = _pillow_bands(mode)
        self._array: np.ndarray | None = None

    @property
    def refusal(self) -> str | None:
        """Why PIL would read wrong pixels ("3 bands of uint16"): PIL drops the low byte of 16-bit
        RGB and reads a 4-band multispectral TIFF as RGBA."""
        if self._unsupported and self._mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
            return self._unsupported
        return None

    def _bands_first(self) -> np.ndarray:
        if self._array is None:
            from PIL import Image, ImageOps, UnidentifiedImageError

            try:
                with Image.open(self.path) as img:
                    img.load()  # a truncated file fails here
                    if self._orientation in range(2, 9):
                        img = ImageOps.exif_transpose(img)
                    # the conversions read_rgb makes (a palette's transparency is dropped there too)
                    converted = {"P": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "RGBX": "RGB", "PA": "RGBA", "1": "L"}
                    if img.mode in converted:
                        img = img.convert(converted[img.mode])
                    data = np.asarray(img)
            except FileNotFoundError:
                raise DataError(f"{self.path}: image file not found") from None
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise DataError(f"{self.path}: cannot decode image ({exc})") from None
            data = data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)
            self._array = data
            self.count = data.shape[0]
            self.dtype = str(data.dtype)
        return self._array

    def read(self, bands: Sequence[int], window: Window | None = None) -> np.ndarray:
        data = _crop(self._bands_first(), window)
        return np.stack([data[band - 1] for band in bands])

    def close(self) -> None:
        self._array = None


def _pillow_bands(mode: str) -> tuple[int, str, int | None]:
    """(bands, dtype, alpha band) a PIL mode decodes to (after palette expansion)."""
    table = {
        "1": (1, "uint8", None), "L": (1, "uint8", None), "LA": (2, "uint8", 2), "P": (3, "uint8", None),
        "PA": (4, "uint8", 4), "RGB": (3, "uint8", None), "RGBA": (4, "uint8", 4), "RGBX": (3, "uint8", None),
        "CMYK": (3, "uint8", None), "YCbCr": (3, "uint8", None), "I;16": (1, "uint16", None),
        "I;16L": (1, "uint16", None), "I;16B": (1, "uint16", None), "I": (1, "int32", None), "F": (1, "float32", None),
    }
    return table.get(mode, (3, "uint8", None))


def open_raster(path: str | Path, reader: str = "auto") -> RasterSource:
    """Open an image with `reader` (``auto``: rasterio for TIFF when installed, else tifffile;
    pillow for other formats, and rasterio for a PNG PIL cannot read faithfully)."""
    path = Path(path)
    if reader not in ("auto", *READERS):
        raise ConfigError(f"unknown reader {reader!r}; expected auto, {', '.join(READERS)}")
    if not path.exists():
        raise DataError(f"{path}: image file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an image file")
    if reader == "rasterio" and not rasterio_available():
        raise ConfigError("reader rasterio is not installed: pip install 'ovbench[geo]'")
    if reader == "auto":
        if path.suffix.lower() in TIFF_SUFFIXES:
            reader = "rasterio" if rasterio_available() else "tifffile"
        else:
            source = _PillowSource(path)
            if source.refusal and rasterio_available():
                return _RasterioSource(path)
            return source
    return {"rasterio": _RasterioSource, "tifffile": _TifffileSource, "pillow": _PillowSource}[reader](path)


# --------------------------------------------------------------------------- conversion


@dataclass(frozen=True)
class RasterPlan:
    """Settings resolved against one file: the bands read, the scaling as values per band,
    the nodata value and alpha band that mark missing pixels."""

    path: Path
    reader: str
    bands: tuple[int, ...]
    #: "none" (values taken as 0..255), "identity" (8-bit data), "linear" (low -> 0, high -> 255)
    mode: str
    low: tuple[float, ...]
    high: tuple[float, ...]
    nodata: float | None
    alpha_band: int | None
    #: the settings' scaling (percentiles stay visible for reports)
    scaling: Scaling | None
    #: the palette of a palette band read through rasterio, (256, 3) uint8
    palette: np.ndarray | None = None

    @property
    def read_bands(self) -> tuple[int, ...]:
        return self.bands + ((self.alpha_band,) if self.alpha_band else ())

    def read(self, source: RasterSource, window: Window | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(RGB uint8 (h,w,3), valid bool (h,w) or None when every pixel is valid) of a window."""
        return self.convert(source.read(self.read_bands, window))

    def convert(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw (C,h,w) bands (in `read_bands` order) -> (RGB uint8 (h,w,3), valid mask or None)."""
        bands = raw[: len(self.bands)]
        valid = self._valid(raw)
        if self.palette is not None:
            rgb = self.palette[np.asarray(bands[0], dtype=np.intp).clip(0, 255)]
        else:
            if self.mode == "identity":
                scaled = np.asarray(bands, dtype=np.uint8)
            elif self.mode == "none":
                scaled = self._as_is(bands, valid)
            else:
                scaled = self._linear(bands)
            if scaled.shape[0] == 1:
                scaled = np.repeat(scaled, 3, axis=0)
            rgb = np.moveaxis(scaled, 0, -1)
        if valid is not None:
            rgb = np.where(valid[..., None], rgb, np.uint8(0))
        return np.ascontiguousarray(rgb, dtype=np.uint8), valid

    def _valid(self, raw: np.ndarray) -> np.ndarray | None:
        bands = raw[: len(self.bands)]
        invalid = None
        if np.issubdtype(bands.dtype, np.floating):
            invalid = ~np.isfinite(bands).all(axis=0)
        if self.nodata is not None:
            # a pixel is missing when every selected band holds the nodata value (a scene's
            # outside); one band at that value is taken as a measurement
            missing = np.isnan(bands).all(axis=0) if math.isnan(self.nodata) else (bands == self.nodata).all(axis=0)
            invalid = missing if invalid is None else invalid | missing
        if self.alpha_band:
            transparent = raw[len(self.bands)] == 0
            invalid = transparent if invalid is None else invalid | transparent
        if invalid is None or not invalid.any():
            return None
        return ~invalid

    def _linear(self, bands: np.ndarray) -> np.ndarray:
        out = np.empty(bands.shape, dtype=np.uint8)
        for index in range(bands.shape[0]):
            low, high = self.low[index], self.high[index]
            # multiply before dividing: a value on an exact step (1500 of 0..3000) stays exact
            values = (bands[index].astype(np.float32) - np.float32(low)) * np.float32(255)
            if high > low:
                values /= np.float32(high - low)
            else:
                values[:] = 0  # a constant band has no contrast to stretch
            # round half up, after clipping (NaN becomes 0; such pixels are masked anyway)
            np.clip(values, 0, 255, out=values)
            out[index] = np.nan_to_num(np.floor(values + np.float32(0.5)), nan=0.0).astype(np.uint8)
        return out

    def _as_is(self, bands: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        checked = bands if valid is None else bands[:, valid]
        if checked.size and (float(np.min(checked)) < 0 or float(np.max(checked)) > 255):
            raise DataError(
                f"{self.path}: values {_number(float(np.min(checked)))}..{_number(float(np.max(checked)))} lie outside "
                "0..255 but scaling is none; give percentiles or a range"
            )
        return np.floor(np.nan_to_num(bands.astype(np.float32)) + 0.5).clip(0, 255).astype(np.uint8)

    def describe(self) -> str:
        """'bands 3,2,1; range 120.0/3010.5, ...; nodata 0' for logs and reports."""
        parts = [f"bands {','.join(map(str, self.bands))}"]
        if self.mode == "linear":
            pairs = ", ".join(f"{_number(lo)}..{_number(hi)}" for lo, hi in zip(self.low, self.high))
            percentiles = self.scaling is not None and self.scaling.kind == "percentile"
            parts.append(f"{self.scaling.describe()} -> {pairs}" if percentiles else f"range {pairs}")
        elif self.mode == "none":
            parts.append("values as 0..255")
        if self.nodata is not None:
            parts.append(f"nodata {_number(self.nodata)}")
        if self.alpha_band:
            parts.append(f"alpha band {self.alpha_band}")
        return "; ".join(parts)

    def to_plain(self) -> dict[str, Any]:
        return {
            "reader": self.reader, "bands": list(self.bands), "mode": self.mode,
            "low": list(self.low), "high": list(self.high),
            "scaling": self.scaling.to_plain() if self.scaling is not None else None,
            "nodata": None if self.nodata is None or math.isnan(self.nodata) else self.nodata,
            "nodata_is_nan": self.nodata is not None and math.isnan(self.nodata),
            "alpha_band": self.alpha_band,
        }


def plan_raster(source: RasterSource, settings: RasterSettings, *, bands_hint: str = "bands: [3, 2, 1]",
                scaling_hint: str = "scaling: {percentiles: [2, 98]}") -> RasterPlan:
    """Check `settings` against the file and resolve them; refusals name the file and say what
    to set (`bands_hint` / `scaling_hint`: the spelling of the caller, a spec or the CLI)."""
    path = source.path
    refusal = getattr(source, "refusal", None)
    if refusal:
        raise DataError(
            f"{path}: {refusal} cannot be read faithfully by PIL: store it as a TIFF, or install rasterio "
            "(pip install 'ovbench[geo]')"
        )
    alpha = source.alpha_band if settings.bands is None or source.alpha_band not in settings.bands else None
    if settings.bands is not None:
        out_of_range = [band for band in settings.bands if band > source.count]
        if out_of_range:
            raise DataError(
                f"{path}: band {out_of_range[0]} asked for, but the file has {source.count} band{'s' if source.count != 1 else ''}"
            )
        bands = settings.bands
    else:
        colour = source.count - (1 if source.alpha_band else 0)
        if colour not in (1, 3):
            raise DataError(
                f"{path}: {source.count} bands of {source.dtype}; multi-band images are read only when three bands "
                f"are mapped to R, G, B ({bands_hint})"
            )
        bands = (1,) if colour == 1 else (1, 2, 3)
    nodata = settings.nodata if settings.nodata is not None else (source.file_nodata if settings.use_file_nodata else None)
    palette = source.palette() if isinstance(source, _RasterioSource) and bands == (1,) else None
    scaling = settings.scaling
    if palette is not None and scaling is None:
        return RasterPlan(path, source.reader, bands, "identity", (), (), nodata, alpha, None, palette)
    if scaling is None:
        if source.dtype not in _EIGHT_BIT_DTYPES:
            raise DataError(
                f"{path}: {len(bands)} band{'s' if len(bands) != 1 else ''} of {source.dtype} need scaling to 8 bits: "
                f"give percentiles or a fixed range ({scaling_hint})"
            )
        return RasterPlan(path, source.reader, bands, "identity", (), (), nodata, alpha, None)
    if scaling.kind == "none":
        return RasterPlan(path, source.reader, bands, "none", (), (), nodata, alpha, scaling)
    if len(scaling.low) not in (1, len(bands)):
        raise DataError(
            f"{path}: scaling gives {len(scaling.low)} [LOW, HIGH] pairs for {len(bands)} bands; "
            "give one pair for all bands or one per band"
        )
    per_band = len(bands)
    low = scaling.low * per_band if len(scaling.low) == 1 else scaling.low
    high = scaling.high * per_band if len(scaling.high) == 1 else scaling.high
    plan = RasterPlan(path, source.reader, bands, "linear", tuple(low), tuple(high), nodata, alpha, scaling)
    if scaling.kind == "range":
        return plan
    sample = source.read_sample(plan.read_bands)
    valid = plan._valid(sample)
    values_low, values_high = [], []
    for index in range(per_band):
        band = sample[index]
        # in the file's own type: a float64 copy of a 4-megapixel sample would cost 32 MB a band
        values = band[valid] if valid is not None else band.reshape(-1)
        if values.size == 0:
            values_low.append(0.0)
            values_high.append(0.0)
            continue
        lo, hi = np.percentile(values, [low[index], high[index]])
        values_low.append(float(lo))
        values_high.append(float(hi))
    return RasterPlan(path, source.reader, bands, "linear", tuple(values_low), tuple(values_high), nodata, alpha, scaling)


@dataclass(frozen=True)
class RasterImage:
    """A whole image as a model reads it: RGB uint8 (H,W,3), valid pixels (None: all), and how."""

    rgb: np.ndarray
    valid: np.ndarray | None
    reader: str
    plan: RasterPlan | None = None


def read_raster_rgb(path: str | Path, settings: RasterSettings, reader: str = "auto", **hints: str) -> RasterImage:
    """The whole file through `settings` (dataset samples; `ovbench predict` reads windows)."""
    with open_raster(path, reader) as source:
        plan = plan_raster(source, settings, **hints)
        rgb, valid = plan.read(source)
    return RasterImage(rgb, valid, source.reader, plan)


def _number(value: float) -> str:
    return f"{value:g}"
