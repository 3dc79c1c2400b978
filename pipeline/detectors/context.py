"""The context VAE: the VAE of ``vae.py`` over a pixel's spectrum joined with a summary of its surroundings.

Each pixel's input is its spectrum and the mean spectrum of its guarded ring (``neighbourhood.ring_mean``: an outer
window minus a guard window, so a target up to the guard's size does not explain itself), the ring mean reduced to
its ``components`` leading principal components (in the sample's standardised band units, not each rescaled) to
keep the model small. The VAE learns the joint density of (pixel, surroundings): a spectrum that is common in the
scene but not next to what surrounds it (an aircraft on tarmac, with the same material on roofs elsewhere) is
explained badly. The score is the spectrum's part only (``SpectrumNoiseVAE``): the residual-Mahalanobis distance of
the pixel's own residual, plus the KL term, so a normal pixel is not flagged for an odd ring (a target's neighbours
would be, and targets would smear). Everything else is the per-pixel VAE's, unchanged: the trimmed second pass, and
rarity calibrated on held-out sample pixels (with the ring means the sample recorded for them at ingest).

It scores windows read with a margin (``halo`` = outer // 2), like local RX, so the streaming scorer gives every
pixel its full ring. A pixel whose ring is cut by a mask, nodata or the raster's edge is scored against the valid
part of its ring; one with no valid pixel in its ring is not scored (nodata).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from pipeline.detectors.base import Detector
from pipeline.detectors.vae import F32_MAX, NOISE_CSTEPS, VAEDetector, robust_noise
from pipeline.errors import ConfigError, ModelError
from pipeline.neighbourhood import Scratch, block_ring_sums, check_windows
from pipeline.scorer import halo_of

#: Sample ring means used to find the principal components (at most).
PCA_PIXELS = 50_000


def pixel_major(data: np.ndarray) -> bool:
    """Whether a (bands, rows, cols) block is a view of pixel-interleaved memory: ``raster.pixel_major``'s test,
    repeated here because detectors never import the raster code."""
    return data.ndim == 3 and data.shape[0] > 1 and data.strides[0] == data.itemsize


class FeatureStats:
    """Per-feature mean and standard deviation, as the VAE's normalisation reads them from ``BandStats``."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)


