"""The variational autoencoder detector: model, loss, training loop, scoring.

Encoder (MLP) -> mean and log-variance of q(z|x); reparameterisation; decoder (MLP) -> reconstruction.
Training minimises reconstruction + beta * KL(q(z|x) || N(0, I)) on normal pixels; a pixel's anomaly score is the
same quantity evaluated at the posterior mean, so pixels the model cannot explain score high.

The Gaussian reconstruction term is trained with unit variance per standardised band, which keeps the latent code
to the main structure of the data. For scoring (``noise: residual``, the default) its covariance is then
estimated from the residuals x - decoder(mu) of the sample's best-explained pixels (a robust, full covariance):
the reconstruction term becomes half the squared Mahalanobis distance of the residual, i.e. the negative
log-likelihood of the residual under that Gaussian, up to a constant. Against anomalies hidden in the sample,
training runs a second time without the fraction ``trim`` of worst-scoring sample pixels.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from pipeline.detectors.base import Detector
from pipeline.detectors.vae_inference import LOGVAR_RANGE
from pipeline.errors import ConfigError, ModelError

#: Named architectures. ``seed`` is the textbook model: 64 inputs, one hidden layer of 32, latent 32, BCE + KL.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "seed": {"hidden": [32], "latent": 32, "reconstruction": "bce", "beta": 1.0, "noise": "unit", "trim": 0.0},
}
RECONSTRUCTIONS = ("gaussian", "bce", "mse")
F32_MAX = float(np.finfo(np.float32).max)
#: The residual covariance is estimated from at most this many sample pixels, in this many concentration steps.
NOISE_FIT_PIXELS = 50_000
NOISE_CSTEPS = 3


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


class VAE(nn.Module):
    """An MLP VAE over band vectors."""

    def __init__(self, bands: int, hidden: list[int], latent: int, sigmoid_output: bool = False):
        super().__init__()
        enc: list[nn.Module] = []
        width = bands
        for h in hidden:
            enc += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.encoder = nn.Sequential(*enc)
        self.mu = nn.Linear(width, latent)
        self.logvar = nn.Linear(width, latent)
        dec: list[nn.Module] = []
        width = latent
        for h in reversed(hidden):
            dec += [nn.Linear(width, h), nn.ReLU()]
            width = h
        dec.append(nn.Linear(width, bands))
        if sigmoid_output:
            dec.append(nn.Sigmoid())
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h).clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def reconstruction_term(x: torch.Tensor, xhat: torch.Tensor, kind: str,
                        noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Per-pixel reconstruction loss: Gaussian NLL (up to a constant), BCE, or MSE.

    The Gaussian has unit variance, or with ``noise`` = (mean, whitening matrix W) of normal residuals, their
    full covariance: 0.5 * |(x - xhat - mean) @ W|², half the squared Mahalanobis distance of the residual.
    """
    if kind == "gaussian":
        if noise is not None:
            return 0.5 * ((x - xhat - noise[0]) @ noise[1]).pow(2).sum(dim=1)
        return 0.5 * (x - xhat).pow(2).sum(dim=1)
    if kind == "mse":
        return (x - xhat).pow(2).mean(dim=1)
    if kind == "bce":
        return nn.functional.binary_cross_entropy(xhat.clamp(1e-6, 1 - 1e-6), x, reduction="none").sum(dim=1)
    raise ValueError(f"unknown reconstruction term {kind!r}")


