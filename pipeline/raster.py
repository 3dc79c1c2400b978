"""Raster I/O: opening and checking inputs, window iteration, validity masks, and the atomic COG writer.

This is the only module that touches GeoTIFFs. Models never see a file, and this module never sees a model.
A pixel is *valid* only when every band is valid: not the nodata value, finite, and not masked.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.enums import Interleaving, MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from pipeline.errors import InputError, OutputError

#: Everything GDAL raises through rasterio: its own errors and the raw CPLE_* ones some calls let through.
GDAL_ERRORS = (RasterioError, CPLE_BaseError)

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
        except GDAL_ERRORS as exc:
            raise InputError(f"{path}: not a readable raster ({_gdal_message(exc)})") from None
        with ds:
            if ds.count < 1:
                raise InputError(f"{path}: raster has no bands")
            if any(np.dtype(d).kind == "c" for d in ds.dtypes):
                raise InputError(f"{path}: complex pixel type {ds.dtypes[0]} is not supported")
            yield ds


def _gdal_message(exc: BaseException) -> str:
    """GDAL's complaint in one line; rasterio's "See previous exception" is replaced by that exception."""
    while "previous exception" in str(exc) and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:300]
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
        except GDAL_ERRORS as exc:
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
    """The nodata value of a float32 output: the input's own when finite and negative, else DEFAULT_NODATA.

    Scores are non-negative, so a negative nodata never hides a valid pixel; an input nodata of 0 (common
    for integer imagery) would.
    """
    if info.nodata is None or not math.isfinite(info.nodata) or info.nodata >= 0 or abs(info.nodata) > 3e38:
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
        TEMPORARIES.update((self._tmp, self._cog))

    def __enter__(self) -> RasterWriter:
        try:
            make_parent(self.path)
            if not os.access(self.path.parent, os.W_OK):
                raise PermissionError(f"folder {self.path.parent} is not writable")
            self._ds = rasterio.open(self._tmp, "w", **self.profile)
            if self.descriptions:
                for i, d in enumerate(self.descriptions, start=1):
                    self._ds.set_band_description(i, d)
            if self.band_tags:
                for i, t in enumerate(self.band_tags, start=1):
                    self._ds.update_tags(i, **{k: str(v) for k, v in t.items()})
            if self.tags:
                self._ds.update_tags(**self.tags)
        except (OSError, *GDAL_ERRORS) as exc:
            note = _disk_note(self.path.parent)
            self._abort()
            raise OutputError(f"{self.path}: cannot write output ({_gdal_message(exc)}){note}") from None
        except BaseException:  # Ctrl-C / SIGTERM after the file was made: __exit__ will not run
            self._abort()
            raise
        return self

    def _abort(self) -> None:
        if self._ds is not None:
            with contextlib.suppress(Exception):
                self._ds.close()
        self._cleanup()

    def write(self, array: np.ndarray, window: Window | None = None) -> None:
        """Write a (bands, rows, cols) block at ``window`` (the whole raster when None)."""
        try:
            self._ds.write(array, window=window)
        except (OSError, *GDAL_ERRORS) as exc:
            raise OutputError(f"{self.path}: write failed ({_gdal_message(exc)}){_disk_note(self.path.parent)}") from None

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._ds is not None:
                self._ds.close()
            if exc_type is None:
                self._finish()
        except (OSError, *GDAL_ERRORS) as err:
            note = _disk_note(self.path.parent)
            self._cleanup()
            raise OutputError(f"{self.path}: write failed ({_gdal_message(err)}){note}") from None
        finally:
            self._cleanup()

    def _finish(self) -> None:
        opts = dict(COG_OPTIONS, RESAMPLING=self.resampling)
        with rasterio.Env(GDAL_CACHEMAX=64):
            check_complete(self._tmp)  # GDAL reports a failed flush at close only on stderr
            rasterio.shutil.copy(self._tmp, self._cog, driver="COG", **opts)
            check_complete(self._cog)
        os.replace(self._cog, self.path)

    def _cleanup(self) -> None:
        remove_temporaries((self._tmp, self._cog))


#: Temporary files of this process's writers not yet removed or renamed into place. The CLI removes what is
#: left when interrupted: a signal can land where no writer's own cleanup runs (entering or leaving it).
TEMPORARIES: set[Path] = set()


def remove_temporaries(paths: Sequence[Path] | None = None) -> None:
    """Delete temporaries (``paths``, or all of ``TEMPORARIES``) and their GDAL side files; never an output."""
    for p in list(TEMPORARIES if paths is None else paths):
        for q in (p, p.with_name(p.name + ".aux.xml")):
            with contextlib.suppress(OSError):  # absent, or a read-only folder where nothing was made
                q.unlink()
        TEMPORARIES.discard(p)


def check_distinct(source: str | Path, outputs: Sequence[str | Path | None]) -> None:
    """Refuse outputs that are the input or each other: the rename would replace the input or a sibling."""
    seen = {Path(source).resolve(): "the input"}
    for out in outputs:
        if out is None:
            continue
        key = Path(out).resolve()
        if key in seen:
            raise OutputError(f"{out}: is also {seen[key]}; choose another output path")
        seen[key] = "another output"


def make_parent(path: Path) -> None:
    """Create the folder of ``path`` and its parents; a file in the way is an error that names it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()),
                       path.parent)
        raise NotADirectoryError(errno.ENOTDIR, f"{blocker} is a file, not a folder") from None


