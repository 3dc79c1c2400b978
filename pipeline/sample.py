"""Ingest: a bounded, reproducible sample of valid pixels across tiles, and exact band statistics over all of them.

Each tile is reduced on its own to a *partial* sample (at most ``max_pixels`` pixels, chosen by the smallest of
one seeded random key per valid pixel, so memory stays bounded) and mergeable band statistics. Merging the
partials shares the budget fairly (water-filling: a tile with fewer valid pixels than its share passes the rest on)
and merges the statistics exactly. ``ingest`` runs the same two steps in one process; the workflow runs one job
per tile and one merge job, with the same result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from rasterio.windows import Window

from pipeline import __version__, halo
from pipeline.batch import BatchResult, TileOutcome, plan_outputs, run_tiles
from pipeline.errors import InputError, OutputError
from pipeline.files import make_parent
from pipeline.names import file_name, is_dataset_name
from pipeline.neighbourhood import check_windows, ring_mean
from pipeline.raster import WindowReader, info_of, iter_windows, open_raster

SAMPLE_FORMAT = "rsvae-sample/1"


@dataclass
class BandStats:
    """Streaming, mergeable per-band count, mean, sum of squared deviations, min and max (float64)."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, bands: int) -> BandStats:
        return cls(np.zeros(bands, np.int64), np.zeros(bands), np.zeros(bands),
                   np.full(bands, np.inf), np.full(bands, -np.inf))

    def update(self, x: np.ndarray) -> None:
        """Add pixels ``x`` (bands, n)."""
        if x.shape[1] == 0:
            return
        x = x.astype(np.float64, copy=False)
        n = x.shape[1]
        mean = x.mean(axis=1)
        m2 = ((x - mean[:, None]) ** 2).sum(axis=1)
        self.merge(BandStats(np.full_like(self.count, n), mean, m2, x.min(axis=1), x.max(axis=1)))

    def merge(self, other: BandStats) -> None:
        """Combine with another set of statistics (Chan et al.'s parallel update)."""
        n_a, n_b = self.count.astype(np.float64), other.count.astype(np.float64)
        n = n_a + n_b
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = other.mean - self.mean
            self.mean = np.where(n > 0, self.mean + delta * np.where(n > 0, n_b / n, 0), 0.0)
            self.m2 = self.m2 + other.m2 + np.where(n > 0, delta**2 * n_a * n_b / np.where(n > 0, n, 1), 0.0)
        self.count = self.count + other.count
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per band."""
        return np.sqrt(self.m2 / np.maximum(self.count, 1))

    def to_vars(self) -> dict[str, tuple[str, np.ndarray]]:
        return {f"stat_{k}": ("band", getattr(self, k)) for k in ("count", "mean", "m2", "min", "max")}

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> BandStats:
        return cls(*(np.asarray(ds[f"stat_{k}"].values) for k in ("count", "mean", "m2", "min", "max")))


@dataclass
class Sample:
    """A loaded sample: pixels (n, bands) float32, their origin, band names and wavelengths, band statistics, and
    where the sample recorded it, each pixel's ring mean ``context`` (n, bands; NaN: no valid ring pixel) with its
    ``windows`` (guard, outer)."""

    pixels: np.ndarray
    band_names: list[str]
    wavelengths: list[float] | None
    stats: BandStats
    attrs: dict[str, Any]
    context: np.ndarray | None = None
    windows: tuple[int, int] | None = None

    @property
    def bands(self) -> int:
        return self.pixels.shape[1]


def _tile_rng(seed: int, path: str | Path) -> np.random.Generator:
    """A generator seeded by the run's seed and the tile's file name, so results do not depend on tile order."""
    return np.random.default_rng([seed, zlib.crc32(file_name(path).encode())])


def quick_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """A cheap fingerprint of a file: sha256 of its size, first and last MiB (a full hash of TBs is too slow).

    A GDAL dataset name (URL, /vsi path, subdataset) is fingerprinted by the name itself: reading a remote
    file's ends for it would cost two requests and say little more.
    """
    if is_dataset_name(path):
        return "sha256-name:" + hashlib.sha256(os.fspath(path).encode()).hexdigest()[:32]
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(size - chunk, chunk))
            h.update(f.read(chunk))
    return "sha256-head-tail:" + h.hexdigest()[:32]


def sample_tile(path: str | Path, max_pixels: int, seed: int = 0,
                progress: Callable[[int], None] | None = None,
                context: Sequence[int] | None = None) -> xr.Dataset:
    """Reduce one tile to a partial sample: up to ``max_pixels`` valid pixels and band statistics over all.

    With ``context`` (guard, outer window), each sampled pixel's ring mean (``neighbourhood.ring_mean``, computed
    on windows read with a margin, as the streaming scorer does) is recorded too, for context-aware models.
    """
    rng = _tile_rng(seed, path)
    if context is not None:
        context = (int(context[0]), int(context[1]))
        try:
            check_windows(*context, "ingest.context")
        except ValueError as exc:
            raise InputError(str(exc)) from None
    with open_raster(path) as ds:
        info = info_of(ds)
        reader = WindowReader(ds, direct=context is None)
        stats = BandStats.empty(info.count)
        keys = np.empty(0)
        pix = np.empty((0, info.count), np.float32)
        ctx = np.empty((0, info.count if context else 0), np.float32)
        rows = np.empty(0, np.int32)
        cols = np.empty(0, np.int32)
        for window, data, valid, mean in _read_windows(path, ds, info, reader, context):
            r, c = np.nonzero(valid)
            x = data[:, r, c]
            if x.dtype.kind == "f" and x.size and np.abs(x).max() > np.finfo(np.float32).max:
                raise InputError(f"{path}: pixel values overflow float32 (near row {int(window.row_off)}, "
                                 f"col {int(window.col_off)})")
            stats.update(x)
            k = rng.random(r.size)
            keys = np.concatenate([keys, k])
            pix = np.concatenate([pix, x.T.astype(np.float32)])
            if context is not None:
                ctx = np.concatenate([ctx, mean[:, r, c].T.astype(np.float32)])
            rows = np.concatenate([rows, (r + int(window.row_off)).astype(np.int32)])
            cols = np.concatenate([cols, (c + int(window.col_off)).astype(np.int32)])
            if keys.size > 2 * max_pixels:
                keep = np.argpartition(keys, max_pixels)[:max_pixels]
                keys, pix, rows, cols = keys[keep], pix[keep], rows[keep], cols[keep]
                if context is not None:
                    ctx = ctx[keep]
            if progress:
                progress(int(window.width * window.height))
    order = np.argsort(keys, kind="stable")[:max_pixels]
    if not np.isfinite(pix[order]).all():
        raise InputError(f"{path}: pixel values overflow float32")
    return _dataset(
        pix[order], info.band_names, info.wavelengths, stats,
        tile=np.full(order.size, file_name(path), dtype=object), row=rows[order], col=cols[order],
        key=keys[order], context=ctx[order] if context is not None else None,
        attrs={**({"context_windows": list(context)} if context is not None else {}), "partial": 1, "available": int(order.size), "seed": seed, "max_pixels": max_pixels, "crs": info.crs.to_wkt() if info.crs else "",
               "sources": json.dumps([{"path": str(path), "name": file_name(path), "digest": quick_digest(path),
                                       "valid_pixels": int(stats.count[0])}])},
    )


def _read_windows(path: str | Path, ds: Any, info: Any, reader: WindowReader, context: tuple[int, int] | None,
             ) -> Iterator[tuple[Window, np.ndarray, np.ndarray, np.ndarray | None]]:
    """A tile's windows in order: (window, data, valid, the ring means of its pixels or None without ``context``).

    With ``context``, windows are read with a margin of outer // 2: by full-width row bands where they suit
    (``halo.margin_reader``: each tile decoded once), else each window grown and read on its own."""
    windows = iter_windows(ds)
    if context is None:
        for window in windows:
            yield (window, *reader.read(window), None)
        return
    with halo.margin_reader(path, windows, info.width, info.height, info.count, np.dtype(info.dtype).itemsize,
                            margin=context[1] // 2, threads=1) as blocks:
        for b in blocks:
            mean = ring_mean(b.data, b.valid, *context)[0][(slice(None), *b.inner)]
            yield (b.window, *b.core(), mean)


def _dataset(pixels: np.ndarray, band_names: Sequence[str], wavelengths: Sequence[float] | None,
             stats: BandStats, *, tile: np.ndarray, row: np.ndarray, col: np.ndarray, key: np.ndarray | None,
             attrs: dict[str, Any], context: np.ndarray | None = None) -> xr.Dataset:
    data_vars: dict[str, Any] = {
        "pixels": (("sample", "band"), pixels),
        "tile": ("sample", tile.astype(str)),
        "row": ("sample", row),
        "col": ("sample", col),
        **stats.to_vars(),
    }
    if key is not None:
        data_vars["key"] = ("sample", key)
    if context is not None:
        data_vars["context"] = (("sample", "band"), context)
    wl = np.asarray(wavelengths, float) if wavelengths is not None else np.full(len(band_names), np.nan)
    coords = {"band": list(band_names), "wavelength": ("band", wl)}
    return xr.Dataset(data_vars, coords=coords,
                      attrs={"format": SAMPLE_FORMAT, "rsvae_version": __version__, **attrs})


def _level(available: Sequence[int], budget: int) -> int:
    """The water level: the largest per-tile count ``l`` with ``sum(min(a, l)) <= budget``."""
    lo, hi = 0, max(available, default=0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(a, mid) for a in available) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _allocate(available: Sequence[int], budget: int) -> list[int]:
    """Share ``budget`` among tiles fairly: equal shares; a tile with fewer pixels passes the rest on."""
    level = _level(available, budget)
    alloc = [min(a, level) for a in available]
    left = budget - sum(alloc)
    for i, a in enumerate(available):  # the remainder, one pixel each, to tiles that have more
        if left > 0 and a > level:
            alloc[i] += 1
            left -= 1
    return alloc


def merge_samples(partials: Sequence[xr.Dataset], max_pixels: int) -> xr.Dataset:
    """Merge partial samples into one: a fair share of ``max_pixels`` from each, exact merged statistics."""
    if not partials:
        raise InputError("no tiles to ingest")
    first = partials[0]
    stats = BandStats.empty(first.sizes["band"])
    sources, parts = [], []
    avail = [int(p.attrs.get("available", p.sizes["sample"])) for p in partials]
    for p, n in zip(partials, _allocate(avail, max_pixels), strict=True):
        name = json.loads(p.attrs["sources"])[0]["path"]
        if p.sizes["band"] != first.sizes["band"]:
            raise InputError(f"{name}: has {p.sizes['band']} bands but the other tiles have {first.sizes['band']}")
        if _windows(p) != _windows(first):
            raise InputError(f"{name}: its partial sample's context windows {_windows(p)} differ from the first "
                             f"tile's {_windows(first)}; ingest all tiles with the same ingest.context")
        if p.attrs.get("crs", "") != first.attrs.get("crs", ""):
            raise InputError(f"{name}: its CRS differs from the first tile's; reproject the tiles to one CRS")
        stats.merge(BandStats.from_dataset(p))
        sources += json.loads(p.attrs["sources"])
        if p.sizes["sample"] < n:
            raise InputError(f"{name}: partial sample holds {p.sizes['sample']} pixels, fewer than its share {n}")
        parts.append(p.isel(sample=slice(0, n)))
    if stats.count.max() == 0:
        raise InputError(f"no valid pixels in {len(partials)} tile(s): every pixel is nodata, NaN or masked")
    names = ["pixels", "tile", "row", "col"] + (["context"] if _windows(first) else [])
    merged = xr.concat([p[names] for p in parts], dim="sample")
    windows = _windows(first)
    return _dataset(
        merged["pixels"].values, list(first["band"].values),
        None if np.isnan(first["wavelength"].values).any() else list(first["wavelength"].values),
        stats, tile=merged["tile"].values, row=merged["row"].values, col=merged["col"].values, key=None,
        context=merged["context"].values if windows else None,
        attrs={**({"context_windows": list(windows)} if windows else {}), "partial": 0, "seed": first.attrs["seed"], "max_pixels": max_pixels, "crs": first.attrs["crs"],
               "sources": json.dumps(sources)},
    )


def _windows(ds: xr.Dataset) -> tuple[int, int] | None:
    """The (guard, outer) windows of the ring means a sample or partial records, or None."""
    w = ds.attrs.get("context_windows")
    return None if w is None or "context" not in ds else (int(np.ravel(w)[0]), int(np.ravel(w)[1]))


def write_sample(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a sample (or partial) as NetCDF-4, atomically: a temporary file renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Serialised in memory first: HDF5 that hits a full disk leaves a broken handle that crashes the
    # interpreter at exit, while a plain write just raises. The sample is in memory already.
    data = ds.to_netcdf(engine="h5netcdf")
    try:
        make_parent(path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write sample ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(OSError):  # absent, or a read-only folder where nothing was made
            tmp.unlink()
    return path


def open_sample_dataset(path: str | Path) -> xr.Dataset:
    """Open a sample or partial file (fully loaded), checking it is one."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a sample file")
    if not path.is_file():
        raise InputError(f"{path}: sample file not found")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            ds = ds.load()
    except Exception as exc:  # h5py/netCDF raise many kinds of errors for a bad file
        raise InputError(f"{path}: not a readable rsvae sample ({type(exc).__name__}: {exc})") from None
    if ds.attrs.get("format") != SAMPLE_FORMAT or "pixels" not in ds:
        raise InputError(f"{path}: not an rsvae sample file (format {ds.attrs.get('format')!r})")
    return ds


