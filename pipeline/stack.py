"""Stacking: the bands of one scene (band files at several resolutions, a product folder) on one grid, as a VRT
that references the inputs (no pixels copied) or a materialised COG, with cloud and quality masks.

A VRT is written by hand with xml.etree (rasterio has no builder for multi-file stacks): one ``VRTRasterBand`` per
stack band with a ``ComplexSource`` that maps the input's pixels onto the grid (``resampling`` attribute, paths
relative to the VRT). An input in another CRS than the grid is embedded as an inline warped VRT (GDAL's own
``VRTWarpedDataset`` XML, made by rasterio's WarpedVRT), so the stack stays one file. Masks (a product's quality
layer, ``--mask``) cannot be expressed in a VRT without code, so they are computed once into a small uint8 COG
beside it (``SCENE.mask.tif``, 0 = masked) that the VRT names as its dataset mask: every command then sees masked
pixels as invalid, as it sees a GeoTIFF's own mask.
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import Affine, array_bounds
from rasterio.windows import Window

from pipeline.cog_writer import RasterWriter, check_distinct
from pipeline.errors import InputError, OutputError, UsageConflict
from pipeline.files import atomic_path
from pipeline.names import gdal_name, is_dataset_name, tile_name
from pipeline.products import MaskRule, Source
from pipeline.raster import GDAL_ERRORS, gdal_message, info_of, open_raster, read_env, representable

RESAMPLING = ("nearest", "bilinear", "cubic", "cubicspline", "lanczos", "average", "mode")
#: Block size the VRT declares: the windows every command streams the stack by.
VRT_BLOCK = 512
#: Rows and columns of one window when computing masks or materialising a COG (multiples of the COG's tiles).
WRITE_WINDOW = (256, 2048)
#: Largest pixel-interleaved 256 x 256 tile (bytes, all bands) a materialised stack is written as a COG with;
#: beyond it (more than 128 float32 or 256 int16 bands: a hyperspectral stack) GDAL's overview and COG steps
#: slow down hundreds of times (512 x 512 float32: 120 bands 22 s, 240 bands 529 s), so the stack is written
#: as a plain tiled, band-interleaved GeoTIFF instead (``RasterWriter(cog=False)``: 1.5 s for 240 bands).
COG_TILE_LIMIT = 32 << 20


@dataclass(frozen=True)
class Grid:
    """The stack's pixel grid."""

    crs: Any
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return west, south, east, north


@dataclass
class StackSummary:
    """What ``stack`` wrote."""

    output: str
    bands: list[str]
    grid: Grid
    mask_file: str | None = None
    #: pixels each mask removed (by its label), counted on the stack's grid
    masked: dict[str, int] = field(default_factory=dict)
    product: str | None = None
    #: what the user should know of the band choice (a hyperspectral product's dropped bands)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Input:
    """An input file as opened once: its description and the stack bands it gives."""

    path: str
    info: Any
    bounds: tuple[float, float, float, float]


# --------------------------------------------------------------------------------------------- inputs

