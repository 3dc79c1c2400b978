"""Neighbourhood statistics of a block: each pixel's guarded-ring mean spectrum, as box filters.

A pixel's *ring* is the square outer window around it minus the square inner (guard) window, so a target up to the
guard's size does not explain itself. Only valid pixels count: nodata, NaN and masked pixels are never anyone's
context, and neither is anything beyond the block (the streaming scorer reads blocks with a margin of ``outer // 2``,
invalid beyond the raster's edge). A pixel next to a mask or an edge therefore gets the mean of the valid part of
its ring; one whose ring holds no valid pixel gets NaN (it is not scored).

The sums are integral images (cumulative sums, float64): a constant cost per pixel and band whatever the windows'
sizes, and the same value for a pixel whichever block it is computed in, up to float64 rounding.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

#: Bands whose integral images are built at once (bounded memory for hyperspectral blocks).
BAND_GROUP = 8


def check_windows(inner: int, outer: int, where: str) -> None:
    """Raise ValueError unless both windows are odd, the guard at least 1 and smaller than the outer window."""
    if inner < 1 or outer <= inner or inner % 2 == 0 or outer % 2 == 0:
        raise ValueError(f"{where}: context windows ({inner}, {outer}) must both be odd, the outer one larger")


def _box_sums(integral: np.ndarray, half: int, pad: int, rows: int, cols: int) -> np.ndarray:
    """Sums over the (2·half+1)² window centred on every pixel of a (…, rows, cols) array from its integral image,
    which was built on the array zero-padded by ``pad`` >= ``half`` on each side (and one leading zero row/col)."""
    r0, r1 = pad - half, pad + half + 1
    return (integral[..., r1:r1 + rows, r1:r1 + cols] - integral[..., r0:r0 + rows, r1:r1 + cols]
            - integral[..., r1:r1 + rows, r0:r0 + cols] + integral[..., r0:r0 + rows, r0:r0 + cols])


def _integral(a: np.ndarray, pad: int) -> np.ndarray:
    """The integral image of ``a`` (…, rows, cols) zero-padded by ``pad``, with a leading zero row and column."""
    rows, cols = a.shape[-2:]
    out = np.zeros((*a.shape[:-2], rows + 2 * pad + 1, cols + 2 * pad + 1), np.float64)
    out[..., pad + 1:pad + 1 + rows, pad + 1:pad + 1 + cols] = a
    np.cumsum(out, axis=-2, out=out)
    np.cumsum(out, axis=-1, out=out)
    return out


def ring_counts(valid: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Valid pixels in each pixel's ring (rows, cols) int."""
    check_windows(inner, outer, "ring")
    rows, cols = valid.shape
    pad = outer // 2
    iv = _integral(np.asarray(valid, bool).astype(np.float64), pad)
    count = _box_sums(iv, outer // 2, pad, rows, cols) - _box_sums(iv, inner // 2, pad, rows, cols)
    return np.rint(count).astype(np.int64)


def ring_mean_groups(data: np.ndarray, valid: np.ndarray, inner: int, outer: int,
                     count: np.ndarray, group: int = BAND_GROUP) -> Iterator[tuple[slice, np.ndarray]]:
    """``ring_mean`` a few bands at a time: (band slice, mean of those bands) pairs, so a caller that reduces the
    means (a projection) never holds all bands' float64 means, ``group`` bands at a time. ``count`` is
    ``ring_counts``'; the mean is NaN where it is 0."""
    bands, rows, cols = data.shape
    pad = outer // 2
    v = np.asarray(valid, bool)
    with np.errstate(divide="ignore"):
        inv = np.where(count > 0, 1.0 / count, np.nan)  # NaN where the ring holds no valid pixel
    for b in range(0, bands, group):
        x = np.where(v, np.asarray(data[b:b + group], np.float64), 0.0)
        ix = _integral(x, pad)
        mean = _box_sums(ix, outer // 2, pad, rows, cols)
        mean -= _box_sums(ix, inner // 2, pad, rows, cols)
        mean *= inv
        yield slice(b, b + mean.shape[0]), mean


def ring_mean(data: np.ndarray, valid: np.ndarray, inner: int, outer: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean spectrum over the valid pixels of each pixel's ring, and their count.

    ``data`` (bands, rows, cols) in any units, ``valid`` (rows, cols); returns the mean (bands, rows, cols) float64,
    NaN where the ring holds no valid pixel, and the count (rows, cols) int. Every pixel of the block gets a value;
    near the block's border its ring is cut by the border (read blocks with a margin of ``outer // 2`` for full
    rings).
    """
    count = ring_counts(valid, inner, outer)
    mean = np.empty(data.shape, np.float64)
    for band, m in ring_mean_groups(data, valid, inner, outer, count):
        mean[band] = m
    return mean, count
