"""Summaries of a run for people: the table of every tile's metrics, the training curve, score quicklooks.

These are the workflow's last step and the pictures of its HTML report; each is one function here and one
`rsvae` command (`summarize`, `quicklook`). Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.batch import BatchResult, TileJob, TileOutcome, plan_outputs, run_tiles
from pipeline.errors import InputError, UsageConflict
from pipeline.files import atomic_path
from pipeline.raster import iter_band, read_preview

#: Metrics shown first in the table (the rest follow in alphabetical order).
LEADING = ("roc_auc", "average_precision", "detection_rate_at_far_0.001", "detection_rate_at_far_0.01",
           "best_f1.f1")
#: Keys of a metrics file that are not metrics.
NOT_METRICS = {"scores", "truth", "plots"}
#: Value of an anomaly in a mask raster (``rsvae score --mask-out``); other valid values are background.
FLAGGED = 1
#: Most flagged spots (connected pixels) a quicklook rings individually.
MAX_RINGS = 200


def tile_name(path: str | Path) -> str:
    """The tile a per-tile output belongs to: its file name without the extension (the workflow's {tile})."""
    return Path(path).stem


def read_metrics(path: str | Path) -> dict[str, float | None]:
    """A metrics JSON (``rsvae evaluate -o``) as flat ``{name: number}``; nested sections become ``section.key``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: metrics file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a metrics JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a metrics JSON file (expected an object, got {type(data).__name__})")
    flat: dict[str, float | None] = {}
    for key, value in data.items():
        if key in NOT_METRICS:
            continue
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in items:
            name = key if sub is None else f"{key}.{sub}"
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
                flat[name] = v
    return flat


def mask_counts(path: str | Path) -> dict[str, int]:
    """Valid and flagged pixels of an anomaly mask raster (1 = flagged, nodata = not scored)."""
    valid = flagged = 0
    for block in iter_band(path):
        values = block.compressed()
        valid += int(values.size)
        flagged += int(np.count_nonzero(values == FLAGGED))
    return {"valid_pixels": valid, "flagged_pixels": flagged}


#: Rarity from which a detection counts in the table's ``detections_rarity_ge_4`` column.
STRONG_RARITY = 4.0


def detection_counts(path: str | Path) -> dict[str, Any]:
    """A tile's detections: how many, how many at rarity ≥ 4, and the top one's peak rarity (None if none)."""
    from pipeline.detections import read

    rows = read(path)[0]
    peaks = [float(r["peak_rarity"]) for r in rows]
    return {"detections": len(peaks), "detections_rarity_ge_4": sum(p >= STRONG_RARITY for p in peaks),
            "top_rarity": max(peaks) if peaks else None}


def metrics_table(metrics: Sequence[str | Path] = (), masks: Sequence[str | Path] = (),
                  detections: Sequence[str | Path] = ()) -> list[dict[str, Any]]:
    """One row per tile: pixels flagged in its mask, its detections and its metrics against truth, where each
    exists."""
    rows: dict[str, dict[str, Any]] = {}
    for kind, paths in (("mask", masks), ("detections", detections), ("metrics", metrics)):
        seen: set[str] = set()
        for p in paths:
            tile = tile_name(p)
            if tile in seen:
                raise InputError(f"{p}: a second {kind} file for tile {tile!r}; tile names must be unique")
            seen.add(tile)
            row = rows.setdefault(tile, {"tile": tile})
            if kind == "detections":
                row.update(detection_counts(p))
            elif kind == "mask":
                counts = mask_counts(p)
                row.update(counts)
                row["flagged_fraction"] = counts["flagged_pixels"] / counts["valid_pixels"] \
                    if counts["valid_pixels"] else None
            else:
                row.update(read_metrics(p))
    return [rows[t] for t in sorted(rows)]


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys = {k for r in rows for k in r} - {"tile"}
    first = [k for k in ("valid_pixels", "flagged_pixels", "flagged_fraction", "detections",
                         "detections_rarity_ge_4", "top_rarity", *LEADING) if k in keys]
    return ["tile", *first, *sorted(keys - set(first))]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return str(value)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The table as CSV; a tile without a value in a column (no truth, say) has an empty cell."""
    columns = _columns(rows)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_cell(r.get(c)) for c in columns])
    return Path(path)