class SpectrumNoiseVAE(VAEDetector):
    """The VAE over (spectrum, context) whose reconstruction term is the residual Mahalanobis distance of the
    spectrum alone (``noise_features``: the whitening matrix has zero rows for the context features). A pixel is not
    scored for an odd ring (a normal pixel beside a target would be, and targets would smear); the ring still shapes
    its reconstruction and its KL term. ``noise_features`` is set per model (``_spectrum_vae``).

    The residual's covariance is scaled per pixel by ``g``, a function of the ring alone: log g is linear in the
    ring's components (``noise_scale``: coefficients, intercept, and the range of log g over the sample, outside of
    which it is not extrapolated). Pixels are noisier and more textured in some surroundings than in others (a
    bright roof varies more from pixel to pixel than dark tarmac), so a residual is judged against the spread that
    is usual where the pixel lies; the ring, not the pixel, sets that spread, so a target cannot explain itself.
    The reconstruction term is the Gaussian negative log-likelihood under covariance g·Σ, up to a constant:
    0.5·d²/g + 0.5·rank(Σ)·(log g - its sample minimum), so it stays >= 0. Models saved without it score as before.
    """

    noise_scale: np.ndarray | None = None
    ring_scale: ClassVar[bool] = True  # fit it (``train.context_noise: ring``)

    def set_noise(self, noise: tuple[np.ndarray, np.ndarray] | None) -> None:
        """As ``VAEDetector.set_noise``; the ring-dependent scale goes with the covariance it was fitted with."""
        super().set_noise(noise)
        self.set_noise_scale(None)

    def set_noise_scale(self, scale: np.ndarray | None) -> None:
        """Use ``scale`` (coefficients over the context features, intercept, lowest and highest log g) or none."""
        self.noise_scale = None if scale is None else np.asarray(scale, np.float64)
        if self.noise_scale is not None:  # folded onto the context features in input units: one dot per pixel
            b, coef = int(self.noise_features), self.noise_scale[:-3]
            a = coef / self.scale[b:]
            self._scale_fold = (torch.from_numpy(a.astype(np.float32)),
                                float(self.noise_scale[-3] - a @ self.offset[b:]))

    def fit_noise(self, x: torch.Tensor, keep: float, ridge: float, seed: int) -> None:
        """The residual covariance (``VAEDetector.fit_noise``'s robust fit), the ring-dependent scale of each
        pixel's residual (``fit_log_scale`` of its Mahalanobis distance on its context features), then the
        covariance again from the residuals divided by their scale, so that it is the covariance of pixels
        everywhere, not only of the quiet surroundings most of the sample lies in."""
        if not self.ring_scale:  # train.context_noise: fixed
            super().fit_noise(x, keep, ridge, seed)
            return
        x, res = self.noise_residuals(x, seed)
        b = res.shape[1]
        mean, w = robust_noise(res, keep, ridge)
        ctx = x[:, b:].double().cpu().numpy()
        dist = np.square((res - mean) @ w).sum(axis=1)
        # floored at a thousandth of the median: a pixel explained exactly (clipped, copied) must not pull the fit
        dist = np.maximum(dist, 1e-3 * max(float(np.median(dist)), 1e-300))
        coef = fit_log_scale(ctx, np.log(dist / w.shape[1]), keep)
        logg = ctx @ coef[:-1] + coef[-1]
        mean, w = robust_noise(res * np.exp(-0.5 * logg)[:, None], keep, ridge)
        pad = x.shape[1] - b  # the context features' rows of the whitening are zero: their residuals do not count
        VAEDetector.set_noise(self, (np.pad(mean, (0, pad)), np.pad(w, ((0, pad), (0, 0)))))
        self.set_noise_scale(np.concatenate([coef, [logg.min(), logg.max()]]))

    def _rescale(self, terms: dict[str, np.ndarray], logg: np.ndarray) -> dict[str, np.ndarray]:
        """The reconstruction term and score under the covariance g·Σ, from those under Σ and log g."""
        lo, hi = self.noise_scale[-2:]
        logg = np.clip(logg.astype(np.float64), lo, hi)
        rank = self.noise_arrays[1].shape[1]
        rec = terms["reconstruction"] * np.exp(-logg) + 0.5 * rank * (logg - lo)
        rec = np.minimum(rec, F32_MAX).astype(np.float32)
        return {"score": np.minimum(rec + self.beta * terms["kl"].astype(np.float64), F32_MAX).astype(np.float32),
                "reconstruction": rec, "kl": terms["kl"]}

    def _fast(self, pixels: np.ndarray, band_major: bool, chunk: int,
              scoring_path: str = "auto") -> dict[str, np.ndarray]:
        """``VAEDetector._fast``'s terms, rescaled by each pixel's ring-dependent scale (its context features)."""
        terms = super()._fast(pixels, band_major, chunk, scoring_path)
        if self.noise_scale is None or not terms["score"].size:
            return terms
        b = int(self.noise_features)
        a, c = self._scale_fold
        ctx = np.asarray(pixels[b:] if band_major else pixels[:, b:], np.float32)
        ctx = torch.from_numpy(ctx if ctx.flags.writeable else ctx.copy())  # torch warns on read-only memory
        logg = (a @ ctx if band_major else ctx @ a).numpy() + c
        return self._rescale(terms, logg)

    def score_tensor(self, x: torch.Tensor, samples: int = 1,
                     gen: torch.Generator | None = None) -> dict[str, np.ndarray]:
        """``VAEDetector.score_tensor`` (the reference path), rescaled as ``_fast``."""
        terms = super().score_tensor(x, samples, gen)
        if self.noise_scale is None:
            return terms
        ctx = x[:, int(self.noise_features):].double().cpu().numpy()
        return self._rescale(terms, ctx @ self.noise_scale[:-3] + self.noise_scale[-3])

    def tensors(self) -> dict[str, torch.Tensor]:
        """``VAEDetector.tensors`` and the noise scale (``noise.scale``) where there is one."""
        t = super().tensors()
        if self.noise_scale is not None:
            t["noise.scale"] = torch.from_numpy(self.noise_scale)
        return t


