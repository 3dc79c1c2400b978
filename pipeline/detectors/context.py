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

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from pipeline.detectors.base import Detector
from pipeline.detectors.vae import VAEDetector
from pipeline.errors import ConfigError, ModelError
from pipeline.neighbourhood import Scratch, block_ring_sums, check_windows

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
    its reconstruction and its KL term. ``noise_features`` is set per model (``_spectrum_vae``)."""


def _spectrum_vae(bands: int) -> type[SpectrumNoiseVAE]:
    """The ``SpectrumNoiseVAE`` class for ``bands`` spectrum bands (``VAEDetector.fit`` builds ``cls(...)``)."""
    return type("SpectrumNoiseVAE", (SpectrumNoiseVAE,), {"noise_features": bands})


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
        """Pixels of context needed on every side of a window: half the outer window."""
        return self.windows[1] // 2

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
        vae = _spectrum_vae(bands).fit(feats.astype(np.float32), names, fstats, settings, progress)
        meta = dict(vae.meta, context={"windows": list(windows), "components": k, "n_fit": int(keep.sum()),
                                       "dropped_no_ring": int((~keep).sum())})
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

    def score_block(self, data: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        """Score the interior of ``data`` (bands, rows, cols), which carries ``halo`` pixels of context per side.

        ``valid`` (rows, cols) marks the pixels that may be scored and serve as context; the result arrays are
        (rows - 2·halo, cols - 2·halo), NaN where a pixel is invalid or has no valid pixel in its ring.
        """
        self.check_bands(data.shape[0], "input")
        feats, ok = self.features(data, valid)
        out = {k: np.full(ok.shape, np.nan, np.float32) for k in self.outputs}
        if ok.any():
            rows = feats.T
            terms = self.vae.score(rows) if rows.flags.c_contiguous else self.vae.score_bands(feats)
            for k in self.outputs:
                out[k][ok] = terms[k]
        return out

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
        vae = VAEDetector.from_saved(inner_meta, {k_[len("vae."):]: v for k_, v in tensors.items()
                                                  if k_.startswith("vae.")}, where, device)
        return cls(vae, meta["band_names"], windows, projection, centre, meta)
