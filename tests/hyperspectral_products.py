"""Synthetic imaging-spectrometer products in their documented layouts, for the tests and the benchmark.

Each writer makes a small scene of smooth mixed spectra (three endmembers, random abundances, a little noise;
noise only in the water-vapour windows) in the product's own format: an ENVI cube with a header (AVIRIS-NG style),
an EnMAP L2A folder, an EMIT L2A reflectance NetCDF-4 (swath + GLT) and a PRISMA L2D HDF-5 file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import rasterio.windows
from rasterio.transform import from_origin

ORIGIN = (600000.0, 5000000.0)


def spectra(wavelengths: np.ndarray, rows: int, cols: int, seed: int = 0, row0: int = 0,
            height: int | None = None) -> np.ndarray:
    """(rows, cols, bands) float32 reflectance in 0..~0.6: smooth abundances of three endmembers. ``row0`` and
    ``height``: rows ``row0`` ... of a scene ``height`` rows high (a large scene made strip by strip)."""
    rng = np.random.default_rng(seed + row0)
    wl = np.asarray(wavelengths, float) / 1000.0
    ends = np.stack([0.05 + 0.25 * wl, 0.3 * np.exp(-((wl - 0.85) / 0.3) ** 2) + 0.05, 0.2 + 0.1 * np.sin(3 * wl)])
    y, x = np.mgrid[row0:row0 + rows, 0:cols] / max(height or rows, cols)
    ab = np.stack([1 + np.sin(4 * x + seed), 1 + np.cos(3 * y), 1 + np.sin(2 * (x + y))], -1)
    ab /= ab.sum(-1, keepdims=True)
    cube = ab @ ends + rng.normal(0, 0.004, (rows, cols, len(wl)))
    vapour = ((wl >= 1.34) & (wl <= 1.46)) | ((wl >= 1.79) & (wl <= 1.96))
    cube[..., vapour] = rng.uniform(0, 0.02, (rows, cols, int(vapour.sum())))
    return cube.astype(np.float32)


def wavelengths(n: int, lo: float = 400.0, hi: float = 2500.0) -> np.ndarray:
    return np.linspace(lo, hi, n)


def write_envi(folder: Path, size: int = 64, bands: int = 120, seed: int = 0) -> Path:
    """An AVIRIS-NG-style reflectance cube: ``ang..._rfl_img`` (BIL float32, no extension) and its ``.hdr`` with
    wavelength (micrometres), fwhm, bbl (two bad bands) and data ignore value -9999 (one corner of fill)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ang20190624t212151_rfl_img"
    wl = wavelengths(bands)
    cube = spectra(wl, size, size, seed).transpose(2, 0, 1)
    cube[:, :4, :4] = -9999
    with rasterio.open(path, "w", driver="ENVI", width=size, height=size, count=bands, dtype="float32",
                       crs="EPSG:32611", transform=from_origin(*ORIGIN, 5, 5), nodata=-9999,
                       INTERLEAVE="BIL") as ds:
        ds.write(cube)
    bbl = np.ones(bands, int)
    bbl[[0, bands - 1]] = 0
    header = path.with_name(path.name + ".hdr")
    header.write_text(header.read_text() + "wavelength units = Micrometers\n"
                      f"wavelength = {{{', '.join(f'{w / 1000:.5f}' for w in wl)}}}\n"
                      f"fwhm = {{{', '.join('0.0050' for _ in wl)}}}\n"
                      f"bbl = {{{', '.join(str(b) for b in bbl)}}}\n")
    return path


ENMAP_ID = "ENMAP01-____L2A-DT0000004950_20221103T162438Z_001_V010110_20221118T145147Z"


