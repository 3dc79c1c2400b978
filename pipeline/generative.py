"""The generative side of the VAE: latent features, spectra sampled from the prior, paths through latent space.

A VAE is a generative model of the spectra, not only an anomaly scorer:

* ``features``: the posterior means of every valid pixel, one float32 band per latent dimension, streamed through
  the same scorer as anomaly scores (same grid, CRS and nodata handling);
* ``sample``: spectra decoded from draws of the prior N(0, I): what the model believes normal ground looks like;
* ``interpolate``: spectra decoded along the straight line between two pixels' posterior means.

Decoded spectra are the decoder's mean for each latent vector (no observation noise is added), in the input's units
(the model's normalisation undone). The per-pixel VAE and the context VAE have these (the context VAE encodes a
pixel with its surroundings, read from the tile, and decodes the spectrum part of the pair); other detectors raise
a ModelError.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rasterio.windows import Window

from pipeline.batch import BatchResult, TileJob, TileOutcome, plan_outputs, run_tiles
from pipeline.cog_writer import check_distinct
from pipeline.detectors.base import Detector, file_digest
from pipeline.detectors.context import ContextVAEDetector
from pipeline.detectors.vae import F32_MAX, VAEDetector
from pipeline.errors import InputError, ModelError, OutputError, RsvaeWarning
from pipeline.files import atomic_path
from pipeline.raster import WindowReader, describe, open_raster, pixel_index, read_pixel
from pipeline.scorer import Scorer
from pipeline.streaming import Block, with_margin

if TYPE_CHECKING:
    from pipeline.scoring import ScoreSummary

#: Most generated spectra drawn one by one in a plot; more would hide each other (all are in the CSV).
PLOT_MAX_LINES = 200


#: The models with a latent space: the per-pixel VAE and the context VAE.
Generative = VAEDetector | ContextVAEDetector


def require_vae(detector: Detector, what: str = "this command") -> Generative:
    """The detector as a VAE (per-pixel or context), or a ModelError saying that ``what`` needs one (RX models have
    no latent space)."""
    if not isinstance(detector, (VAEDetector, ContextVAEDetector)):
        where = detector.origin.get("path") or "model"
        raise ModelError(f"{where}: is a {detector.kind!r} model; {what} needs a VAE model "
                         f"(one trained with --method vae), which has a latent space")
    return detector


# --------------------------------------------------------------------------------------------- features

class LatentMeans(Scorer):
    """An adapter that lets the streaming scorer write posterior means: outputs ``latent_1`` … ``latent_k``. For a
    context VAE it reads windows with the model's halo and encodes each pixel with its surroundings."""

    #: Not "vae": the scorer tags the output with it, and must never take the adapter for the VAE itself.
    kind = "vae-latent"

    def __init__(self, vae: Generative):
        self.vae = vae
        self.band_names = vae.band_names
        self.meta = vae.meta
        self.origin = vae.origin
        self.halo = vae.halo
        self.outputs = tuple(f"latent_{i + 1}" for i in range(int(vae.architecture["latent"])))

    def score(self, pixels: np.ndarray, chunk: int = 65536, **_: Any) -> dict[str, np.ndarray]:
        """Posterior means of ``pixels`` (n, bands; a context VAE's feature rows, n x (bands + components)):
        ``latent_i`` -> (n,) float32; sampling options are ignored."""
        n = pixels.shape[0]
        mu = np.empty((len(self.outputs), n), np.float32)
        for i in range(0, n, chunk):
            mu[:, i:i + chunk] = self.vae.encode(pixels[i:i + chunk])[0].T
        np.nan_to_num(mu, copy=False, nan=F32_MAX, posinf=F32_MAX, neginf=-F32_MAX)
        return dict(zip(self.outputs, mu, strict=True))

    def score_block(self, data: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        """Posterior means of the interior pixels of a block read with the context VAE's ``halo``: NaN (nodata)
        where a pixel is invalid or has no valid pixel in its ring, as in its scores."""
        if not isinstance(self.vae, ContextVAEDetector):
            return super().score_block(data, valid)
        return self.vae.per_pixel(data, valid, self.outputs, self.score)  # feature rows, encoded as pixels are


def features(detector: Detector, tile: str | Path, out: str | Path, *, chunk: int = 65536,
             progress: Callable[[int], None] | None = None) -> ScoreSummary:
    """Write the posterior mean of every valid pixel of ``tile`` to a float32 COG at ``out``, one band per latent
    dimension (``latent_1`` …), on the input's grid, CRS and nodata; invalid pixels are nodata in every band.

    Streams window by window through ``pipeline.scoring.score_raster``, so memory is bounded as in scoring.
    Returns the scorer's summary.
    """
    from pipeline.scoring import score_raster

    vae = require_vae(detector, "writing latent features")
    return score_raster(LatentMeans(vae), tile, out, chunk=chunk, progress=progress)


def features_tiles(detector: Detector, tiles: Sequence[str | Path], outdir: str | Path, *, chunk: int = 65536,
                   on_done: Callable[[TileOutcome], None] | None = None) -> BatchResult:
    """Latent features of many tiles with one loaded VAE: ``outdir/NAME.tif`` per tile, a bad tile recorded and
    the others going on (``pipeline.batch.run_tiles``)."""
    vae = require_vae(detector, "writing latent features")
    jobs = plan_outputs(tiles, {"features": outdir})

    def one(job: TileJob) -> ScoreSummary:
        check_distinct(job.tile, [job.outputs["features"]])
        return features(vae, job.tile, job.outputs["features"], chunk=chunk)

    return run_tiles(jobs, one, on_done)


# --------------------------------------------------------------------------------------------- sampling

def sample(detector: Detector, n: int, seed: int = 0, temperature: float = 1.0) -> np.ndarray:
    """``n`` spectra (n, bands) in input units, decoded from seeded draws of the prior N(0, I), scaled by
    ``temperature`` (below 1: closer to the typical spectrum and fewer draws from the prior's tails; 0: the
    decoded origin, n times; the same seed gives the same directions at every temperature)."""
    vae = require_vae(detector, "generating spectra")
    if n < 1:
        raise InputError(f"the number of spectra to generate must be at least 1, not {n}")
    if not (temperature >= 0 and np.isfinite(temperature)):
        raise InputError(f"the temperature must be a finite number ≥ 0, not {temperature}")
    z = np.random.default_rng(seed).standard_normal((n, int(vae.architecture["latent"])))
    return vae.decode(z * temperature)


# --------------------------------------------------------------------------------------------- interpolation

@dataclass
class LatentPath:
    """A decoded path through latent space between two pixels."""

    t: np.ndarray           #: (steps,) position along the path, 0 at the first pixel and 1 at the second
    spectra: np.ndarray     #: (steps, bands) decoded spectra, input units
    latent: np.ndarray      #: (steps, latent) the latent vectors decoded
    ends: np.ndarray        #: (2, bands) the two pixels' own spectra, input units


def interpolate(detector: Detector, start: np.ndarray, end: np.ndarray, steps: int) -> LatentPath:
    """Decode ``steps`` points on the straight line between the posterior means of ``start`` and ``end``: two
    spectra for a per-pixel VAE, two pixels' features (``pixel_inputs``: spectrum and surroundings) for a context VAE.

    The first and last decoded spectra are the model's reconstructions of the two pixels, decode(mu).
    """
    vae = require_vae(detector, "interpolating")
    if steps < 2:
        raise InputError(f"--steps must be at least 2 (the two end points), not {steps}")
    ends = np.stack([np.asarray(start), np.asarray(end)])
    mu, _ = vae.encode(ends)
    t = np.linspace(0.0, 1.0, steps)
    z = (1.0 - t)[:, None] * mu[0] + t[:, None] * mu[1]
    return LatentPath(t=t, spectra=vae.decode(z), latent=z, ends=ends[:, :vae.bands].astype(np.float64))


def pixel_inputs(detector: Generative, tile: str | Path, row: int, col: int) -> np.ndarray:
    """What the model encodes for pixel (``row``, ``col``) of ``tile``: its spectrum (bands,) for a per-pixel VAE;
    for a context VAE, its spectrum and the components of its guarded-ring mean (``features``), read with the
    model's halo. InputError when the pixel is invalid or (context) has no valid pixel in its ring."""
    spectrum = pixel_spectrum(tile, row, col)
    detector.check_bands(spectrum.size, str(tile))
    if not isinstance(detector, ContextVAEDetector):
        return spectrum
    from pipeline.scoring import pad_to_halo

    window = Window(col, row, 1, 1)
    with open_raster(tile) as ds:
        grown, inner = with_margin(window, detector.halo, ds.width, ds.height)
        data, valid = WindowReader(ds).read(grown)
    # padded to the full halo beyond the raster's edge (invalid there), as the streaming scorer does
    data, valid = pad_to_halo(Block(0, window, np.asarray(data, np.float32), valid, inner), detector.halo)
    feats, ok = detector.features(data, valid)
    if not ok[0, 0]:
        raise InputError(f"{tile}: pixel (row {row}, col {col}) has no valid pixel in its ring (the context VAE "
                         f"needs its surroundings); pick another pixel")
    return feats[:, 0].astype(np.float64)


def pixel_spectrum(tile: str | Path, row: int, col: int) -> np.ndarray:
    """The spectrum (bands,) of pixel (``row``, ``col``) of ``tile``; InputError when outside the raster or invalid."""
    values, valid = read_pixel(tile, row, col)
    if not valid:
        raise InputError(f"{tile}: pixel (row {row}, col {col}) is not valid (nodata, NaN or masked in at "
                         f"least one band); pick another pixel")
    return values.astype(np.float64)


def locate(tile: str | Path, x: float, y: float) -> tuple[int, int]:
    """The (row, col) of ``tile``'s pixel holding map point (``x``, ``y``) in the raster's CRS."""
    return pixel_index(describe(tile), x, y)


# --------------------------------------------------------------------------------------------- files

def spectrum_columns(detector: Detector) -> list[str]:
    """CSV column names: wavelengths (``450.0nm``) when the model records distinct ones, else band names."""
    wl = detector.meta.get("wavelengths")
    if wl and len(wl) == detector.bands and all(w is not None and math.isfinite(w) for w in wl):
        # Values above 100 are nanometres in any sensor's metadata; smaller ones (micrometres?) get no unit.
        names = [f"{w:.1f}nm" if min(wl) > 100 else f"{w:g}" for w in wl]
        if len(set(names)) == len(names):
            return names
    return list(detector.band_names)


def write_spectra_csv(path: str | Path, columns: Sequence[str], spectra: np.ndarray,
                      index: dict[str, Sequence[Any]]) -> Path:
    """Write spectra (n, bands) as CSV, one row per spectrum: the ``index`` columns first, then one per band."""
    spectra = np.asarray(spectra)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*index, *columns])
        for i, row in enumerate(spectra):
            w.writerow([*(v[i] for v in index.values()), *(f"{x:.7g}" for x in row)])
    return Path(path)


