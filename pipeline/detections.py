"""Detections: connected groups of rare pixels in a score raster, as ranked polygons in a vector file.

A pixel is flagged when its rarity (the score raster's ``rarity`` band) reaches a threshold; every 8-connected group
of flagged pixels is one detection. The raster is read window by window: each window is labelled on its own
(``scipy.ndimage.label``), labels touching across a window seam are joined (union-find over the last row of the
window row above and the last column of the window to the left), and per-group statistics and pixel coordinates
are accumulated. Memory grows with the groups and their pixels (8 bytes a flagged pixel), plus one row of labels the
raster's width, not with the raster's size. Polygons are then traced per kept group from its pixels on its bounding
box (``rasterio.features.shapes``, no second read of the raster), and written with pyogrio (GeoPackage, GeoJSON or
FlatGeobuf by extension).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.errors import RasterioError
from rasterio.windows import Window

from pipeline.batch import BatchResult, TileJob, TileOutcome, plan_outputs, run_tiles
from pipeline.errors import InputError, OutputError, UsageConflict
from pipeline.files import atomic_path
from pipeline.names import tile_name
from pipeline.rarity import band_of
from pipeline.raster import open_raster

#: Default threshold: one normal pixel in 100 000 scores as high (about one false pixel per 100 000-pixel tile).
DEFAULT_MIN_RARITY = 5.0
#: Side of the windows read (pixels); a multiple of the COG block size.
WINDOW = 1024
#: Attribute names and types, in order (the layer's schema).
FIELDS: tuple[tuple[str, str], ...] = (
    ("tile", "U"), ("rank", "i4"), ("pixels", "i8"), ("area_m2", "f8"), ("peak_rarity", "f8"),
    ("mean_rarity", "f8"), ("peak_score", "f8"), ("peak_row", "i8"), ("peak_col", "i8"), ("peak_x", "f8"),
    ("peak_y", "f8"), ("lon", "f8"), ("lat", "f8"),
)
DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".fgb": "FlatGeobuf"}
LAYER = "detections"
#: Per-driver options: GeoPackage 1.2 (QGIS builds on older GDAL warn about 1.4 files); FlatGeobuf without its
#: spatial index, which would reorder the features (they are kept in rank order).
_OPTIONS: dict[str, dict[str, Any]] = {"GPKG": {"dataset_options": {"VERSION": "1.2"}},
                                       "FlatGeobuf": {"layer_options": {"SPATIAL_INDEX": "NO"}}}
#: Layer metadata key holding the score rasters and input tiles the detections came from (JSON).
SOURCES_KEY = "rsvae_sources"


@dataclass
class _Group:
    """Running statistics of one labelled part (merged across seams at the end)."""

    pixels: int
    rarity_sum: float
    peak_score: float
    peak_rarity: float
    peak_row: int
    peak_col: int
    bbox: list[int]  # row0, col0, row1, col1 (exclusive)
    cells: list[np.ndarray]  # (2, n) int32 rows and columns of its pixels, one array per window part

    def absorb(self, other: _Group) -> None:
        """Add another part of the same group."""
        self.pixels += other.pixels
        self.rarity_sum += other.rarity_sum
        if (other.peak_score, other.peak_rarity) > (self.peak_score, self.peak_rarity):
            self.peak_score, self.peak_rarity = other.peak_score, other.peak_rarity
            self.peak_row, self.peak_col = other.peak_row, other.peak_col
        b, o = self.bbox, other.bbox
        self.bbox = [min(b[0], o[0]), min(b[1], o[1]), max(b[2], o[2]), max(b[3], o[3])]
        self.cells.extend(other.cells)


class _UnionFind:
    """Disjoint sets over consecutive integer ids (1, 2, ...), with path halving."""

    def __init__(self) -> None:
        self.parent: list[int] = [0]

    def add(self, count: int) -> int:
        """Make ``count`` new singleton ids; returns the first."""
        first = len(self.parent)
        self.parent.extend(range(first, first + count))
        return first

    def find(self, i: int) -> int:
        """The root of ``i``."""
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def union(self, a: int, b: int) -> None:
        """Join the sets of ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def rarity_band(ds: Any) -> int:
    """The 1-based index of a score raster's ``rarity`` band; InputError naming the file when it has none."""
    band = band_of(ds.descriptions)
    if band is not None:
        return band
    raise InputError(f"{ds.name}: has no rarity band; score the tile again with this rsvae version")