def _disk_note(folder: Path) -> str:
    """"; the disk is full" when the folder's file system has (almost) no space left, else ""."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return "; the disk is full" if free < (1 << 20) else ""


def check_complete(path: str | Path) -> None:
    """Raise OSError when a written GeoTIFF lacks a block: GDAL reports a write that fails while the file is
    closed (a full disk) only on stderr, and reads the missing block back as zeros."""
    path = Path(path)
    size = path.stat().st_size
    with rasterio.open(path) as ds:
        rows, cols = ds.block_shapes[0]
        bands = [1] if ds.interleaving == Interleaving.pixel else range(1, ds.count + 1)
        for b in bands:
            for i in range(math.ceil(ds.height / rows)):
                for j in range(math.ceil(ds.width / cols)):
                    offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=b) or 0)
                    nbytes = int(ds.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=b) or 0)
                    if offset <= 0 or nbytes <= 0 or offset + nbytes > size:
                        raise OSError(errno.EIO, f"block ({i}, {j}) of band {b} was not written (disk full?)")


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


def _check_band(ds: rasterio.io.DatasetReader, band: int) -> None:
    if not 1 <= band <= ds.count:
        raise InputError(f"{ds.name}: has no band {band} (it has {ds.count})")


def read_preview(path: str | Path, band: int = 1, max_size: int = 1024) -> np.ma.MaskedArray:
    """One band, shrunk to at most ``max_size`` pixels a side (from overviews where the file has them).

    Invalid pixels (nodata, NaN, masked) are masked; for pictures, not for numbers.
    """
    from rasterio.enums import Resampling

    with open_raster(path) as ds:
        _check_band(ds, band)
        shrink = max(ds.width, ds.height) / max_size
        shape = ((max(1, math.ceil(ds.height / shrink)), max(1, math.ceil(ds.width / shrink)))
                 if shrink > 1 else (ds.height, ds.width))
        try:
            data = ds.read(band, out_shape=shape, masked=True, resampling=Resampling.nearest)
        except RasterioError as exc:
            raise InputError(f"{path}: could not read band {band} ({_gdal_message(exc)})") from None
    if np.issubdtype(data.dtype, np.floating):
        data = np.ma.masked_where(~np.isfinite(data.filled(0)), data)
    return data


def iter_band(path: str | Path, band: int = 1) -> Iterator[np.ma.MaskedArray]:
    """One band's values window by window, invalid pixels masked: whole-raster counts in bounded memory."""
    with open_raster(path) as ds:
        _check_band(ds, band)
        for window in iter_windows(ds):
            try:
                data = ds.read(band, window=window, masked=True)
            except RasterioError as exc:
                raise InputError(f"{path}: could not read band {band} ({_gdal_message(exc)})") from None
            if np.issubdtype(data.dtype, np.floating):
                data = np.ma.masked_where(~np.isfinite(data.filled(0)), data)
            yield data


# --------------------------------------------------------------------------------------------- single pixels

def pixel_index(info: RasterInfo, x: float, y: float) -> tuple[int, int]:
    """The (row, col) of the pixel holding map point (x, y), by the raster's transform; InputError when outside."""
    if not info.georeferenced:
        raise InputError(f"{info.path}: has no georeference, so map coordinates cannot be placed; use row,col")
    from rasterio.transform import array_bounds, rowcol

    row, col = (int(v) for v in rowcol(info.transform, x, y, op=math.floor))
    if not (0 <= row < info.height and 0 <= col < info.width):
        west, south, east, north = array_bounds(info.height, info.width, info.transform)
        raise InputError(f"{info.path}: point ({x:.12g}, {y:.12g}) lies outside the raster "
                         f"(x {west:.12g} to {east:.12g}, y {south:.12g} to {north:.12g})")
    return row, col


def read_pixel(path: str | Path, row: int, col: int) -> tuple[np.ndarray, bool]:
    """One pixel's values (bands,) in the file's dtype and whether it is valid; InputError when outside."""
    with open_raster(path) as ds:
        if not (0 <= row < ds.height and 0 <= col < ds.width):
            raise InputError(f"{path}: pixel (row {row}, col {col}) lies outside the raster "
                             f"({ds.height} rows x {ds.width} cols, counted from 0)")
        data, valid = WindowReader(ds).read(Window(col, row, 1, 1))
    return data[:, 0, 0], bool(valid[0, 0])