def fit_log_scale(features: np.ndarray, log_dist: np.ndarray, keep: float) -> np.ndarray:
    """Least-squares coefficients and intercept (features + 1,) of ``log_dist`` on ``features`` (n, features), with
    a light ridge, refitted on the ``keep`` fraction of pixels it fits best from above (anomalies in the sample have
    distances far above their surroundings' and would raise the scale there)."""
    n, k = features.shape
    a = np.concatenate([features, np.ones((n, 1))], axis=1)
    centred = features - features.mean(axis=0)
    reg = 1e-3 * max(float(np.square(centred).sum()) / max(k, 1), 1e-12) * np.eye(k + 1)
    reg[k, k] = 0.0
    sel = np.ones(n, bool)
    for _ in range(1 + NOISE_CSTEPS):
        coef = np.linalg.solve(a[sel].T @ a[sel] + reg * sel.mean(), a[sel].T @ log_dist[sel])
        err = log_dist - a @ coef
        sel = err <= np.quantile(err, keep)
    return coef


def _spectrum_vae(bands: int, ring_scale: bool = True) -> type[SpectrumNoiseVAE]:
    """The ``SpectrumNoiseVAE`` class for ``bands`` spectrum bands (``VAEDetector.fit`` builds ``cls(...)``), fitting
    the ring-dependent noise scale or not (``train.context_noise``)."""
    return type("SpectrumNoiseVAE", (SpectrumNoiseVAE,), {"noise_features": bands, "ring_scale": ring_scale})


