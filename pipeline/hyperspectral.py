"""Imaging-spectrometer products as stack bands: which file holds which band, each band's centre wavelength and
FWHM in nm, the product's bad bands and quality layers.

EnMAP L2A folders (``*-SPECTRAL_IMAGE.TIF`` with ``*-METADATA.XML``), ENVI files (AVIRIS-NG and others: a ``.hdr``
with ``wavelength``, ``fwhm``, ``bbl``) are read by GDAL where they lie; EMIT L2A reflectance (NetCDF-4) and
PRISMA L2D (HDF-5 ``.he5``) hold their cubes in HDF-5 layouts GDAL cannot stack band by band (EMIT on a swath grid
with a geometry lookup table, PRISMA as row x band x column cubes), so they are read with h5py and written once as
a GeoTIFF (``SCENE.cube.tif``) on the product's map grid, which the stack then references.

Bands are named ``B1`` ... ``BN`` in the product's wavelength order. Dropped by default: the product's bad bands
(``good_wavelengths`` 0, ``bbl`` 0, PRISMA's band flags 0) and the water-vapour absorption windows
(``WATER_VAPOUR``); ``keep_all`` keeps them. Bands without a wavelength (PRISMA's unused slots) are never kept.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.products import MaskRule, Source, normal_name

#: Atmospheric water-vapour absorption windows in nm: bands centred here are noise over land.
WATER_VAPOUR = ((1340.0, 1460.0), (1790.0, 1960.0))
#: ENVI data file extensions tried beside a ``.hdr`` (AVIRIS-NG's ``*_img`` has none).
ENVI_DATA = ("", ".img", ".bsq", ".bil", ".bip", ".dat", ".raw")
#: Output rows per block when writing a cube (a PRISMA strip: 64 rows x 239 bands x 1000 columns x 2 bytes).
CUBE_ROWS = 64
#: GDAL block cache (MiB) while writing a cube: a few rows of band-interleaved tiles.
CUBE_CACHE_MB = 64


@dataclass(frozen=True)
class SpectralBand:
    """One band of a product: its position in the product's image (1-based), name, centre wavelength and FWHM
    in nm, and whether the product marks it good."""

    index: int
    name: str
    wavelength: float
    fwhm: float | None = None
    good: bool = True


@dataclass
class Hyperspectral:
    """A recognised imaging-spectrometer product.

    ``image`` is the raster GDAL reads the bands from where it lies (EnMAP, ENVI); None when a cube is written
    first (EMIT, PRISMA: ``write_cube``). ``quality`` are the product's default masks.
    """

    path: Path
    sensor: str
    bands: list[SpectralBand]
    image: str | None = None
    quality: list[MaskRule] = field(default_factory=list)
    nodata: float | None = None
    dtype: str = "float32"
    #: EMIT: the L2A mask product beside the reflectance (``EMIT_L2A_MASK_*.nc``): its aggregate flag masks pixels
    companion: Path | None = None

    def choose(self, names: Sequence[str] | None = None, keep_all: bool = False) -> list[SpectralBand]:
        """The bands to stack: ``names`` in that order, else every good band outside the water-vapour windows
        (``keep_all``: every band with a wavelength)."""
        if names:
            by_name = {normal_name(b.name): b for b in self.bands}
            missing = [n for n in names if normal_name(n) not in by_name]
            if missing:
                raise InputError(f"{self.path}: {self.sensor} product has no band {missing[0]!r} "
                                 f"(it has B1 to B{len(self.bands)})")
            return [by_name[normal_name(n)] for n in names]
        chosen = [b for b in self.bands if keep_all or (b.good and not in_water_vapour(b.wavelength))]
        if not chosen:
            raise InputError(f"{self.path}: every band of the {self.sensor} product is bad or in a water-vapour "
                             "window; choose with --bands or --keep-all-bands")
        return chosen


def in_water_vapour(wavelength: float) -> bool:
    """Whether a centre wavelength (nm) lies in a water-vapour absorption window."""
    return any(lo <= wavelength <= hi for lo, hi in WATER_VAPOUR)


def _nm(values: Sequence[float], units: str | None) -> list[float]:
    """Wavelengths in nm from the product's units (micrometres when said so, or when every value is below 100)."""
    vals = [float(v) for v in values]
    micro = (units or "").strip().lower() in ("micrometers", "micrometres", "um", "µm", "microns") or (
        not units and vals and max(vals) < 100)
    return [v * 1000.0 for v in vals] if micro else vals