# --------------------------------------------------------------------------------------------- plots

@dataclass
class Reference:
    """Real spectra to plot generated ones against, and where they came from."""

    pixels: np.ndarray | None
    source: str


def reference_spectra(detector: Detector, sample_path: str | Path | None = None) -> Reference:
    """Real training spectra: ``sample_path`` when given, else the sample file recorded in model.json.

    When neither can be read, warns and returns no pixels (plots are then drawn without real spectra).
    """
    from pipeline.sample import load_sample

    if sample_path is not None:
        smp = load_sample(sample_path)
        if smp.bands != detector.bands:
            raise InputError(f"{sample_path}: has {smp.bands} bands but the model was trained on {detector.bands}")
        return Reference(smp.pixels, str(sample_path))
    recorded = detector.meta.get("sample") or {}
    path = recorded.get("path")
    if not path or not Path(path).is_file():
        why = f"its training sample {path} is not found" if path else "model.json records no training sample"
        warnings.warn(f"{why}; plotting the generated spectra without real ones (pass --sample FILE to add them)",
                      RsvaeWarning, stacklevel=2)
        return Reference(None, "")
    if recorded.get("digest") and file_digest(path) != recorded["digest"]:
        warnings.warn(f"{path}: changed since the model was trained on it; plotting its spectra anyway",
                      RsvaeWarning, stacklevel=2)
    smp = load_sample(path)
    if smp.bands != detector.bands:
        warnings.warn(f"{path}: has {smp.bands} bands, not the model's {detector.bands}; plotting without it",
                      RsvaeWarning, stacklevel=2)
        return Reference(None, "")
    return Reference(smp.pixels, str(path))


