"""Raster I/O: opening and checking inputs, window iteration, validity masks, and the atomic COG writer.

This is the only module that touches GeoTIFFs. Models never see a file, and this module never sees a model.
A pixel is *valid* only when every band is valid: not the nodata value, finite, and not masked.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from pipeline.errors import InputError, OutputError

#: GDAL settings for reading: a small block cache keeps memory bounded whatever the raster's size.
READ_ENV = {"GDAL_CACHEMAX": 64, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}

#: Target pixel count of one window when the file's own blocks are strips (untiled files).
STRIP_WINDOW_PIXELS = 256 * 256


@dataclass(frozen=True)
class RasterInfo:
    """What rsvae needs to know of a raster: grid, georeference, bands and nodata."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: Any
    transform: Any
    nodata: float | None
    descriptions: tuple[str | None, ...]
    wavelengths: tuple[float, ...] | None
    block_shape: tuple[int, int]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def band_names(self) -> list[str]:
        """Band descriptions where set, else ``band_1`` … ``band_N``."""
        return [d if d else f"band_{i + 1}" for i, d in enumerate(self.descriptions)]

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None or not self.transform.is_identity


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a raster file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    return path


@contextlib.contextmanager
def open_raster(path: str | Path) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster for reading, turning GDAL's complaints into one-line InputErrors that name the file."""
    path = _check_path(path)
    with rasterio.Env(**READ_ENV):
        try:
            ds = rasterio.open(path)
        except RasterioError as exc:
            raise InputError(f"{path}: not a readable raster ({_gdal_message(exc)})") from None
        with ds:
            if ds.count < 1:
                raise InputError(f"{path}: raster has no bands")
            yield ds


