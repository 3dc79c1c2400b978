"""The streaming scorer: a tile's windows -> detector -> score raster (and optional anomaly mask).

Memory is bounded by one window whatever the tile's size. Invalid pixels (nodata, NaN, masked in any band) are
never scored: they are nodata in every output.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.detectors.base import Detector
from pipeline.errors import InputError, RsvaeWarning
from pipeline.raster import WindowReader, info_of, iter_windows, open_raster, output_nodata, writer_like

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
) -> ScoreSummary:
    """Score every valid pixel of ``tile`` into a float32 COG at ``out`` (one band per detector output).

    With ``mask_out`` and ``fpr``, also write a uint8 mask (1 = anomaly) thresholded where a fraction ``fpr`` of
    held-out normal pixels would be flagged.
    """
    if mask_out is not None and fpr is None:
        raise InputError("--mask-out needs --fpr (the false-alarm rate that sets the threshold)")
    if detector.halo:
        return score_raster_with_halo(detector, tile, out, mask_out=mask_out, fpr=fpr, progress=progress)
    t0 = time.perf_counter()
    threshold = detector.threshold(fpr) if mask_out is not None else None
    options = {"samples": samples, "seed": seed, "chunk": chunk} if samples > 1 else {"chunk": chunk}
    with open_raster(tile) as ds:
        info = info_of(ds)
        detector.check_bands(info.count, str(tile))
        check_crs(detector, info, tile)
        nodata = output_nodata(info)
        origin = getattr(detector, "origin", {})
        tags = {"rsvae_model": origin.get("path", ""), "rsvae_model_digest": origin.get("digest", ""),
                "rsvae_detector": detector.kind, "rsvae_input": Path(tile).name}
        reader = WindowReader(ds)
        valid_total = flagged = 0
        with contextlib.ExitStack() as stack:
            scores = stack.enter_context(writer_like(info, out, len(detector.outputs), "float32", nodata,
                                                     descriptions=list(detector.outputs), tags=tags))
            mask = None
            if mask_out is not None:
                mask = stack.enter_context(writer_like(
                    info, mask_out, 1, "uint8", MASK_NODATA, descriptions=["anomaly"], resampling="NEAREST",
                    tags=dict(tags, rsvae_fpr=fpr, rsvae_threshold=threshold)))
            for window in iter_windows(ds):
                data, valid = reader.read(window)
                block = np.full((len(detector.outputs), *valid.shape), nodata, np.float32)
                n = int(valid.sum())
                if n:
                    terms = detector.score(data[:, valid].T, **options)
                    for i, k in enumerate(detector.outputs):
                        block[i][valid] = terms[k]
                scores.write(block, window)
                if mask is not None:
                    m = np.full(valid.shape, MASK_NODATA, np.uint8)
                    if n:
                        m[valid] = block[0][valid] > threshold
                        flagged += int(m[valid].sum())
                    mask.write(m[None], window)
                valid_total += n
                if progress:
                    progress(int(window.width * window.height))
            if valid_total == 0:
                warnings.warn(f"{tile}: no valid pixel (all nodata, NaN or masked); the output is all nodata",
                              RsvaeWarning, stacklevel=2)
    return ScoreSummary(str(tile), str(out), info.width * info.height, valid_total, time.perf_counter() - t0,
                        threshold, flagged if mask_out is not None else None)


def score_raster_with_halo(
    detector: Detector,
    tile: str | Path,
    out: str | Path,
    *,
    mask_out: str | Path | None = None,
    fpr: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """``score_raster`` for detectors that need neighbouring pixels (``detector.halo`` > 0, e.g. local RX).

    Each window is read with ``halo`` pixels of margin (beyond the raster edge counts as invalid) and scored as a
    block by ``detector.score_block``; a valid pixel the detector cannot score (NaN) is nodata in the output.
    """
    t0 = time.perf_counter()
    threshold = detector.threshold(fpr) if mask_out is not None else None
    with open_raster(tile) as ds:
        info = info_of(ds)
        detector.check_bands(info.count, str(tile))
        check_crs(detector, info, tile)
        nodata = output_nodata(info)
        origin = getattr(detector, "origin", {})
        tags = {"rsvae_model": origin.get("path", ""), "rsvae_model_digest": origin.get("digest", ""),
                "rsvae_detector": detector.kind, "rsvae_input": Path(tile).name}
        reader = WindowReader(ds)
        scored_total = flagged = 0
        with contextlib.ExitStack() as stack:
            scores = stack.enter_context(writer_like(info, out, len(detector.outputs), "float32", nodata,
                                                     descriptions=list(detector.outputs), tags=tags))
            mask = None
            if mask_out is not None:
                mask = stack.enter_context(writer_like(
                    info, mask_out, 1, "uint8", MASK_NODATA, descriptions=["anomaly"], resampling="NEAREST",
                    tags=dict(tags, rsvae_fpr=fpr, rsvae_threshold=threshold)))
            for window in iter_windows(ds):
                data, valid = reader.read_with_halo(window, detector.halo)
                terms = detector.score_block(data, valid)
                h = detector.halo
                scored = valid[h:valid.shape[0] - h, h:valid.shape[1] - h] & np.isfinite(terms["score"])
                block = np.full((len(detector.outputs), *scored.shape), nodata, np.float32)
                for i, k in enumerate(detector.outputs):
                    block[i][scored] = terms[k][scored]
                scores.write(block, window)
                if mask is not None:
                    m = np.full(scored.shape, MASK_NODATA, np.uint8)
                    m[scored] = block[0][scored] > threshold
                    flagged += int(m[scored].sum())
                    mask.write(m[None], window)
                scored_total += int(scored.sum())
                if progress:
                    progress(int(window.width * window.height))
            if scored_total == 0:
                warnings.warn(f"{tile}: no pixel could be scored (all nodata, NaN or masked); the output is all "
                              "nodata", RsvaeWarning, stacklevel=2)
    return ScoreSummary(str(tile), str(out), info.width * info.height, scored_total, time.perf_counter() - t0,
                        threshold, flagged if mask_out is not None else None)