def threshold_of(min_rarity: float | None, fpr: float | None) -> float:
    """The rarity threshold from ``--min-rarity`` or ``--fpr`` (−log10 of the false-alarm rate), else the default."""
    if min_rarity is not None and fpr is not None:
        raise UsageConflict("give --min-rarity or --fpr, not both")
    if fpr is not None:
        if not 0 < fpr < 1:
            raise InputError(f"--fpr must be in (0, 1), not {fpr}")
        return -math.log10(fpr)
    value = DEFAULT_MIN_RARITY if min_rarity is None else float(min_rarity)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"--min-rarity must be a positive number, not {min_rarity}")
    return value


def _seam_pairs(here: np.ndarray, there: np.ndarray) -> list[tuple[int, int]]:
    """Label pairs touching 8-connectedly across a seam: ``here[i]`` with ``there[i..i+2]`` (``there`` is the
    neighbouring line padded by one on each side; 0 = no label)."""
    pairs: set[tuple[int, int]] = set()
    n = here.size
    for d in (0, 1, 2):
        b = there[d:d + n]
        both = (here > 0) & (b > 0)
        pairs.update(zip(here[both].tolist(), b[both].tolist(), strict=True))
    return sorted(pairs)


def find_groups(path: str | Path, min_rarity: float, window: int = WINDOW) -> tuple[list[_Group], dict[str, Any]]:
    """Stream a score raster and return its 8-connected groups of pixels with rarity ≥ ``min_rarity``.

    Also returns what the writer needs of the raster (CRS, transform, size, tile name, input path).
    """
    from scipy import ndimage

    eight = np.ones((3, 3), bool)
    uf = _UnionFind()
    parts: dict[int, _Group] = {}
    with open_raster(path) as ds:
        rb = rarity_band(ds)
        tags = ds.tags()
        info = {"crs": ds.crs, "transform": ds.transform, "width": ds.width, "height": ds.height,
                "tile": tile_name(tags.get("rsvae_input") or path),
                "input": tags.get("rsvae_input_path", ""), "scores": str(path)}
        # global labels of the last row of the window row above, padded by one column on each side
        above = np.zeros(ds.width + 2, np.int64)
        for r0 in range(0, ds.height, window):
            h = min(window, ds.height - r0)
            below = np.zeros(ds.width + 2, np.int64)
            left = np.zeros(h + 2, np.int64)  # the last column of the window to the left, padded
            for c0 in range(0, ds.width, window):
                w = min(window, ds.width - c0)
                win = Window(c0, r0, w, h)
                try:
                    rar = ds.read(rb, window=win, masked=True)
                    flag = ~np.ma.getmaskarray(rar) & (rar.filled(-np.inf) >= min_rarity)
                    lab, k = ndimage.label(flag, structure=eight)
                    score = ds.read(1, window=win, masked=True).filled(-np.inf) if k else None
                except RasterioError as exc:
                    raise InputError(f"{path}: could not read window {win} ({exc})") from None
                g = np.zeros((h, w), np.int64)
                if k:
                    first = uf.add(k)
                    g[lab > 0] = lab[lab > 0] + (first - 1)
                    _accumulate(parts, lab, k, first, rar.filled(0.0), score, r0, c0)
                    for a, b in _seam_pairs(g[0], above[c0:c0 + w + 2]):
                        uf.union(a, b)
                    for a, b in _seam_pairs(g[:, 0], left):
                        uf.union(a, b)
                below[c0 + 1:c0 + w + 1] = g[-1]
                left[1:-1] = g[:, -1]
            above = below
    groups: dict[int, _Group] = {}
    for i, part in parts.items():
        root = uf.find(i)
        if root in groups:
            groups[root].absorb(part)
        else:
            groups[root] = part
    return list(groups.values()), info


def _accumulate(parts: dict[int, _Group], lab: np.ndarray, k: int, first: int, rar: np.ndarray,
                score: np.ndarray, r0: int, c0: int) -> None:
    """Per-label statistics and pixels of one window, stored under global ids ``first`` ... ``first + k - 1``."""
    from scipy import ndimage

    idx = np.arange(1, k + 1)
    counts = np.bincount(lab.ravel(), minlength=k + 1)[1:]
    sums = np.bincount(lab.ravel(), weights=rar.ravel().astype(np.float64), minlength=k + 1)[1:]
    peaks = ndimage.maximum_position(score, lab, idx)
    rows, cols = np.nonzero(lab)
    order = np.argsort(lab[rows, cols], kind="stable")
    cells = np.split(np.stack([rows[order] + r0, cols[order] + c0]).astype(np.int32), np.cumsum(counts)[:-1], axis=1)
    for j, (sl, (pr, pc)) in enumerate(zip(ndimage.find_objects(lab), peaks, strict=True)):
        parts[first + j] = _Group(int(counts[j]), float(sums[j]), float(score[pr, pc]), float(rar[pr, pc]),
                                  r0 + int(pr), c0 + int(pc),
                                  [r0 + sl[0].start, c0 + sl[1].start, r0 + sl[0].stop, c0 + sl[1].stop],
                                  [cells[j].copy()])