def write_enmap(folder: Path, size: int = 64, bands: int = 224, seed: int = 0, cloud: bool = True) -> Path:
    """An EnMAP L2A folder: ``*-SPECTRAL_IMAGE.TIF`` (int16 DN = reflectance x 10000, band-interleaved, nodata
    -32768), ``*-METADATA.XML`` (bandCharacterisation/bandID: wavelengthCenterOfBand, FWHMOfBand, GainOfBand,
    OffsetOfBand), ``*-QL_QUALITY_CLOUD.TIF`` (1 = cloud: a 6 x 6 block) and ``*-QL_QUALITY_CLOUDSHADOW.TIF``
    (1 = shadow: a 2 x 8 block)."""
    root = folder / ENMAP_ID
    root.mkdir(parents=True, exist_ok=True)
    wl = np.concatenate([np.linspace(418, 993, 91), np.linspace(902, 2445, bands - 91)])
    geo = dict(crs="EPSG:32633", transform=from_origin(*ORIGIN, 30, 30), width=size, height=size)
    with rasterio.open(root / f"{ENMAP_ID}-SPECTRAL_IMAGE.TIF", "w", driver="GTiff", count=bands, dtype="int16",
                       nodata=-32768, interleave="band", tiled=True, compress="deflate", **geo) as ds:
        for r0 in range(0, size, 256):  # in strips of whole tiles: an EnMAP-size scene is 1000 x 1000 x 224
            rows = min(256, size - r0)
            strip = (spectra(wl, rows, size, seed, r0, size) * 10000).round().astype(np.int16)
            ds.write(strip.transpose(2, 0, 1), window=rasterio.windows.Window(0, r0, size, rows))
    for name, rows, cols in (("CLOUD", slice(10, 16), slice(10, 16)), ("CLOUDSHADOW", slice(40, 42), slice(5, 13))):
        q = np.zeros((size, size), np.uint8)
        if cloud:
            q[rows, cols] = 1
        with rasterio.open(root / f"{ENMAP_ID}-QL_QUALITY_{name}.TIF", "w", driver="GTiff", count=1, dtype="uint8",
                           **geo) as ds:
            ds.write(q, 1)
    items = "".join(f'<bandID number="{i + 1}"><wavelengthCenterOfBand>{w:.3f}</wavelengthCenterOfBand>'
                    f"<FWHMOfBand>{7 if w < 1000 else 10}</FWHMOfBand><GainOfBand>0.0001</GainOfBand>"
                    "<OffsetOfBand>0</OffsetOfBand></bandID>\n" for i, w in enumerate(wl))
    (root / f"{ENMAP_ID}-METADATA.XML").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<level_X><metadata><name>' + ENMAP_ID + "</name></metadata>"
        f"<specific><numberOfBands>{bands}</numberOfBands><bandCharacterisation>\n{items}</bandCharacterisation>"
        "</specific></level_X>\n")
    return root


def emit_glt(swath: int, angle: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """A GLT (glt_x, glt_y; 1-based swath column and row, 0 = outside) of a square swath rotated by ``angle``
    degrees on a north-up grid large enough to hold it."""
    a = np.radians(angle)
    size = int(np.ceil(swath * (abs(np.cos(a)) + abs(np.sin(a))))) + 2
    oy, ox = np.mgrid[0:size, 0:size] + 0.5 - size / 2
    sx = np.cos(a) * ox + np.sin(a) * oy + swath / 2
    sy = -np.sin(a) * ox + np.cos(a) * oy + swath / 2
    inside = (sx >= 0) & (sx < swath) & (sy >= 0) & (sy < swath)
    gx = np.where(inside, np.floor(sx).astype(np.int32) + 1, 0)
    gy = np.where(inside, np.floor(sy).astype(np.int32) + 1, 0)
    return gx.astype(np.int32), gy.astype(np.int32)


EMIT_MASK_BANDS = ["Cloud flag", "Cirrus flag", "Water flag", "Spacecraft Flag", "Dilated Cloud Flag", "AOD550",
                   "H2O (g cm-2)", "Aggregate Flag"]


def write_emit_mask(rfl: Path, flagged: tuple[slice, slice]) -> Path:
    """The EMIT L2A mask product beside ``rfl`` (``EMIT_L2A_MASK_*.nc``): ``mask`` (downtrack, crosstrack,
    mask_bands) float32 and ``sensor_band_parameters/mask_bands``; the aggregate flag (and cloud flag) set on the
    swath pixels ``flagged``."""
    import h5netcdf
    import h5py

    with h5py.File(rfl) as f:
        rows, cols = f["reflectance"].shape[:2]
    path = rfl.with_name(rfl.name.replace("_RFL_", "_MASK_"))
    mask = np.zeros((rows, cols, len(EMIT_MASK_BANDS)), np.float32)
    mask[..., 5] = 0.1  # AOD550
    mask[flagged[0], flagged[1], 0] = 1
    mask[flagged[0], flagged[1], 7] = 1
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"downtrack": rows, "crosstrack": cols, "bands": len(EMIT_MASK_BANDS)}
        f.create_variable("mask", ("downtrack", "crosstrack", "bands"), "f4", fillvalue=-9999.0)[...] = mask
        sbp = f.create_group("sensor_band_parameters")
        sbp.create_variable("mask_bands", ("bands",), h5py.string_dtype())[...] = np.array(EMIT_MASK_BANDS, object)
    return path


