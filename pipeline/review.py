"""The review page: the highest-ranked detections, each with what an analyst needs to decide on it.

For each detection: a chip of the input tile around it (a colour composite: red, green and blue picked by
wavelength where the bands carry ``wavelength`` tags, else three bands spread over the range) with its outline;
its peak pixel's spectrum against the spectra around it (mean and 5-95 %); its attributes. One self-contained HTML
file, pictures inline as base64 PNG.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from pipeline.detections import FIELDS
from pipeline.detections import read as read_detections
from pipeline.errors import InputError
from pipeline.files import atomic_path
from pipeline.names import is_dataset_name, tile_name
from pipeline.raster import WindowReader, info_of, open_raster

#: Chip half-size in pixels (the chip is up to 2·CHIP+1 pixels a side).
CHIP = 24
#: Band centres (nm) of the colour composite: red, green, blue.
RGB_NM = (650.0, 550.0, 470.0)


def rgb_bands(wavelengths: Sequence[float] | None, count: int) -> list[int]:
    """0-based bands for red, green, blue: nearest to 650/550/470 nm where wavelengths are known and cover the
    visible, else three bands spread over the range (last, middle, first)."""
    if wavelengths is not None and len(wavelengths) == count:
        wl = np.asarray(wavelengths, np.float64)
        if wl.min() <= 500 and wl.max() >= 620:
            return [int(np.argmin(np.abs(wl - nm))) for nm in RGB_NM]
    if count < 3:
        return [0] * 3
    return [count - 1, count // 2, 0]


def _stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """2-98 % stretch per channel over valid pixels; invalid pixels grey."""
    out = np.full(rgb.shape, 0.5, np.float64)
    for i in range(3):
        v = rgb[i][valid]
        if v.size:
            lo, hi = np.percentile(v, [2, 98])
            out[i] = np.clip((rgb[i] - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    out[:, ~valid] = 0.5
    return np.moveaxis(out, 0, -1)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def detection_figure(ds: Any, row: dict[str, Any], geometry: bytes) -> str:
    """The chip and spectrum picture of one detection, as base64 PNG."""
    import shapely
    from matplotlib.figure import Figure
    from rasterio.features import geometry_mask

    info = info_of(ds)
    r, c = int(row["peak_row"]), int(row["peak_col"])
    r0, c0 = max(0, r - CHIP), max(0, c - CHIP)
    win = Window(c0, r0, min(ds.width, c + CHIP + 1) - c0, min(ds.height, r + CHIP + 1) - r0)
    data, valid = WindowReader(ds).read(win)
    data = data.astype(np.float64)
    bands = rgb_bands(info.wavelengths, info.count)
    fig = Figure(figsize=(8.4, 3.2), layout="constrained")
    ax, sp = fig.subplots(1, 2, width_ratios=[1, 1.6])
    ax.imshow(_stretch(data[bands], valid), interpolation="nearest")
    geom = shapely.from_wkb(geometry)
    inv = ~ds.window_transform(win)
    for poly in getattr(geom, "geoms", [geom]):
        for ring in [poly.exterior, *poly.interiors]:
            xs, ys = zip(*(inv * (x, y) for x, y in ring.coords), strict=True)
            ax.plot(np.asarray(xs) - 0.5, np.asarray(ys) - 0.5, color="cyan", lw=1.2)
    inside = geometry_mask([geom], out_shape=valid.shape, transform=ds.window_transform(win), invert=True,
                           all_touched=False)
    ax.set_title(f"#{row['rank']} {row['tile']} (row {r}, col {c})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    x = np.asarray(info.wavelengths) if info.wavelengths else np.arange(1, info.count + 1)
    around = data[:, valid & ~inside]
    if around.shape[1]:
        lo, hi = np.percentile(around, [5, 95], axis=1)
        sp.fill_between(x, lo, hi, color="0.8", label="around: 5-95 %")
        sp.plot(x, around.mean(axis=1), color="0.3", lw=1, label="around: mean")
    sp.plot(x, data[:, r - r0, c - c0], color="crimson", lw=1.5, label="peak pixel")
    sp.set_xlabel("wavelength (nm)" if info.wavelengths else "band")
    sp.set_ylabel("value")
    sp.legend(fontsize=7, loc="best")
    sp.tick_params(labelsize=7)
    return _png(fig)


def _resolve_tiles(rows: Sequence[dict[str, Any]], sources: dict[str, Any], tiles: Sequence[str | Path],
                   detections: Path) -> dict[str, str | Path]:
    """Input tile path per tile name: ``--tile`` by file name, else the path recorded when scoring."""
    given = {tile_name(t): t for t in tiles}
    out: dict[str, str | Path] = {}
    for name in sorted({r["tile"] for r in rows}):
        if name in given:
            out[name] = given[name]
            continue
        recorded = (sources.get(name) or {}).get("input") or ""
        if recorded and is_dataset_name(recorded):  # a URL or /vsi name: GDAL opens it from anywhere
            out[name] = recorded
            continue
        candidates = [Path(recorded), detections.parent / recorded] if recorded else []
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise InputError(f"{detections}: input tile of {name!r} not found ({recorded or 'not recorded'}); "
                             f"pass it with --tile")
        out[name] = found
    return out


def review_html(detections: str | Path, *, tiles: Sequence[str | Path] = (), count: int = 50) -> tuple[str, int]:
    """The review page's HTML for the ``count`` highest-ranked detections, and how many it shows."""
    detections = Path(detections)
    rows, wkb, _, sources = read_detections(detections)
    order = sorted(range(len(rows)), key=lambda i: rows[i]["rank"])[:count]
    rows, wkb = [rows[i] for i in order], [wkb[i] for i in order]
    paths = _resolve_tiles(rows, sources, tiles, detections)
    parts = [f"<h1>Detections: {html.escape(detections.name)}</h1>",
             f"<p>{len(rows)} highest-ranked detections. Rarity: −log10 of the share of held-out normal pixels "
             "scoring at least as high (2 = one normal pixel in 100, 3 = one in 1 000). Chips: input around the "
             "detection, outline in cyan; spectra: the peak pixel against the pixels around it.</p>"]
    by_tile: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_tile.setdefault(r["tile"], []).append(i)
    figures: dict[int, str] = {}
    for name, idx in by_tile.items():
        with open_raster(paths[name]) as ds:
            for i in idx:
                figures[i] = detection_figure(ds, rows[i], wkb[i])
    for i, r in enumerate(rows):
        cells = "".join(f"<tr><th>{n}</th><td>{html.escape(_fmt(r[n]))}</td></tr>" for n, _ in FIELDS)
        parts.append(f'<div class="det"><img alt="detection {r["rank"]}" src="data:image/png;base64,{figures[i]}">'
                     f"<table>{cells}</table></div>")
    style = ("body{font-family:sans-serif;margin:1em}.det{display:flex;gap:1em;align-items:flex-start;"
             "border-top:1px solid #ccc;padding:.5em 0}table{font-size:12px;border-collapse:collapse}"
             "th{text-align:left;padding-right:.8em;color:#555}")
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>rsvae detections</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    return page, len(rows)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}" if np.isfinite(v) else ""
    return str(v)


def write_review(detections: str | Path, out: str | Path, *, tiles: Sequence[str | Path] = (),
                 count: int = 50) -> int:
    """Write the review page of ``detections`` to ``out`` (self-contained HTML); returns the detections shown."""
    page, n = review_html(detections, tiles=tiles, count=count)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return n