def training_summary(model: str | Path) -> dict[str, Any]:
    """The model's kind and training record from its model.json (empty history for detectors not trained by epochs)."""
    from pipeline.detectors.base import read_model_folder

    meta, _ = read_model_folder(model)
    training = meta.get("training") or {}
    return {"detector": meta.get("detector", "?"), "bands": meta.get("bands"),
            "history": list(training.get("history") or []), "best_epoch": training.get("best_epoch"),
            "epochs_run": training.get("epochs_run"), "seconds": training.get("seconds"),
            "device": training.get("device")}


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_training_curve(model: str | Path, path: str | Path) -> Path:
    """Training and validation loss per epoch, best epoch marked; a note instead for detectors without epochs."""
    t = training_summary(model)
    fig = _figure(5.5, 3.6)
    ax = fig.add_subplot()
    hist = t["history"]
    if hist:
        epochs = [h["epoch"] for h in hist]
        ax.plot(epochs, [h["train_loss"] for h in hist], label="training", lw=1.5)
        ax.plot(epochs, [h["val_loss"] for h in hist], label="held-out", lw=1.5)
        if t["best_epoch"]:
            ax.axvline(t["best_epoch"], color="grey", ls=":", lw=1, label=f"kept: epoch {t['best_epoch']}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss per pixel")
        ax.legend()
        ax.grid(alpha=0.3)
        ax.set_title(f"{t['detector']} on {t['bands']} bands: {t['epochs_run']} epochs")
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, f"{t['detector']} detector: fitted in one pass,\nno training curve",
                ha="center", va="center", fontsize=12)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return Path(path)


def write_html(rows: Sequence[dict[str, Any]], path: str | Path, model: str | Path | None = None) -> Path:
    """The table as a small self-contained HTML page (the report shows it inline)."""
    columns = _columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
                     for r in rows)
    intro = ""
    if model is not None:
        t = training_summary(model)
        intro = (f"<p>Model: {html.escape(str(t['detector']))} on {t['bands']} bands"
                 + (f", {t['epochs_run']} epochs, kept epoch {t['best_epoch']}" if t["history"] else "")
                 + ".</p>")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rsvae summary</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child{{text-align:left}}</style>