def _outline(group: _Group, transform: Any) -> Any:
    """The group's polygon (a shapely MultiPolygon in the raster's CRS), traced from its pixels on its bounding box."""
    import shapely
    from rasterio.features import shapes
    from rasterio.transform import Affine

    r0, c0, r1, c1 = group.bbox
    mine = np.zeros((r1 - r0, c1 - c0), bool)
    for part in group.cells:
        mine[part[0] - r0, part[1] - c0] = True
    polys = [shapely.geometry.shape(geom) for geom, _ in
             shapes(mine.view(np.uint8), mask=mine, connectivity=8, transform=transform * Affine.translation(c0, r0))]
    merged = shapely.union_all(polys) if len(polys) > 1 else polys[0]
    return merged if merged.geom_type == "MultiPolygon" else shapely.MultiPolygon([merged])


def _pixel_area(info: dict[str, Any], lat: float) -> float:
    """One pixel's area in m²: from the transform in a projected CRS in metres; at the latitude in a geographic one."""
    crs, t = info["crs"], info["transform"]
    if crs is None:
        return math.nan
    a = abs(t.a * t.e - t.b * t.d)
    if crs.is_geographic:
        r = 6_371_008.8  # mean Earth radius
        return a * (math.pi / 180 * r) ** 2 * math.cos(math.radians(lat))
    try:
        factor = crs.linear_units_factor[1]
    except Exception:  # noqa: BLE001 - a CRS without linear units: no area
        return math.nan
    return a * factor ** 2


def detect(scores: str | Path, out: str | Path, *, min_rarity: float | None = None, fpr: float | None = None,
           min_pixels: int = 1, window: int = WINDOW) -> int:
    """Write the detections of a score raster to ``out`` (.gpkg, .geojson, .fgb); returns how many."""
    import shapely
    from rasterio.warp import transform as warp

    driver = driver_of(out)
    threshold = threshold_of(min_rarity, fpr)
    if min_pixels < 1:
        raise InputError(f"--min-pixels must be at least 1, not {min_pixels}")
    groups, info = find_groups(scores, threshold, window)
    groups = [g for g in groups if g.pixels >= min_pixels]
    groups.sort(key=lambda g: (-g.peak_rarity, -g.peak_score, g.peak_row, g.peak_col))
    t = info["transform"]
    xs = [t.c + t.a * (g.peak_col + 0.5) + t.b * (g.peak_row + 0.5) for g in groups]
    ys = [t.f + t.d * (g.peak_col + 0.5) + t.e * (g.peak_row + 0.5) for g in groups]
    if info["crs"] is not None and groups:
        lon, lat = warp(info["crs"], "EPSG:4326", xs, ys)
    else:
        lon = lat = [math.nan] * len(groups)
    geoms = [_outline(g, t) for g in groups]
    rows = [{"tile": info["tile"], "rank": i + 1, "pixels": g.pixels,
             "area_m2": g.pixels * _pixel_area(info, la), "peak_rarity": g.peak_rarity,
             "mean_rarity": g.rarity_sum / g.pixels, "peak_score": g.peak_score, "peak_row": g.peak_row,
             "peak_col": g.peak_col, "peak_x": x, "peak_y": y, "lon": lo, "lat": la}
            for i, (g, x, y, lo, la) in enumerate(zip(groups, xs, ys, lon, lat, strict=True))]
    sources = {info["tile"]: {"scores": str(scores), "input": info["input"]}}
    write(out, rows, shapely.to_wkb(np.array(geoms, dtype=object)) if geoms else [],
          info["crs"].to_wkt() if info["crs"] else None, sources, threshold, driver)
    return len(rows)


def detect_tiles(scores: Sequence[str | Path], outdir: str | Path, *, suffix: str = ".gpkg",
                 min_rarity: float | None = None, fpr: float | None = None, min_pixels: int = 1,
                 on_done: Callable[[TileOutcome], None] | None = None) -> BatchResult:
    """Detections of many score rasters in one process: ``outdir/NAME{suffix}`` each (``detect``); a bad raster
    is recorded and the others go on (``pipeline.batch.run_tiles``)."""
    driver_of(f"x{suffix}")  # an unknown format stops before any raster is read
    jobs = plan_outputs(scores, {"detections": outdir}, suffix=suffix)

    def one(job: TileJob) -> tuple[Path, int]:
        out = job.outputs["detections"]
        return out, detect(job.tile, out, min_rarity=min_rarity, fpr=fpr, min_pixels=min_pixels)

    return run_tiles(jobs, one, on_done)