def plan_inputs(inputs: Sequence[str], bands: Sequence[str] | None = None,
                quality: bool = True) -> tuple[list[Source], list[MaskRule], str | None]:
    """The stack's bands and the product's quality-mask rule: one product folder or STAC item, or band files in
    order.

    A folder is recognised from its file names (``product_folders.recognise``), an item from its assets
    (``stac.item_product``); files give all their bands in order,
    named after the sensor band their file name shows (``*_B02.tif`` -> ``B02``, 490 nm), else after their band
    descriptions or file names; ``bands`` then picks among those names.
    """
    from pipeline import product_folders, products, stac

    if not inputs:
        raise InputError("no inputs to stack")
    folders = [p for p in inputs if (not is_dataset_name(p) and Path(p).is_dir()) or stac.is_item_name(p)]
    if folders:
        if len(inputs) > 1:
            raise InputError(f"{folders[0]}: a product folder or STAC item is stacked on its own; give one "
                             "folder, one item or band files")
        if stac.is_item_name(folders[0]):
            product = stac.item_product(folders[0])
        else:
            product = product_folders.recognise(folders[0])
        chosen = product.select(bands)
        sources = [Source(str(b.path), 1, b.name, b.wavelength) for b in chosen]
        q = product.quality
        rules = [replace(q, path=str(q.path))] if quality and q is not None else []
        return sources, rules, product.sensor
    sources = []
    for path in inputs:
        with open_raster(path) as ds:
            info = info_of(ds)
        sensor = products.band_of_file(path)
        for b in range(info.count):
            if sensor and info.count == 1:
                name, wl = sensor
            else:
                name = info.descriptions[b] or (tile_name(path) if info.count == 1 else f"{tile_name(path)}_{b + 1}")
                wl = info.wavelengths[b] if info.wavelengths else None
            sources.append(Source(str(path), b + 1, name, wl))
    if bands:  # by band name (description or sensor band), in the order given
        by_name = {products.normal_name(s.name): s for s in sources}
        missing = [b for b in bands if products.normal_name(b) not in by_name]
        if missing:
            raise InputError(f"{inputs[0]}: no band named {missing[0]!r} among the inputs' bands "
                             f"({', '.join(s.name for s in sources)})")
        sources = [by_name[products.normal_name(b)] for b in bands]
    return sources, [], None


def _open_inputs(paths: Sequence[str]) -> dict[str, _Input]:
    out = {}
    for path in dict.fromkeys(paths):
        with open_raster(path) as ds:
            info = info_of(ds)
            if info.crs is None or info.transform.is_identity:
                raise InputError(f"{path}: has no georeference, so it cannot be placed on a common grid")
            out[path] = _Input(path, info, tuple(ds.bounds))
    return out


# --------------------------------------------------------------------------------------------- the grid

