"""The VAE's fast scoring path: the score of pixel chunks, in their own memory layout, with preallocated buffers.

Rasterio hands blocks over as (bands, rows, cols); the layers run on (features, chunk) views as ``W @ x + b``, so a
block is never transposed (and (n, bands) arrays from the Python API run as ``x @ W.T + b``). Every intermediate
lives in a buffer allocated once per chunk size (and per thread) and small enough to stay in cache, and the
per-pixel maths (normalisation, residual, whitening, KL) runs in place.
The result equals the reference path (``VAEDetector.score_tensor``: the nn.Module on float64-normalised pixels)
within float32 rounding; ``tests/test_vae.py`` checks it and ``benchmarks/fast_path_auc.py`` checks ROC AUC.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from pipeline.detectors.vae import VAEDetector

#: log-variance is clamped to this range so exp() neither overflows nor vanishes on wild inputs (the model's
#: encoder and both fast paths).
LOGVAR_RANGE = (-30.0, 20.0)
#: Pixels per step: the largest intermediate (hidden x chunk float32, 512 KiB at 128 x 1024) stays in L2 cache,
#: where the layers' matrix products run fastest (measured: 1024-2048 beat 4096 by 10-30 % on one core).
SCORE_CHUNK = 1024


class ChunkScorer:
    """Score chunks of pixels with one VAE: a plan of its layers and reusable buffers, for one memory layout.

    ``band_major``: chunks are (bands, n), e.g. views of rasterio blocks, and the layers run as ``W @ x + b``;
    otherwise (n, bands), the Python API's usual layout, and they run as ``x @ W.T + b``. Either way nothing is
    transposed or copied but the normalised input. Handles the Gaussian reconstruction term (unit variance or
    the residual covariance), MSE and BCE (a sigmoid output on min-max inputs clipped to [0, 1]).
    """

    def __init__(self, det: VAEDetector, band_major: bool = True):
        m = det.module
        self.device = det.device
        self.band_major = band_major
        self.axis = 0 if band_major else 1  # the feature axis of every intermediate
        self.kind = det.architecture["reconstruction"]
        self.beta = float(det.beta)
        self.latent = m.mu.out_features
        with torch.no_grad():
            self.encoder = _linear_layers(m.encoder)
            self.ml = (torch.cat([m.mu.weight, m.logvar.weight]), torch.cat([m.mu.bias, m.logvar.bias]))
            self.decoder = _linear_layers(m.decoder)
            self.whiten = None
            if self.kind == "gaussian" and det.noise is not None:
                mean, whiten = det.noise
                # The residual's mean joins the output layer's bias: xhat + mean in one product.
                w, b, act = self.decoder[-1]
                self.decoder[-1] = (w, b + mean.to(b), act)
                self.whiten = whiten.T.contiguous() if band_major else whiten.contiguous()
            self.encoder, self.decoder = self._oriented(self.encoder), self._oriented(self.decoder)
            self.ml = self._oriented([(*self.ml, None)])[0]
        # float32 normalisation on the fly, broadcast along the pixel axis: (bands, 1) or (1, bands)
        shape = (-1, 1) if band_major else (1, -1)
        self.offset, self.inv_scale = (
            torch.as_tensor(a.astype(np.float32).reshape(shape), device=self.device)
            for a in (det.offset, 1.0 / det.scale))
        self._local = threading.local()  # buffers per thread: callers in several threads never share one

    def _oriented(self, layers: list[Layer]) -> list[Layer]:
        """Layers as this layout multiplies them: (W, bias column) band-major, (W.T, bias row) pixel-major."""
        if self.band_major:
            return [(w.contiguous(), None if b is None else b[:, None].contiguous(), a) for w, b, a in layers]
        return [(w.T.contiguous(), None if b is None else b[None, :].contiguous(), a) for w, b, a in layers]

    def _shape(self, features: int, n: int) -> tuple[int, int]:
        return (features, n) if self.band_major else (n, features)

    def buffers(self, n: int) -> dict[str, torch.Tensor]:
        """This thread's intermediates for a chunk of ``n`` pixels (allocated once per chunk size)."""
        if not hasattr(self._local, "buffers"):
            self._local.buffers = {}
        buffers: dict[int, dict[str, torch.Tensor]] = self._local.buffers
        if n not in buffers:
            if len(buffers) > 2:  # at most a full and a last partial chunk are in use
                buffers.clear()
            empty = self.offset.new_empty
            out_axis = 0 if self.band_major else 1
            new = {"x": empty(self._shape(self.offset.numel(), n))}
            for i, (w, _, _) in enumerate([*self.encoder, self.ml, *self.decoder]):
                new[f"h{i}"] = empty(self._shape(w.shape[out_axis], n))
            if self.whiten is not None:
                new["y"] = empty(self._shape(self.whiten.shape[out_axis], n))
            new["kl"] = empty(self._shape(self.latent, n))
            buffers[n] = new
        return buffers[n]

    def _layer(self, w: torch.Tensor, b: torch.Tensor | None, act: str | None, h: torch.Tensor,
               out: torch.Tensor) -> torch.Tensor:
        """``act(w @ h + b)`` (band-major) or ``act(h @ w + b)`` (pixel-major, ``w`` already transposed)."""
        a, c = (w, h) if self.band_major else (h, w)
        if b is None:
            torch.mm(a, c, out=out)
        else:
            torch.addmm(b, a, c, out=out)
        if act == "relu":
            out.relu_()
        elif act == "sigmoid":
            out.sigmoid_()
        return out

    def __call__(self, x: torch.Tensor, score: torch.Tensor, rec: torch.Tensor, kl: torch.Tensor) -> None:
        """Score raw pixels ``x`` ((bands, n) or (n, bands)) on the model's device into the (n,) views ``score``,
        ``rec`` and ``kl``."""
        L, axis = self.latent, self.axis
        buf = self.buffers(x.shape[1 - axis])
        xn = buf["x"]
        torch.sub(x, self.offset, out=xn)
        xn.mul_(self.inv_scale)
        if self.kind == "bce":
            xn.clamp_(0.0, 1.0)
        h, i = xn, 0
        for w, b, act in self.encoder:
            h = self._layer(w, b, act, h, buf[f"h{i}"])
            i += 1
        both = self._layer(*self.ml, h, buf[f"h{i}"])
        i += 1
        mu, logvar = (both[:L], both[L:]) if self.band_major else (both[:, :L], both[:, L:])
        logvar.clamp_(*LOGVAR_RANGE)
        h = mu
        for w, b, act in self.decoder:
            h = self._layer(w, b, act, h, buf[f"h{i}"])
            i += 1
        # h is now the reconstruction (plus the residual mean, for the residual covariance)
        if self.kind == "bce":
            x1 = h.clamp_(1e-6, 1 - 1e-6)
            # BCE = -(x log p + (1 - x) log(1 - p)), summed over bands
            logp, log1p = x1.log(), torch.log1p(-x1)
            torch.sum(logp.sub_(log1p).mul_(xn).add_(log1p), dim=axis, out=rec)
            rec.neg_()
        else:
            r = h.sub_(xn)  # the residual, in place (its sign does not matter to a squared norm)
            if self.whiten is not None:
                r = torch.mm(*((self.whiten, r) if self.band_major else (r, self.whiten)), out=buf["y"])
            torch.sum(r.square_(), dim=axis, out=rec)
            rec.mul_(0.5 if self.kind == "gaussian" else 1.0 / r.shape[axis])
        # KL = 0.5 * sum(mu² + exp(logvar) - logvar - 1)
        t = torch.exp(logvar, out=buf["kl"])
        t.sub_(logvar).addcmul_(mu, mu)
        torch.sum(t, dim=axis, out=kl)
        kl.sub_(float(L)).mul_(0.5)
        torch.add(rec, kl, alpha=self.beta, out=score)


