"""Reading rasters: opening and checking inputs, describing them, window iteration, validity masks, single pixels.

The rooms of raster I/O: ``names`` (what a path names, no GDAL), this module (open, read, validity), ``streaming``
(blocks through reader and writer threads) and ``cog_writer`` (the atomic COG writer). Models never see a file, and
these modules never see a model. A pixel is *valid* only when every band is valid: not the nodata value, finite,
and not masked.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from pipeline.errors import InputError
from pipeline.names import is_dataset_name
from pipeline.tiffdecode import TileDecoder

#: Everything GDAL raises through rasterio: its own errors and the raw CPLE_* ones some calls let through
#: (rasterio 1.4 has no public name for their base class, so this one private import stays).
GDAL_ERRORS = (RasterioError, CPLE_BaseError)

#: GDAL's HTTP settings for remote reads, so a server that stalls or fails ends the read instead of hanging it:
#: give up connecting after 20 s, abort a transfer slower than 1 byte/s for 30 s (a server that accepts and never
#: answers), and retry 3 times with back-off from 2 s (GDAL doubles it) on 429 and 5xx answers and dropped
#: connections. Each applies unless the user's environment sets it (their GDAL_HTTP_* settings win).
HTTP_DEFAULTS = {"GDAL_HTTP_CONNECTTIMEOUT": "20", "GDAL_HTTP_LOW_SPEED_TIME": "30",
                 "GDAL_HTTP_LOW_SPEED_LIMIT": "1", "GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "2"}

#: GDAL settings for reading anything remote: a small block cache keeps memory bounded whatever the raster's
#: size, no directory listing (on a server each sidecar probe is a request), the HTTP time-outs above.
#: ``read_env`` picks the settings for one dataset (local files get directory listing, to find sidecars).
READ_ENV = {"GDAL_CACHEMAX": 16, "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", **HTTP_DEFAULTS}

#: What in a dataset name (or a VRT's text) means it is read over a network.
_NETWORK = re.compile(r"://|/vsi(curl|s3|gs|az|adls|oss|swift|webhdfs|hdfs)(_streaming)?/")

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


def is_remote(text: str | Path) -> bool:
    """Whether a dataset name (or a VRT's XML) reads anything over a network (a URL, /vsicurl/, /vsis3/, ...)."""
    return bool(_NETWORK.search(os.fspath(text)))


def read_env(*names: str | Path) -> dict[str, Any]:
    """GDAL settings to read the datasets ``names`` (paths, dataset names or VRT XML).

    Local files are opened with directory listing, so GDAL finds their sidecar files (ENVI ``.hdr``, ``.tfw``,
    ``.prj``, ``.ovr``, ``.msk``, ``.aux.xml``); anything remote, or a local VRT whose sources are, keeps listing
    off. The HTTP time-outs apply everywhere. A GDAL_HTTP_* or GDAL_DISABLE_READDIR_ON_OPEN variable in the
    user's environment wins over these defaults.
    """
    remote = any(is_remote(n) or _vrt_is_remote(n) for n in names)
    env: dict[str, Any] = dict(READ_ENV) if remote else {**READ_ENV, "GDAL_DISABLE_READDIR_ON_OPEN": "FALSE"}
    return {k: v for k, v in env.items() if k == "GDAL_CACHEMAX" or k not in os.environ}


def _vrt_is_remote(name: str | Path) -> bool:
    """Whether ``name`` is a local .vrt file that names network sources (a stack of remote bands)."""
    text = os.fspath(name)
    if not text.lower().endswith(".vrt") or is_dataset_name(text):
        return False
    try:
        with open(text, encoding="utf-8", errors="replace") as f:
            return is_remote(f.read(1 << 24))
    except OSError:
        return False


def _check_path(path: str | Path) -> str:
    """Check a local input (exists, a file, not empty); a dataset name goes to GDAL unchecked."""
    if is_dataset_name(path):
        return os.fspath(path)
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a raster file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    return str(path)


@contextlib.contextmanager
def open_raster(path: str | Path) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster for reading, turning GDAL's complaints into one-line InputErrors that name the file.

    ``path`` is a local file or any GDAL dataset name rasterio opens (a URL, /vsizip/..., a subdataset).
    """
    path = _check_path(path)
    with rasterio.Env(**read_env(path)):
        try:
            ds = rasterio.open(path)
        except GDAL_ERRORS as exc:
            what = "cannot open" if is_dataset_name(path) else "not a readable raster"
            raise InputError(f"{path}: {what} ({gdal_message(exc)})") from None
        with ds:
            if ds.count < 1:
                raise InputError(f"{path}: raster has no bands")
            if any(np.dtype(d).kind == "c" for d in ds.dtypes):
                raise InputError(f"{path}: complex pixel type {ds.dtypes[0]} is not supported")
            yield ds


def gdal_message(exc: BaseException) -> str:
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


def valid_mask(data: np.ndarray, nodata: float | None, masks: np.ndarray | None = None,
               scratch: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel validity of a band-major block ``data`` (bands, rows, cols): every band must be valid.

    ``scratch``, a bool array of ``data``'s size, saves allocating the temporaries (the streaming readers pass one).
    """
    valid = np.ones(data.shape[1:], dtype=bool)
    axis = 0
    if pixel_major(data):  # reduce over the bands where they lie: the last axis of (rows, cols, bands)
        data, axis = data.transpose(1, 2, 0), -1
    tmp = scratch.reshape(-1)[:data.size].reshape(data.shape) if scratch is not None else None
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.logical_and.reduce(np.isfinite(data, out=tmp), axis=axis)
    if nodata is not None and not math.isnan(nodata) and representable(nodata, data.dtype):
        valid &= np.logical_and.reduce(np.not_equal(data, data.dtype.type(nodata), out=tmp), axis=axis)
    if masks is not None:
        valid &= (masks != 0).all(axis=0)
    return valid


def representable(value: float, dtype: np.dtype) -> bool:
    """Whether a nodata value can occur in an array of ``dtype`` (a nodata of -9999 cannot in uint16)."""
    if np.issubdtype(dtype, np.integer):
        ii = np.iinfo(dtype)
        return float(value).is_integer() and ii.min <= value <= ii.max
    return True


class WindowReader:
    """Reads band-major blocks and their validity from one open dataset.

    Where the file qualifies (``tiffdecode.TileDecoder.open``: a local tiled, pixel-interleaved GeoTIFF), a window
    that is one of its tiles is decoded directly, without GDAL's per-band copy, and its data is a (bands, rows, cols)
    view of pixel-interleaved memory (see ``pixel_major``); other windows and files are read through GDAL.
    """

    def __init__(self, ds: rasterio.io.DatasetReader, direct: bool = True):
        self.ds = ds
        self.nodata = ds.nodata
        self.read_masks = _needs_mask_read(ds)
        if not direct:
            self.tiles, self.why_not_direct = None, "not asked for"
        elif self.read_masks:  # GDAL reads the mask band alongside its data
            self.tiles, self.why_not_direct = None, "has a mask band"
        else:
            self.tiles, self.why_not_direct = TileDecoder.open(ds)

    def buffer_elements(self, largest_window: int) -> int:
        """Elements a flat ``buffer`` needs for windows of up to ``largest_window`` pixels (a whole tile when
        decoding tiles directly: a file's edge tiles are stored full size)."""
        need = largest_window * self.ds.count
        return max(need, self.tiles.tile_elements) if self.tiles is not None else need

    def read(self, window: Window, buffer: np.ndarray | None = None,
             scratch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(data, valid)``: data (bands, rows, cols) in the file's dtype, valid (rows, cols) bool.

        With ``buffer`` (a flat array of the file's dtype, ``buffer_elements`` long), data is read into it rather
        than into a new array; ``scratch`` (flat bool, as large) serves the validity test. Streaming reuses both.
        """
        shape = (self.ds.count, int(window.height), int(window.width))
        index = self.tiles.index(window) if self.tiles is not None else None
        masks = None
        try:
            if index is not None:
                if buffer is None or buffer.size < self.tiles.tile_elements:
                    buffer = np.empty(self.tiles.tile_elements, self.tiles.dtype)
                try:
                    data = self.tiles.read(index, buffer, shape[1], shape[2])
                except (OSError, ValueError, RuntimeError) as exc:  # imagecodecs' errors are RuntimeErrors
                    raise self._unreadable(window, str(exc)) from None
            else:
                if buffer is None:
                    data = self.ds.read(window=window)
                else:
                    data = buffer[:math.prod(shape)].reshape(shape)
                    self.ds.read(window=window, out=data)
                masks = self.ds.read_masks(window=window) if self.read_masks else None
        except GDAL_ERRORS as exc:
            raise self._unreadable(window, gdal_message(exc)) from None
        return data, valid_mask(data, self.nodata, masks, scratch)

    def _unreadable(self, window: Window, why: str) -> InputError:
        return InputError(f"{self.ds.name}: could not read window at row {int(window.row_off)}, "
                          f"col {int(window.col_off)} (file truncated or corrupted? {why})")

    def close(self) -> None:
        """Close the direct decoder's file handle (the dataset is the caller's to close)."""
        if self.tiles is not None:
            self.tiles.close()


def pixel_major(data: np.ndarray) -> bool:
    """Whether a (bands, rows, cols) block is a view of pixel-interleaved memory (bands adjacent in memory)."""
    return data.ndim == 3 and data.shape[0] > 1 and data.strides[0] == data.itemsize


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
            raise InputError(f"{path}: could not read band {band} ({gdal_message(exc)})") from None
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
                raise InputError(f"{path}: could not read band {band} ({gdal_message(exc)})") from None
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