def _model_crs(folder: Path) -> Any:
    from rasterio.crs import CRS

    try:
        meta = json.loads((folder / "model.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder}: not a readable model folder ({exc})") from None
    if not meta.get("crs"):
        raise InputError(f"{folder}: the model records no CRS (its training tiles had none)")
    return CRS.from_wkt(meta["crs"])


def _bounds_in(inp: _Input, crs: Any) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    if inp.info.crs == crs:
        return inp.bounds
    return transform_bounds(inp.info.crs, crs, *inp.bounds, densify_pts=21)


def _resolution_in(inp: _Input, crs: Any) -> float:
    """The input's pixel size on ``crs`` (its own when the CRS is the same; GDAL's suggestion when warped)."""
    from rasterio.warp import calculate_default_transform

    if inp.info.crs == crs and inp.info.transform.b == 0 and inp.info.transform.d == 0:
        return min(abs(inp.info.transform.a), abs(inp.info.transform.e))
    t, _, _ = calculate_default_transform(inp.info.crs, crs, inp.info.width, inp.info.height, *inp.bounds)
    return min(abs(t.a), abs(t.e))


def target_grid(inputs: Sequence[_Input], *, like: str | None = None, resolution: float | None = None) -> Grid:
    """The grid to stack on: ``like``'s (a raster), or the finest resolution (or ``resolution``) over the inputs'
    common extent, in the first input's CRS or a model's (``like`` = a model folder), aligned to the finest input."""
    if like is not None and not is_dataset_name(like) and Path(like).is_dir():
        crs = _model_crs(Path(like))
    elif like is not None:
        with open_raster(like) as ds:
            info = info_of(ds)
        if info.crs is None:
            raise InputError(f"{like}: has no CRS, so its grid cannot be matched")
        grid = Grid(info.crs, info.transform, info.width, info.height)
        for inp in inputs:
            if not _overlap(_bounds_in(inp, grid.crs), grid.bounds):
                raise InputError(f"{inp.path}: does not overlap {like}")
        return grid
    else:
        crs = inputs[0].info.crs
    res = {inp.path: _resolution_in(inp, crs) for inp in inputs}
    # inputs already on this CRS set the resolution; a warped input's pixel size is only GDAL's estimate
    native = [i for i in inputs if i.info.crs == crs] or list(inputs)
    finest = min(native, key=lambda i: res[i.path])
    step = float(resolution) if resolution else res[finest.path]
    west, south, east, north = _bounds_in(inputs[0], crs)
    for inp in inputs[1:]:
        w, s, e, n = _bounds_in(inp, crs)
        if not _overlap((west, south, east, north), (w, s, e, n)):
            raise InputError(f"{inp.path}: does not overlap {inputs[0].path}")
        west, south, east, north = max(west, w), max(south, s), min(east, e), min(north, n)
    # Align to the finest input's pixel grid where it is on this CRS (its pixels then map 1:1), else to multiples.
    t = finest.info.transform
    ox, oy = (t.c, t.f) if finest.info.crs == crs else (0.0, 0.0)
    eps = 1e-6
    left = ox + math.ceil((west - ox) / step - eps) * step
    top = oy - math.ceil((oy - north) / step - eps) * step
    width = math.floor((east - left) / step + eps)
    height = math.floor((top - south) / step + eps)
    if width < 1 or height < 1:
        raise InputError(f"{inputs[-1].path}: the inputs' common extent is smaller than one {step:g} pixel")
    return Grid(crs, Affine(step, 0, left, 0, -step, top), width, height)


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _covers(inp: _Input, grid: Grid) -> bool:
    """Whether ``inp`` (on the grid's CRS) covers the whole grid, to half a pixel."""
    if inp.info.crs != grid.crs:
        return False
    w, s, e, n = inp.bounds
    gw, gs, ge, gn = grid.bounds
    tol = 0.5 * abs(grid.transform.a)
    return w <= gw + tol and s <= gs + tol and e >= ge - tol and n >= gn - tol


# --------------------------------------------------------------------------------------------- the VRT

def _source_name(path: str, vrt_dir: Path | None) -> tuple[str, str]:
    """(name, relativeToVRT) of a source: relative to the VRT's folder for local files, else as given."""
    if is_dataset_name(path):
        return gdal_name(path), "0"
    full = os.path.abspath(path)
    if vrt_dir is None or os.path.commonpath([full, str(vrt_dir)]) == os.path.sep:
        return full, "0"  # nothing in common but the root: an absolute path survives moving the VRT better
    return os.path.relpath(full, vrt_dir), "1"


def _same_grid_family(inp: _Input, grid: Grid) -> bool:
    t = inp.info.transform
    return inp.info.crs == grid.crs and t.b == 0 and t.d == 0 and grid.transform.b == 0 and grid.transform.d == 0


def _warped_xml(inp: _Input, grid: Grid, resampling: str) -> str:
    """GDAL's VRTWarpedDataset XML of ``inp`` warped onto ``grid`` (its source by absolute path or name)."""
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy
    from rasterio.vrt import WarpedVRT

    name = inp.path if is_dataset_name(inp.path) else os.path.abspath(inp.path)
    with rasterio.Env(**read_env(name)), rasterio.open(name) as src, \
            WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                      resampling=Resampling[resampling]) as vrt, MemoryFile(ext=".vrt") as mem:
        copy(vrt, mem.name, driver="VRT")
        return mem.read().decode()