def write_emit(folder: Path, size: int = 64, bands: int = 285, seed: int = 0) -> Path:
    """An EMIT L2A reflectance NetCDF-4 (``EMIT_L2A_RFL_001_*.nc``): ``reflectance`` (downtrack, crosstrack,
    bands; _FillValue -9999), ``sensor_band_parameters`` (wavelengths, fwhm, good_wavelengths: 0 in the
    water-vapour windows), ``location`` (glt_x, glt_y on the ortho grid, lat, lon), root ``geotransform`` and
    ``spatial_ref`` (EPSG:4326)."""
    import h5netcdf
    from rasterio.crs import CRS

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "EMIT_L2A_RFL_001_20230401T061523_2309104_002.nc"
    wl = wavelengths(bands, 381, 2493)
    good = ~(((wl >= 1320) & (wl <= 1440)) | ((wl >= 1770) & (wl <= 1960)))
    gx, gy = emit_glt(size)
    res = 0.000542232520256
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"downtrack": size, "crosstrack": size, "bands": bands}
        f.attrs["geotransform"] = np.array([120.0, res, 0.0, -30.0, 0.0, -res])
        f.attrs["spatial_ref"] = CRS.from_epsg(4326).to_wkt()
        f.attrs["title"] = "EMIT L2A Estimated Surface Reflectance 60 m V001"
        v = f.create_variable("reflectance", ("downtrack", "crosstrack", "bands"), "f4", fillvalue=-9999.0,
                              chunks=(min(size, 64), size, bands))
        for r0 in range(0, size, 64):  # in strips: an EMIT-size swath is 1280 x 1242 x 285
            strip = spectra(wl, min(64, size - r0), size, seed, r0, size)
            if r0 == 0:
                strip[:2] = -9999  # the swath's first rows are fill
            v[r0:r0 + len(strip)] = strip
        sbp = f.create_group("sensor_band_parameters")
        sbp.create_variable("wavelengths", ("bands",), "f4")[...] = wl
        sbp.create_variable("fwhm", ("bands",), "f4")[...] = np.full(bands, 8.5)
        sbp.create_variable("good_wavelengths", ("bands",), "u1")[...] = good.astype(np.uint8)
        loc = f.create_group("location")
        loc.dimensions = {"ortho_y": gx.shape[0], "ortho_x": gx.shape[1]}
        loc.create_variable("glt_x", ("ortho_y", "ortho_x"), "i4")[...] = gx
        loc.create_variable("glt_y", ("ortho_y", "ortho_x"), "i4")[...] = gy
        loc.create_variable("lat", ("downtrack", "crosstrack"), "f8")[...] = np.zeros((size, size))
        loc.create_variable("lon", ("downtrack", "crosstrack"), "f8")[...] = np.zeros((size, size))
    return path


def write_prisma(folder: Path, size: int = 64, seed: int = 0) -> Path:
    """A PRISMA L2D ``.he5``: ``HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/VNIR_Cube`` (rows, 66, cols) and
    ``SWIR_Cube`` (rows, 173, cols) uint16 DN (reflectance x 65535 / 0.6 here), wavelengths in the root attributes
    ``List_Cw_Vnir`` / ``List_Cw_Swir`` in descending order as delivered (3 + 6 unused slots at 0 nm: 230 bands),
    their FWHM and band flags (one VNIR band flagged bad), ``Epsg_Code`` and the corners."""
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "PRS_L2D_STD_20200627102358_20200627102402_0001.he5"
    cw_v = np.concatenate([np.linspace(1010, 402, 63), np.zeros(3)])
    cw_s = np.concatenate([np.linspace(2497, 920, 167), np.zeros(6)])
    res = 30.0
    with h5py.File(path, "w") as f:
        fields = f.create_group("HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields")
        for name, cw in (("VNIR", cw_v), ("SWIR", cw_s)):
            refl = spectra(np.where(cw > 0, cw, 1000), size, size, seed + (name == "SWIR"))
            dn = np.clip(refl / 0.6 * 65535, 1, 65535).astype(np.uint16)
            dn[..., cw == 0] = 0
            fields.create_dataset(f"{name}_Cube", data=dn.transpose(0, 2, 1), chunks=(8, len(cw), size))
            key = name.capitalize()
            f.attrs[f"List_Cw_{key}"] = cw.astype(np.float32)
            f.attrs[f"List_Fwhm_{key}"] = np.where(cw > 0, 12.0, 0).astype(np.float32)
            flags = (cw > 0).astype(np.int8)
            if name == "VNIR":
                flags[0] = 0
            f.attrs[f"List_Cw_{key}_Flags"] = flags
            f.attrs[f"L2Scale{key}Min"] = 0.0
            f.attrs[f"L2Scale{key}Max"] = 0.6
        f.attrs["Epsg_Code"] = np.int32(32632)
        f.attrs["Product_ULcorner_easting"] = ORIGIN[0]
        f.attrs["Product_ULcorner_northing"] = ORIGIN[1]
        f.attrs["Product_LRcorner_easting"] = ORIGIN[0] + size * res
        f.attrs["Product_LRcorner_northing"] = ORIGIN[1] - size * res
        f.attrs["Processing_Level"] = np.bytes_("2D")
    return path