class ContextVAEDetector(Detector):
    """A VAE over (spectrum, leading components of the guarded-ring mean spectrum); scores blocks with a halo."""

    kind: ClassVar[str] = "context-vae"
    outputs: ClassVar[tuple[str, ...]] = VAEDetector.outputs

    def __init__(self, vae: VAEDetector, band_names: list[str], windows: tuple[int, int], projection: np.ndarray,
                 centre: np.ndarray, meta: dict[str, Any]):
        self.vae = vae
        self.band_names = list(band_names)
        self.windows = (int(windows[0]), int(windows[1]))
        # a spectrum x (input units) -> its components x @ projection - centre (standardised band units)
        self.projection = np.asarray(projection, np.float64)  # (bands, components)
        self.centre = np.asarray(centre, np.float64)  # (components,)
        # torch's matmul, not numpy's: it keeps to the threads the CLI sets (numpy's BLAS spins its own on every core)
        self._projection_t = torch.from_numpy(np.ascontiguousarray(self.projection.T, np.float32))
        self._scratch = Scratch()  # the features' arrays, reused from block to block
        self.meta = meta

    @property
    def halo(self) -> int:
        """Pixels of context needed on every side of a window: half the outer window (``scorer.halo_of``)."""
        return halo_of(self.kind, self.meta)

    # ---- fitting
    @classmethod
    def fit(cls, pixels: np.ndarray, band_names: list[str], stats: Any, settings: dict[str, Any],
            progress: Callable[[dict[str, float]], None] | None = None, *,
            context: np.ndarray | None = None, windows: tuple[int, int] | None = None) -> ContextVAEDetector:
        """Train on sample ``pixels`` (n, bands) and their ring means ``context`` (n, bands), recorded at ingest
        with ``windows`` (guard, outer); ``settings`` is the config's ``train`` section."""
        if context is None or windows is None:
            raise ConfigError("train.context: ring needs a sample that records each pixel's neighbourhood; "
                              "ingest with ingest.context set (e.g. [3, 9])")
        pixels, context = np.asarray(pixels), np.asarray(context)
        keep = np.isfinite(context).all(axis=1)  # pixels with no valid ring pixel are never scored
        pixels, context = pixels[keep], context[keep]
        bands = pixels.shape[1]
        offset = np.asarray(stats.mean, np.float64)
        std = np.asarray(stats.std, np.float64)
        scale = np.where(np.isfinite(std) & (std > 1e-12 * np.maximum(np.abs(offset), 1.0)), std, 1.0)
        k = max(1, min(int(settings["context_components"]), bands))
        z = (context.astype(np.float64) - offset) / scale
        if z.shape[0] > PCA_PIXELS:
            z_fit = z[np.random.default_rng(int(settings["seed"])).choice(z.shape[0], PCA_PIXELS, replace=False)]
        else:
            z_fit = z
        z_fit = z_fit - z_fit.mean(axis=0)
        basis = np.linalg.svd(z_fit, full_matrices=False)[2][:k].T  # (bands, k)
        if basis.shape[1] < k:  # fewer sample pixels than components
            basis = np.pad(basis, ((0, 0), (0, k - basis.shape[1])))
        projection, centre = basis / scale[:, None], (offset / scale) @ basis
        feats = np.concatenate([pixels.astype(np.float64), z @ basis], axis=1)
        # The components stay in standardised band units (scale 1), not each scaled to unit variance: the ring
        # mean keeps its geometry, and weak components do not weigh as much as strong ones (that lost 0.012 of
        # mean ROC AUC on the dev scenes).
        fstats = FeatureStats(np.concatenate([offset, feats[:, bands:].mean(axis=0)]),
                              np.concatenate([std, np.ones(k)]))
        names = list(band_names) + [f"context_{i + 1}" for i in range(k)]
        if dict(settings).get("preset") or settings["reconstruction"] != "gaussian" or settings["noise"] != "residual":
            raise ConfigError("train.context: ring works with the default Gaussian reconstruction term and "
                              "noise: residual (no preset)")
        vae = _spectrum_vae(bands, settings.get("context_noise", "ring") == "ring").fit(
            feats.astype(np.float32), names, fstats, settings, progress)
        meta = dict(vae.meta, context={"windows": list(windows), "components": k, "n_fit": int(keep.sum()),
                                       "dropped_no_ring": int((~keep).sum()),
                                       "noise_scale": vae.noise_scale is not None})
        return cls(vae, band_names, windows, projection, centre, meta)

    # ---- scoring
    def score(self, pixels: np.ndarray, **_: Any) -> dict[str, np.ndarray]:
        """Loose pixels cannot be scored: the model needs each pixel's neighbours (use ``score_block``)."""
        raise ModelError("the context VAE scores windows with their neighbourhood, not loose pixels; "
                         "score a raster with `rsvae score`")

    def features(self, data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (bands + components, n) of the interior pixels of a block read with ``halo`` pixels of margin,
        and which interior pixels they are (rows - 2·halo, cols - 2·halo): valid, with a valid ring. The features
        are a view of pixel rows (``.T`` is (n, features), C-contiguous) in memory reused from block to block:
        valid until the next call."""
        h = self.halo
        bands, rows, cols = data.shape
        k = self.projection.shape[1]
        # The mean is linear: the ring mean of the pixels' components is the components of their ring mean. So
        # every pixel of the block is projected first (one GEMM; pixel-interleaved blocks as they lie, band-major
        # ones through a transposed view) and only k channels are box-filtered. Centred after the ring mean, on
        # the interior only: float64 integral images do not need it first.
        comp = self._scratch.get("components", (rows * cols, k), np.float32)
        if pixel_major(data):  # a float32 block read as pixel-interleaved memory: no copy
            pixels = np.ascontiguousarray(data.transpose(1, 2, 0), np.float32).reshape(-1, bands)
            torch.mm(torch.from_numpy(pixels), self._projection_t.T, out=torch.from_numpy(comp))
        else:
            flat = np.ascontiguousarray(data, np.float32).reshape(bands, -1)
            torch.mm(torch.from_numpy(flat).T, self._projection_t.T, out=torch.from_numpy(comp))
        sums, count = block_ring_sums(comp.reshape(rows, cols, k), valid, *self.windows, self._scratch)
        inner = (slice(h, rows - h), slice(h, cols - h))
        ok = valid[inner] & (count > 0)
        every = bool(ok.all())  # the usual case: slices instead of gathers
        n = ok.size if every else int(ok.sum())
        feats = self._scratch.get("features", (n, bands + k), np.float32)
        core = data[(slice(None), *inner)].transpose(1, 2, 0)  # (rows, cols, bands), a view in any layout
        np.multiply(sums, 1.0 / np.maximum(count, 1)[..., None], out=sums)  # the ring means (count > 0 where ok)
        np.subtract(sums, self.centre, out=sums)
        if every:
            feats[:, :bands].reshape(core.shape)[...] = core
            feats[:, bands:].reshape(sums.shape)[...] = sums
        else:
            feats[:, :bands] = core[ok]
            feats[:, bands:] = sums[ok]
        return feats.T, ok

    def per_pixel(self, data: np.ndarray, valid: np.ndarray, names: Sequence[str],
                  fn: Callable[[np.ndarray], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """``fn`` of the features of the interior pixels of ``data`` (bands, rows, cols), which carries ``halo``
        pixels of context per side: ``fn`` maps feature rows (n, bands + components) to (n,) arrays ``names``,
        returned as (rows - 2·halo, cols - 2·halo) float32 arrays, NaN where a pixel is invalid or has no valid
        pixel in its ring (its scores, its latent means)."""
        self.check_bands(data.shape[0], "input")
        feats, ok = self.features(data, valid)
        out = {k: np.full(ok.shape, np.nan, np.float32) for k in names}
        if ok.any():
            terms = fn(feats.T)  # C-contiguous pixel rows
            for k in names:
                out[k][ok] = terms[k]
        return out

    def score_block(self, data: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        """Score the interior of ``data`` (bands, rows, cols), which carries ``halo`` pixels of context per side.

        ``valid`` (rows, cols) marks the pixels that may be scored and serve as context; the result arrays are
        (rows - 2·halo, cols - 2·halo), NaN where a pixel is invalid or has no valid pixel in its ring.
        """
        return self.per_pixel(data, valid, self.outputs, self.vae.score)

    # ---- generative side (``pipeline.generative``): the inner VAE's latent space; spectra are its spectrum part
    @property
    def architecture(self) -> dict[str, Any]:
        """The inner VAE's architecture: its latent size is this model's."""
        return self.vae.architecture

    def encode(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and log-variance (n, latent) of features (n, bands + components), as ``features`` makes
        them for pixels read with their neighbourhood."""
        return self.vae.encode(np.asarray(feats))

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Spectra (n, bands) in input units decoded from latent vectors (n, latent): the spectrum part of the
        (spectrum, surroundings) pair the inner VAE decodes."""
        return self.vae.decode(z)[:, :self.bands]

    # ---- persistence
    def tensors(self) -> dict[str, torch.Tensor]:
        t = {f"vae.{k}": v for k, v in self.vae.tensors().items()}
        t["context.projection"] = torch.from_numpy(self.projection)
        t["context.centre"] = torch.from_numpy(self.centre)
        return t

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str,
                   device: str = "cpu") -> ContextVAEDetector:
        """Rebuild from a model folder's contents, checking the windows and the projection fit the bands."""
        bands = meta["bands"]
        try:
            windows = tuple(int(w) for w in meta["context"]["windows"])
            k = int(meta["context"]["components"])
            projection = tensors["context.projection"].double().numpy()
            centre = tensors["context.centre"].double().numpy()
            check_windows(*windows, where)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: incomplete context model ({type(exc).__name__}: {exc})") from None
        if projection.shape != (bands, k) or centre.shape != (k,):
            raise ModelError(f"{where}: context projection {projection.shape} does not match {bands} bands and {k} "
                             "components")
        inner_meta = dict(meta, bands=bands + k,
                          band_names=list(meta["band_names"]) + [f"context_{i + 1}" for i in range(k)])
        inner = {k_[len("vae."):]: v for k_, v in tensors.items() if k_.startswith("vae.")}
        vae = _spectrum_vae(bands).from_saved(inner_meta, inner, where, device)
        if meta["context"].get("noise_scale"):  # models saved before it have none: scored as they were
            scale = inner.get("noise.scale")
            if scale is None or tuple(scale.shape) != (k + 3,) or vae.noise_arrays is None:
                raise ModelError(f"{where}: the ring-dependent noise scale is missing or does not match {k} "
                                 "components")
            vae.set_noise_scale(scale.double().numpy())
        return cls(vae, meta["band_names"], windows, projection, centre, meta)
