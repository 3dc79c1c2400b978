"""The atomic COG writer: window by window into a temporary file, then a Cloud Optimized GeoTIFF renamed into place.

``TEMPORARIES`` holds this process's temporaries not yet removed or renamed; ``streaming.cleanup()`` removes them.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Interleaving
from rasterio.windows import Window

from pipeline.errors import OutputError
from pipeline.files import make_parent
from pipeline.raster import GDAL_ERRORS, RasterInfo, gdal_message, representable

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


#: Creation options of the final Cloud Optimized GeoTIFF: deflate + floating-point predictor is what every
#: GIS tool reads. Level 1: on score rasters the same size as the default level 6 (0.01 % larger), 40 % less
#: time. Overviews and statistics are made while writing (see RasterWriter) and copied.
COG_OPTIONS = {
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "YES",
    "BLOCKSIZE": 256,
    "OVERVIEWS": "AUTO",
    "LEVEL": 1,
    "NUM_THREADS": "ALL_CPUS",
    "STATISTICS": "AUTO",
}


#: The temporary file's settings: uncompressed. Float scores hardly compress without a predictor (zstd made the
#: temporary 10 % larger), and reading it back for overviews took 3 x longer than uncompressed.
TEMP_OPTIONS = {"tiled": True, "blockxsize": 256, "blockysize": 256, "bigtiff": "IF_SAFER"}


TEMP_ENV = {"GDAL_CACHEMAX": 16, "GDAL_NUM_THREADS": "ALL_CPUS", "GDAL_DISABLE_READDIR_ON_OPEN": "FALSE"}


def _temp_path(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}")


def overview_factors(width: int, height: int, block: int = 256) -> list[int]:
    """Overview decimation factors 2, 4, … until the smallest level fits in one block (as the COG driver's AUTO)."""
    factors, f = [], 1
    while math.ceil(width / f) > block or math.ceil(height / f) > block:
        f *= 2
        factors.append(f)
    return factors


class _BandStats:
    """Streaming per-band statistics of the valid (not nodata, finite) values written, as GDAL records them."""

    def __init__(self, count: int, nodata: float | None):
        self.nodata = nodata
        self.n = np.zeros(count, np.int64)
        self.mean = np.zeros(count)
        self.m2 = np.zeros(count)
        self.min = np.full(count, np.inf)
        self.max = np.full(count, -np.inf)
        self.pixels = 0

    def update(self, array: np.ndarray) -> None:
        """Add a (bands, rows, cols) block."""
        self.pixels += array.shape[1] * array.shape[2]
        for b, band in enumerate(array):
            v = band.ravel()
            keep = np.isfinite(v) if v.dtype.kind == "f" else None
            if self.nodata is not None and not math.isnan(self.nodata):
                ne = v != v.dtype.type(self.nodata) if representable(self.nodata, v.dtype) else None
                keep = ne if keep is None else (keep if ne is None else keep & ne)
            if keep is not None and not keep.all():
                v = v[keep]
            if v.size == 0:
                continue
            v = v.astype(np.float64)
            n, mean = v.size, float(v.mean())
            m2 = float(np.square(v - mean).sum())
            na = self.n[b]
            tot = na + n
            delta = mean - self.mean[b]
            self.mean[b] += delta * n / tot
            self.m2[b] += m2 + delta * delta * na * n / tot
            self.n[b] = tot
            self.min[b] = min(self.min[b], float(v.min()))
            self.max[b] = max(self.max[b], float(v.max()))

    def tags(self, b: int) -> dict[str, str]:
        """GDAL's STATISTICS_* metadata items of band ``b`` (0-based); none when it has no valid value."""
        if not self.n[b]:
            return {}
        return {"STATISTICS_MINIMUM": f"{self.min[b]:.14g}", "STATISTICS_MAXIMUM": f"{self.max[b]:.14g}",
                "STATISTICS_MEAN": f"{self.mean[b]:.14g}",
                "STATISTICS_STDDEV": f"{math.sqrt(self.m2[b] / self.n[b]):.14g}",
                "STATISTICS_VALID_PERCENT": f"{100.0 * self.n[b] / max(self.pixels, 1):.14g}"}


class RasterWriter:
    """Writes a raster window by window to a temporary file, then makes it a COG and renames it into place.

    Band statistics are gathered from the blocks as they are written, and overviews are built in the uncompressed
    temporary file, so the COG copy only compresses: about half the time of letting the COG driver compute both.
    The temporary needs about 5.3 bytes per pixel and float32 band (overviews included) of free space in the
    output's folder while it lives. Each window must be written once (statistics count what is written).
    Used as a context manager: on an exception nothing appears at ``path`` and the temporaries are removed;
    an earlier file at ``path`` stays untouched until the new one is complete. ``finish_seconds`` is the time the
    final COG step took. With ``hold=True`` the finished COG waits beside ``path`` until ``commit()`` renames it
    into place (or ``discard()`` removes it): ``commit_together`` puts several outputs in place back to back,
    once all of them are complete. ``cog=False`` writes a plain tiled, band-interleaved, uncompressed GeoTIFF
    (statistics, no overviews) instead: for intermediates with hundreds of bands (a hyperspectral cube), whose
    pixel-interleaved tiles of every band made the COG step hundreds of times slower (512 x 512 x 240 float32:
    529 s as a COG, 1.5 s so).
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
        hold: bool = False,
        cog: bool = True,
    ):
        self.path = Path(path)
        self.profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype, crs=crs,
                            transform=transform, nodata=nodata, **TEMP_OPTIONS)
        if transform is None:
            del self.profile["transform"]
        self.cog = cog
        if not cog:
            self.profile["interleave"] = "band"
        self.descriptions = list(descriptions) if descriptions else None
        self.band_tags = list(band_tags) if band_tags else None
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.resampling = resampling
        self.stats = _BandStats(count, nodata)
        self.finish_seconds = 0.0
        self._tmp = _temp_path(self.path, ".tmp.tif")
        self._cog = _temp_path(self.path, ".cog.tif")
        self._ds = None
        # Held by write and by close: a close (on an interrupt, from another thread than the writing one) waits
        # for the write in flight and later writes are refused, so GDAL never closes a dataset under a write.
        self._lock = threading.Lock()
        self._closed = False
        self.hold = hold
        self._held = False  # a finished COG waits at self._cog for commit()
        TEMPORARIES.update((self._tmp, self._cog))

    def __enter__(self) -> RasterWriter:
        try:
            make_parent(self.path)
            if not os.access(self.path.parent, os.W_OK):
                raise PermissionError(f"folder {self.path.parent} is not writable")
            with rasterio.Env(**TEMP_ENV):
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
            raise OutputError(f"{self.path}: cannot write output ({gdal_message(exc)}){note}") from None
        except BaseException:  # Ctrl-C / SIGTERM after the file was made: __exit__ will not run
            self._abort()
            raise
        return self

    def _close(self, complete: bool) -> None:
        """Close the dataset (with the band statistics when ``complete``); the lock makes a close from another
        thread wait for the write in flight, and ``_closed`` refuses later writes."""
        with self._lock:
            self._closed = True
            if self._ds is not None:
                if complete:
                    for b in range(self._ds.count):
                        if self.stats.tags(b):
                            self._ds.update_tags(b + 1, **self.stats.tags(b))
                self._ds.close()

    def _abort(self) -> None:
        with contextlib.suppress(Exception):
            self._close(complete=False)
        self._cleanup()

    def write(self, array: np.ndarray, window: Window | None = None) -> None:
        """Write a (bands, rows, cols) block at ``window`` (the whole raster when None)."""
        with self._lock:
            if self._closed:
                raise OutputError(f"{self.path}: write after the output was closed")
            try:
                self._ds.write(array, window=window)
            except (OSError, *GDAL_ERRORS) as exc:
                raise OutputError(f"{self.path}: write failed ({gdal_message(exc)})"
                                  f"{_disk_note(self.path.parent)}") from None
            self.stats.update(array)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._close(complete=exc_type is None)
            if exc_type is None:
                self._finish()
        except (OSError, *GDAL_ERRORS) as err:
            note = _disk_note(self.path.parent)
            self._cleanup()
            raise OutputError(f"{self.path}: write failed ({gdal_message(err)}){note}") from None
        finally:
            remove_temporaries((self._tmp,) if self._held else (self._tmp, self._cog))

    def _finish(self) -> None:
        t0 = time.perf_counter()
        factors = overview_factors(self.profile["width"], self.profile["height"])
        with rasterio.Env(**TEMP_ENV):
            check_complete(self._tmp)  # GDAL reports a failed flush at close only on stderr
            if not self.cog:  # the temporary is the file
                os.replace(self._tmp, self._cog)
            else:
                if factors:
                    from rasterio.enums import Resampling

                    # uncompressed like the temporary (this option must not reach the COG copy: its overviews
                    # would stay uncompressed too)
                    with rasterio.Env(COMPRESS_OVERVIEW="NONE"), rasterio.open(self._tmp, "r+") as ds:
                        ds.build_overviews(factors, Resampling[self.resampling.lower()])
                rasterio.shutil.copy(self._tmp, self._cog, driver="COG",
                                     **dict(COG_OPTIONS, RESAMPLING=self.resampling))
                check_complete(self._cog)
        self.finish_seconds = time.perf_counter() - t0
        if self.hold:
            self._held = True
        else:
            os.replace(self._cog, self.path)

    def commit(self) -> None:
        """Rename a held, finished COG into place (``hold=True``)."""
        if not self._held:
            raise RuntimeError(f"{self.path}: nothing finished to commit")
        try:
            os.replace(self._cog, self.path)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot put the output in place ({exc.strerror or exc})") from None
        self._held = False
        TEMPORARIES.discard(self._cog)

    def discard(self) -> None:
        """Remove a held COG that will not be committed (the previous file at ``path`` stays)."""
        self._held = False
        self._cleanup()

    def _cleanup(self) -> None:
        remove_temporaries((self._tmp, self._cog))


def commit_together(writers: Sequence[RasterWriter]) -> None:
    """Rename the held COGs of ``writers`` into place back to back, once every one is finished (outputs that belong
    together, e.g. scores and their mask, are replaced within microseconds of each other, not a COG step apart).
    If one cannot be committed, those not yet renamed are removed and the error is raised."""
    done = 0
    try:
        for w in writers:
            w.commit()
            done += 1
    except BaseException:
        for w in writers[done:]:
            w.discard()
        raise


#: Temporary files of this process's writers not yet removed or renamed into place. The CLI removes what is
#: left when interrupted: a signal can land where no writer's own cleanup runs (entering or leaving it).
TEMPORARIES: set[Path] = set()


def remove_temporaries(paths: Sequence[Path] | None = None) -> None:
    """Delete temporaries (``paths``, or all of ``TEMPORARIES``) and their GDAL side files; never an output."""
    for p in list(TEMPORARIES if paths is None else paths):
        for q in (p, p.with_name(p.name + ".aux.xml"), p.with_name(p.name + ".ovr")):
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