def _named(wavelengths: Sequence[float], fwhm: Sequence[float] | None, good: Sequence[bool],
           index: Sequence[int] | None = None) -> list[SpectralBand]:
    """Bands named B1...BN in wavelength order (ties keep the product's order)."""
    index = list(index) if index is not None else list(range(1, len(wavelengths) + 1))
    order = sorted(range(len(wavelengths)), key=lambda i: (wavelengths[i], i))
    return [SpectralBand(index[i], f"B{k}", float(wavelengths[i]), float(fwhm[i]) if fwhm is not None else None,
                         bool(good[i])) for k, i in enumerate(order, start=1)]


# --------------------------------------------------------------------------------------------- recognising

def recognise(inputs: Sequence[str]) -> Hyperspectral | None:
    """The hyperspectral product among ``inputs`` (one folder or file), or None when it is none of them."""
    if len(inputs) != 1:
        return None
    path = Path(inputs[0])
    if path.is_dir():
        return _enmap(path)
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if suffix == ".nc":
        return _emit(path)
    if suffix in (".he5", ".h5"):
        return _prisma(path)
    header = _envi_header(path)
    return _envi(path, header) if header is not None else None


def _first(folder: Path, pattern: str) -> Path | None:
    found = sorted(p for p in folder.iterdir() if re.search(pattern, p.name, re.I))
    return found[0] if found else None


def _enmap(folder: Path) -> Hyperspectral | None:
    """An EnMAP L2A folder: the spectral image, its band table in METADATA.XML, cloud and shadow masks."""
    image = _first(folder, r"SPECTRAL_IMAGE\.(tif|tiff|geotiff|bsq|bil|bip|jp2)$")
    if image is None:
        return None
    meta = _first(folder, r"METADATA\.XML$")
    if meta is None:
        raise InputError(f"{folder}: EnMAP spectral image without its *-METADATA.XML (the band wavelengths)")
    try:
        root = ET.parse(meta).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputError(f"{meta}: not readable XML ({exc})") from None
    rows = []
    for b in root.iter("bandID"):
        try:
            rows.append((int(b.get("number")), float(b.findtext("wavelengthCenterOfBand")),
                         float(b.findtext("FWHMOfBand") or "nan")))
        except (TypeError, ValueError):
            raise InputError(f"{meta}: bandID {b.get('number')!r} without a number or a wavelength") from None
    if not rows:
        raise InputError(f"{meta}: no bandCharacterisation/bandID entries (band wavelengths)")
    rows.sort()
    index, wl, fw = zip(*rows, strict=True)
    quality = [MaskRule(str(p), label, values=(1,)) for label, pat in
               (("cloud", r"QL_QUALITY_CLOUD\.tif$"), ("cloud shadow", r"QL_QUALITY_CLOUDSHADOW\.tif$"))
               if (p := _first(folder, pat)) is not None]
    return Hyperspectral(folder, "EnMAP L2A", _named(wl, fw, [True] * len(wl), index), image=str(image),
                         quality=quality)


def _h5(path: Path) -> Any:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable NetCDF-4/HDF-5 file ({exc})") from None


def _emit(path: Path) -> Hyperspectral | None:
    """EMIT L2A reflectance: ``reflectance`` (downtrack, crosstrack, bands), ``sensor_band_parameters``
    (wavelengths, fwhm, good_wavelengths) and the ``location`` group's GLT."""
    with _h5(path) as f:
        if "reflectance" not in f or "sensor_band_parameters" not in f:
            return None
        for need in ("sensor_band_parameters/wavelengths", "location/glt_x", "location/glt_y"):
            if need not in f:
                raise InputError(f"{path}: EMIT reflectance without {need}")
        sbp = f["sensor_band_parameters"]
        wl = sbp["wavelengths"][()]
        if len(wl) != f["reflectance"].shape[2]:
            raise InputError(f"{path}: {len(wl)} wavelengths for {f['reflectance'].shape[2]} reflectance bands")
        fw = sbp["fwhm"][()] if "fwhm" in sbp else None
        good = sbp["good_wavelengths"][()] != 0 if "good_wavelengths" in sbp else np.ones(len(wl), bool)
        fill = f["reflectance"].attrs.get("_FillValue", -9999.0)
        fill = float(np.ravel(fill)[0])
    mask = path.with_name(path.name.replace("_RFL_", "_MASK_"))
    return Hyperspectral(path, "EMIT L2A", _named(list(wl), fw, list(good)), nodata=fill,
                         companion=mask if mask != path and mask.is_file() else None)