def build_vrt(sources: Sequence[Source], inputs: dict[str, _Input], grid: Grid, *, resampling: str,
              nodata: float | None, dtype: str, vrt_dir: Path | None, mask_file: str | None = None) -> str:
    """The stack's VRT XML: one band per source on ``grid``; paths relative to ``vrt_dir`` (absolute when None)."""
    # rasterio's public tables: numpy name -> GDAL type code -> GDAL type name
    from rasterio.dtypes import dtype_rev, typename_fwd

    root = ET.Element("VRTDataset", rasterXSize=str(grid.width), rasterYSize=str(grid.height))
    ET.SubElement(root, "SRS").text = grid.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in grid.transform.to_gdal())
    gdal_type = typename_fwd[dtype_rev[np.dtype(dtype).name]]
    warped: dict[str, str] = {}
    for i, src in enumerate(sources, start=1):
        inp = inputs[src.path]
        band = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(i),
                             blockXSize=str(VRT_BLOCK), blockYSize=str(VRT_BLOCK))
        ET.SubElement(band, "Description").text = src.name
        if nodata is not None:
            ET.SubElement(band, "NoDataValue").text = repr(float(nodata))
        if src.wavelength is not None:
            md = ET.SubElement(band, "Metadata")
            ET.SubElement(md, "MDI", key="wavelength").text = f"{src.wavelength:g}"
        cs = ET.SubElement(band, "ComplexSource", resampling=resampling)
        if _same_grid_family(inp, grid):
            name, rel = _source_name(src.path, vrt_dir)
            t = inp.info.transform
            x0 = (grid.transform.c - t.c) / t.a
            y0 = (grid.transform.f - t.f) / t.e
            xs = grid.width * grid.transform.a / t.a
            ys = grid.height * grid.transform.e / t.e
            ET.SubElement(cs, "SourceFilename", relativeToVRT=rel).text = name
            ET.SubElement(cs, "SourceBand").text = str(src.band)
            ET.SubElement(cs, "SrcRect", xOff=repr(x0), yOff=repr(y0), xSize=repr(xs), ySize=repr(ys))
        else:  # another CRS: the input warped onto the grid, inline (GDAL opens VRT XML given as a name)
            if src.path not in warped:
                warped[src.path] = _warped_xml(inp, grid, resampling)
            ET.SubElement(cs, "SourceFilename", relativeToVRT="0").text = warped[src.path]
            ET.SubElement(cs, "SourceBand").text = str(src.band)
            ET.SubElement(cs, "SrcRect", xOff="0", yOff="0", xSize=str(grid.width), ySize=str(grid.height))
        ET.SubElement(cs, "DstRect", xOff="0", yOff="0", xSize=str(grid.width), ySize=str(grid.height))
        if inp.info.nodata is not None and not math.isnan(inp.info.nodata):
            ET.SubElement(cs, "NODATA").text = repr(float(inp.info.nodata))
    if mask_file is not None:
        mb = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
        ss = ET.SubElement(mb, "SimpleSource")
        name, rel = _source_name(mask_file, vrt_dir)
        ET.SubElement(ss, "SourceFilename", relativeToVRT=rel).text = name
        ET.SubElement(ss, "SourceBand").text = "1"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


# --------------------------------------------------------------------------------------------- masks

def _windows(grid: Grid) -> Iterator[Window]:
    rows, cols = WRITE_WINDOW
    for r in range(0, grid.height, rows):
        for c in range(0, grid.width, cols):
            yield Window(c, r, min(cols, grid.width - c), min(rows, grid.height - r))


