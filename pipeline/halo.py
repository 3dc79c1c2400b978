"""Reading windows with a margin of context (a detector's ``halo``) without decoding any tile twice.

``streaming.BlockReader`` grows each window by the margin and reads it through GDAL: in a tiled, compressed file the
thin margin strips lie in up to 8 neighbouring tiles, each decoded whole for a few rows or columns, so a block
costs up to 9 tile decodes (measured: reading a 1024 x 1024 x 64 tiled deflate GeoTIFF with a 4-pixel margin took
6.5 x the CPU of reading it without). ``RowBandReader`` reads the raster one *row band* at a time instead (the rows
of one row of windows, full width: every tile of that row decoded once, by the direct tile decoder where the file
allows, into pixel-interleaved memory, else through GDAL), keeps the band below for the next step and a copy of the
last ``margin`` rows of the band above, and pastes every window's grown block out of those into a reused block
buffer: each tile is decoded once and each pixel copied once, in the tiles' own layout.
Memory: two row bands (for a tiled file, two rows of tiles at full width), a strip of ``margin`` rows and ``depth``
block buffers, all reused from band to band."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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
                  *, margin: int, threads: int = 2, pad: bool = False) -> RowBandReader | BlockReader:
    """Blocks of ``windows`` grown by ``margin``: by row bands where they ``suits`` (each tile decoded once; with
    ``pad``, blocks carry the full margin beyond the raster's edges too, invalid), else each window grown, clipped
    to the raster, and read on its own (``streaming.BlockReader``, ``threads`` readers)."""
    if suits(windows, margin, width, bands, itemsize):
        return RowBandReader(path, windows, width, height, margin=margin, pad=pad)
    return BlockReader(path, windows, width, height, margin=margin, threads=threads)


@dataclass
class _Piece:
    """Part of the raster held by the reader: data (bands, rows, cols), a view of a tile or row-band buffer, and
    validity, whose top-left pixel is (``row``, ``col``)."""

    row: int
    col: int
    data: np.ndarray
    valid: np.ndarray


def _paste(data: np.ndarray, valid: np.ndarray, top: int, left: int, pieces: Sequence[_Piece]) -> None:
    """Copy into ``data`` (bands, rows, cols) and ``valid`` (rows, cols), whose top-left pixel is (``top``,
    ``left``) of the raster, what ``pieces`` hold of it (each band's values as they lie: whole pixel rows of
    pixel-interleaved memory at a time)."""
    rows, cols = valid.shape
    for p in pieces:
        ph, pw = p.valid.shape
        r0, r1 = max(top, p.row), min(top + rows, p.row + ph)
        c0, c1 = max(left, p.col), min(left + cols, p.col + pw)
        if r0 >= r1 or c0 >= c1:
            continue
        dst = (slice(r0 - top, r1 - top), slice(c0 - left, c1 - left))
        src = (slice(r0 - p.row, r1 - p.row), slice(c0 - p.col, c1 - p.col))
        data[(slice(None), *dst)] = p.data[(slice(None), *src)]
        valid[dst] = p.valid[src]


class RowBandReader:
    """Blocks of ``windows`` grown by ``margin``, read one full-width row band at a time in a background thread;
    the same ``Block`` objects, in the same order, as ``streaming.BlockReader`` gives (clipped to the raster), or
    with ``pad`` every block carries the full margin (beyond the raster: 0, invalid), as a halo detector takes it.

    Each tile is decoded once, into one of two sets of buffers (the band being cut into blocks and the band below;
    the last ``margin`` rows of the band above are kept as a copy), and each block is pasted from them into one of
    ``depth`` reused block buffers, in the tiles' layout (pixel-interleaved where the direct decoder reads them):
    one copy per pixel, no allocation per band or block. As with ``BlockReader``, a yielded Block is valid until the
    next one is asked for."""

    def __init__(self, path: str | Path, windows: Sequence[Window], width: int, height: int, *, margin: int,
                 depth: int = 2, pad: bool = False):
        self.path = path
        self.windows = list(windows)
        self.size = (width, height)
        self.margin = margin
        self.pad = pad
        self.depth = max(1, depth)
        self.bands = row_bands(self.windows)
        self._ready: queue.Queue = queue.Queue()  # bounded by the block buffers: at most `depth` blocks wait
        self._free: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._slots: list[dict[int, np.ndarray]] = [{}, {}]  # per row-band parity: buffers by position

    def _slot_buffer(self, slot: int, key: int, elements: int, dtype: np.dtype) -> np.ndarray:
        """A reused flat buffer of row-band slot ``slot`` (``key``: the tile's position, or -1 for a whole band)."""
        buf = self._slots[slot].get(key)
        if buf is None or buf.size < elements or buf.dtype != dtype:
            buf = self._slots[slot][key] = np.empty(elements, dtype)
        return buf

    def _read_band(self, reader: WindowReader, k: int, scratch: np.ndarray) -> list[_Piece]:
        """Row band ``k`` at full width as pieces, in the buffers of slot ``k % 2`` (the band two before is done).

        Where every window of the band is one tile the reader decodes directly (``tiffdecode``), one piece per tile
        (pixel-interleaved views, see ``raster.pixel_major``); else the band, read through GDAL in one call."""
        row, h, members = self.bands[k]
        width = self.size[0]
        tiles, slot = reader.tiles, k % 2
        if tiles is None or any(tiles.index(self.windows[i]) is None for i in members) or \
                sum(int(self.windows[i].width) for i in members) != width:
            count = reader.ds.count
            buf = self._slot_buffer(slot, -1, h * width * count, np.dtype(reader.ds.dtypes[0]))
            data, valid = reader.read(Window(0, row, width, h), buf, scratch)
            return [_Piece(row, 0, data, valid)]
        pieces = []
        for j, i in enumerate(members):
            w = self.windows[i]
            buf = self._slot_buffer(slot, j, tiles.tile_elements, tiles.dtype)
            data, valid = reader.read(w, buf, scratch)
            pieces.append(_Piece(row, int(w.col_off), data, valid))
        return pieces

    def _extent(self, i: int) -> tuple[int, int, int, int, tuple[slice, slice]]:
        """Block ``i``'s (top, left, rows, cols) in raster pixels and where its window lies inside it."""
        m, (width, height) = self.margin, self.size
        w = self.windows[i]
        if self.pad:
            r0, c0, h, wd = int(w.row_off), int(w.col_off), int(w.height), int(w.width)
            return r0 - m, c0 - m, h + 2 * m, wd + 2 * m, (slice(m, m + h), slice(m, m + wd))
        grown, inner = with_margin(w, m, width, height)
        return int(grown.row_off), int(grown.col_off), int(grown.height), int(grown.width), inner

    def _blocks(self, reader: WindowReader) -> Iterator[tuple[Block, tuple[np.ndarray, np.ndarray]]]:
        """Every block in order, with the block buffers it lies in (given back through ``_free`` when used)."""
        m, (width, height) = self.margin, self.size
        count = reader.ds.count
        largest = max((r * c for _, _, r, c, _ in map(self._extent, range(len(self.windows)))), default=0)
        tallest = max((h for _, h, _ in self.bands), default=0)
        tile = reader.tiles.tile[0] * reader.tiles.tile[1] if reader.tiles is not None else 0
        scratch = np.empty(max(tallest * width, tile) * count, bool)  # for the validity tests
        made = 0
        above: list[_Piece] = []  # a copy of the last m rows of the band above
        current = self._read_band(reader, 0, scratch) if self.bands else []
        for k in range(len(self.bands)):
            below = self._read_band(reader, k + 1, scratch) if k + 1 < len(self.bands) else []
            pieces = above + current + below
            first = pieces[0].row
            last = pieces[-1].row + pieces[-1].valid.shape[0]
            pixel = all(pixel_major(p.data) for p in pieces)
            for i in self.bands[k][2]:
                top, left, rows, cols, inner = self._extent(i)
                if max(top, 0) < first or min(top + rows, height) > last:
                    raise ValueError("a margin reaches beyond the neighbouring row bands")
                if made < self.depth:  # the block buffers: `depth` of them, then the ones the consumer gave back
                    made += 1
                    buffers = (np.empty(largest * count, current[0].data.dtype), np.empty(largest, bool))
                else:
                    buffers = self._given_back()
                flat = buffers[0][:rows * cols * count]
                data = flat.reshape(rows, cols, count).transpose(2, 0, 1) if pixel else flat.reshape(count, rows, cols)
                valid = buffers[1][:rows * cols].reshape(rows, cols)
                if top < 0 or left < 0 or top + rows > height or left + cols > width:  # padded beyond the raster
                    data[...] = 0
                    valid[...] = False
                _paste(data, valid, top, left, pieces)
                yield Block(i, self.windows[i], data, valid, inner), buffers
            rows_now = current[0].valid.shape[0]
            keep = min(m, rows_now)
            above = [_Piece(p.row + rows_now - keep, p.col, p.data[:, rows_now - keep:].copy(order="K"),
                            p.valid[rows_now - keep:].copy()) for p in current]
            current = below

    def _given_back(self) -> tuple[np.ndarray, np.ndarray]:
        """The next block buffers the consumer gives back (waiting for them; giving up when stopped)."""
        while True:
            if self._stop.is_set():
                raise _Stop
            with contextlib.suppress(queue.Empty):
                return self._free.get(timeout=0.1)

    def _work(self) -> None:
        try:
            with open_raster(self.path) as ds, contextlib.closing(WindowReader(ds)) as reader:
                for item in self._blocks(reader):
                    _put(self._ready, item, self._stop)
            _put(self._ready, (None, None), self._stop)
        except _Stop:
            return
        except BaseException as exc:  # handed to the consumer, which raises it
            with contextlib.suppress(_Stop):
                _put(self._ready, (exc, None), self._stop)
        finally:
            self._slots = [{}, {}]  # the row bands' buffers: not held once read

    def __enter__(self) -> RowBandReader:
        t = threading.Thread(target=self._work, name="rsvae-rowband-reader", daemon=True)
        self._workers.append(t)
        start_worker(t, self._stop)
        return self

    def __iter__(self) -> Iterator[Block]:
        while True:
            item, buffers = self._ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            self._free.put(buffers)  # the consumer is done with this block: its buffer can be refilled

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        join_all(self._workers, self._stop)
