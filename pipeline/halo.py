"""Reading windows with a margin of context (a detector's ``halo``) without decoding any tile twice.

``streaming.BlockReader`` grows each window by the margin and reads it through GDAL: in a tiled, compressed file the
thin margin strips lie in up to 8 neighbouring tiles, each decoded whole for a few rows or columns, so a block
costs up to 9 tile decodes (measured: reading a 1024 x 1024 x 64 tiled deflate GeoTIFF with a 4-pixel margin took
6.5 x the CPU of reading it without). ``RowBandReader`` reads the raster one *row band* at a time instead (the rows
of one row of windows, full width: every tile of that row decoded once), keeps the band below for the next step and
the last ``margin`` rows of the band above, and cuts every window's grown block out of those: each tile is decoded
once (by the direct tile decoder where the file allows, into pixel-interleaved memory, else through GDAL).
Memory: two row bands (for a tiled file, two rows of tiles at full width) plus a strip of ``margin`` rows;
blocks are views into them.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from pipeline.raster import WindowReader, open_raster, pixel_major
from pipeline.streaming import Block, BlockReader, _put, _Stop, join_all, start_worker, with_margin


def row_bands(windows: Sequence[Window]) -> list[tuple[int, int, list[int]]]:
    """Group windows (in reading order) into row bands: ``(row_off, height, window indices)``; windows of a band
    share their rows. Raises ValueError when windows of one band differ in height or bands overlap."""
    bands: list[tuple[int, int, list[int]]] = []
    for i, w in enumerate(windows):
        r, h = int(w.row_off), int(w.height)
        if bands and bands[-1][0] == r:
            if bands[-1][1] != h:
                raise ValueError("windows of one row differ in height")
            bands[-1][2].append(i)
            continue
        if bands and r < bands[-1][0] + bands[-1][1]:
            raise ValueError("windows are not in row-band order")
        bands.append((r, h, [i]))
    return bands


#: Most bytes two row bands may hold; beyond it (very wide rasters of many bands) ``streaming.BlockReader`` reads.
ROW_BAND_BUDGET = 1 << 30


def suits(windows: Sequence[Window], margin: int, width: int, bands: int, itemsize: int,
          budget: int = ROW_BAND_BUDGET) -> bool:
    """Whether ``RowBandReader`` can read these windows: row bands at least ``margin`` tall but the last (so a
    margin reaches only the neighbouring bands; the raster's edge clips the last one's) and two bands within
    ``budget`` bytes."""
    try:
        groups = row_bands(windows)
    except ValueError:
        return False
    if not groups or any(h < margin for _, h, _ in groups[:-1]):
        return False
    tallest = max(h for _, h, _ in groups)
    return 2 * tallest * width * (bands * itemsize + 1) <= budget


def margin_reader(path: str | Path, windows: Sequence[Window], width: int, height: int, bands: int, itemsize: int,
                  *, margin: int, threads: int = 2) -> RowBandReader | BlockReader:
    """Blocks of ``windows`` grown by ``margin``: by row bands where they ``suits`` (each tile decoded once), else
    each window grown and read on its own (``streaming.BlockReader``, ``threads`` readers)."""
    if suits(windows, margin, width, bands, itemsize):
        return RowBandReader(path, windows, width, height, margin=margin)
    return BlockReader(path, windows, width, height, margin=margin, threads=threads)


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """(bands, rows, cols) arrays stacked along rows, kept in pixel-interleaved memory when they all are."""
    if all(pixel_major(p) for p in parts):
        return np.concatenate([p.transpose(1, 2, 0) for p in parts], axis=0).transpose(2, 0, 1)
    return np.concatenate(parts, axis=1)


class RowBandReader:
    """Blocks of ``windows`` grown by ``margin`` (clipped to the raster), read one full-width row band at a time in
    a background thread; the same ``Block`` objects, in the same order, as ``streaming.BlockReader`` gives."""

    def __init__(self, path: str | Path, windows: Sequence[Window], width: int, height: int, *, margin: int,
                 depth: int = 2):
        self.path = path
        self.windows = list(windows)
        self.size = (width, height)
        self.margin = margin
        self.bands = row_bands(self.windows)
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _read_band(self, reader: WindowReader, k: int) -> tuple[int, np.ndarray, np.ndarray]:
        """Row band ``k`` at full width: (first row, data (bands, rows, width), valid (rows, width)), new arrays.

        Where every window of the band is one tile the reader decodes directly (``tiffdecode``), the tiles are
        decoded one by one into pixel-interleaved memory (data is then a (bands, rows, width) view of it, see
        ``raster.pixel_major``); else the band is read through GDAL in one call."""
        row, h, members = self.bands[k]
        width = self.size[0]
        tiles = reader.tiles
        if tiles is None or any(tiles.index(self.windows[i]) is None for i in members) or \
                sum(int(self.windows[i].width) for i in members) != width:
            data, valid = reader.read(Window(0, row, width, h))
            return row, data, valid
        count = reader.ds.count
        memory = np.empty((h, width, count), tiles.dtype)
        valid = np.empty((h, width), bool)
        for i in members:
            w = self.windows[i]
            c0, c1 = int(w.col_off), int(w.col_off) + int(w.width)
            d, v = reader.read(w, self._tile_buffer)
            memory[:, c0:c1] = d.transpose(1, 2, 0) if pixel_major(d) else np.moveaxis(d, 0, -1)
            valid[:, c0:c1] = v
        return row, memory.transpose(2, 0, 1), valid

    def _blocks(self, reader: WindowReader) -> Iterator[Block]:
        m, (width, height) = self.margin, self.size
        above: tuple[int, np.ndarray, np.ndarray] | None = None  # the last m rows of the band above
        current = self._read_band(reader, 0) if self.bands else None
        for k in range(len(self.bands)):
            below = self._read_band(reader, k + 1) if k + 1 < len(self.bands) else None
            parts = [p for p in (above, current) if p is not None]
            if below is not None:  # only the rows a margin reaches
                parts.append((below[0], below[1][:, :m], below[2][:m]))
            top = parts[0][0]
            data = _stack([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
            valid = np.concatenate([p[2] for p in parts], axis=0) if len(parts) > 1 else parts[0][2]
            for i in self.bands[k][2]:
                grown, inner = with_margin(self.windows[i], m, width, height)
                r0, c0 = int(grown.row_off) - top, int(grown.col_off)
                rows, cols = slice(r0, r0 + int(grown.height)), slice(c0, c0 + int(grown.width))
                if r0 < 0 or rows.stop > data.shape[1]:
                    raise ValueError("a margin reaches beyond the neighbouring row bands")
                yield Block(i, self.windows[i], data[:, rows, cols], valid[rows, cols], inner)
            row, d, v = current
            above = (row + d.shape[1] - min(m, d.shape[1]), d[:, d.shape[1] - min(m, d.shape[1]):],
                     v[v.shape[0] - min(m, v.shape[0]):])
            current = below

    def _work(self) -> None:
        try:
            with open_raster(self.path) as ds, contextlib.closing(WindowReader(ds)) as reader:
                self._tile_buffer = (np.empty(reader.tiles.tile_elements, reader.tiles.dtype)
                                     if reader.tiles is not None else None)
                for block in self._blocks(reader):
                    _put(self._ready, block, self._stop)
            _put(self._ready, None, self._stop)
        except _Stop:
            return
        except BaseException as exc:  # handed to the consumer, which raises it
            with contextlib.suppress(_Stop):
                _put(self._ready, exc, self._stop)

    def __enter__(self) -> RowBandReader:
        t = threading.Thread(target=self._work, name="rsvae-rowband-reader", daemon=True)
        self._workers.append(t)
        start_worker(t, self._stop)
        return self

    def __iter__(self) -> Iterator[Block]:
        while True:
            item = self._ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        join_all(self._workers, self._stop)