class _MaskReader:
    """The mask rules' layers, each resampled (nearest) onto the stack's grid; reads which pixels they remove."""

    def __init__(self, rules: Sequence[MaskRule], grid: Grid):
        self.rules = list(rules)
        self.grid = grid
        self.counts = {r.label: 0 for r in self.rules}
        self._stack: list[Any] = []

    def __enter__(self) -> _MaskReader:
        from contextlib import ExitStack

        from rasterio.vrt import WarpedVRT

        self._exit = ExitStack()
        try:
            for rule in self.rules:
                ds = self._exit.enter_context(open_raster(rule.path))
                vrt = self._exit.enter_context(WarpedVRT(
                    ds, crs=self.grid.crs, transform=self.grid.transform, width=self.grid.width,
                    height=self.grid.height, resampling=Resampling.nearest, src_nodata=ds.nodata, nodata=ds.nodata))
                self._stack.append(vrt)
        except BaseException:
            self._exit.close()
            raise
        return self

    def read(self, window: Window) -> np.ndarray:
        """Where any rule removes a pixel of ``window`` (bool, rows x cols); counts each rule's pixels."""
        bad = np.zeros((int(window.height), int(window.width)), bool)
        for rule, vrt in zip(self.rules, self._stack, strict=True):
            try:
                data = vrt.read(1, window=window)
            except GDAL_ERRORS as exc:
                raise InputError(f"{rule.path}: could not read the mask ({gdal_message(exc)})") from None
            hit = rule.bad(data)
            self.counts[rule.label] += int(hit.sum())
            bad |= hit
        return bad

    def __exit__(self, *exc: object) -> None:
        self._exit.close()


def _check_mask_covers(rule: MaskRule, grid: Grid) -> None:
    with open_raster(rule.path) as ds:
        info = info_of(ds)
        if info.crs is None:
            raise InputError(f"{rule.path}: the mask has no georeference, so it cannot be placed on the scene")
        inp = _Input(rule.path, info, tuple(ds.bounds))
    w, s, e, n = _bounds_in(inp, grid.crs)
    gw, gs, ge, gn = grid.bounds
    tol = 0.5 * abs(grid.transform.a)
    if w > gw + tol or s > gs + tol or e < ge - tol or n < gn - tol:
        raise InputError(f"{rule.path}: the mask does not cover the scene (mask x {w:.12g} to {e:.12g}, "
                         f"y {s:.12g} to {n:.12g}; scene x {gw:.12g} to {ge:.12g}, y {gs:.12g} to {gn:.12g})")


# --------------------------------------------------------------------------------------------- stack

def _stack_dtype(inputs: dict[str, _Input]) -> str:
    return str(np.result_type(*(np.dtype(i.info.dtype) for i in inputs.values())))


def _stack_nodata(inputs: dict[str, _Input], sources: Sequence[Source], dtype: str, need: bool) -> float | None:
    """The stack's nodata: the first input's that declares one (and fits the type); when one is ``need``ed (masks
    to burn into a materialised stack, parts of the grid no input covers) and none is declared, 0 for integers
    (Sentinel-2's and Landsat's fill) or -9999."""
    for src in sources:
        nd = inputs[src.path].info.nodata
        if nd is not None and not math.isnan(nd) and representable(nd, np.dtype(dtype)):
            return float(nd)
    if need:
        return 0.0 if np.issubdtype(np.dtype(dtype), np.integer) else -9999.0
    return None


def mask_path(output: str | Path) -> Path:
    """The mask file that goes with a stack VRT: ``SCENE.mask.tif`` beside ``SCENE.vrt``."""
    output = Path(output)
    return output.with_name(output.stem + ".mask.tif")