def _gdal_message(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return msg[:300]


def _wavelengths(ds: rasterio.io.DatasetReader) -> tuple[float, ...] | None:
    values = []
    for b in range(1, ds.count + 1):
        tags = {k.lower(): v for k, v in ds.tags(b).items()}
        raw = tags.get("wavelength")
        try:
            values.append(float(raw))
        except (TypeError, ValueError):
            return None
    return tuple(values)


def info_of(ds: rasterio.io.DatasetReader) -> RasterInfo:
    """Describe an open dataset."""
    return RasterInfo(
        path=str(ds.name),
        width=ds.width,
        height=ds.height,
        count=ds.count,
        dtype=ds.dtypes[0],
        crs=ds.crs,
        transform=ds.transform,
        nodata=ds.nodata,
        descriptions=tuple(ds.descriptions),
        wavelengths=_wavelengths(ds),
        block_shape=tuple(ds.block_shapes[0]),
        tags=dict(ds.tags()),
    )


def describe(path: str | Path) -> RasterInfo:
    """Open ``path``, check it and describe it."""
    with open_raster(path) as ds:
        return info_of(ds)


def iter_windows(ds: rasterio.io.DatasetReader) -> list[Window]:
    """The windows to stream a raster by: its own blocks, or groups of strips of about 64 k pixels."""
    bh, bw = ds.block_shapes[0]
    if bw < ds.width:  # tiled: the file's own blocks, read once each
        return [w for _, w in ds.block_windows(1)]
    rows = max(bh, (STRIP_WINDOW_PIXELS // max(ds.width, 1)) // bh * bh)
    return [Window(0, r, ds.width, min(rows, ds.height - r)) for r in range(0, ds.height, rows)]


def _needs_mask_read(ds: rasterio.io.DatasetReader) -> bool:
    """Whether validity needs GDAL's mask bands (a dataset mask, alpha or per-band masks), not just nodata."""
    for flags in ds.mask_flag_enums:
        if MaskFlags.all_valid in flags or MaskFlags.nodata in flags:
            continue
        return True
    return False


def valid_mask(data: np.ndarray, nodata: float | None, masks: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel validity of a band-major block ``data`` (bands, rows, cols): every band must be valid."""
    valid = np.ones(data.shape[1:], dtype=bool)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    if nodata is not None and not math.isnan(nodata) and _representable(nodata, data.dtype):
        valid &= (data != data.dtype.type(nodata)).all(axis=0)
    if masks is not None:
        valid &= (masks != 0).all(axis=0)
    return valid


def _representable(value: float, dtype: np.dtype) -> bool:
    """Whether a nodata value can occur in an array of ``dtype`` (a nodata of -9999 cannot in uint16)."""
    if np.issubdtype(dtype, np.integer):
        ii = np.iinfo(dtype)
        return float(value).is_integer() and ii.min <= value <= ii.max
    return True


class WindowReader:
    """Reads band-major blocks and their validity from one open dataset."""

    def __init__(self, ds: rasterio.io.DatasetReader):
        self.ds = ds
        self.nodata = ds.nodata
        self.read_masks = _needs_mask_read(ds)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(data, valid)``: data (bands, rows, cols) in the file's dtype, valid (rows, cols) bool."""
        try:
            data = self.ds.read(window=window)
            masks = self.ds.read_masks(window=window) if self.read_masks else None
        except RasterioError as exc:
            raise InputError(
                f"{self.ds.name}: could not read window at row {int(window.row_off)}, col {int(window.col_off)} "
                f"(file truncated or corrupted? {_gdal_message(exc)})"
            ) from None
        return data, valid_mask(data, self.nodata, masks)

    def read_with_halo(self, window: Window, halo: int) -> tuple[np.ndarray, np.ndarray]:
        """Like ``read``, for ``window`` grown by ``halo`` pixels on every side; beyond the raster is invalid."""
        r0, c0 = int(window.row_off) - halo, int(window.col_off) - halo
        r1, c1 = int(window.row_off + window.height) + halo, int(window.col_off + window.width) + halo
        rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r1, self.ds.height), min(c1, self.ds.width)
        data, valid = self.read(Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
        pad = ((rr0 - r0, r1 - rr1), (cc0 - c0, c1 - cc1))
        return np.pad(data, ((0, 0), *pad)), np.pad(valid, pad)


#: Nodata of float outputs when the input has none (or a NaN one): finite, so every GIS tool honours it.
DEFAULT_NODATA = -9999.0


def output_nodata(info: RasterInfo) -> float:
    """The nodata value of a float32 output: the input's own when finite, else DEFAULT_NODATA."""
    if info.nodata is None or not math.isfinite(info.nodata) or abs(info.nodata) > 3e38:
        return DEFAULT_NODATA
    return float(info.nodata)


def check_same_bands(info: RasterInfo, count: int, source: str) -> None:
    """Raise a clear InputError when a raster's band count differs from what ``source`` expects."""
    if info.count != count:
        raise InputError(f"{info.path}: has {info.count} bands but {source} expects {count}")


# --------------------------------------------------------------------------------------------- writing

#: Creation options of the final Cloud Optimized GeoTIFF: deflate + floating-point predictor is what every
#: GIS tool reads.
COG_OPTIONS = {
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "YES",
    "BLOCKSIZE": 256,
    "OVERVIEWS": "AUTO",
    "NUM_THREADS": "ALL_CPUS",
    "STATISTICS": "YES",
}


def _temp_path(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


class RasterWriter:
    """Writes a raster window by window to a temporary file, then makes it a COG and renames it into place.

    Used as a context manager: on an exception nothing appears at ``path`` and the temporaries are removed;
    an earlier file at ``path`` stays untouched until the new one is complete.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        count: int,
        dtype: str,
        crs: Any = None,
        transform: Any = None,
        nodata: float | None = None,
        descriptions: Sequence[str] | None = None,
        band_tags: Sequence[dict[str, Any]] | None = None,
        tags: dict[str, Any] | None = None,
        resampling: str = "AVERAGE",
    ):
        self.path = Path(path)
        self.profile = dict(
            driver="GTiff", width=width, height=height, count=count, dtype=dtype, crs=crs,
            transform=transform, nodata=nodata, tiled=True, blockxsize=256, blockysize=256,
            compress="ZSTD", zstd_level=1, bigtiff="IF_SAFER",
        )
        if transform is None:
            del self.profile["transform"]
        self.descriptions = list(descriptions) if descriptions else None
        self.band_tags = list(band_tags) if band_tags else None
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.resampling = resampling
        self._tmp = _temp_path(self.path, ".tmp.tif")
        self._cog = _temp_path(self.path, ".cog.tif")
        self._ds = None

    def __enter__(self) -> RasterWriter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(self.path.parent, os.W_OK):
                raise PermissionError(f"folder {self.path.parent} is not writable")
            self._ds = rasterio.open(self._tmp, "w", **self.profile)
        except (OSError, RasterioError) as exc:
            self._cleanup()
            raise OutputError(f"{self.path}: cannot write output ({_gdal_message(exc)})") from None
        if self.descriptions:
            for i, d in enumerate(self.descriptions, start=1):
                self._ds.set_band_description(i, d)
        if self.band_tags:
            for i, t in enumerate(self.band_tags, start=1):
                self._ds.update_tags(i, **{k: str(v) for k, v in t.items()})
        if self.tags:
            self._ds.update_tags(**self.tags)
        return self

    def write(self, array: np.ndarray, window: Window | None = None) -> None:
        """Write a (bands, rows, cols) block at ``window`` (the whole raster when None)."""
        try:
            self._ds.write(array, window=window)
        except (OSError, RasterioError) as exc:
            raise OutputError(f"{self.path}: write failed ({_gdal_message(exc)})") from None

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._ds is not None:
                self._ds.close()
            if exc_type is None:
                self._finish()
        except (OSError, RasterioError) as err:
            self._cleanup()
            raise OutputError(f"{self.path}: write failed ({_gdal_message(err)})") from None
        finally:
            self._cleanup()

    def _finish(self) -> None:
        opts = dict(COG_OPTIONS, RESAMPLING=self.resampling)
        with rasterio.Env(GDAL_CACHEMAX=64):
            rasterio.shutil.copy(self._tmp, self._cog, driver="COG", **opts)
        os.replace(self._cog, self.path)

    def _cleanup(self) -> None:
        for p in (self._tmp, self._cog):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            aux = p.with_name(p.name + ".aux.xml")
            with contextlib.suppress(FileNotFoundError):
                aux.unlink()


def write_raster(path: str | Path, array: np.ndarray, **kwargs: Any) -> None:
    """Write a whole in-memory (bands, rows, cols) array as a COG, atomically."""
    if array.ndim == 2:
        array = array[None]
    with RasterWriter(path, width=array.shape[2], height=array.shape[1], count=array.shape[0],
                      dtype=str(array.dtype), **kwargs) as w:
        w.write(array)


def writer_like(info: RasterInfo, path: str | Path, count: int, dtype: str = "float32",
                nodata: float | None = None, **kwargs: Any) -> RasterWriter:
    """A RasterWriter on the same grid and georeference as the input ``info``."""
    return RasterWriter(
        path, width=info.width, height=info.height, count=count, dtype=dtype, crs=info.crs,
        transform=info.transform if info.georeferenced else None, nodata=nodata, **kwargs,
    )
