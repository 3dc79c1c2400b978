"""Streaming a raster: blocks (with a margin), reader threads, the writer thread, and one ``cleanup()``.

Every reader and writer thread is registered in ``WORKERS``; ``cleanup()`` (the CLI's, after an interrupt) stops and
joins them, then removes the writers' temporaries.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from pipeline.cog_writer import RasterWriter, remove_temporaries
from pipeline.errors import OutputError
from pipeline.raster import WindowReader, open_raster


@dataclass
class Block:
    """One window as read for streaming: data and validity with an optional margin, and the window inside them."""

    index: int
    window: Window
    data: np.ndarray
    valid: np.ndarray
    inner: tuple[slice, slice]

    def core(self) -> tuple[np.ndarray, np.ndarray]:
        """Data (bands, rows, cols) and validity (rows, cols) of the window itself, without the margin (views)."""
        r, c = self.inner
        return self.data[:, r, c], self.valid[r, c]


def with_margin(window: Window, margin: int, width: int, height: int) -> tuple[Window, tuple[slice, slice]]:
    """``window`` grown by ``margin`` pixels on every side (clipped to the raster), and where it lies inside."""
    r0, c0 = int(window.row_off), int(window.col_off)
    h, w = int(window.height), int(window.width)
    top, left = max(0, r0 - margin), max(0, c0 - margin)
    bottom, right = min(height, r0 + h + margin), min(width, c0 + w + margin)
    grown = Window(left, top, right - left, bottom - top)
    return grown, (slice(r0 - top, r0 - top + h), slice(c0 - left, c0 - left + w))


class _Stop(Exception):
    """Raised inside a worker thread when the consumer has gone away."""


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    """Put ``item`` on a bounded queue, giving up when ``stop`` is set (so no thread waits forever)."""
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


#: Live reader and writer threads of this process, with the event that stops each. A signal's exception can land
#: at the very first instruction of a context manager's ``__exit__``, before it stops and joins its threads; the
#: CLI then stops and joins whatever is left here (``stop_workers``) before the process exits.
WORKERS: dict[threading.Thread, threading.Event] = {}


def start_worker(thread: threading.Thread, stop: threading.Event) -> None:
    """Start ``thread`` and register it (with its ``stop`` event) in WORKERS."""
    WORKERS[thread] = stop
    thread.start()


def join_all(threads: Sequence[threading.Thread], stop: threading.Event) -> None:
    """Join ``threads`` even when a signal's exception lands during the join: a reader or writer thread must not
    outlive the datasets it uses (closing one under a running GDAL call crashes the process)."""
    try:
        for t in threads:
            t.join()
    except BaseException:
        stop.set()
        for t in threads:
            t.join()
        raise
    finally:
        for t in threads:
            if not t.is_alive():
                WORKERS.pop(t, None)


def stop_workers() -> None:
    """Stop and join every registered reader and writer thread (after an interrupt, before the process exits)."""
    for stop in list(WORKERS.values()):
        stop.set()
    for t in list(WORKERS):
        # A signal can land inside the thread's start(): before the thread exists (it never runs) or while start()
        # waits for it to come up (it runs shortly, sees its stop event and ends).
        deadline = time.monotonic() + 1.0
        while not t.is_alive() and t.ident is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if t.ident is not None:
            t.join()
        WORKERS.pop(t, None)


class BlockReader:
    """Reads the windows of a raster in background threads and yields them as Blocks, in order.

    Each thread has its own dataset handle (GDAL handles are not thread-safe) and reads every ``threads``-th
    window into a ring of ``depth`` reused buffers; GDAL decompresses without holding the GIL, so reading overlaps
    the consumer's work, and memory is fixed at ``threads * depth`` windows (no allocation per window, which
    otherwise grows the readers' malloc arenas). A yielded Block is valid until the next one is asked for.
    ``margin`` grows every window by that many pixels (clipped to the raster) for detectors that look at
    neighbours. ``threads=0`` reads in the consumer's thread. ``direct`` (the default) decodes the tiles of a
    pixel-interleaved GeoTIFF without GDAL (``WindowReader``): its blocks are then pixel-interleaved views.
    Use as a context manager; errors of the readers (an unreadable block) are raised in the consumer.
    """

    def __init__(self, path: str | Path, windows: Sequence[Window], width: int, height: int, *, margin: int = 0,
                 threads: int = 2, depth: int = 2, direct: bool = True):
        self.path = path
        self.direct = direct and not margin  # grown windows are never exactly one tile: no decoder for them
        self.windows = list(windows)
        self.size = (width, height)
        self.margin = margin
        self.threads = max(0, min(threads, len(self.windows)))
        self.depth = max(1, depth)
        self._ready = [queue.Queue() for _ in range(self.threads)]
        self._free = [queue.Queue() for _ in range(self.threads)]
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def _grown(self, i: int) -> tuple[Window, tuple[slice, slice]]:
        window = self.windows[i]
        return with_margin(window, self.margin, *self.size) if self.margin else (window, (slice(None),) * 2)

    def _buffer(self, reader: WindowReader, dtype: Any = None) -> np.ndarray:
        """A flat buffer for the largest (grown) window (``reader.buffer_elements``), of the file's dtype or
        ``dtype``."""
        largest = max(int(w.width) * int(w.height) for w in (self._grown(i)[0] for i in range(len(self.windows))))
        return np.empty(reader.buffer_elements(largest), dtype or reader.ds.dtypes[0])

    def _work(self, k: int) -> None:
        ready, free = self._ready[k], self._free[k]
        try:
            with open_raster(self.path) as ds, contextlib.closing(WindowReader(ds, self.direct)) as reader:
                scratch = self._buffer(reader, bool)
                for _ in range(self.depth):
                    free.put(self._buffer(reader))
                for i in range(k, len(self.windows), self.threads):
                    while True:  # wait for a free buffer: the consumer is at most `depth` windows behind
                        if self._stop.is_set():
                            return
                        with contextlib.suppress(queue.Empty):
                            buffer = free.get(timeout=0.1)
                            break
                    grown, inner = self._grown(i)
                    data, valid = reader.read(grown, buffer, scratch)
                    ready.put((Block(i, self.windows[i], data, valid, inner), buffer))
        except BaseException as exc:  # handed to the consumer, which raises it
            ready.put((exc, None))

    def __enter__(self) -> BlockReader:
        for k in range(self.threads):
            t = threading.Thread(target=self._work, args=(k,), name=f"rsvae-reader-{k}", daemon=True)
            self._workers.append(t)
            start_worker(t, self._stop)
        return self

    def __iter__(self) -> Iterator[Block]:
        if not self.threads:
            with open_raster(self.path) as ds, contextlib.closing(WindowReader(ds, self.direct)) as reader:
                buffer, scratch = self._buffer(reader), self._buffer(reader, bool)
                for i in range(len(self.windows)):
                    grown, inner = self._grown(i)
                    data, valid = reader.read(grown, buffer, scratch)
                    yield Block(i, self.windows[i], data, valid, inner)
            return
        for i in range(len(self.windows)):
            k = i % self.threads
            item, buffer = self._ready[k].get()
            if isinstance(item, BaseException):
                raise item
            yield item
            self._free[k].put(buffer)  # the consumer is done with this block: its buffer can be refilled

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        join_all(self._workers, self._stop)


class BlockWriter:
    """Writes blocks to one or more RasterWriters in a background thread, so compression overlaps the producer.

    ``write(window, a, b, ...)`` queues one array per writer (at most ``depth`` wait); errors of the writing thread
    are raised in the producer, at its next ``write`` or at the end.
    """

    def __init__(self, writers: Sequence[RasterWriter], depth: int = 4):
        self.writers = list(writers)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="rsvae-writer", daemon=True)

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is None or self._stop.is_set():
                return
            window, arrays = item
            try:
                for w, a in zip(self.writers, arrays, strict=True):
                    w.write(a, window)
            except BaseException as exc:
                self._error = exc
                self._stop.set()
                return

    def write(self, window: Window, *arrays: np.ndarray) -> None:
        """Queue one (bands, rows, cols) array per writer for ``window``."""
        if self._error is not None:
            raise self._error
        try:
            _put(self._queue, (window, arrays), self._stop)
        except _Stop:
            raise self._error or OutputError("writer stopped") from None

    def __enter__(self) -> BlockWriter:
        start_worker(self._thread, self._stop)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                self._stop.set()
            while self._thread.is_alive():  # hand the thread its end marker, dropping queued blocks when stopping
                try:
                    self._queue.put(None, timeout=0.1)
                    break
                except queue.Full:
                    if self._stop.is_set():
                        with contextlib.suppress(queue.Empty):
                            while True:
                                self._queue.get_nowait()
        except BaseException:  # a signal landed here: stop the thread, and still join it below
            self._stop.set()
            raise
        finally:
            join_all([self._thread], self._stop)
        if exc_type is None and self._error is not None:
            raise self._error


def cleanup() -> None:
    """After an interrupt, before the process exits: stop and join every reader and writer thread (whose context
    manager the signal hit before it joined them), then remove whatever temporaries a writer could not remove itself
    (the signal hit its way in or out)."""
    stop_workers()
    remove_temporaries()