def kl_term(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-pixel KL(q(z|x) || N(0, I))."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


def mean_loss(x: torch.Tensor, xhat: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, kind: str,
              beta: float) -> torch.Tensor:
    """The training loss: the mean over pixels of ``reconstruction_term`` (unit variance) + beta * ``kl_term``.

    The same quantity as averaging the per-pixel terms, with whole-batch reductions (one fused kernel for the
    reconstruction term): fewer operations for autograd to record and replay at every step.
    """
    n = x.shape[0]
    if kind == "gaussian":
        rec = nn.functional.mse_loss(xhat, x, reduction="sum") * (0.5 / n)
    elif kind == "mse":
        rec = nn.functional.mse_loss(xhat, x)
    elif kind == "bce":
        rec = nn.functional.binary_cross_entropy(xhat.clamp(1e-6, 1 - 1e-6), x, reduction="sum") / n
    else:
        raise ValueError(f"unknown reconstruction term {kind!r}")
    kl = (mu.square() + logvar.exp() - logvar).sum() * (0.5 / n) - 0.5 * mu.shape[1]
    return rec + beta * kl


def validation_loss(m: VAE, x: torch.Tensor, kind: str, beta: float, chunk: int = 2048) -> float:
    """``mean_loss`` over ``x`` in chunks of ``chunk`` pixels (the same mean; half the time of one pass over the
    whole validation set here, whose large intermediates do not stay in cache)."""
    with torch.inference_mode():
        total = torch.zeros((), dtype=torch.float64, device=x.device)  # one sync at the end on a GPU
        for i in range(0, x.shape[0], chunk):
            xb = x[i:i + chunk]
            xhat, mu, logvar = m(xb)
            total += mean_loss(xb, xhat, mu, logvar, kind, beta).double() * xb.shape[0]
        return float(total) / max(x.shape[0], 1)


class VAEDetector(Detector):
    """A fitted VAE with its input normalisation, training record and score calibration."""

    kind: ClassVar[str] = "vae"
    outputs: ClassVar[tuple[str, ...]] = ("score", "reconstruction", "kl")

    def __init__(self, module: VAE, band_names: list[str], offset: np.ndarray, scale: np.ndarray,
                 meta: dict[str, Any], device: torch.device | None = None,
                 noise: tuple[np.ndarray, np.ndarray] | None = None):
        self.module = module.eval()
        self.band_names = list(band_names)
        self.offset = np.asarray(offset, np.float64)
        self.scale = np.asarray(scale, np.float64)
        self.meta = meta
        self.device = device or torch.device("cpu")
        self.module.to(self.device)
        self.set_noise(noise)

    def set_noise(self, noise: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Use the residual mean and whitening matrix ``noise`` in the reconstruction term (None: unit variance)."""
        self.noise_arrays = noise
        self._plan_key = None  # the fast path's plan holds the old covariance
        self.noise = None if noise is None else tuple(
            torch.as_tensor(np.asarray(a), dtype=torch.float32, device=self.device) for a in noise)

    @property
    def architecture(self) -> dict[str, Any]:
        return self.meta["architecture"]

    @property
    def beta(self) -> float:
        return float(self.architecture["beta"])

    # ---- normalisation
    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """Input units -> model units (standardised, or [0, 1] for BCE), float32."""
        x = (np.asarray(pixels, np.float64) - self.offset) / self.scale
        if self.architecture["reconstruction"] == "bce":
            x = np.clip(x, 0.0, 1.0)
        return np.clip(x, -F32_MAX, F32_MAX).astype(np.float32)

    def denormalise(self, x: np.ndarray) -> np.ndarray:
        """Model units -> input units."""
        return np.asarray(x, np.float64) * self.scale + self.offset

    # ---- fitting
    @classmethod
    def fit(cls, pixels: np.ndarray, band_names: list[str], stats: Any, settings: dict[str, Any],
            progress: Callable[[dict[str, float]], None] | None = None) -> VAEDetector:
        """Train on normal ``pixels`` (n, bands) with band statistics ``stats`` (for normalisation).

        ``settings`` is the config's ``train`` section; a ``preset`` there overrides the architecture keys.
        """
        s = dict(settings)
        if s.get("preset"):
            s.update(PRESETS[s["preset"]])
        if s["reconstruction"] not in RECONSTRUCTIONS:
            raise ConfigError(f"train.reconstruction: unknown term {s['reconstruction']!r}")
        n, bands = pixels.shape
        if n < 10:
            raise ConfigError(f"only {n} training pixels; a VAE needs more (check the sample's tiles and nodata)")
        if s["threads"]:
            torch.set_num_threads(int(s["threads"]))
        device = resolve_device(s["device"])
        offset, scale = _normalisation(stats, s["reconstruction"])
        noise = s["noise"] if s["reconstruction"] == "gaussian" else "unit"
        meta: dict[str, Any] = {
            "architecture": {"hidden": list(s["hidden"]), "latent": int(s["latent"]), "beta": float(s["beta"]),
                             "reconstruction": s["reconstruction"], "noise": noise},
        }
        torch.manual_seed(s["seed"])
        module = VAE(bands, list(s["hidden"]), int(s["latent"]), sigmoid_output=s["reconstruction"] == "bce")
        det = cls(module, band_names, offset, scale, meta, device)
        x = torch.from_numpy(det.normalise(pixels)).to(device)
        gen = torch.Generator().manual_seed(s["seed"])
        perm = torch.randperm(n, generator=gen).to(device)
        n_val = max(1, int(round(n * s["val_fraction"])))
        is_val = torch.zeros(n, dtype=torch.bool, device=device)
        is_val[perm[:n_val]] = True
        passes = []
        history, best_epoch, seconds = det._train(x[perm[n_val:]], x[perm[:n_val]], s, gen, progress)
        passes.append({"history": history, "best_epoch": best_epoch, "epochs_run": len(history),
                       "seconds": round(seconds, 3), "n_train": n - n_val, "n_val": n_val})
        if noise == "residual":
            det.fit_noise(x, s["noise_keep"], s["ridge"], s["seed"])
        if s["trim"] > 0:
            # Second pass, from fresh weights, without the worst-explained pixels: anomalies hidden in the sample
            # no longer teach the model to reconstruct them.
            sc = det._scores(x)
            kept = torch.from_numpy(sc <= np.quantile(sc, 1.0 - s["trim"])).to(device)
            torch.manual_seed(s["seed"] + 1)
            det.module = VAE(bands, list(s["hidden"]), int(s["latent"]),
                             sigmoid_output=s["reconstruction"] == "bce").to(device)
            det.set_noise(None)
            x_train, x_val = x[kept & ~is_val], x[kept & is_val]
            history, best_epoch, seconds = det._train(x_train, x_val, s, gen, progress)
            passes.append({"history": history, "best_epoch": best_epoch, "epochs_run": len(history),
                           "seconds": round(seconds, 3), "n_train": int(x_train.shape[0]),
                           "n_val": int(x_val.shape[0]),
                           "trimmed": int((~kept).sum())})
            if noise == "residual":
                det.fit_noise(x[kept], s["noise_keep"], s["ridge"], s["seed"])
        # Thresholds come from every held-out pixel: the sample is meant to be normal ground.
        det.calibrate(det._scores(x[is_val]))
        last = passes[-1]
        meta["training"] = {
            "history": last["history"], "best_epoch": last["best_epoch"], "epochs_run": len(last["history"]),
            "stopped_early": len(last["history"]) < planned_epochs(last["n_train"], s),
            "seconds": round(sum(p["seconds"] for p in passes), 3),
            "n_train": last["n_train"], "n_val": last["n_val"], "device": str(device),
            "passes": [{k: v for k, v in p.items() if k != "history"} for p in passes],
        }
        meta["settings"] = s
        return det

    def _scores(self, x: torch.Tensor, chunk: int = 65536) -> np.ndarray:
        """Scores of normalised pixels ``x`` on the model's device, in chunks (bounded memory)."""
        return np.concatenate([self.score_tensor(x[i:i + chunk])["score"] for i in range(0, x.shape[0], chunk)])

    #: The leading features whose residuals the reconstruction term models (None: all); the context VAE's
    #: spectrum bands, so that a pixel is not scored for an odd ring.
    noise_features: ClassVar[int | None] = None

    def fit_noise(self, x: torch.Tensor, keep: float, ridge: float, seed: int) -> None:
        """Estimate the residuals' mean and covariance from normalised pixels ``x``, robustly, for scoring.

        Concentration steps (as in the minimum covariance determinant): start from the ``keep`` fraction of pixels
        with the smallest squared error, then refit on the ``keep`` fraction with the smallest Mahalanobis distance,
        so that anomalies in the sample do not inflate the covariance. At most NOISE_FIT_PIXELS pixels are used.
        With ``noise_features`` set, only the leading features' residuals are modelled (the rest weigh zero).
        """
        x, res = self.noise_residuals(x, seed)
        b = res.shape[1]
        mean, w = robust_noise(res, keep, ridge)
        if b < x.shape[1]:  # the other features' rows of the whitening are zero: their residuals do not count
            mean, w = np.pad(mean, (0, x.shape[1] - b)), np.pad(w, ((0, x.shape[1] - b), (0, 0)))
        self.set_noise((mean, w))

    def noise_residuals(self, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, np.ndarray]:
        """The pixels of normalised ``x`` the residual covariance is fitted on (at most NOISE_FIT_PIXELS, drawn with
        ``seed``) and their residuals x - decoder(mu) (n, ``noise_features``) float64."""
        if x.shape[0] > NOISE_FIT_PIXELS:
            g = torch.Generator().manual_seed(seed)
            x = x[torch.randperm(x.shape[0], generator=g)[:NOISE_FIT_PIXELS].to(x.device)]
        b = self.noise_features or x.shape[1]
        r = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], 65536):
                xb = x[i:i + 65536]
                r.append((xb - self.module.decode(self.module.encode(xb)[0]))[:, :b].double().cpu().numpy())
        return x, np.concatenate(r)

    def _train(self, x_train: torch.Tensor, x_val: torch.Tensor, s: dict[str, Any], gen: torch.Generator,
               progress: Callable[[dict[str, float]], None] | None) -> tuple[list[dict[str, float]], int, float]:
        """One training pass of this detector's module: (per-epoch history, best epoch, seconds); the module ends
        with the weights of its best validation loss."""
        from pipeline.detectors import vae_step

        m, kind, beta = self.module, s["reconstruction"], float(s["beta"])
        # the step written out by hand (vae_step: the same loss and gradients without autograd's per-operation
        # cost) where it covers the model, else autograd
        by_hand = vae_step.TrainStep(m, kind, beta) if vae_step.supports(m, kind) else None
        try:
            return self._epochs(x_train, x_val, s, gen, progress, by_hand)
        finally:
            if by_hand is not None:
                by_hand.release()

    def _epochs(self, x_train: torch.Tensor, x_val: torch.Tensor, s: dict[str, Any], gen: torch.Generator,
                progress: Callable[[dict[str, float]], None] | None,
                by_hand: Any) -> tuple[list[dict[str, float]], int, float]:
        """``_train``'s epochs, with the hand-written step ``by_hand`` (``vae_step.TrainStep``) or autograd."""
        m, kind, beta = self.module, s["reconstruction"], float(s["beta"])
        # fused Adam: one kernel per step for all parameters instead of a dozen small ops per parameter tensor
        opt = torch.optim.Adam(m.parameters() if by_hand is None else by_hand.parameters(), lr=s["lr"],
                               weight_decay=s["weight_decay"], **_fused_adam(x_train.device))
        bs, n = int(s["batch_size"]), x_train.shape[0]
        history: list[dict[str, float]] = []
        best, best_state, best_epoch, stale = math.inf, copy.deepcopy(m.state_dict()), 0, 0
        t0 = time.perf_counter()
        epochs = planned_epochs(x_train.shape[0], s)
        # each batch gathered from the shuffled order into one reused buffer (index_select: 4x faster than
        # x[order] here; batch by batch rather than the whole epoch at once: the batch is still in cache for its step)
        batch = x_train.new_empty((min(bs, n), x_train.shape[1]))
        for epoch in range(1, epochs + 1):
            m.train()
            order = torch.randperm(n, generator=gen).to(x_train.device)
            total = torch.zeros((), dtype=torch.float64, device=x_train.device)
            for i in range(0, n, bs):
                idx = order[i:i + bs]
                xb = torch.index_select(x_train, 0, idx, out=batch[:idx.shape[0]])
                if by_hand is not None:
                    loss = by_hand(xb)  # writes every parameter's .grad
                else:
                    xhat, mu, logvar = m(xb)
                    loss = mean_loss(xb, xhat, mu, logvar, kind, beta)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                total += loss.detach().double() * xb.shape[0]  # no .item() per step: one sync per epoch on a GPU
            m.eval()
            val = validation_loss(m, x_val, kind, beta) if by_hand is None else by_hand.mean_loss(x_val)
            rec = {"epoch": epoch, "epochs": epochs, "train_loss": float(total) / n, "val_loss": val,
                   "seconds": time.perf_counter() - t0}
            history.append(rec)
            if progress:
                progress(rec)
            if not math.isfinite(rec["train_loss"]):
                raise ConfigError("training diverged (loss is not finite): lower train.lr or check the input")
            if best - val > 1e-6 * abs(val):
                best, best_state, best_epoch, stale = val, copy.deepcopy(m.state_dict()), epoch, 0
            else:
                stale += 1
                if s["patience"] and stale >= s["patience"]:
                    break
        m.load_state_dict(best_state)
        m.eval()
        return history, best_epoch, time.perf_counter() - t0

    # ---- scoring
    def score(self, pixels: np.ndarray, samples: int = 1, seed: int = 0,
              chunk: int = 65536, scoring_path: str = "auto") -> dict[str, np.ndarray]:
        """Per-pixel ``score`` = reconstruction + beta * KL, and the two terms, for ``pixels`` (n, bands).

        The KL term is at the posterior; the reconstruction term at the posterior mean, or averaged over
        ``samples`` posterior draws (seeded) when ``samples`` > 1 (that goes the reference path, ``score_tensor``).
        ``scoring_path``: ``folded``, the folded scorer where the model has one (``vae_inference.FoldedScorer``);
        ``layered``, the layers one by one (``ChunkScorer``); ``auto`` (the default), the faster of the two on this
        CPU (``scoring_path()``). Both equal the reference path within float32 rounding.
        """
        self.check_bands(pixels.shape[1], "input")
        if samples <= 1:
            pixels = np.asarray(pixels)
            if pixels.T.flags.c_contiguous and not pixels.flags.c_contiguous:  # a view of band-major memory
                return self._fast(pixels.T, True, chunk, scoring_path)
            return self._fast(pixels, False, chunk, scoring_path)
        out = {k: np.empty(pixels.shape[0], np.float32) for k in self.outputs}
        gen = torch.Generator(device=self.device).manual_seed(seed)
        for i in range(0, pixels.shape[0], chunk):
            x = torch.from_numpy(self.normalise(pixels[i:i + chunk])).to(self.device)
            terms = self.score_tensor(x, samples, gen)
            for k in self.outputs:
                out[k][i:i + chunk] = terms[k]
        return out

    def score_bands(self, pixels: np.ndarray, samples: int = 1, seed: int = 0,
                    chunk: int = 65536, scoring_path: str = "auto") -> dict[str, np.ndarray]:
        """``score`` of band-major ``pixels`` (bands, n), e.g. a view of a rasterio block: no transposed copy."""
        self.check_bands(pixels.shape[0], "input")
        if samples > 1:
            return self.score(np.asarray(pixels).T, samples, seed, chunk)
        return self._fast(pixels, True, chunk, scoring_path)

    def _fast(self, pixels: np.ndarray, band_major: bool, chunk: int,
              scoring_path: str = "auto") -> dict[str, np.ndarray]:
        """The fast path of ``score``/``score_bands`` (``vae_inference``): the layers on cache-sized chunks in the
        input's own layout with reused buffers, float32 normalisation on the fly, no float64 or transposed copy
        of the input. Equal to ``score_tensor`` within float32 rounding."""
        from pipeline.detectors.vae_inference import score_chunks

        n = pixels.shape[1] if band_major else pixels.shape[0]
        rows = np.empty((len(self.outputs), n), np.float32)  # score, reconstruction, kl
        if n:
            score_chunks(self._plan(band_major, self.scoring_path(scoring_path).path == "folded"), pixels, band_major,
                         chunk, rows)
            np.nan_to_num(rows, copy=False, nan=F32_MAX, posinf=F32_MAX, neginf=-F32_MAX)
        return dict(zip(self.outputs, rows, strict=True))

    def scoring_path(self, path: str = "auto") -> Any:
        """The scoring path (``vae_inference.PathChoice``) that ``path`` selects: ``folded``, ``layered``, or
        ``auto``: the faster on this CPU, measured once per model and weights (``vae_inference.choose_path``)."""
        from pipeline.detectors.vae_inference import choose_path

        if path != "auto":
            return choose_path(self, path, self._plan)
        self._plan()  # resets the cached choice when the weights changed
        if "choice" not in self._choice:
            self._choice["choice"] = choose_path(self, "auto", self._plan)
        return self._choice["choice"]

    def _plan(self, band_major: bool = True, folded: bool = True) -> Any:
        """The fast path's plan of this model for one memory layout: ``vae_inference.FoldedScorer`` where ``folded``
        and the model has one (Gaussian or MSE term), else ``ChunkScorer``; rebuilt when the weights, the residual
        covariance, the normalisation or the device change."""
        from pipeline.detectors.vae_inference import ChunkScorer, FoldedScorer

        key = (self.module, tuple(p._version for p in self.module.parameters()), self.device,
               self.offset.tobytes(), self.scale.tobytes())
        if getattr(self, "_plan_key", None) != key:
            self._plans: dict[tuple[bool, bool], Any] = {}
            self._choice: dict[str, Any] = {}  # scoring_path's measured choice for these weights
            self._plan_key = key
        folded = folded and self.architecture["reconstruction"] in ("gaussian", "mse")
        if (band_major, folded) not in self._plans:
            self._plans[band_major, folded] = (FoldedScorer if folded else ChunkScorer)(self, band_major)
        return self._plans[band_major, folded]

    def score_terms(self, x: torch.Tensor, xhat: torch.Tensor, mu: torch.Tensor,
                    logvar: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-pixel score maths of the reference path: normalised pixels ``x`` and their reconstruction
        ``xhat`` (n, bands), posterior ``mu`` and ``logvar`` (n, latent) -> ``score``, ``reconstruction``, ``kl``
        (n,). The fast path (``vae_inference``) computes the same in place; tests hold the two together."""
        rec = reconstruction_term(x, xhat, self.architecture["reconstruction"], self.noise)
        kl = kl_term(mu, logvar)
        return {"score": rec + self.beta * kl, "reconstruction": rec, "kl": kl}

    def score_tensor(self, x: torch.Tensor, samples: int = 1,
                     gen: torch.Generator | None = None) -> dict[str, np.ndarray]:
        """Score normalised pixels (n, bands) already on the model's device: the reference path (nn.Module)."""
        kind = self.architecture["reconstruction"]
        with torch.inference_mode():
            mu, logvar = self.module.encode(x)
            if samples <= 1:
                terms = self.score_terms(x, self.module.decode(mu), mu, logvar)
            else:
                std = torch.exp(0.5 * logvar)
                rec = torch.zeros(x.shape[0], device=x.device)
                for _ in range(samples):
                    eps = torch.randn(mu.shape, generator=gen, device=mu.device)
                    rec += reconstruction_term(x, self.module.decode(mu + eps * std), kind, self.noise)
                rec /= samples
                kl = kl_term(mu, logvar)
                terms = {"score": rec + self.beta * kl, "reconstruction": rec, "kl": kl}
        return {k: np.nan_to_num(v.float().cpu().numpy(), nan=F32_MAX, posinf=F32_MAX, neginf=-F32_MAX)
                for k, v in terms.items()}

    # ---- generative side
    def encode(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and log-variance (n, latent) of ``pixels`` (n, bands) in input units."""
        self.check_bands(pixels.shape[1], "input")
        with torch.inference_mode():
            mu, logvar = self.module.encode(torch.from_numpy(self.normalise(pixels)).to(self.device))
        return mu.cpu().numpy(), logvar.cpu().numpy()

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Decode latent vectors (n, latent) into spectra (n, bands) in input units."""
        with torch.inference_mode():
            x = self.module.decode(torch.as_tensor(np.asarray(z, np.float32), device=self.device))
        return self.denormalise(x.cpu().numpy())

    # ---- persistence
    def tensors(self) -> dict[str, torch.Tensor]:
        t = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        t["normalisation.offset"] = torch.from_numpy(self.offset)
        t["normalisation.scale"] = torch.from_numpy(self.scale)
        if self.noise_arrays is not None:
            t["noise.mean"], t["noise.whiten"] = (torch.from_numpy(np.asarray(a)) for a in self.noise_arrays)
        return t

    @classmethod
    def from_saved(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str,
                   device: str = "cpu") -> VAEDetector:
        """Rebuild from a model folder's contents, checking the weights fit the described architecture."""
        try:
            arch = meta["architecture"]
            module = VAE(meta["bands"], list(arch["hidden"]), int(arch["latent"]),
                         sigmoid_output=arch["reconstruction"] == "bce")
            state = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
            module.load_state_dict(state, strict=True)
            offset = tensors["normalisation.offset"].numpy()
            scale = tensors["normalisation.scale"].numpy()
            residual = arch.get("noise", "unit") == "residual"
            noise = (tensors["noise.mean"].numpy(), tensors["noise.whiten"].numpy()) if residual else None
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            msg = str(exc).strip().splitlines()[0][:200]
            raise ModelError(f"{where}: weights do not match model.json ({type(exc).__name__}: {msg})") from None
        bands = meta["bands"]
        if offset.shape != (bands,) or scale.shape != (bands,) or (scale <= 0).any():
            raise ModelError(f"{where}: bad normalisation arrays")
        if noise is not None and (noise[0].shape != (bands,) or noise[1].ndim != 2 or noise[1].shape[0] != bands
                                  or noise[1].shape[1] > bands):
            raise ModelError(f"{where}: residual covariance arrays do not match the model's {bands} bands")
        return cls(module, meta["band_names"], offset, scale, meta, resolve_device(device), noise)


def robust_noise(res: np.ndarray, keep: float, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and whitening matrix of residuals ``res`` (n, dim), robustly: concentration steps (as in the minimum
    covariance determinant) from the ``keep`` fraction with the smallest squared norm, then the ``keep`` fraction
    with the smallest Mahalanobis distance, so that anomalies do not inflate the covariance."""
    from pipeline.detectors.rx import whitening

    b = res.shape[1]
    dist = np.square(res).sum(axis=1)
    for _ in range(1 + NOISE_CSTEPS):
        sel = res[dist <= np.quantile(dist, keep)]
        mean = sel.mean(axis=0)
        w = whitening(np.cov(sel, rowvar=False, bias=True).reshape(b, b), ridge)
        dist = np.square((res - mean) @ w).sum(axis=1)
    return mean, w


def planned_epochs(n_train: int, s: dict[str, Any]) -> int:
    """Epochs of one training pass: ``epochs``, fewer where that would exceed ``max_steps`` optimiser steps."""
    steps_per_epoch = max(1, math.ceil(n_train / int(s["batch_size"])))
    return max(1, min(int(s["epochs"]), math.ceil(int(s["max_steps"]) / steps_per_epoch)))


def _fused_adam(device: torch.device) -> dict[str, bool]:
    """``fused=True`` where this torch has a fused Adam for the device (CPU since torch 2.4), else nothing."""
    try:
        torch.optim.Adam([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return {}
    return {"fused": True}


def _normalisation(stats: Any, reconstruction: str) -> tuple[np.ndarray, np.ndarray]:
    """Offset and scale per band: standardisation, or min-max to [0, 1] for BCE; constant bands get scale 1."""
    if reconstruction == "bce":
        offset, scale = np.asarray(stats.min, np.float64), np.asarray(stats.max - stats.min, np.float64)
    else:
        offset, scale = np.asarray(stats.mean, np.float64), np.asarray(stats.std, np.float64)
    tiny = 1e-12 * np.maximum(np.abs(offset), 1.0)
    scale = np.where(np.isfinite(scale) & (scale > tiny), scale, 1.0)
    return offset, scale
