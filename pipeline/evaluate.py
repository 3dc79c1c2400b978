"""Evaluation: pixel-level detection metrics and plots of a score raster against a truth raster.

Metrics are the ones the hyperspectral anomaly-detection literature reports: ROC AUC, average precision,
detection rate at fixed false-alarm rates, the best-F1 threshold, and the threshold-AUCs of false alarms and
detections (background suppression) computed on scores scaled to [0, 1].
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from pipeline.batch import BatchResult, TileJob, TileOutcome, plan_outputs, run_tiles
from pipeline.errors import InputError
from pipeline.files import atomic_path
from pipeline.rarity import CAP, PICTURE_MAX, band_of
from pipeline.raster import info_of, open_raster

FALSE_ALARM_RATES = (1e-3, 1e-2)


def metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Detection metrics of per-pixel ``scores`` (higher = more anomalous) against 0/1 ``labels``."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    n_anom = int(labels.sum())
    result: dict[str, Any] = {"pixels": int(labels.size), "anomaly_pixels": n_anom}
    if n_anom == 0 or n_anom == labels.size:
        raise InputError("truth has only one class among valid pixels; ROC AUC is undefined")
    fpr, tpr, _ = roc_curve(labels, scores)
    result["roc_auc"] = float(roc_auc_score(labels, scores))
    result["average_precision"] = float(average_precision_score(labels, scores))
    for far in FALSE_ALARM_RATES:
        result[f"detection_rate_at_far_{far:g}"] = float(tpr[fpr <= far].max(initial=0.0))
    prec, rec, thr = precision_recall_curve(labels, scores)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-300), 0.0)[:-1]
    best = int(np.argmax(f1))
    result["best_f1"] = {"f1": float(f1[best]), "threshold": float(thr[best]),
                         "precision": float(prec[best]), "recall": float(rec[best])}
    lo, hi = scores.min(), scores.max()
    scaled = (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)
    # ∫ P(s > τ) dτ over τ in [0, 1] is the mean of s: the threshold-AUCs in closed form
    auc_far = float(scaled[~labels].mean())
    auc_pd = float(scaled[labels].mean())
    result["background_suppression"] = {"auc_far_tau": auc_far, "auc_pd_tau": auc_pd,
                                        "auc_snpr": float(auc_pd / auc_far) if auc_far > 0 else None}
    return result


def read_pair(scores_path: str | Path, truth_path: str | Path, band: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Valid scores and their labels from two rasters on the same grid (invalid pixels left out)."""
    with open_raster(scores_path) as s, open_raster(truth_path) as t:
        si, ti = info_of(s), info_of(t)
        if (si.width, si.height) != (ti.width, ti.height):
            raise InputError(f"{truth_path}: grid {ti.width}x{ti.height} differs from {scores_path}'s "
                             f"{si.width}x{si.height}")
        if si.georeferenced and ti.georeferenced and (si.transform != ti.transform or si.crs != ti.crs):
            raise InputError(f"{truth_path}: CRS or transform differs from {scores_path}'s; not the same grid")
        if band > si.count:
            raise InputError(f"{scores_path}: has no band {band}")
        score = s.read(band)
        valid = np.isfinite(score)
        if si.nodata is not None:
            valid &= score != si.nodata
        truth = t.read(1)
        if ti.nodata is not None:
            valid &= truth != ti.nodata
    return score[valid], truth[valid] > 0


def evaluate(scores_path: str | Path, truth_path: str | Path, out: str | Path | None = None,
             plots: str | Path | None = None) -> dict[str, Any]:
    """Metrics of a score raster's ``score`` band against a truth raster; optionally write JSON and PNG plots."""
    scores, labels = read_pair(scores_path, truth_path)
    result = metrics(scores, labels)
    result["scores"] = str(scores_path)
    result["truth"] = str(truth_path)
    if plots is not None:
        result["plots"] = write_plots(scores_path, truth_path, scores, labels, plots)
    if out is not None:
        write_json(result, out)
    return result


def evaluate_tiles(scores: Sequence[str | Path], truth: str, outdir: str | Path, plots: str | Path | None = None,
                   on_done: Callable[[TileOutcome], None] | None = None) -> BatchResult:
    """Evaluate many score rasters in one process: ``outdir/NAME.json`` (and plots) per raster, its truth at
    ``truth.format(tile=NAME)``; a bad pair is recorded and the others go on (``pipeline.batch.run_tiles``)."""
    if "{tile}" not in truth:
        raise InputError(f"--truth {truth!r}: needs {{tile}} where each tile's name goes, e.g. truth/{{tile}}.tif")
    jobs = plan_outputs(scores, {"metrics": outdir}, suffix=".json")

    def one(job: TileJob) -> dict[str, Any]:
        return evaluate(job.tile, truth.replace("{tile}", job.name), job.outputs["metrics"], plots)

    return run_tiles(jobs, one, on_done)


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return Path(path)


def _save(fig: Any, path: Path) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return str(path)


def write_plots(scores_path: str | Path, truth_path: str | Path, scores: np.ndarray, labels: np.ndarray,
                folder: str | Path) -> dict[str, str]:
    """ROC curve (log false-alarm axis), rarity (else score) picture beside the truth and histograms; PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(scores_path).stem
    out: dict[str, str] = {}

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(np.maximum(fpr, 1e-6), tpr, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlim(1e-5, 1)
    ax.set_xlabel("false-alarm rate")
    ax.set_ylabel("detection rate")
    ax.set_title(f"ROC {stem} (AUC {roc_auc_score(labels, scores):.4f})")
    ax.grid(alpha=0.3)
    out["roc"] = _save(fig, folder / f"{stem}_roc.png")
    plt.close(fig)

    with open_raster(scores_path) as s, open_raster(truth_path) as t:
        rb = band_of(s.descriptions)
        img = s.read(rb or 1, masked=True).astype(np.float64)
        truth = t.read(1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    if rb:
        im = axes[0].imshow(img, vmin=0.0, vmax=PICTURE_MAX, cmap="magma", interpolation="nearest")
        axes[0].set_title("rarity")
        fig.colorbar(im, ax=axes[0], fraction=0.046, extend="max")
    else:
        lo, hi = np.percentile(scores, [2, 99.5])
        im = axes[0].imshow(img, vmin=lo, vmax=hi, cmap="magma", interpolation="nearest")
        axes[0].set_title("score")
        fig.colorbar(im, ax=axes[0], fraction=0.046)
    axes[1].imshow(truth, cmap="gray", interpolation="nearest")
    axes[1].set_title("truth")
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])
    out["quicklook"] = _save(fig, folder / f"{stem}_quicklook.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    if rb:  # on the rarity scale: background at 0-2 whatever the model, targets far to the right
        values, which = read_pair(scores_path, truth_path, band=rb)
        bins = np.linspace(0.0, CAP, 97)
        xlabel = "rarity (-log10 share of normal pixels as high)"
    else:
        values, which = scores, labels
        top = max(np.percentile(scores[~labels], 99.99), np.percentile(scores[labels], 99))
        bins = np.linspace(scores.min(), top, 80)
        xlabel = "score"
    ax.hist(values[~which], bins=bins, density=True, alpha=0.6, label="background")
    ax.hist(values[which], bins=bins, density=True, alpha=0.6, label="anomaly")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.legend()
    out["histogram"] = _save(fig, folder / f"{stem}_histogram.png")
    plt.close(fig)
    return out