#: Where PRISMA L2D keeps its cubes, and the root attributes with their wavelengths, FWHM and band flags.
PRISMA_FIELDS = "HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields"
PRISMA_PARTS = (("VNIR_Cube", "List_Cw_Vnir", "List_Fwhm_Vnir", "List_Cw_Vnir_Flags"),
                ("SWIR_Cube", "List_Cw_Swir", "List_Fwhm_Swir", "List_Cw_Swir_Flags"))


def _prisma(path: Path) -> Hyperspectral | None:
    """PRISMA L2D: VNIR and SWIR cubes (rows, bands, cols), wavelengths and flags in the file's attributes.
    Band ``index`` counts VNIR's bands first, then SWIR's; slots with wavelength 0 (unused) are left out."""
    with _h5(path) as f:
        if PRISMA_FIELDS not in f:
            return None
        wl, fw, good, index = [], [], [], []
        offset = 0
        for cube, cw, fwhm, flags in PRISMA_PARTS:
            if cube not in f[PRISMA_FIELDS] or cw not in f.attrs:
                raise InputError(f"{path}: PRISMA L2D file without {cube} or its attribute {cw}")
            n = f[PRISMA_FIELDS][cube].shape[1]
            c = np.asarray(f.attrs[cw], float)
            if c.size != n:
                raise InputError(f"{path}: {cw} has {c.size} wavelengths for {n} {cube} bands")
            w = np.asarray(f.attrs[fwhm], float) if fwhm in f.attrs else np.full(n, np.nan)
            ok = np.asarray(f.attrs[flags]) != 0 if flags in f.attrs else np.ones(n, bool)
            for i in range(n):
                if c[i] > 0:
                    wl.append(c[i])
                    fw.append(w[i])
                    good.append(ok[i])
                    index.append(offset + i + 1)
            offset += n
        missing = [a for a in ("Epsg_Code", "Product_ULcorner_easting", "Product_ULcorner_northing")
                   if a not in f.attrs]
        if missing:
            raise InputError(f"{path}: PRISMA L2D file without the map attribute {missing[0]}")
    return Hyperspectral(path, "PRISMA L2D", _named(wl, fw, good, index), nodata=0.0, dtype="uint16")


def _envi_header(path: Path) -> Path | None:
    """The ENVI header of ``path`` (a data file beside ``NAME.hdr`` or ``NAME.EXT.hdr``), or None."""
    if path.suffix.lower() == ".hdr":
        return path
    for candidate in (path.with_suffix(".hdr"), path.with_name(path.name + ".hdr")):
        if candidate.is_file() and candidate.read_bytes()[:4] == b"ENVI":
            return candidate
    return None


def _envi_list(value: str | None) -> list[str] | None:
    """The items of an ENVI header list as GDAL reports it (``{1, 0, 1}``)."""
    if value is None:
        return None
    return [v.strip() for v in value.strip().strip("{}").split(",") if v.strip()]


def _envi(path: Path, header: Path) -> Hyperspectral | None:
    """An ENVI file with wavelengths (opened by GDAL's ENVI driver; the header's lists read from its ENVI
    metadata domain). A header without wavelengths is no spectrometer product: None."""
    from pipeline.raster import open_raster

    if path == header:
        data = next((header.with_suffix(ext) for ext in ENVI_DATA if header.with_suffix(ext).is_file()
                     and header.with_suffix(ext) != header), None)
        if data is None:
            raise InputError(f"{header}: no ENVI data file beside the header (tried {', '.join(ENVI_DATA[1:])})")
        path = data
    with open_raster(path) as ds:
        envi = ds.tags(ns="ENVI")
        count, nodata = ds.count, ds.nodata
    wl = _envi_list(envi.get("wavelength"))
    if not wl:
        return None
    if len(wl) != count:
        raise InputError(f"{header}: {len(wl)} wavelengths for {count} bands")
    try:
        nm = _nm([float(w) for w in wl], envi.get("wavelength_units"))
        fw = _envi_list(envi.get("fwhm"))
        fwhm = _nm([float(w) for w in fw], envi.get("wavelength_units")) if fw and len(fw) == count else None
        bbl = _envi_list(envi.get("bbl"))
        good = [float(b) != 0 for b in bbl] if bbl and len(bbl) == count else [True] * count
    except ValueError as exc:
        raise InputError(f"{header}: unreadable wavelength, fwhm or bbl list ({exc})") from None
    return Hyperspectral(path, "ENVI", _named(nm, fwhm, good), image=str(path), nodata=nodata)


