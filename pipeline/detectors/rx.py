"""Classic baselines behind the detector contract: global RX and local RX (Reed-Xiaoli).

Global RX scores a pixel by its squared Mahalanobis distance to the background mean and covariance of the training
sample. Local RX (LRX) takes the background of each pixel from its neighbourhood instead: the pixels of an outer
window around it minus an inner guard window (so a target a few pixels wide does not hide itself), which is why it
scores windows with a margin of context (``halo``) rather than loose pixels.

Both work in standardised units (the sample's band means and standard deviations) and add a small ridge to every
covariance, so a singular covariance (more bands than background pixels, or constant bands) stays invertible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from pipeline.detectors.base import Detector
from pipeline.errors import ConfigError, ModelError
from pipeline.scorer import halo_of

#: Pixels scored per batch by local RX (each needs its own covariance: bands² floats).
LRX_BATCH = 256


def _standardisation(stats: Any, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Band offset and scale from the sample's statistics; constant bands get scale 1."""
    offset = np.asarray(stats.mean, np.float64).reshape(bands)
    scale = np.asarray(stats.std, np.float64).reshape(bands)
    tiny = 1e-12 * np.maximum(np.abs(offset), 1.0)
    return offset, np.where(np.isfinite(scale) & (scale > tiny), scale, 1.0)


def whitening(cov: np.ndarray, ridge: float) -> np.ndarray:
    """A matrix ``W`` with ``|W.T @ r|² = r.T (cov + ridge·tr(cov)/p·I)⁺ r``: a ridged pseudo-inverse square root.

    Eigen-directions whose variance is numerically zero even after the ridge are dropped (the pseudo-inverse).
    """
    p = cov.shape[0]
    cov = (cov + cov.T) / 2 + ridge * max(float(np.trace(cov)), 0.0) / p * np.eye(p)
    lam, vec = np.linalg.eigh(cov)
    keep = lam > max(float(lam[-1]), 0.0) * p * np.finfo(np.float64).eps
    return vec[:, keep] / np.sqrt(lam[keep])


class RXDetector(Detector):
    """Global RX: squared Mahalanobis distance to the sample's mean and (ridged) covariance."""

    kind: ClassVar[str] = "rx"
    outputs: ClassVar[tuple[str, ...]] = ("score",)

    def __init__(self, band_names: list[str], mean: np.ndarray, whiten: np.ndarray, meta: dict[str, Any]):
        self.band_names = list(band_names)
        self.mean = np.asarray(mean, np.float64)
        self.whiten = np.asarray(whiten, np.float64)
        self.meta = meta

    @classmethod
    def fit(cls, pixels: np.ndarray, band_names: list[str], stats: Any, settings: dict[str, Any],
            progress: Callable[[dict[str, float]], None] | None = None) -> RXDetector:
        """Estimate the background mean and covariance of ``pixels`` (n, bands); calibrate on the same pixels."""
        x = np.asarray(pixels, np.float64)
        n, bands = x.shape
        if n < 2:
            raise ConfigError(f"only {n} training pixels; RX needs at least 2 (check the sample's tiles and nodata)")
        offset, scale = _standardisation(stats, bands)
        z = (x - offset) / scale
        mean = z.mean(axis=0)
        cov = np.cov(z, rowvar=False, bias=True).reshape(bands, bands)
        ridge = float(settings["ridge"])
        # Fold the standardisation into the mean and the whitening matrix: score = |(x - mean) @ whiten|².
        det = cls(band_names, offset + mean * scale, whitening(cov, ridge) / scale[:, None],
                  {"ridge": ridge, "n_fit": int(n)})
        det.calibrate(det.score(x)["score"])
        det.meta["settings"] = dict(settings)
        return det

    def score(self, pixels: np.ndarray, **_: Any) -> dict[str, np.ndarray]:
        """Squared Mahalanobis distance of each pixel (n, bands) to the background."""
        self.check_bands(pixels.shape[1], "input")
        out = np.empty(pixels.shape[0], np.float32)
        for i in range(0, pixels.shape[0], 65536):
            r = np.asarray(pixels[i:i + 65536], np.float64) - self.mean
            out[i:i + 65536] = np.square(r @ self.whiten).sum(axis=1)
        return {"score": out}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"mean": torch.from_numpy(self.mean), "whiten": torch.from_numpy(self.whiten)}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str,
                   device: str = "cpu") -> RXDetector:
        """Rebuild from a model folder's contents, checking the arrays fit the band count."""
        bands = meta["bands"]
        try:
            mean, whiten = tensors["mean"].double().numpy(), tensors["whiten"].double().numpy()
        except KeyError as exc:
            raise ModelError(f"{where}: weights lack the RX array {exc}") from None
        if mean.shape != (bands,) or whiten.ndim != 2 or whiten.shape[0] != bands or whiten.shape[1] > bands:
            raise ModelError(f"{where}: RX arrays do not match the model's {bands} bands")
        return cls(meta["band_names"], mean, whiten, meta)


