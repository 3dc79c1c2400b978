"""The streaming scorer: a tile's windows -> detector -> score raster (and optional anomaly mask).

Reader threads, the detector and a writer thread run overlapped with bounded queues between them, so throughput
approaches the speed of reading the raster and memory is bounded by a few windows whatever the tile's size.
Invalid pixels (nodata, NaN, masked in any band) are never scored: they are nodata in every output.
"""

from __future__ import annotations

import contextlib
import shlex
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import halo
from pipeline.batch import BatchResult, TileJob, TileOutcome, plan_outputs, run_tiles
from pipeline.cog_writer import RasterWriter, check_distinct, commit_together, output_nodata, writer_like
from pipeline.errors import InputError, RsvaeWarning, UsageConflict
from pipeline.names import file_name, tile_name
from pipeline.raster import info_of, iter_windows, open_raster, pixel_major
from pipeline.streaming import Block, BlockReader, BlockWriter
from pipeline.styles import write_raster_qml

if TYPE_CHECKING:  # the scorer needs no torch itself: it runs any Scorer (the contract in detectors/base.py)
    from pipeline.scorer import Scorer

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


def check_crs(detector: Scorer, info, tile: str | Path) -> None:
    """Refuse a tile in another CRS than the training tiles; warn when the tile has no georeference."""
    if info.crs is None:
        warnings.warn(f"{tile}: has no CRS; scored, and the output has no CRS either", RsvaeWarning, stacklevel=2)
        return
    trained = detector.meta.get("crs") or ""
    if trained and info.crs.to_wkt() != trained:
        from rasterio.crs import CRS

        if CRS.from_wkt(trained) != info.crs:
            model = detector.origin.get("path") or "MODEL"
            fix = f"rsvae stack {shlex.quote(str(tile))} --like {shlex.quote(model)} -o {tile_name(tile)}_like_model.vrt"
            raise InputError(f"{tile}: CRS {info.crs.to_string()} differs from the training tiles' "
                             f"{CRS.from_wkt(trained).to_string()}; put it on the model's CRS (warped on the fly, "
                             f"no pixels copied) with: {fix}")


def band_difference(model: Sequence[str], tile: Sequence[str | None]) -> str:
    """`` (the tile lacks B8A; it has X too)`` for a band-count error, when the model and every band of the tile
    have names (a stack missing a product's default band says which); else ''."""
    from pipeline.products import normal_name

    if not model or not tile or not all(tile):
        return ""
    have = {normal_name(n) for n in tile if n}
    known = {normal_name(n) for n in model}
    lacks = [b for b in model if normal_name(b) not in have]
    extra = [b for b in tile if b and normal_name(b) not in known]
    parts = [f"the tile lacks {', '.join(lacks)}"] if lacks else []
    parts += [f"it has {', '.join(extra)} too"] if extra else []
    return f" ({'; '.join(parts)})" if parts else ""