# --------------------------------------------------------------------------------------------- cubes

def quality_path(output: str | Path) -> Path:
    """The EMIT mask product's aggregate flag on the map grid: ``SCENE.quality.tif`` beside ``SCENE.vrt``."""
    output = Path(output)
    return output.with_name(output.stem + ".quality.tif")


#: The band of EMIT's L2A mask product that flags unusable pixels (cloud, cirrus, dilated cloud, spacecraft).
EMIT_FLAG = "Aggregate Flag"


def write_emit_mask(product: Hyperspectral, path: Path) -> Path:
    """Write the EMIT mask product's aggregate flag (1 = unusable) through the reflectance's GLT onto its map
    grid as a uint8 GeoTIFF at ``path`` (0 elsewhere: outside the swath the cube is nodata anyway)."""
    from pipeline.cog_writer import write_raster

    crs, transform, width, height = _emit_grid(product)
    src = product.companion
    with _h5(src) as f:
        names = f["sensor_band_parameters/mask_bands"][()] if "sensor_band_parameters/mask_bands" in f else []
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        wanted = [i for i, n in enumerate(names) if n.strip().lower() == EMIT_FLAG.lower()]
        if "mask" not in f or not wanted:
            raise InputError(f"{src}: EMIT mask product without a 'mask' band named {EMIT_FLAG!r} "
                             "(sensor_band_parameters/mask_bands)")
        flag = f["mask"][:, :, wanted[0]]
    with _h5(product.path) as f:
        if flag.shape != f["reflectance"].shape[:2]:
            raise InputError(f"{src}: mask of {flag.shape} pixels for a reflectance swath of "
                             f"{f['reflectance'].shape[:2]}")
        gx, gy, valid = _glt(f)
    out = np.zeros(height * width, np.uint8)
    out[valid] = flag[gy[valid] - 1, gx[valid] - 1] >= 1
    write_raster(path, out.reshape(1, height, width), crs=crs, transform=transform, descriptions=[EMIT_FLAG])
    return path


