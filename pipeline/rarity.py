"""Rarity: how rare a score is among held-out normal pixels, as −log10 of the share that score at least as high.

A rarity of 2 means one normal pixel in 100 scores at least as high, 3 one in 1 000. Within the range the held-out
set measures well (at least ``MIN_TAIL_COUNT`` held-out pixels above), rarity comes from the calibration quantiles
the model folder keeps (``model.json`` ``calibration``), interpolated linearly in rarity. Beyond it, an exponential
tail: the share above a score ``s`` is ``p_a · exp(−(s − q_a) / β)`` from the anchor quantile ``q_a`` (share
``p_a``), so rarity grows linearly with the score, with ``β`` fitted to the top ``TAIL_SHARE`` of held-out scores
(maximum likelihood: the mean excess over their lowest). Capped at ``CAP``. The whole curve is one piecewise-linear
table, monotone non-decreasing by construction; scoring looks it up on a uniform grid (a few float32 array passes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.errors import ModelError

#: Highest rarity written: one normal pixel in 10¹² (beyond any scene; the tail model is not trusted further).
CAP = 12.0
#: Share of the top held-out scores the exponential tail is fitted to.
TAIL_SHARE = 0.01
#: Held-out pixels that must lie above a quantile for it to be trusted as measured rather than extrapolated.
MIN_TAIL_COUNT = 10


#: Name (band description) of the rarity band in score rasters.
BAND = "rarity"
#: Top of the colour scale in pictures of rarity (higher values are drawn as this).
PICTURE_MAX = 8.0


def band_of(descriptions: tuple[str | None, ...] | list[str | None]) -> int | None:
    """The 1-based index of the rarity band among a raster's band descriptions, or None."""
    for i, d in enumerate(descriptions, start=1):
        if d == BAND:
            return i
    return None


@dataclass(frozen=True)
class Tail:
    """Exponential tail beyond the anchor: share above s = share · exp(−(s − anchor) / scale)."""

    anchor: float
    share: float
    scale: float

    def to_json(self) -> dict[str, Any]:
        """The tail as stored in model.json's calibration."""
        return {"model": "exponential", "anchor": self.anchor, "share": self.share, "scale": self.scale,
                "cap": CAP}


def fit_tail(scores: np.ndarray, levels: np.ndarray, values: np.ndarray) -> Tail:
    """Fit the exponential tail to the top ``TAIL_SHARE`` of held-out ``scores``, anchored at a trusted quantile."""
    scores = np.asarray(scores, np.float64)
    u = float(np.quantile(scores, 1.0 - TAIL_SHARE))
    excess = scores[scores > u] - u
    scale = float(excess.mean()) if excess.size else 0.0
    anchor, share = _anchor(levels, values, scores.size)
    return Tail(anchor, share, _positive_scale(scale, values))


def tail_from_quantiles(cal: dict[str, Any]) -> Tail:
    """The tail for a model folder saved before rarity: fitted to its stored tail quantiles (least squares)."""
    levels = np.asarray(cal["levels"], np.float64)
    values = np.asarray(cal["values"], np.float64)
    n = int(cal.get("n") or 0)
    anchor, share = _anchor(levels, values, n)
    # exponential: q(1 − p) = u + β · ln(p_u / p) for p ≤ TAIL_SHARE; β by least squares on the quantiles that
    # at least one held-out pixel lies above (fewer than three such: down to the 90 % quantile)
    p = 1.0 - levels
    floor = 1.0 / n if n > 0 else 1e-3
    use = (p <= TAIL_SHARE + 1e-12) & (p >= floor - 1e-12) & (p > 0)
    if use.sum() < 3:
        use = (p <= 0.1 + 1e-12) & (p >= floor - 1e-12) & (p > 0)
    scale = 0.0
    if use.sum() >= 2:
        scale = float(np.polyfit(np.log(1.0 / p[use]), values[use], 1)[0])
    return Tail(anchor, share, _positive_scale(scale, values))