#: Pixels per step of the folded scorer: its working set (input, one hidden buffer shared by the encoder and the
#: decoder, the squared residual: about 1.1 MiB at 64 bands) stays in L2 (measured interleaved, one core: 1024
#: beat 512 and 2048 by 2-4 %, at 64 and 224 bands).
FOLDED_CHUNK = 1024
#: Products ``FoldedScorer(low_precision=...)`` can run with bfloat16 inputs: measured by the benchmarks
#: (``benchmarks/inference_profile.py``, ``benchmarks/fast_path_auc.py --levers``), not used by default.
LOW_PRECISION_PRODUCTS = ("encoder", "output", "whiten")


class FoldedScorer:
    """The default scoring path of a Gaussian (or MSE) VAE: the reference path's maths, refactored to fewer passes.

    Refactored exactly (in float64, once per plan; the products then run in float32 as before):

    - every bias is a column of its weight matrix, multiplied by a row of ones that each buffer carries (the
      layers run as plain ``mm``, with no bias broadcast into the output first);
    - with the residual covariance, the standardisation's scale is folded into the first layer, the output layer
      and the whitening matrix, so the input is only centred (``x - offset``), and the residual mean joins the
      output bias: the residual (in centred input units) is computed in place in the input's buffer
      (``x -= W_out' @ g``), then whitened by an upper-triangular factor of the residual's precision (the same
      quadratic form, ``|U r|² = |W.T r|²``), multiplied in ``whiten_blocks(bands)`` row blocks that skip its
      zeros (0.62-0.75 of the dense product's work);
    - the three outputs come out of one small product of the squared whitened residual and the KL terms with a
      fixed (3, k + latent + 1) matrix (the sums, the halves, beta and the KL's constant).

    All intermediates are band-major, (features, chunk), whatever the input's layout: a pixel-major (n, bands)
    input is read through a transposed view by the first product. Tests hold it to the reference path within
    float32 rounding; ``benchmarks/fast_path_auc.py`` checks ROC AUC and the mask calibration.
    """

    def __init__(self, det: VAEDetector, band_major: bool = True, low_precision: Iterable[str] = ()):
        m = det.module
        self.device = det.device
        self.band_major = band_major
        # a lever the benchmarks measure, not a default: these products with bfloat16 inputs (float32 accumulation)
        low = set(low_precision)
        if low - set(LOW_PRECISION_PRODUCTS):
            raise ValueError(f"unknown products {sorted(low - set(LOW_PRECISION_PRODUCTS))}")
        self.precision = {k: (_bf16_products if k in low else contextlib.nullcontext) for k in LOW_PRECISION_PRODUCTS}
        self.kind = det.architecture["reconstruction"]
        if self.kind not in ("gaussian", "mse"):
            raise ValueError(f"no folded path for a {self.kind!r} reconstruction term")
        L = self.latent = m.mu.out_features
        self.bands = B = det.offset.size
        scale = torch.from_numpy(det.scale)
        encoder, decoder = _linear_layers(m.encoder), _linear_layers(m.decoder)
        residual = self.kind == "gaussian" and det.noise_arrays is not None
        # centred input (x - offset) with the scale folded into the weights, or standardised input ((x - o) / s)
        self.folds_scale = residual
        with torch.no_grad():
            f64 = [(w.double().cpu(), torch.zeros(w.shape[0], dtype=torch.float64) if b is None else b.double().cpu(),
                    a) for w, b, a in encoder + decoder]
            encoder, decoder = f64[:len(encoder)], f64[len(encoder):]
            w_out, b_out, _ = decoder[-1]
            if residual:
                mean, whiten = (torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in det.noise_arrays)
                w0, b0, a0 = encoder[0]
                encoder[0] = (w0 / scale, b0, a0)
                w_out, b_out = w_out * scale[:, None], (b_out + mean) * scale
                upper = _upper_factor(whiten)
                # (k, bands): whitens a residual in centred input units
                whiten_t = (whiten.T if upper is None else upper) / scale
                weights = [0.5] * whiten_t.shape[0]
            else:
                whiten_t = None
                weights = [0.5 if self.kind == "gaussian" else 1.0 / B] * B
            beta = float(det.beta)
            sums = torch.zeros(3, len(weights) + L + 1, dtype=torch.float64)  # rows: score, reconstruction, kl
            sums[:2, :len(weights)] = torch.tensor(weights, dtype=torch.float64)
            sums[2, len(weights):-1] = 0.5  # KL = 0.5 * sum(mu² + exp(logvar) - logvar) - latent / 2
            sums[2, -1] = -0.5 * L
            sums[0, len(weights):] = beta * sums[2, len(weights):]
            ml = _with_bias(torch.cat([m.mu.weight, m.logvar.weight]).double().cpu(),
                            torch.cat([m.mu.bias, m.logvar.bias]).double().cpu(), ones=True)
            ml = torch.cat([ml[:L], ml[-1:], ml[L:2 * L]])  # rows: mu, ones, logvar: mu and ones feed the decoder
            as32 = functools.partial(_to, device=self.device)
            self.encoder = [as32(_with_bias(w, b, ones=True)) for w, b, _ in encoder]
            self.ml = as32(ml)
            self.decoder = [as32(_with_bias(w, b, ones=True)) for w, b, _ in decoder[:-1]]
            self.output = as32(_with_bias(w_out, b_out, ones=False))
            # pixel-major input: the residual is formed in the input's own (n, bands) rows, ``x -= g.T @ W_out.T``
            # (into the transposed view instead: 4-6 % more CPU per pixel with AVX2 kernels, the same with AVX-512)
            self.output_t = None if band_major else self.output.T.contiguous()
            self.whiten = None if whiten_t is None else as32(whiten_t)
            # row blocks [a, b) of an upper-triangular factor, each times the residual's rows from a (dense: one)
            edges = whiten_blocks(B) if residual and upper is not None else [0, len(weights)]
            self.whiten_blocks = None if whiten_t is None else [
                (as32(whiten_t[a:b, a if upper is not None else 0:]), a if upper is not None else 0, a, b)
                for a, b in zip(edges[:-1], edges[1:], strict=True)]
            self.sums = as32(sums)
        shape = (-1, 1) if band_major else (1, -1)
        self.offset, self.inv_scale = (
            torch.as_tensor(a.astype(np.float32).reshape(shape), device=self.device)
            for a in (det.offset, 1.0 / det.scale))
        self._local = threading.local()

    def buffers(self, n: int) -> _Views:
        """This thread's intermediates for a chunk of ``n`` pixels, as the views ``__call__`` uses (allocated once
        per chunk size: a call then spends no time slicing)."""
        if not hasattr(self._local, "buffers"):
            self._local.buffers = {}
        buffers: dict[int, _Views] = self._local.buffers
        if n not in buffers:
            if len(buffers) > 2:  # at most a full and a last partial chunk are in use
                buffers.clear()
            empty = functools.partial(torch.empty, device=self.device)
            B, L = self.bands, self.latent
            x = empty((B + 1, n) if self.band_major else (n, B + 1))
            (x[B] if self.band_major else x[:, B]).fill_(1.0)  # the row of ones that multiplies the biases
            ml = empty(self.ml.shape[0], n)
            z = empty(self.sums.shape[1], n)  # squared (whitened) residual, KL terms, a row of ones
            z[-1].fill_(1.0)
            k = z.shape[0] - L - 1
            xin = x[:B] if self.band_major else x[:, :B]
            buffers[n] = _Views(
                xin=xin, x=x if self.band_major else x.T, hidden=[empty(w.shape[0], n) for w in self.encoder],
                ml=ml, mu=ml[:L], logvar=ml[L + 1:], mu1=ml[:L + 1], residual=xin if self.band_major else xin.T,
                z=z, squares=z[:k], kl=z[k:k + L])
        return buffers[n]

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """Score raw pixels ``x`` ((bands, n) or (n, bands)) on the model's device into ``out`` (3, n): rows score,
        reconstruction, kl."""
        v = self.buffers(x.shape[1] if self.band_major else x.shape[0])
        torch.sub(x, self.offset, out=v.xin)
        if not self.folds_scale:
            v.xin.mul_(self.inv_scale)
        h = v.x
        with self.precision["encoder"]():
            for w, buf in zip(self.encoder, v.hidden, strict=True):
                h = torch.mm(w, h, out=buf).relu_()  # the row of ones passes the ReLU unchanged
        torch.mm(self.ml, h, out=v.ml)
        v.logvar.clamp_(*LOGVAR_RANGE)
        g = v.mu1
        # the decoder's hidden widths mirror the encoder's: write over its buffers, a smaller working set
        for w, buf in zip(self.decoder, reversed(v.hidden), strict=False):
            g = torch.mm(w, g, out=buf).relu_()
        with self.precision["output"]():
            # in place (its sign does not matter to a square)
            if self.band_major:
                v.residual.addmm_(self.output, g, alpha=-1.0)
            else:
                v.xin.addmm_(g.T, self.output_t, alpha=-1.0)
        if self.whiten is not None:
            with self.precision["whiten"]():
                self.whiten_into(v.residual, v.squares).square_()
        else:
            torch.square(v.residual, out=v.squares)
        torch.exp(v.logvar, out=v.kl).sub_(v.logvar).addcmul_(v.mu, v.mu)
        torch.mm(self.sums, v.z, out=out)


    def whiten_into(self, residual: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` = the whitened ``residual`` (bands, n), block by block (``whiten_blocks``)."""
        for w, first_band, a, b in self.whiten_blocks:
            torch.mm(w, residual[first_band:], out=out[a:b])
        return out


def whiten_blocks(bands: int) -> list[int]:
    """Row-block edges for a (bands, bands) upper-triangular whitening factor: 2 blocks from 64 bands, up to 4
    from 128 (each block skips the zeros left of its diagonal; more blocks skip more, but each is one more call:
    measured with ``benchmarks/inference_profile.py``)."""
    k = max(1, min(4, bands // 32))
    return [round(i * bands / k) for i in range(k + 1)]


def _upper_factor(whiten: torch.Tensor) -> torch.Tensor | None:
    """An upper-triangular U (bands, bands) with ``|U r|² = |whiten.T r|²`` for every r (float64: the transposed
    Cholesky factor of the precision ``whiten @ whiten.T``), or None where the precision is singular (a whitening
    with fewer columns than bands)."""
    if whiten.shape[1] != whiten.shape[0]:
        return None
    lower, info = torch.linalg.cholesky_ex(whiten @ whiten.T)
    if int(info) != 0 or not torch.isfinite(lower).all():
        return None
    return lower.T.contiguous()


@dataclass
class _Views:
    """One thread's buffers of ``FoldedScorer`` for one chunk size, and the views of them a call uses."""

    xin: torch.Tensor  # the input's rows (band-major) or columns in the buffer ``x``: centred, then the residual
    x: torch.Tensor  # (bands + 1, n) with the row of ones (a transposed view for pixel-major input)
    hidden: list[torch.Tensor]  # one per encoder layer; the decoder's hidden layers reuse them, mirrored
    ml: torch.Tensor  # rows mu, ones, logvar
    mu: torch.Tensor
    logvar: torch.Tensor
    mu1: torch.Tensor  # mu and the row of ones: the decoder's input
    residual: torch.Tensor  # ``xin`` as (bands, n)
    z: torch.Tensor  # squared (whitened) residual, KL terms, a row of ones
    squares: torch.Tensor
    kl: torch.Tensor


@contextlib.contextmanager
def _bf16_products() -> Iterator[None]:
    """float32 matrix products inside run with bfloat16 inputs and float32 accumulation (oneDNN; AMX where the
    CPU has it). Process-wide while it lasts: for measurements, not for concurrent callers."""
    matmul = torch.backends.mkldnn.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = before


def _with_bias(w: torch.Tensor, b: torch.Tensor | None, ones: bool) -> torch.Tensor:
    """``[W, b]`` (out, in + 1), and with ``ones`` a last row ``[0 ... 0, 1]`` that carries the row of ones on."""
    b = torch.zeros(w.shape[0], dtype=w.dtype) if b is None else b
    top = torch.cat([w, b[:, None]], dim=1)
    if not ones:
        return top
    last = torch.zeros(1, w.shape[1] + 1, dtype=w.dtype)
    last[0, -1] = 1.0
    return torch.cat([top, last])


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A contiguous float32 copy on ``device``."""
    return t.to(device=device, dtype=torch.float32).contiguous()


Layer = tuple[torch.Tensor, "torch.Tensor | None", "str | None"]


def _linear_layers(layers: nn.Sequential) -> list[Layer]:
    """A Sequential of Linear/ReLU/Sigmoid as (weight (out, in), bias (out,), activation) triples."""
    out: list[Layer] = []
    for layer in layers:
        if isinstance(layer, nn.Linear):
            bias = None if layer.bias is None else layer.bias.detach().clone()
            out.append((layer.weight.detach(), bias, None))
        elif isinstance(layer, (nn.ReLU, nn.Sigmoid)) and out and out[-1][2] is None:
            w, b, _ = out[-1]
            out[-1] = (w, b, "relu" if isinstance(layer, nn.ReLU) else "sigmoid")
        else:
            raise TypeError(f"no fast path for a {type(layer).__name__} layer here")
    return out


#: The scoring paths: ``folded`` (``FoldedScorer``: the standardisation and the residual whitening folded into the
#: layers, fewer passes per pixel) and ``layered`` (``ChunkScorer``: the model's layers one by one, then those steps),
#: the same scores within float32 rounding.
PATHS = ("folded", "layered")
#: What ``--scoring-path`` and ``score.scoring_path`` accept: a path of ``PATHS``, or ``auto``: the faster on this CPU.
CHOICES = ("auto", *PATHS)
#: Another path is picked over the folded one (the default, faster on every CPU measured: 1.3x with AVX2 kernels,
#: 1.4x with AVX-512) only when it is measured faster by more than this share: noise cannot flip the choice.
PICK_MARGIN = 0.10
#: Pixels of each layout timed per path and round when the path is measured at start (2 rounds after a warm-up:
#: about 20 ms on one core).
PICK_PIXELS, PICK_ROUNDS = 2048, 2


@dataclass(frozen=True)
class PathChoice:
    """The scoring path a VAE runs here, and why: asked for (``--scoring-path``), the model (BCE: only the layered
    path), the device (not measured off the CPU), or a measurement at start on this CPU."""

    path: str  # one of PATHS
    reason: str
    ns_per_pixel: dict[str, float]  # the measurement (CPU ns per pixel, both layouts) when there was one
    kernels: str  # torch's CPU kernel level (AVX512, AVX2, ...)

    def describe(self) -> str:
        """One line: the path, why, the kernels and the measured figures."""
        figures = ", ".join(f"{k} {v:.0f}" for k, v in self.ns_per_pixel.items())
        return (f"{self.path} ({self.reason}; {self.kernels} kernels"
                + (f"; CPU ns per pixel: {figures})" if figures else ")"))


def choose_path(det: VAEDetector, path: str, plan_of: Callable[[bool, bool], Any]) -> PathChoice:
    """The path asked for (``folded`` or ``layered``), or with ``auto`` the faster one on this CPU: both timed on
    the model's own weights (``measure_paths`` on the plans ``plan_of(band_major, folded)`` gives), the folded one
    kept unless the other is faster by more than ``PICK_MARGIN``. A model without a folded path (BCE term) runs the
    layered one whatever ``path`` says."""
    if path not in CHOICES:
        raise ValueError(f"unknown scoring path {path!r} (one of {', '.join(CHOICES)})")
    kernels = torch.backends.cpu.get_cpu_capability()
    kind = det.architecture["reconstruction"]
    if kind not in ("gaussian", "mse"):
        return PathChoice("layered", f"the only path for a {kind} term", {}, kernels)
    if path != "auto":
        return PathChoice(path, "asked for", {}, kernels)
    if det.device.type != "cpu":
        return PathChoice("folded", f"the default: not measured on {det.device.type}", {}, kernels)
    ns = measure_paths(plan_of, det.offset, det.scale)
    best = min(ns, key=ns.__getitem__)
    path = best if ns[best] < (1.0 - PICK_MARGIN) * ns["folded"] else "folded"
    return PathChoice(path, "measured on this CPU at start", ns, kernels)


def measure_paths(plan_of: Callable[[bool, bool], Any], offset: np.ndarray, scale: np.ndarray,
                  pixels: int = PICK_PIXELS, rounds: int = PICK_ROUNDS) -> dict[str, float]:
    """CPU nanoseconds per pixel of each path in ``PATHS`` on this thread, with the plans ``plan_of(band_major,
    folded)`` gives: ``pixels`` synthetic pixels around the model's normalisation (``offset``, ``scale``) in each
    layout (band rows as GDAL's blocks, pixel rows as decoded tiles), one warm-up
    round (it builds the plans), then the fastest of ``rounds`` interleaved rounds. Thread CPU time: reader threads
    running beside it do not count."""
    rng = np.random.default_rng(0)
    rows = (offset + scale * rng.standard_normal((pixels, offset.size))).astype(np.float32)
    layouts = ((np.ascontiguousarray(rows.T), True), (rows, False))
    out = np.empty((3, pixels), np.float32)
    best = {p: float("inf") for p in PATHS}
    for r in range(rounds + 1):
        for p in PATHS:
            t0 = time.thread_time()
            for x, band_major in layouts:
                score_chunks(plan_of(band_major, p == "folded"), x, band_major, pixels, out)
            if r:
                best[p] = min(best[p], time.thread_time() - t0)
    return {p: v / (2 * pixels) * 1e9 for p, v in best.items()}


def score_chunks(plan: ChunkScorer | FoldedScorer, pixels: np.ndarray, band_major: bool, chunk: int,
                 out: np.ndarray) -> None:
    """Score ``pixels`` ((bands, n) when ``band_major``, else (n, bands)) chunk by chunk into ``out`` (3, n) float32
    (rows score, reconstruction, kl) with ``plan``, a ``FoldedScorer`` or ``ChunkScorer`` built for that layout (the
    detector chooses and caches it: ``VAEDetector._plan``)."""
    folded = isinstance(plan, FoldedScorer)
    n = pixels.shape[1] if band_major else pixels.shape[0]
    result = torch.from_numpy(out)
    step = max(1, min(int(chunk), FOLDED_CHUNK if folded else SCORE_CHUNK))
    cast = pixels.dtype not in (np.float32, np.float64) or not pixels.flags.writeable
    whole = None if cast else torch.from_numpy(pixels)
    on_cpu = plan.device.type == "cpu"
    with torch.inference_mode():
        for i in range(0, n, step):
            j = min(n, i + step)
            if cast:
                part = pixels[:, i:j] if band_major else pixels[i:j]
                x = torch.from_numpy(part.astype(np.float32))
            else:
                x = whole[:, i:j] if band_major else whole[i:j]
            if not on_cpu:
                x = x.to(plan.device)
            got = result[:, i:j] if on_cpu else torch.empty(3, j - i, device=plan.device)
            if folded:
                plan(x, got)
            else:
                plan(x, *got)
            if not on_cpu:
                result[:, i:j] = got.cpu()