def _glt(f: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An open EMIT file's GLT, flat: (glt_x, glt_y, where they name a swath pixel)."""
    rows, cols = f["reflectance"].shape[:2]
    gx = f["location/glt_x"][()].astype(np.int64).ravel()
    gy = f["location/glt_y"][()].astype(np.int64).ravel()
    return gx, gy, (gx > 0) & (gy > 0) & (gx <= cols) & (gy <= rows)


def cube_path(output: str | Path) -> Path:
    """The GeoTIFF an EMIT or PRISMA stack's bands are written to: ``SCENE.cube.tif`` beside ``SCENE.vrt``."""
    output = Path(output)
    return output.with_name(output.stem + ".cube.tif")


def band_notes(product: Hyperspectral, chosen: Sequence[SpectralBand], names: Sequence[str] | None) -> list[str]:
    """The line telling the user which bands a default choice left out (none when bands were named or all kept)."""
    if names or len(chosen) == len(product.bands):
        return []
    bad = sum(not b.good for b in product.bands)
    vapour = sum(b.good and in_water_vapour(b.wavelength) for b in product.bands)
    return [f"left out {len(product.bands) - len(chosen)} of {len(product.bands)} bands ({bad} marked bad "
            f"by the product, {vapour} in water-vapour windows; --keep-all-bands keeps them)"]


def plan(product: Hyperspectral, output: str | Path, names: Sequence[str] | None = None, keep_all: bool = False,
         quality: bool = True) -> tuple[list[Any], list[MaskRule], list[str]]:
    """The stack's sources (``products.Source``) and masks for ``product``, and notes for the user (bands dropped).
    EMIT and PRISMA bands are first written to ``cube_path(output)``."""

    chosen = product.choose(names, keep_all)
    notes = band_notes(product, chosen, names)
    if product.image is not None:
        sources = [Source(product.image, b.index, b.name, b.wavelength) for b in chosen]
    else:
        cube = cube_path(output)
        write_cube(product, chosen, cube)
        sources = [Source(str(cube), k, b.name, b.wavelength) for k, b in enumerate(chosen, start=1)]
    rules = list(product.quality) if quality else []
    if quality and product.companion is not None:
        rules.append(MaskRule(str(write_emit_mask(product, quality_path(output))), EMIT_FLAG, values=(1,)))
    return sources, rules, notes


def write_cube(product: Hyperspectral, bands: Sequence[SpectralBand], path: str | Path,
               swath: bool = False) -> tuple[Any, Any, int, int]:
    """Write ``bands`` of an EMIT (orthorectified through its GLT) or PRISMA product as a GeoTIFF on the
    product's map grid (tiled, band-interleaved, uncompressed: ``RasterWriter(cog=False)``): band descriptions B1..., ``wavelength`` and ``fwhm`` tags in nm, the product's fill as
    nodata. Atomic (``RasterWriter``); memory bounded by one block of rows (EMIT: one block of swath rows).
    ``swath`` (EMIT only): on the sensor's swath grid instead, without georeference. Returns the grid written
    (crs, transform, width, height)."""
    import rasterio

    from pipeline.cog_writer import RasterWriter

    emit = product.sensor.startswith("EMIT")
    if swath and not emit:
        raise InputError(f"{product.path}: --swath is for EMIT products (a {product.sensor} is on a map grid)")
    if swath:
        grid, reader = _swath_grid(product), _swath_blocks
    else:
        grid, reader = (_emit_grid(product), _emit_blocks) if emit else (_prisma_grid(product), _prisma_blocks)
    crs, transform, width, height = grid
    tags = [{"wavelength": f"{b.wavelength:g}", **({"fwhm": f"{b.fwhm:g}"} if b.fwhm == b.fwhm and b.fwhm
                                                   else {})} for b in bands]
    # GDAL's block cache bounded while writing (its default, 5 % of RAM, held 1.2 GiB of an EMIT-size cube)
    with rasterio.Env(GDAL_CACHEMAX=CUBE_CACHE_MB), RasterWriter(
            path, width=width, height=height, count=len(bands), dtype=product.dtype, crs=crs,
            transform=transform if crs is not None else None, nodata=product.nodata,
            descriptions=[b.name for b in bands], band_tags=tags,
            tags={"rsvae_product": f"{product.sensor} {product.path.name}"}, cog=False) as w:
        for window, data in reader(product, bands, width, height, Path(path).resolve().parent):
            w.write(data, window)
    return grid


def _swath_grid(product: Hyperspectral) -> tuple[Any, Any, int, int]:
    from rasterio.transform import Affine

    with _h5(product.path) as f:
        rows, cols, _ = f["reflectance"].shape
    return None, Affine.identity(), int(cols), int(rows)


def _swath_blocks(product: Hyperspectral, bands: Sequence[SpectralBand], width: int, height: int, scratch: Path):
    """(window, block) of EMIT reflectance as the sensor saw it (downtrack rows, crosstrack columns)."""
    from rasterio.windows import Window

    sel = np.array([b.index - 1 for b in bands])
    with _h5(product.path) as f:
        refl = f["reflectance"]
        for r0 in range(0, height, CUBE_ROWS):
            r1 = min(height, r0 + CUBE_ROWS)
            yield Window(0, r0, width, r1 - r0), np.ascontiguousarray(refl[r0:r1][:, :, sel].transpose(2, 0, 1))


def _emit_grid(product: Hyperspectral) -> tuple[Any, Any, int, int]:
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    with _h5(product.path) as f:
        gt = f.attrs.get("geotransform")
        wkt = f.attrs.get("spatial_ref")
        shape = f["location/glt_x"].shape
    if gt is None or wkt is None:
        raise InputError(f"{product.path}: EMIT file without the geotransform or spatial_ref attribute")
    wkt = wkt.decode() if isinstance(wkt, bytes) else str(wkt)
    return CRS.from_wkt(wkt), Affine.from_gdal(*[float(v) for v in gt]), int(shape[1]), int(shape[0])


def _emit_blocks(product: Hyperspectral, bands: Sequence[SpectralBand], width: int, height: int, scratch: Path):
    """(window, block) of the orthorectified cube: each map pixel takes the swath pixel its GLT names (1-based
    row glt_y, column glt_x; 0 = none). Swath rows are read CUBE_ROWS at a time and scattered into the map grid
    kept in an unnamed temporary file in ``scratch``, mapped afresh for each block (``np.memmap``) so that only
    the pages one block touches are resident: memory stays a few blocks whatever the scene's size or the swath's
    rotation. Map pixels no swath pixel reaches get the product's fill value."""
    import tempfile

    from rasterio.windows import Window

    sel = np.array([b.index - 1 for b in bands])
    shape = (height * width, len(sel))
    with _h5(product.path) as f:
        refl = f["reflectance"]
        gx, gy, valid = _glt(f)
        targets = np.flatnonzero(valid)
        order = targets[np.argsort(gy[targets], kind="stable")]
        rows = gy[order] - 1
        with tempfile.TemporaryFile(dir=scratch) as tmp:
            tmp.truncate(shape[0] * shape[1] * 4)  # sparse: only scattered pixels take disk space
            for y0 in range(0, refl.shape[0], CUBE_ROWS):
                lo, hi = np.searchsorted(rows, [y0, y0 + CUBE_ROWS])
                if lo == hi:
                    continue
                slab = refl[y0:y0 + CUBE_ROWS][:, :, sel]
                pick = order[lo:hi]
                grid = np.memmap(tmp, np.float32, "r+", shape=shape)
                grid[pick] = slab[gy[pick] - 1 - y0, gx[pick] - 1]
                del grid  # unmapped: its pages leave this process's memory (the file keeps them)
            for r0 in range(0, height, CUBE_ROWS):
                r1 = min(height, r0 + CUBE_ROWS)
                grid = np.memmap(tmp, np.float32, "r", shape=shape)
                block = np.array(grid[r0 * width:r1 * width])
                del grid
                block[~valid[r0 * width:r1 * width]] = product.nodata
                yield Window(0, r0, width, r1 - r0), np.ascontiguousarray(
                    block.reshape(r1 - r0, width, len(sel)).transpose(2, 0, 1))


def _prisma_grid(product: Hyperspectral) -> tuple[Any, Any, int, int]:
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    with _h5(product.path) as f:
        a = f.attrs
        rows, _, cols = f[PRISMA_FIELDS]["VNIR_Cube"].shape
        ul_x, ul_y = float(np.ravel(a["Product_ULcorner_easting"])[0]), float(
            np.ravel(a["Product_ULcorner_northing"])[0])
        if "Product_LRcorner_easting" in a:
            res = (float(np.ravel(a["Product_LRcorner_easting"])[0]) - ul_x) / cols
        else:
            res = 30.0
        epsg = int(np.ravel(a["Epsg_Code"])[0])
    if not res > 0:
        raise InputError(f"{product.path}: PRISMA corners give no positive pixel size")
    return CRS.from_epsg(epsg), from_origin(ul_x, ul_y, res, res), int(cols), int(rows)


def _prisma_blocks(product: Hyperspectral, bands: Sequence[SpectralBand], width: int, height: int,
                   scratch: Path):
    """(window, block) of the PRISMA cube: rows of both cubes (rows, bands, cols), the chosen bands in order."""
    from rasterio.windows import Window

    with _h5(product.path) as f:
        fields = f[PRISMA_FIELDS]
        vnir, swir = fields["VNIR_Cube"], fields["SWIR_Cube"]
        nv = vnir.shape[1]
        for r0 in range(0, height, CUBE_ROWS):
            r1 = min(height, r0 + CUBE_ROWS)
            v, s = vnir[r0:r1], swir[r0:r1]
            block = np.empty((len(bands), r1 - r0, width), product.dtype)
            for k, b in enumerate(bands):
                i = b.index - 1
                block[k] = v[:, i, :] if i < nv else s[:, i - nv, :]
            yield Window(0, r0, width, r1 - r0), block