def driver_of(path: str | Path) -> str:
    """The OGR driver for an output path's extension; InputError for another one."""
    ext = Path(path).suffix.lower()
    if ext not in DRIVERS:
        raise InputError(f"{path}: unknown vector format; use .gpkg, .geojson or .fgb")
    return DRIVERS[ext]


def write(out: str | Path, rows: Sequence[dict[str, Any]], wkb: Sequence[bytes], crs_wkt: str | None,
          sources: dict[str, Any], min_rarity: float | None, driver: str | None = None) -> Path:
    """Write detection rows and their WKB polygons to ``out`` through a temporary (+ the default style in a GPKG)."""
    import pyogrio
    import pyogrio.raw

    from pipeline.styles import add_gpkg_style

    driver = driver or driver_of(out)
    fields = [name for name, _ in FIELDS]
    data = []
    for name, kind in FIELDS:
        values = [r[name] for r in rows]
        data.append(np.array(values, dtype=object if kind == "U" else kind) if values else
                    np.array([], dtype=object if kind == "U" else kind))
    meta = {SOURCES_KEY: json.dumps(sources)}
    if min_rarity is not None:
        meta["rsvae_min_rarity"] = str(min_rarity)
    with atomic_path(out) as tmp:
        try:
            pyogrio.raw.write(str(tmp), np.array(list(wkb), dtype=object), data, fields, layer=LAYER, driver=driver,
                          crs=crs_wkt, geometry_type="MultiPolygon",
                          layer_metadata=meta if driver == "GPKG" else None, **_OPTIONS.get(driver, {}))
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
            raise OutputError(f"{out}: cannot write detections ({exc})") from None
        if driver == "GPKG":
            add_gpkg_style(tmp, LAYER)
    return Path(out)


def read(path: str | Path) -> tuple[list[dict[str, Any]], np.ndarray, str | None, dict[str, Any]]:
    """Rows (dicts of the attributes), WKB geometries, CRS (WKT) and sources of a detections file."""
    import pyogrio
    import pyogrio.raw

    if not Path(path).is_file():
        raise InputError(f"{path}: detections file not found")
    try:
        meta, _, wkb, data = pyogrio.raw.read(str(path), layer=LAYER if driver_of(path) == "GPKG" else None)
        layer_meta = pyogrio.read_info(str(path), layer=LAYER if driver_of(path) == "GPKG" else None)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise InputError(f"{path}: cannot read detections ({exc})") from None
    names = list(meta["fields"])
    missing = [n for n, _ in FIELDS if n not in names]
    if missing and len(wkb):  # an empty GeoJSON has no fields to read back: it is an empty detections file
        raise InputError(f"{path}: not an rsvae detections layer (missing {', '.join(missing)})")
    rows = [{n: _plain(data[names.index(n)][i]) for n, _ in FIELDS} for i in range(len(wkb))]
    md = (layer_meta.get("layer_metadata") or {}) if isinstance(layer_meta, dict) else {}
    try:
        sources = json.loads(md.get(SOURCES_KEY, "{}"))
    except json.JSONDecodeError:
        sources = {}
    return rows, wkb, meta.get("crs"), sources


def _plain(v: Any) -> Any:
    """A numpy scalar as a plain Python value."""
    return v.item() if isinstance(v, np.generic) else v


def merge(inputs: Sequence[str | Path], out: str | Path) -> int:
    """Merge detection files (one per tile, same CRS) into one layer, ranked again across all; returns the count."""
    from rasterio.crs import CRS

    rows: list[dict[str, Any]] = []
    wkb: list[bytes] = []
    sources: dict[str, Any] = {}
    crs: str | None = None
    for path in inputs:
        r, g, c, s = read(path)
        if c and crs and CRS.from_user_input(c) != CRS.from_user_input(crs):
            raise InputError(f"{path}: CRS differs from the other detection files; reproject before merging")
        crs = crs or c
        rows.extend(r)
        wkb.extend(g)
        sources.update(s)
    order = sorted(range(len(rows)), key=lambda i: (-rows[i]["peak_rarity"], -rows[i]["peak_score"],
                                                    rows[i]["tile"], rows[i]["rank"]))
    ranked = [dict(rows[i], rank=n + 1) for n, i in enumerate(order)]
    crs_wkt = CRS.from_user_input(crs).to_wkt() if crs else None
    write(out, ranked, [wkb[i] for i in order], crs_wkt, sources, None)
    return len(ranked)