def stack(inputs: Sequence[str], output: str | Path, *, bands: Sequence[str] | None = None,
          resolution: float | None = None, like: str | None = None, resampling: str = "bilinear",
          mask: str | None = None, mask_values: Sequence[int] | None = None, mask_bits: Sequence[int] | None = None,
          quality_mask: bool = True, keep_all_bands: bool = False, swath: bool = False) -> StackSummary:
    """Put the bands of one scene on one grid: a VRT referencing the inputs (``.vrt``) or a COG (``.tif``).

    Every check (inputs readable and overlapping, bands present, masks covering) happens before anything is
    written; outputs go through a temporary and a rename. A hyperspectral product (``hyperspectral.recognise``)
    gives its good bands outside the water-vapour windows (``keep_all_bands``: all); an EMIT or PRISMA product's
    bands are first written as ``SCENE.cube.tif`` beside the output (removed again when the output is a .tif);
    ``swath`` writes an EMIT product's bands on its swath grid as the output .tif, without georeference.
    """
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".vrt", ".tif", ".tiff"):
        raise OutputError(f"{output}: the stack is written as .vrt (references the inputs) or .tif (a COG)")
    if resampling not in RESAMPLING:
        raise InputError(f"--resampling {resampling!r}: choose one of {', '.join(RESAMPLING)}")
    if resolution is not None and not resolution > 0:
        raise InputError(f"--resolution {resolution}: must be a positive number of CRS units")
    if mask is None and (mask_values or mask_bits):
        raise UsageConflict("--mask-values and --mask-bits need --mask FILE")
    if mask is not None and not (mask_values or mask_bits):
        raise UsageConflict(f"{mask}: say which pixels it masks with --mask-values V,... or --mask-bits B,...")
    from pipeline import hyperspectral

    notes: list[str] = []
    hyper = hyperspectral.recognise(inputs)
    if swath:
        if hyper is None:
            raise InputError(f"{inputs[0]}: --swath writes an EMIT product's swath as a .tif; give one EMIT .nc "
                             "and -o SCENE.tif")
        if suffix == ".vrt":
            raise UsageConflict(f"{output}: --swath writes an EMIT product's swath as a .tif; give -o SCENE.tif")
        if like or resolution or mask:
            raise UsageConflict(f"{inputs[0]}: --swath keeps the sensor's grid; --like, --resolution and --mask "
                             "do not apply to it")
        chosen = hyper.choose(bands, keep_all_bands)
        crs, transform, width, height = hyperspectral.write_cube(hyper, chosen, output, swath=True)
        return StackSummary(str(output), [b.name for b in chosen], Grid(crs, transform, width, height),
                            product=f"{hyper.sensor} (swath grid)", notes=hyperspectral.band_notes(hyper, chosen, bands))
    if hyper is not None:
        sources, rules, notes = hyperspectral.plan(hyper, output, bands, keep_all_bands, quality_mask)
        sensor = hyper.sensor
        if hyper.image is None and suffix != ".vrt":  # the cube is only a step towards the .tif
            try:
                return _stack_sources(sources, rules, sensor, notes, output, resolution=resolution, like=like,
                                      resampling=resampling, mask=mask, mask_values=mask_values,
                                      mask_bits=mask_bits)
            finally:
                hyperspectral.cube_path(output).unlink(missing_ok=True)
                hyperspectral.quality_path(output).unlink(missing_ok=True)
    else:
        sources, rules, sensor = plan_inputs(inputs, bands, quality_mask)
    return _stack_sources(sources, rules, sensor, notes, output, resolution=resolution, like=like,
                          resampling=resampling, mask=mask, mask_values=mask_values, mask_bits=mask_bits)


def _stack_sources(sources: list[Source], rules: list[MaskRule], sensor: str | None, notes: list[str],
                   output: Path, *, resolution: float | None, like: str | None, resampling: str, mask: str | None,
                   mask_values: Sequence[int] | None, mask_bits: Sequence[int] | None) -> StackSummary:
    """``stack`` once its bands and masks are known: the grid, the checks, the VRT or COG."""
    suffix = output.suffix.lower()
    if mask is not None:
        rules.append(MaskRule(str(mask), "--mask", tuple(mask_values or ()), tuple(mask_bits or ())))
    opened = _open_inputs([s.path for s in sources])
    check_distinct(sources[0].path, [output, mask_path(output) if rules and suffix == ".vrt" else None])
    for path in opened:
        if not is_dataset_name(path) and Path(path).resolve() == output.resolve():
            raise OutputError(f"{output}: is also an input; choose another output path")
    grid = target_grid(list(opened.values()), like=like, resolution=resolution)
    for rule in rules:
        _check_mask_covers(rule, grid)
    dtype = _stack_dtype(opened)
    summary = StackSummary(str(output), [s.name for s in sources], grid, product=sensor, notes=notes)
    # Where an input leaves part of the grid empty (a warped input's corners, a --like grid larger than it),
    # the stack needs a nodata value so those pixels are invalid, not zeros.
    gaps = any(not _same_grid_family(i, grid) or not _covers(i, grid) for i in opened.values())
    if suffix == ".vrt":
        nodata = _stack_nodata(opened, sources, dtype, need=gaps)
        mfile = None
        if rules:
            mfile = mask_path(output)
            summary.masked = _write_mask(rules, grid, mfile)
            summary.mask_file = str(mfile)
        xml = build_vrt(sources, opened, grid, resampling=resampling, nodata=nodata, dtype=dtype,
                        vrt_dir=output.resolve().parent, mask_file=str(mfile) if mfile else None)
        with atomic_path(output) as tmp:
            tmp.write_text(xml)
            _check_vrt(tmp, output)
    else:
        nodata = _stack_nodata(opened, sources, dtype, need=bool(rules) or gaps)
        summary.masked = _materialise(sources, opened, grid, rules, output, resampling=resampling,
                                      nodata=nodata, dtype=dtype)
    return summary