</head><body><h2>Per-tile results</h2>{intro}
<table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
<p>Empty cells: no truth raster for that tile (metrics), no mask, or no detection (top_rarity).
detections: groups of rare pixels (`rsvae detect`); detections_rarity_ge_4: those whose peak is rarer than one
normal pixel in 10 000.</p></body></html>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return Path(path)


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a table ``write_csv`` wrote (a partial summary): numbers as numbers, empty cells left out."""
    def value(text: str) -> Any:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    try:
        with open(path, newline="") as f:
            rows = [{k: (v if k == "tile" else value(v)) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a readable summary table ({exc})") from None
    if any("tile" not in r for r in rows):
        raise InputError(f"{path}: not a summary table (no 'tile' column)")
    return rows


def summarize(metrics: Sequence[str | Path], masks: Sequence[str | Path], out_csv: str | Path, *,
              model: str | Path | None = None, plot: str | Path | None = None,
              out_html: str | Path | None = None, detections: Sequence[str | Path] = (),
              parts: Sequence[str | Path] = ()) -> list[dict[str, Any]]:
    """Write the per-tile table (CSV, optionally HTML) and, given a model, its training curve; return the rows.

    ``parts`` are earlier tables (``-o`` of this function) whose rows join the table: the workflow summarizes
    each batch of tiles in its job, then merges the parts (one command line per batch, never one per tile).
    """
    if not metrics and not masks and not detections and not parts:
        raise UsageConflict("nothing to summarize: give metrics files, --mask rasters, --detections files and/or "
                         "--part tables")
    if plot is not None and model is None:
        raise UsageConflict(f"{plot}: a training curve needs --model")
    rows = metrics_table(metrics, masks, detections) if (metrics or masks or detections) else []
    seen = {r["tile"]: "this table" for r in rows}
    for part in parts:
        for row in read_table(part):
            if row["tile"] in seen:
                raise InputError(f"{part}: tile {row['tile']!r} is also in {seen[row['tile']]}; tile names must "
                                 "be unique")
            seen[row["tile"]] = str(part)
            rows.append(row)
    rows.sort(key=lambda r: r["tile"])
    write_csv(rows, out_csv)
    if out_html is not None:
        write_html(rows, out_html, model)
    if plot is not None:
        plot_training_curve(model, plot)
    return rows


def quicklook(scores: str | Path, path: str | Path, *, mask: str | Path | None = None, band: int | None = None,
              max_size: int = 1024, title: str | None = None) -> Path:
    """A PNG of a score raster's band: nodata grey, flagged mask pixels outlined.

    The rarity band (the default where the raster has one) on its fixed scale, 0 to ``rarity.PICTURE_MAX``, so a
    target of rarity 8 stands out of a background at 0-2; any other band in a 2-99.9 % percentile stretch.
    """
    import matplotlib

    from pipeline.rarity import PICTURE_MAX, band_of
    from pipeline.raster import describe

    rarity_band = band_of(describe(scores).descriptions)
    band = band if band is not None else (rarity_band or 1)
    data = read_preview(scores, band, max_size)
    values = data.compressed()
    fig = _figure(6, 5.4)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="#bbbbbb")
    if values.size and band == rarity_band:
        im = ax.imshow(data.astype(np.float32), cmap=cmap, vmin=0.0, vmax=PICTURE_MAX, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, extend="max",
                     label="rarity (-log10 share of normal pixels as high)")
    elif values.size:
        lo, hi = np.percentile(values, [2.0, 99.9])
        hi = hi if hi > lo else lo + 1.0
        im = ax.imshow(data.astype(np.float32), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, label="score (2-99.9 % stretch)")
    else:
        ax.imshow(np.ma.masked_all(data.shape, np.float32), cmap=cmap)
        ax.text(0.5, 0.5, "no valid pixels", ha="center", va="center", transform=ax.transAxes)
    if mask is not None:
        flagged = read_preview(mask, 1, max_size)
        if flagged.shape != data.shape:
            raise InputError(f"{mask}: grid differs from {scores}'s; not its mask")
        hit = np.ma.filled(flagged == FLAGGED, False)
        if hit.any():
            # outlines, not a fill: the scores under the flagged pixels stay visible
            ax.contour(hit.astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.8)
            from scipy import ndimage

            labels, n = ndimage.label(hit)
            if n <= MAX_RINGS:  # ring small flagged spots, or a single pixel would not show
                sizes = ndimage.sum_labels(hit, labels, range(1, n + 1))
                small = [i + 1 for i in range(n) if sizes[i] <= 4]
                if small:
                    centres = np.array(ndimage.center_of_mass(hit, labels, small)).reshape(-1, 2)
                    ax.scatter(centres[:, 1], centres[:, 0], s=90, facecolors="none", edgecolors="cyan",
                               linewidths=0.8)
            ax.set_xlabel(f"cyan: {int(hit.sum())} pixels flagged in the mask")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or tile_name(scores))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return Path(path)


def quicklook_tiles(scores: Sequence[str | Path], outdir: str | Path, *, mask_dir: str | Path | None = None,
                    band: int | None = None, max_size: int = 1024,
                    on_done: Callable[[TileOutcome], None] | None = None) -> BatchResult:
    """Quicklooks of many score rasters in one process: ``outdir/NAME.png`` each, its mask ``mask_dir/NAME.tif``
    outlined; a bad raster is recorded and the others go on (``pipeline.batch.run_tiles``)."""
    jobs = plan_outputs(scores, {"png": outdir}, suffix=".png")

    def one(job: TileJob) -> Path:
        mask = Path(mask_dir) / f"{job.name}.tif" if mask_dir is not None else None
        return quicklook(job.tile, job.outputs["png"], mask=mask, band=band, max_size=max_size)

    return run_tiles(jobs, one, on_done)