def _axis(detector: Detector) -> tuple[np.ndarray, str]:
    wl = detector.meta.get("wavelengths")
    if wl and len(wl) == detector.bands and all(w is not None for w in wl):
        return np.asarray(wl, float), "wavelength (nm)" if min(wl) > 100 else "wavelength"
    return np.arange(1, detector.bands + 1), "band"


def plot_format(path: str | Path) -> str:
    """The image format a plot path's suffix names (png without one); OutputError for one matplotlib cannot write."""
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    known = FigureCanvasBase.get_supported_filetypes()
    if fmt not in known:
        raise OutputError(f"{path}: cannot write a plot as .{fmt} (use one of {', '.join(sorted(known))})")
    return fmt


def _save(fig: Any, path: str | Path) -> Path:
    fmt = plot_format(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=fig.dpi)
    return Path(path)


def plot_generated(detector: Detector, spectra: np.ndarray, path: str | Path, reference: Reference,
                   *, title: str | None = None) -> Path:
    """Plot generated spectra beside the real spectra's mean and spread (5-95 % and min-max) per band."""
    from matplotlib.figure import Figure

    x, xlabel = _axis(detector)
    fig = Figure(figsize=(7.5, 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    if reference.pixels is not None and reference.pixels.size:
        real = reference.pixels.astype(np.float64)
        lo, p5, p95, hi = np.quantile(real, [0.0, 0.05, 0.95, 1.0], axis=0)
        ax.fill_between(x, lo, hi, color="0.88", lw=0, label="real: min-max")
        ax.fill_between(x, p5, p95, color="0.7", lw=0, label="real: 5-95 %")
        ax.plot(x, real.mean(axis=0), color="k", lw=2, label=f"real: mean of {len(real)}")
    else:
        ax.text(0.01, 0.98, "no real spectra (training sample not available)", transform=ax.transAxes,
                va="top", fontsize=8, color="0.3")
    shown = spectra[:PLOT_MAX_LINES]
    ax.plot(x, shown.T, color="tab:orange", lw=0.6, alpha=0.5)
    ax.plot([], [], color="tab:orange", lw=0.6,
            label=f"generated: {len(shown)}" + (f" of {len(spectra)}" if len(spectra) > len(shown) else ""))
    ax.plot(x, spectra.mean(axis=0), color="tab:red", lw=1.5, ls="--", label="generated: mean")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("value (input units)")
    ax.set_title(title or "Spectra sampled from the VAE's prior vs. real training spectra", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_path(detector: Detector, lp: LatentPath, path: str | Path, labels: tuple[str, str]) -> Path:
    """Plot a latent path's decoded spectra coloured by step, with the two end pixels' real spectra."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    x, xlabel = _axis(detector)
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(7.5, 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    for t, s in zip(lp.t, lp.spectra, strict=True):
        ax.plot(x, s, color=cmap(t), lw=1.0)
    ax.plot(x, lp.ends[0], color=cmap(0.0), lw=2.2, ls="--", label=f"real {labels[0]}")
    ax.plot(x, lp.ends[1], color=cmap(1.0), lw=2.2, ls=":", label=f"real {labels[1]}")
    ax.plot([], [], color="0.4", lw=1.0, label=f"decoded path, {len(lp.t)} steps")
    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=ax, label="position along the path")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("value (input units)")
    ax.set_title("Spectra decoded along the straight latent path between two pixels", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- the commands

def generate_csv(model: str | Path, count: int, output: str | Path, *, seed: int = 0, temperature: float = 1.0,
                 plot: str | Path | None = None, sample_path: str | Path | None = None) -> tuple[Generative, str | None]:
    """``rsvae generate``: ``count`` spectra decoded from prior draws of the VAE in folder ``model``, written to the
    CSV ``output`` (and plotted beside real training spectra to ``plot``). Returns the model and, with a plot, where
    its real spectra came from ("" when none could be read)."""
    from pipeline.detectors import load_detector

    det = require_vae(load_detector(model), "rsvae generate")
    if plot:
        plot_format(plot)  # fail before writing anything
    spectra = sample(det, count, seed, temperature)
    write_spectra_csv(output, spectrum_columns(det), spectra, {"sample": range(count)})
    if not plot:
        return det, None
    ref = reference_spectra(det, sample_path)
    plot_generated(det, spectra, plot, ref)
    return det, ref.source


def interpolate_csv(model: str | Path, tile: str | Path, ends: Sequence[tuple[int, int] | tuple[float, float]],
                    by_xy: Sequence[bool], steps: int, output: str | Path,
                    plot: str | Path | None = None) -> list[tuple[int, int]]:
    """``rsvae interpolate``: the decoded straight latent path between two pixels of ``tile`` (each end a (row, col),
    or an (x, y) in the tile's CRS where ``by_xy``), written to the CSV ``output`` (and plotted to ``plot``).
    Returns the two pixels as (row, col)."""
    from pipeline.detectors import load_detector

    pixels = [locate(tile, *end) if xy else (int(end[0]), int(end[1])) for end, xy in zip(ends, by_xy, strict=True)]
    det = require_vae(load_detector(model), "rsvae interpolate")
    if plot:
        plot_format(plot)  # fail before writing anything
    inputs = [pixel_inputs(det, tile, r, c) for r, c in pixels]
    lp = interpolate(det, inputs[0], inputs[1], steps)
    write_spectra_csv(output, spectrum_columns(det), lp.spectra,
                      {"step": range(steps), "t": [f"{t:.6g}" for t in lp.t]})
    if plot:
        plot_path(det, lp, plot, pixel_labels(pixels))
    return pixels


def pixel_labels(pixels: Sequence[tuple[int, int]]) -> tuple[str, str]:
    """How a path's two end pixels are named in plots and messages."""
    return tuple(f"pixel ({r}, {c})" for r, c in pixels)  # type: ignore[return-value]