def _check_vrt(path: Path, output: Path) -> None:
    """Open a written VRT (from the folder it goes to, so relative paths resolve) and read one pixel of every
    band and of its mask: a VRT GDAL cannot read is never put in place."""
    try:
        with rasterio.Env(**read_env(path)), rasterio.open(path) as ds:
            w = Window(0, 0, 1, 1)
            ds.read(window=w)
            ds.read_masks(1, window=w)
    except GDAL_ERRORS as exc:
        raise InputError(f"{output}: the stack cannot be read back ({gdal_message(exc)})") from None


def _write_mask(rules: Sequence[MaskRule], grid: Grid, path: Path) -> dict[str, int]:
    """Write the uint8 mask COG (255 = valid, 0 = masked) on ``grid``; return each rule's removed pixels."""
    with _MaskReader(rules, grid) as reader, RasterWriter(
            path, width=grid.width, height=grid.height, count=1, dtype="uint8", crs=grid.crs,
            transform=grid.transform, descriptions=["valid"], resampling="NEAREST",
            tags={"rsvae_mask": "; ".join(f"{r.label} {r.path}" for r in rules)}) as w:
        for window in _windows(grid):
            bad = reader.read(window)
            w.write(np.where(bad, 0, 255).astype(np.uint8)[None], window)
        return dict(reader.counts)


def _materialise(sources: Sequence[Source], inputs: dict[str, _Input], grid: Grid, rules: Sequence[MaskRule],
                 output: Path, *, resampling: str, nodata: float | None, dtype: str) -> dict[str, int]:
    """Write the stack as a COG window by window (masked pixels set to nodata); return each mask's count."""
    from rasterio.io import MemoryFile

    xml = build_vrt(sources, inputs, grid, resampling=resampling, nodata=nodata, dtype=dtype, vrt_dir=None)
    with rasterio.Env(**read_env(xml)), MemoryFile(xml.encode(), ext=".vrt") as mem, mem.open() as vrt, \
            _MaskReader(rules, grid) as masks, RasterWriter(
                output, width=grid.width, height=grid.height, count=len(sources), dtype=dtype, crs=grid.crs,
                transform=grid.transform, nodata=nodata, descriptions=[s.name for s in sources],
                band_tags=[{"wavelength": f"{s.wavelength:g}"} if s.wavelength is not None else {}
                           for s in sources],
                cog=256 * 256 * len(sources) * np.dtype(dtype).itemsize <= COG_TILE_LIMIT) as w:
        for window in _windows(grid):
            try:
                data = vrt.read(window=window)
            except GDAL_ERRORS as exc:
                raise InputError(f"{sources[0].path}: could not read the inputs ({gdal_message(exc)})") from None
            if rules:
                data[:, masks.read(window)] = np.asarray(nodata, dtype=dtype)
            w.write(data, window)
        return dict(masks.counts)
