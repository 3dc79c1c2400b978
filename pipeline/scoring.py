"""The streaming scorer: a tile's windows -> detector -> score raster (and optional anomaly mask).

Reader threads, the detector and a writer thread run overlapped with bounded queues between them, so throughput
approaches the speed of reading the raster and memory is bounded by a few windows whatever the tile's size.
Invalid pixels (nodata, NaN, masked in any band) are never scored: they are nodata in every output.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import InputError, RsvaeWarning
from pipeline.raster import (
    Block,
    BlockReader,
    BlockWriter,
    RasterWriter,
    commit_together,
    info_of,
    iter_windows,
    open_raster,
    output_nodata,
    writer_like,
)

if TYPE_CHECKING:  # the scorer needs no torch itself: any object with the Detector interface will do
    from pipeline.detectors.base import Detector

MASK_NODATA = 255


@dataclass
class ScoreSummary:
    """What one scoring run did."""

    tile: str
    output: str
    pixels: int
    valid_pixels: int
    seconds: float
    threshold: float | None = None
    flagged: int | None = None
    #: Seconds spent making the COG(s) after the last window (overviews, compression, statistics).
    finish_seconds: float = 0.0


def check_crs(detector: Detector, info, tile: str | Path) -> None:
    """Refuse a tile in another CRS than the training tiles; warn when the tile has no georeference."""
    if info.crs is None:
        warnings.warn(f"{tile}: has no CRS; scored, and the output has no CRS either", RsvaeWarning, stacklevel=2)
        return
    trained = detector.meta.get("crs") or ""
    if trained and info.crs.to_wkt() != trained:
        from rasterio.crs import CRS

        if CRS.from_wkt(trained) != info.crs:
            raise InputError(f"{tile}: CRS {info.crs.to_string()} differs from the training tiles' "
                             f"{CRS.from_wkt(trained).to_string()}; reproject it first")


def score_raster(
    detector: Detector,
    tile: str | Path,
    out: str | Path,
    *,
    mask_out: str | Path | None = None,
    fpr: float | None = None,
    samples: int = 1,
    seed: int = 0,
    chunk: int = 65536,
    progress: Callable[[int], None] | None = None,
    readers: int = 2,
    fast: bool = True,
) -> ScoreSummary:
    """Score every valid pixel of ``tile`` into a float32 COG at ``out`` (one band per detector output).

    With ``mask_out`` and ``fpr``, also write a uint8 mask (1 = anomaly) thresholded where a fraction ``fpr`` of
    held-out normal pixels would be flagged.

    Reading (``readers`` threads, a dataset handle each), the detector and writing run overlapped, with bounded
    queues between them, so memory stays bounded by a few windows whatever the tile's size. The detector runs in
    the calling thread: keep torch to one thread (the CLI's default) so it does not fight the readers for cores.
    ``fast=False`` is handed to the detector (the VAE's previous scoring path instead of the folded one).
    """
    if mask_out is not None and fpr is None:
        raise InputError("--mask-out needs --fpr (the false-alarm rate that sets the threshold)")
    t0 = time.perf_counter()
    threshold = detector.threshold(fpr) if mask_out is not None else None
    options = {"samples": samples, "seed": seed, "chunk": chunk} if samples > 1 else {"chunk": chunk}
    if not fast:  # only then: detectors without the option keep working as before
        options["fast"] = False
    with open_raster(tile) as ds:
        info = info_of(ds)
        detector.check_bands(info.count, str(tile))
        check_crs(detector, info, tile)
        windows = iter_windows(ds)
    nodata = output_nodata(info)
    origin = getattr(detector, "origin", {})
    tags = {"rsvae_model": origin.get("path", ""), "rsvae_model_digest": origin.get("digest", ""),
            "rsvae_detector": detector.kind, "rsvae_input": Path(tile).name}
    valid_total = flagged = 0
    writers: list[RasterWriter] = []
    try:
        with contextlib.ExitStack() as stack:
            # held: the score raster and its mask are renamed into place together, once both are complete
            writers.append(stack.enter_context(writer_like(info, out, len(detector.outputs), "float32", nodata,
                                                       descriptions=list(detector.outputs), tags=tags, hold=True)))
            if mask_out is not None:
                writers.append(stack.enter_context(writer_like(
                    info, mask_out, 1, "uint8", MASK_NODATA, descriptions=["anomaly"], resampling="NEAREST",
                    tags=dict(tags, rsvae_fpr=fpr, rsvae_threshold=threshold), hold=True)))
            margin = int(getattr(detector, "halo", 0) or 0)
            blocks = stack.enter_context(BlockReader(tile, windows, info.width, info.height, margin=margin,
                                                     threads=readers))
            sink = stack.enter_context(BlockWriter(writers))
            for block in blocks:
                scores, valid = score_block(detector, block, nodata, options)
                n = int(valid.sum())
                if mask_out is None:
                    sink.write(block.window, scores)
                else:
                    m = np.full(valid.shape, MASK_NODATA, np.uint8)
                    if n:
                        m[valid] = scores[0][valid] > threshold
                        flagged += int(np.count_nonzero(m == 1))
                    sink.write(block.window, scores, m[None])
                valid_total += n
                if progress:
                    progress(int(block.window.width * block.window.height))
            if valid_total == 0:
                warnings.warn(f"{tile}: no valid pixel (all nodata, NaN or masked); the output is all nodata",
                              RsvaeWarning, stacklevel=2)
    except BaseException:
        for w in writers:  # a writer that finished before another failed holds a complete COG: not wanted now
            w.discard()
        raise
    commit_together(writers)
    return ScoreSummary(str(tile), str(out), info.width * info.height, valid_total, time.perf_counter() - t0,
                        threshold, flagged if mask_out is not None else None,
                        finish_seconds=sum(w.finish_seconds for w in writers))


def score_block(detector: Detector, block: Block, nodata: float,
                options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Score one block: ``(outputs (k, rows, cols) float32 with nodata where invalid, valid (rows, cols))``.

    The detector is asked, in this order, for ``score_block(data, valid)`` when it has a ``halo`` (detectors that
    need neighbours, e.g. local RX: the block comes with ``halo`` pixels of margin on every side, beyond the raster
    edge as invalid; a pixel it cannot score, NaN, is nodata), ``score_bands(pixels (bands, n))`` (a band-major
    fast path: no transposed copy of rasterio's blocks), or the generic ``score(pixels (n, bands))``.
    """
    data, valid = block.core()
    k = len(detector.outputs)
    out = np.full((k, *valid.shape), nodata, np.float32)
    if not valid.any():
        return out, valid
    halo = int(getattr(detector, "halo", 0) or 0)
    if halo:
        terms = detector.score_block(*pad_to_halo(block, halo))
        valid = valid & np.isfinite(terms["score"])
        for i, key in enumerate(detector.outputs):
            out[i][valid] = np.asarray(terms[key])[valid]
        return out, valid
    everything = bool(valid.all())
    pixels = data.reshape(data.shape[0], -1) if everything else data[:, valid]  # (bands, n): a view when all valid
    if hasattr(detector, "score_bands"):
        terms = detector.score_bands(pixels, **options)
    else:
        terms = detector.score(pixels.T, **options)
    for i, key in enumerate(detector.outputs):
        if everything:
            out[i].reshape(-1)[:] = terms[key]
        else:
            out[i][valid] = terms[key]
    return out, valid


def pad_to_halo(block: Block, halo: int) -> tuple[np.ndarray, np.ndarray]:
    """A block's data and validity with exactly ``halo`` pixels of margin per side (invalid beyond the raster)."""
    (r, c), (rows, cols) = block.inner, block.valid.shape
    pads = ((halo - r.start, halo - (rows - r.stop)), (halo - c.start, halo - (cols - c.stop)))
    return np.pad(block.data, ((0, 0), *pads)), np.pad(block.valid, pads)