class LRXDetector(Detector):
    """Local RX: each pixel against the mean and covariance of its neighbours (outer window minus guard window)."""

    kind: ClassVar[str] = "lrx"
    outputs: ClassVar[tuple[str, ...]] = ("score",)

    def __init__(self, band_names: list[str], offset: np.ndarray, scale: np.ndarray, meta: dict[str, Any]):
        self.band_names = list(band_names)
        self.offset = np.asarray(offset, np.float64)
        self.scale = np.asarray(scale, np.float64)
        self.meta = meta
        self.inner = int(meta["inner_window"])
        self.outer = int(meta["outer_window"])
        self.ridge = float(meta["ridge"])

    @property
    def halo(self) -> int:
        """Pixels of context needed on every side of a window: half the outer window (``scorer.halo_of``)."""
        return halo_of(self.kind, self.meta)

    @classmethod
    def fit(cls, pixels: np.ndarray, band_names: list[str], stats: Any, settings: dict[str, Any],
            progress: Callable[[dict[str, float]], None] | None = None) -> LRXDetector:
        """Check the window sizes and keep the sample's band statistics (LRX learns nothing else)."""
        inner, outer = int(settings["inner_window"]), int(settings["outer_window"])
        if inner % 2 == 0 or outer % 2 == 0 or inner < 1 or outer <= inner:
            raise ConfigError(f"train.inner_window {inner} and train.outer_window {outer}: both must be odd and "
                              "the outer window larger than the inner one")
        bands = np.asarray(pixels).shape[1]
        offset, scale = _standardisation(stats, bands)
        meta = {"inner_window": inner, "outer_window": outer, "ridge": float(settings["lrx_ridge"]),
                "settings": dict(settings)}
        return cls(band_names, offset, scale, meta)

    def threshold(self, fpr: float) -> float:
        """LRX has no held-out scores to set a threshold from: a pixel sample carries no neighbourhoods."""
        raise ModelError("local RX models carry no calibration (a pixel sample has no neighbourhoods to score); "
                         "threshold the score raster yourself, or use --method rx or vae for --fpr")

    def score(self, pixels: np.ndarray, **_: Any) -> dict[str, np.ndarray]:
        """LRX needs each pixel's neighbours: loose pixels cannot be scored (use ``score_block``)."""
        raise ModelError("local RX scores windows with their neighbourhood, not loose pixels; "
                         "score a raster with `rsvae score`")

    def score_block(self, data: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        """Score the interior of ``data`` (bands, rows, cols), which carries ``halo`` pixels of context per side.

        ``valid`` (rows, cols) marks the pixels that may serve as background; the result arrays are
        (rows - 2·halo, cols - 2·halo), NaN where a pixel has fewer than 2 valid background pixels.
        """
        self.check_bands(data.shape[0], "input")
        h = self.halo
        bands, rows, cols = data.shape
        out_r, out_c = rows - 2 * h, cols - 2 * h
        z = (np.moveaxis(np.asarray(data, np.float64), 0, -1) - self.offset) / self.scale
        z = np.where(valid[..., None], z, 0.0)
        # Offsets of the background ring: the outer window minus the inner guard window.
        d = np.arange(-h, h + 1)
        g = self.inner // 2
        ring = [(dr, dc) for dr in d for dc in d if max(abs(dr), abs(dc)) > g]
        score = np.full(out_r * out_c, np.nan, np.float32)
        centres = np.argwhere(valid[h:h + out_r, h:h + out_c])
        if centres.size == 0:
            return {"score": score.reshape(out_r, out_c)}
        off = np.array(ring)
        zt, vt = torch.from_numpy(z), torch.from_numpy(valid)
        eye = torch.eye(bands, dtype=torch.float64)
        for i in range(0, len(centres), LRX_BATCH):
            c = centres[i:i + LRX_BATCH]
            rr = torch.from_numpy(c[:, None, 0] + h + off[None, :, 0])
            cc = torch.from_numpy(c[:, None, 1] + h + off[None, :, 1])
            bg, w = zt[rr, cc], vt[rr, cc].double()  # (b, ring, bands), (b, ring)
            n = w.sum(dim=1)
            mean = (bg * w[..., None]).sum(dim=1) / n.clamp(min=1)[:, None]
            dev = (bg - mean[:, None]) * w[..., None]
            cov = dev.transpose(1, 2) @ dev / n.clamp(min=1)[:, None, None]
            tr = torch.diagonal(cov, dim1=1, dim2=2).sum(dim=1) / bands
            # The ridge is relative to the local variance, with a floor of 1e-6 of the sample's (standardised) one.
            # A strong one (lrx_ridge 1 by default): ~216 background pixels for ~200 bands estimate a covariance
            # poorly; on the dev scenes a ridge of 0.01, 0.1, 1 gave a mean ROC AUC of 0.83, 0.88, 0.90.
            cov = cov + (self.ridge * tr + 1e-6)[:, None, None] * eye
            x = zt[torch.from_numpy(c[:, 0] + h), torch.from_numpy(c[:, 1] + h)] - mean
            chol, info = torch.linalg.cholesky_ex(cov)
            y = torch.cholesky_solve(x[..., None], chol)[..., 0]
            s = (x * y).sum(dim=1)
            s[(n < 2) | (info != 0)] = float("nan")
            score[c[:, 0] * out_c + c[:, 1]] = s.float().numpy()
        return {"score": score.reshape(out_r, out_c)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"normalisation.offset": torch.from_numpy(self.offset),
                "normalisation.scale": torch.from_numpy(self.scale)}

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str,
                   device: str = "cpu") -> LRXDetector:
        """Rebuild from a model folder's contents, checking windows and normalisation."""
        bands = meta["bands"]
        try:
            offset = tensors["normalisation.offset"].double().numpy()
            scale = tensors["normalisation.scale"].double().numpy()
            inner, outer, ridge = int(meta["inner_window"]), int(meta["outer_window"]), float(meta["ridge"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: incomplete local RX model ({type(exc).__name__}: {exc})") from None
        if offset.shape != (bands,) or scale.shape != (bands,) or (scale <= 0).any():
            raise ModelError(f"{where}: bad normalisation arrays")
        if inner % 2 == 0 or outer % 2 == 0 or outer <= inner or ridge < 0:
            raise ModelError(f"{where}: bad local RX windows ({inner}, {outer}) or ridge {ridge}")
        return cls(meta["band_names"], offset, scale, meta)