def score_raster(
    detector: Scorer,
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
    scoring_path: str = "auto",
    blocks: BlockReader | halo.RowBandReader | None = None,
) -> ScoreSummary:
    """Score every valid pixel of ``tile`` into a float32 COG at ``out`` (one band per detector output).

    With ``mask_out`` and ``fpr``, also write a uint8 mask (1 = anomaly) thresholded where a fraction ``fpr`` of
    held-out normal pixels would be flagged.

    Reading (``readers`` threads, a dataset handle each), the detector and writing run overlapped, with bounded
    queues between them, so memory stays bounded by a few windows whatever the tile's size. The detector runs in
    the calling thread: keep torch to one thread (the CLI's default) so it does not fight the readers for cores.
    ``scoring_path`` is handed to detectors with more than one (the VAE): ``folded``, ``layered``, or ``auto`` (the
    default) the faster of the two on this CPU; the path run is recorded in the raster's tags (``rsvae_scoring_path``).
    ``blocks``: the tile's reader (``read_blocks(tile, detector.halo, readers)``), already started by the caller,
    who also closes it: started before the model loads, it reads ahead while torch imports (``rsvae score``).
    """
    if mask_out is not None and fpr is None:
        raise UsageConflict("--mask-out needs --fpr (the false-alarm rate that sets the threshold)")
    t0 = time.perf_counter()
    threshold = detector.threshold(fpr) if mask_out is not None else None
    options = {"samples": samples, "seed": seed, "chunk": chunk} if samples > 1 else {"chunk": chunk}
    if samples > 1 and detector.halo:  # score_block takes no options: say so rather than ignore them silently
        warnings.warn(f"{detector.kind} model scores each pixel with its neighbourhood once: --samples {samples} "
                      "is not used", RsvaeWarning, stacklevel=2)
    rarity = rarity_of(detector)
    names = list(detector.outputs) + (["rarity"] if rarity[0] else [])
    several = detector.scoring_path("folded") is not None  # detectors with more than one scoring path (the VAE)
    if several:
        options["scoring_path"] = scoring_path
    with open_raster(tile) as ds:
        info = info_of(ds)
        try:
            detector.check_bands(info.count, str(tile))
        except InputError as exc:  # name the bands too, where both sides name theirs
            raise InputError(f"{exc}{band_difference(detector.band_names, info.descriptions)}"
                             ) from None
        check_crs(detector, info, tile)
        windows = iter_windows(ds)
    if blocks is not None and (blocks.margin != detector.halo or str(blocks.path) != str(tile)):
        raise ValueError(f"blocks read from {blocks.path} with a margin of {blocks.margin}: scoring {tile} needs a "
                         f"margin of {detector.halo}")
    nodata = output_nodata(info)
    origin = detector.origin
    tags = {"rsvae_model": origin.get("path", ""), "rsvae_model_digest": origin.get("digest", ""),
            "rsvae_detector": detector.kind, "rsvae_input": file_name(tile), "rsvae_input_path": str(tile)}
    if several and samples <= 1:  # chosen (measured, when it is) before the reader threads start
        tags["rsvae_scoring_path"] = detector.scoring_path(scoring_path).describe()
    valid_total = flagged = 0
    writers: list[RasterWriter] = []
    try:
        with contextlib.ExitStack() as stack:
            # held: the score raster and its mask are renamed into place together, once both are complete
            writers.append(stack.enter_context(writer_like(info, out, len(names), "float32", nodata,
                                                       descriptions=names, tags=tags, hold=True)))
            if mask_out is not None:
                writers.append(stack.enter_context(writer_like(
                    info, mask_out, 1, "uint8", MASK_NODATA, descriptions=["anomaly"], resampling="NEAREST",
                    tags=dict(tags, rsvae_fpr=fpr, rsvae_threshold=threshold), hold=True)))
            if blocks is None:
                blocks = stack.enter_context(_reader(tile, info, windows, detector.halo, readers))
            sink = stack.enter_context(BlockWriter(writers))
            for block in blocks:
                scores, valid = score_block(detector, block, nodata, options, rarity)
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
    if "rarity" in names:
        write_raster_qml(out, names.index("rarity") + 1)
    return ScoreSummary(str(tile), str(out), info.width * info.height, valid_total, time.perf_counter() - t0,
                        threshold, flagged if mask_out is not None else None,
                        finish_seconds=sum(w.finish_seconds for w in writers))


def read_blocks(tile: str | Path, margin: int = 0, readers: int = 2) -> BlockReader | halo.RowBandReader:
    """The reader ``score_raster`` streams ``tile`` with for a detector whose ``halo`` is ``margin``, not started
    (use it as a context manager). Entered before the detector loads, its threads decode the first windows while
    torch imports (a second of one core at start, when the other one has nothing else to do)."""
    with open_raster(tile) as ds:
        info = info_of(ds)
        windows = iter_windows(ds)
    return _reader(tile, info, windows, margin, readers)


def _reader(tile: str | Path, info: Any, windows: Sequence[Any], margin: int,
            readers: int) -> BlockReader | halo.RowBandReader:
    if margin:  # by row bands where they suit: each tile decoded once, not once per neighbouring window
        return halo.margin_reader(tile, windows, info.width, info.height, info.count, np.dtype(info.dtype).itemsize,
                                  margin=margin, threads=readers, pad=True)
    return BlockReader(tile, windows, info.width, info.height, threads=readers)


def score_tiles(
    detector: Scorer,
    tiles: Sequence[str | Path],
    outdir: str | Path,
    *,
    mask_dir: str | Path | None = None,
    fpr: float | None = None,
    samples: int = 1,
    seed: int = 0,
    chunk: int = 65536,
    scoring_path: str = "auto",
    on_done: Callable[[TileOutcome], None] | None = None,
) -> BatchResult:
    """Score many tiles with one loaded detector: ``outdir/NAME.tif`` (and ``mask_dir/NAME.tif``) per tile.

    Each tile goes through ``score_raster`` as if alone (atomic outputs, same checks); a bad tile is recorded in
    the result (``on_done`` hears it at once) and the others go on. The model's threshold is checked once, first,
    so a model that cannot make masks stops before any tile.
    """
    if mask_dir is not None:
        if fpr is None:
            raise UsageConflict("--mask-dir needs --fpr (the false-alarm rate that sets the threshold)")
        detector.threshold(fpr)
    jobs = plan_outputs(tiles, {"scores": outdir, "mask": mask_dir})

    def one(job: TileJob) -> ScoreSummary:
        check_distinct(job.tile, list(job.outputs.values()))
        return score_raster(detector, job.tile, job.outputs["scores"], mask_out=job.outputs.get("mask"),
                            fpr=fpr if mask_dir is not None else None, samples=samples, seed=seed, chunk=chunk,
                            scoring_path=scoring_path)

    return run_tiles(jobs, one, on_done)