def load_sample(path: str | Path) -> Sample:
    """Load a merged sample for training."""
    ds = open_sample_dataset(path)
    wl = ds["wavelength"].values
    return Sample(
        pixels=np.ascontiguousarray(ds["pixels"].values, dtype=np.float32),
        band_names=[str(b) for b in ds["band"].values],
        wavelengths=None if np.isnan(wl).any() else [float(w) for w in wl],
        stats=BandStats.from_dataset(ds),
        attrs=dict(ds.attrs),
        context=np.ascontiguousarray(ds["context"].values, dtype=np.float32) if _windows(ds) else None,
        windows=_windows(ds),
    )


def partial_tiles(paths: Sequence[str | Path], outdir: str | Path, max_pixels: int, seed: int = 0,
                  on_done: Callable[[TileOutcome], None] | None = None,
                  context: Sequence[int] | None = None) -> BatchResult:
    """One partial sample per tile, ``outdir/NAME.nc``, in one process (the workflow's ingest batches); a bad
    tile is recorded and the others go on (``pipeline.batch.run_tiles``)."""
    jobs = plan_outputs(paths, {"part": outdir}, suffix=".nc")
    return run_tiles(jobs, lambda job: write_sample(sample_tile(job.tile, max_pixels, seed, context=context),
                                                    job.outputs["part"]), on_done)


def ingest(paths: Sequence[str | Path], out: str | Path, *, max_pixels: int = 200_000, seed: int = 0,
           progress: Callable[[int], None] | None = None, context: Sequence[int] | None = None) -> Path:
    """Sample valid pixels of the normal tiles ``paths`` into one sample file at ``out``.

    Memory stays bounded: each tile's partial holds at most ``max_pixels`` pixels, and only the fair share of
    each partial is kept. ``context`` (guard, outer): also record each sampled pixel's ring mean (``sample_tile``).
    """
    if not paths:
        raise InputError("no tiles given to ingest")
    parts: list[xr.Dataset] = []
    for p in paths:
        parts.append(sample_tile(p, max_pixels, seed, progress, context))
        # Adding tiles only lowers the water level, so no tile will ever get more than the current level + 1:
        # trimming to that keeps the result exact and memory near max_pixels.
        cap = _level([int(x.attrs["available"]) for x in parts], max_pixels) + 1
        parts = [x.isel(sample=slice(0, cap)) for x in parts]
    return write_sample(merge_samples(parts, max_pixels), out)
