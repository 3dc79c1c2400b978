"""Neighbourhood statistics of a block: each pixel's guarded-ring mean spectrum, as box filters.

A pixel's *ring* is the square outer window around it minus the square inner (guard) window, so a target up to the
guard's size does not explain itself. Only valid pixels count: nodata, NaN and masked pixels are never anyone's
context, and neither is anything beyond the block (the streaming scorer reads blocks with a margin of ``outer // 2``,
invalid beyond the raster's edge). A pixel next to a mask or an edge therefore gets the mean of the valid part of
its ring; one whose ring holds no valid pixel gets NaN (it is not scored).

The sums are integral images (cumulative sums, float64 for values, int32 for counts): a constant cost per pixel
and channel whatever the windows' sizes, and the same value for a pixel whichever block it is computed in, up to
float64 rounding. ``block_ring_sums`` works on a block read with its margin and fills only its interior, in reused
arrays (the context VAE's path); ``ring_mean`` gives every pixel of a block its mean (ingest).
"""

from __future__ import annotations

import threading

import numpy as np

#: Bands whose integral images are built at once (bounded memory for hyperspectral blocks).
BAND_GROUP = 8


def check_windows(inner: int, outer: int, where: str) -> None:
    """Raise ValueError unless both windows are odd, the guard at least 1 and smaller than the outer window."""
    if inner < 1 or outer <= inner or inner % 2 == 0 or outer % 2 == 0:
        raise ValueError(f"{where}: context windows ({inner}, {outer}) must both be odd, the outer one larger")


class Scratch:
    """Arrays reused from one block to the next, by name (a new one when the shape or type changes), one set per
    thread (a detector scoring in two threads does not share them): a block's integral images and features are
    tens of MB, and fresh ones cost page faults and zeroing every time."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` (contents undefined), the same memory as last time where it fits."""
        arrays = self._local.__dict__.setdefault("arrays", {})
        a = arrays.get(name)
        size = int(np.prod(shape))
        if a is None or a.dtype != np.dtype(dtype) or a.size < size:
            a = arrays[name] = np.empty(size, dtype)
        return a[:size].reshape(shape)


def _cumsum2d(a: np.ndarray) -> None:
    """Cumulative sums of ``a`` (rows, cols, ...) along its first two axes, in place: one vector add per row and
    per column (numpy's cumsum along a strided axis is about twice as slow)."""
    for r in range(1, a.shape[0]):
        np.add(a[r - 1], a[r], out=a[r])
    for c in range(1, a.shape[1]):
        np.add(a[:, c - 1], a[:, c], out=a[:, c])


def _add_box(out: np.ndarray, integral: np.ndarray, start: int, size: int, sign: int) -> None:
    """Add (``sign`` 1) or subtract (-1) to ``out`` (rows, cols, ...) the sums over the ``size`` x ``size`` boxes
    whose top-left corners are ``integral``'s entries (start + i, start + j), from the integral image."""
    rows, cols = out.shape[:2]
    a, b = start, start + size
    plus, minus = (np.add, np.subtract) if sign > 0 else (np.subtract, np.add)
    plus(out, integral[b:b + rows, b:b + cols], out=out)
    minus(out, integral[a:a + rows, b:b + cols], out=out)
    minus(out, integral[b:b + rows, a:a + cols], out=out)
    plus(out, integral[a:a + rows, a:a + cols], out=out)


def block_ring_sums(values: np.ndarray, valid: np.ndarray, inner: int, outer: int,
                    scratch: Scratch | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sums over the valid pixels of each *interior* pixel's ring, and their counts, for a block that carries
    ``outer // 2`` pixels of margin on every side (invalid where it lies beyond the raster).

    ``values`` (rows, cols, channels) in any layout and numeric type, ``valid`` (rows, cols); returns the sums
    (rows - 2m, cols - 2m, channels) float64 and the counts (rows - 2m, cols - 2m) int32, m = outer // 2: integral
    images of the block itself (no padding: the margin holds every interior pixel's ring), float64 for the values
    and int32 (exact) for the counts. With ``scratch`` the arrays are reused ones, valid until its next use.
    """
    check_windows(inner, outer, "ring")
    m, g = outer // 2, inner // 2
    rows, cols, channels = values.shape
    out_r, out_c = rows - 2 * m, cols - 2 * m
    if out_r < 1 or out_c < 1:
        raise ValueError(f"ring: a block of {rows} x {cols} has no interior for a margin of {m}")
    scratch = scratch or Scratch()
    v = np.asarray(valid, bool)
    iv = scratch.get("ring.count_integral", (rows + 1, cols + 1), np.int32)
    iv[0], iv[:, 0] = 0, 0
    iv[1:, 1:] = v
    _cumsum2d(iv)
    count = scratch.get("ring.count", (out_r, out_c), np.int32)
    count[...] = 0
    _add_box(count, iv, 0, outer, 1)
    _add_box(count, iv, m - g, inner, -1)
    ix = scratch.get("ring.integral", (rows + 1, cols + 1, channels), np.float64)
    ix[0], ix[:, 0] = 0.0, 0.0
    ix[1:, 1:] = values
    if not v.all():  # invalid pixels (whatever they hold: nodata, NaN) add nothing
        ix[1:, 1:][~v] = 0.0
    _cumsum2d(ix)
    sums = scratch.get("ring.sums", (out_r, out_c, channels), np.float64)
    sums[...] = 0.0
    _add_box(sums, ix, 0, outer, 1)
    _add_box(sums, ix, m - g, inner, -1)
    return sums, count


def ring_mean(data: np.ndarray, valid: np.ndarray, inner: int, outer: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean spectrum over the valid pixels of each pixel's ring, and their count.

    ``data`` (bands, rows, cols) in any units and layout, ``valid`` (rows, cols); returns the mean (bands, rows,
    cols) float64, NaN where the ring holds no valid pixel, and the count (rows, cols) int. Every pixel of the block
    gets a value; near the block's border its ring is cut by the border (read blocks with a margin of
    ``outer // 2`` for full rings). ``BAND_GROUP`` bands at a time (``block_ring_sums`` on the block padded with
    invalid pixels), so memory stays bounded for hyperspectral blocks.
    """
    check_windows(inner, outer, "ring")
    m = outer // 2
    bands, rows, cols = data.shape
    v = np.pad(np.asarray(valid, bool), m)
    mean = np.empty(data.shape, np.float64)
    scratch = Scratch()
    count = np.zeros((rows, cols), np.int64)
    for b in range(0, bands, BAND_GROUP):
        part = np.pad(np.moveaxis(np.asarray(data[b:b + BAND_GROUP]), 0, -1), ((m, m), (m, m), (0, 0)))
        sums, n = block_ring_sums(part, v, inner, outer, scratch)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean[b:b + BAND_GROUP] = np.moveaxis(sums / n[..., None], -1, 0)
        count[...] = n
    mean[:, count == 0] = np.nan
    return mean, count