def rarity_of(detector: Scorer) -> tuple[bool, Callable[[np.ndarray], np.ndarray] | None]:
    """Whether the score raster gets a rarity band after the detector's outputs, and the score -> rarity lookup it
    is written with.

    No band for adapters whose first output is not an anomaly score (latent features); a band of nodata (lookup
    None, with a warning) for a detector without calibration (local RX).
    """
    if not detector.has_rarity:
        return False, None
    if not detector.meta.get("calibration"):
        warnings.warn(f"{detector.kind} model has no calibration of held-out scores: the rarity band is nodata",
                      RsvaeWarning, stacklevel=3)
        return True, None
    return True, detector.rarity_table()


def score_block(detector: Scorer, block: Block, nodata: float, options: dict[str, Any],
                rarity: tuple[bool, Callable[[np.ndarray], np.ndarray] | None] = (False, None),
                ) -> tuple[np.ndarray, np.ndarray]:
    """Score one block: ``(outputs (k, rows, cols) float32 with nodata where invalid, valid (rows, cols))``.

    With ``rarity`` (``rarity_of``: band, lookup), one more band after the detector's outputs: the score's rarity
    (nodata where the lookup is None).

    The detector is asked, in this order, for ``score_block(data, valid)`` when it has a ``halo`` (detectors that
    need neighbours, e.g. local RX: the block comes with ``halo`` pixels of margin on every side, beyond the raster
    edge as invalid; a pixel it cannot score, NaN, is nodata), ``score(pixels (n, bands))`` for a pixel-interleaved
    block (a directly decoded tile: its rows are the pixels, no copy), ``score_bands(pixels (bands, n))`` (a
    band-major fast path: no transposed copy of rasterio's blocks), or the generic ``score(pixels (n, bands))``.
    """
    data, valid = block.core()
    k = len(detector.outputs)
    extra, to_rarity = rarity
    out = np.full((k + extra, *valid.shape), nodata, np.float32)
    if not valid.any():
        return out, valid
    halo = detector.halo
    if halo:
        terms = detector.score_block(*pad_to_halo(block, halo))
        valid = valid & np.isfinite(terms[detector.outputs[0]])  # NaN: a pixel it could not score
        for i, key in enumerate(detector.outputs):
            out[i][valid] = np.asarray(terms[key])[valid]
        if to_rarity is not None:
            out[k][valid] = to_rarity(out[0][valid])
        return out, valid
    everything = bool(valid.all())
    if pixel_major(data):
        # a directly decoded tile: (rows, cols, bands) memory, handed over as (n, bands) rows
        rows = data.transpose(1, 2, 0)
        terms = detector.score(rows.reshape(-1, rows.shape[-1]) if everything else rows[valid], **options)
    else:
        pixels = data.reshape(data.shape[0], -1) if everything else data[:, valid]  # (bands, n): a view when all valid
        terms = detector.score_bands(pixels, **options)
    for i, key in enumerate(detector.outputs):
        if everything:
            out[i].reshape(-1)[:] = terms[key]
        else:
            out[i][valid] = terms[key]
    if to_rarity is not None:
        if everything:
            out[k].reshape(-1)[:] = to_rarity(out[0].reshape(-1))
        else:
            out[k][valid] = to_rarity(terms["score"])
    return out, valid


def pad_to_halo(block: Block, halo: int) -> tuple[np.ndarray, np.ndarray]:
    """A block's data and validity with exactly ``halo`` pixels of margin per side (invalid beyond the raster): the
    block itself where it has them (an interior block, or one read padded: ``halo.margin_reader(pad=True)``), else
    a padded copy in the same memory layout (pixel-interleaved blocks stay so)."""
    (r, c), (rows, cols) = block.inner, block.valid.shape
    pads = ((halo - r.start, halo - (rows - r.stop)), (halo - c.start, halo - (cols - c.stop)))
    if not any(any(p) for p in pads):
        return block.data, block.valid
    if pixel_major(block.data):
        return np.pad(block.data.transpose(1, 2, 0), (*pads, (0, 0))).transpose(2, 0, 1), np.pad(block.valid, pads)
    return np.pad(block.data, ((0, 0), *pads)), np.pad(block.valid, pads)