def _anchor(levels: np.ndarray, values: np.ndarray, n: int) -> tuple[float, float]:
    """The highest stored quantile with at least ``MIN_TAIL_COUNT`` held-out pixels above it (else the 99 %)."""
    p = 1.0 - levels
    ok = (p * max(n, 0) >= MIN_TAIL_COUNT) & (p <= TAIL_SHARE + 1e-12) & (p > 0)
    i = int(np.flatnonzero(ok)[-1]) if ok.any() else int(np.argmin(np.abs(p - TAIL_SHARE)))
    return float(values[i]), float(p[i])


def _positive_scale(scale: float, values: np.ndarray) -> float:
    """A usable tail scale: positive and finite (a degenerate fit falls back to a small share of the range)."""
    if math.isfinite(scale) and scale > 0:
        return scale
    spread = float(values[-1] - values[0])
    return max(spread * 1e-3, 1e-12)


#: Points of the uniform resampling of the rarity curve the scorer looks scores up in.
GRID = 1 << 16


class RarityTable:
    """Score -> rarity as one piecewise-linear curve: the quantiles' body, then the tail up to the cap.

    ``scores``/``rarity`` are the curve's knots (the reference: ``exact``). Scoring looks up a uniform resampling
    of it (``GRID`` points, 256 kB): a subtract, a multiply, two gathers and a lerp per pixel in float32, about 4 ns
    a pixel against np.interp's 40 (binary search, float64), within 1e-4 of the curve; monotone and capped all the
    same.
    """

    def __init__(self, scores: np.ndarray, rarity: np.ndarray):
        self.scores, self.rarity = np.asarray(scores, np.float64), np.asarray(rarity, np.float64)
        lo, hi = float(self.scores[0]), float(self.scores[-1])
        grid = np.linspace(lo, hi, GRID + 1)
        values = np.interp(grid, self.scores, self.rarity).astype(np.float32)
        values[-1] = np.float32(self.rarity[-1])
        self._values = np.append(values, values[-1])  # one more, so index GRID has a right neighbour
        self._lo = np.float32(lo)
        self._per_unit = np.float32(GRID / (hi - lo)) if hi > lo else np.float32(0)

    def exact(self, scores: np.ndarray) -> np.ndarray:
        """Rarity of ``scores`` on the curve itself (float64), for checks."""
        return np.interp(scores, self.scores, self.rarity)

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """Rarity of finite ``scores`` (any shape), float32; 0 below the lowest held-out score, ``CAP`` far above."""
        u = np.subtract(scores, self._lo, dtype=np.float32)
        u *= self._per_unit
        np.clip(u, 0, GRID, out=u)
        i = u.astype(np.intp)
        u -= i  # the fraction of the way to the next grid point
        low = self._values[i]
        high = self._values[i + 1]
        out = high - low
        out *= u
        out += low
        # float rounding may put low + (high - low)·u an ulp above high; the next cell starts at high: never a dip
        np.minimum(out, high, out=out)
        return out


def table(cal: dict[str, Any] | None) -> RarityTable:
    """The rarity table of a model's calibration block (``tail`` fitted from its quantiles where it has none)."""
    if not cal:
        raise ModelError("model has no calibration of held-out scores, so no rarity; retrain it")
    levels = np.asarray(cal["levels"], np.float64)
    values = np.asarray(cal["values"], np.float64)
    t = cal.get("tail")
    tail = Tail(float(t["anchor"]), float(t["share"]), float(t["scale"])) if t else tail_from_quantiles(cal)
    body = (values < tail.anchor) & (levels < 1.0)
    xs = np.concatenate([values[body], [tail.anchor]])
    ys = np.concatenate([-np.log10(1.0 - levels[body]), [-math.log10(tail.share)]])
    # one point per distinct score (its highest rarity), so the table is strictly increasing in score
    xs, last = np.unique(xs[::-1], return_index=True)
    ys = np.maximum.accumulate(ys[::-1][last])
    r_anchor = ys[-1]
    if r_anchor < CAP:
        x_cap = tail.anchor + (CAP - r_anchor) * tail.scale * math.log(10.0)
        xs, ys = np.append(xs, x_cap), np.append(ys, CAP)
    return RarityTable(xs, np.minimum(ys, CAP))
