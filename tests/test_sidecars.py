"""Local rasters are opened so GDAL finds their sidecar files: one test per kind (ENVI .hdr, .tfw, .prj, .ovr,
.msk), each also showing the file is what gives the property (without it the property is gone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from pipeline.raster import describe, open_raster, read_env, valid_mask

T = from_origin(500000, 5000000, 30, 30)


def _tif(path: Path, crs: str | None = "EPSG:32632", **env: object) -> Path:
    kwargs = {"crs": crs, "transform": T} if crs else {}
    with rasterio.Env(**env), rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1,
                                            dtype="uint16", **kwargs) as ds:
        ds.write(np.arange(64 * 64, dtype="uint16").reshape(1, 64, 64) + 1)
    return path


def test_envi_cube_found_through_its_hdr(tmp_path):
    cube = tmp_path / "scene.bsq"
    with rasterio.open(cube, "w", driver="ENVI", width=16, height=16, count=3, dtype="int16", crs="EPSG:32632",
                       transform=T) as ds:
        ds.write(np.ones((3, 16, 16), "int16"))
    assert (tmp_path / "scene.hdr").exists()
    info = describe(cube)
    assert (info.count, info.crs.to_epsg(), info.transform.c) == (3, 32632, 500000)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_world_file_gives_the_transform(tmp_path):
    tif = _tif(tmp_path / "plain.tif", crs=None)
    assert describe(tif).transform.is_identity
    (tmp_path / "plain.tfw").write_text("30\n0\n0\n-30\n500015\n4999985\n")
    t = describe(tif).transform
    assert (t.a, t.e, t.c, t.f) == (30, -30, 500000, 5000000)


def test_prj_gives_the_crs(tmp_path):
    bil = tmp_path / "grid.bil"  # ESRI BIL: grid.hdr (layout and origin) and grid.prj (CRS) beside it
    with rasterio.open(bil, "w", driver="EHdr", width=8, height=8, count=2, dtype="int16", crs="EPSG:32632",
                       transform=T) as ds:
        ds.write(np.ones((2, 8, 8), "int16"))
    assert describe(bil).crs.to_epsg() == 32632
    (tmp_path / "grid.prj").unlink()
    assert describe(bil).crs is None


def test_external_overviews_found(tmp_path):
    tif = _tif(tmp_path / "ov.tif")
    with rasterio.Env(TIFF_USE_OVR=True), rasterio.open(tif, "r+") as ds:
        ds.build_overviews([2, 4])
    assert (tmp_path / "ov.tif.ovr").exists()
    with open_raster(tif) as ds:
        assert ds.overviews(1) == [2, 4]


def test_external_mask_makes_pixels_invalid(tmp_path):
    tif = tmp_path / "m.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(
            tif, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16", crs="EPSG:32632",
            transform=T) as ds:
        ds.write(np.ones((1, 64, 64), "uint16"))
        mask = np.full((64, 64), 255, "uint8")
        mask[:10] = 0
        ds.write_mask(mask)
    assert (tmp_path / "m.tif.msk").exists()
    with open_raster(tif) as ds:
        valid = valid_mask(ds.read(), ds.nodata, ds.read_masks())
    assert (~valid).sum() == 10 * 64
    assert valid[10:].all()


def test_remote_names_keep_directory_listing_off(tmp_path):
    assert read_env(tmp_path / "a.tif")["GDAL_DISABLE_READDIR_ON_OPEN"] == "FALSE"
    assert read_env("https://example.org/a.tif")["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert read_env("/vsis3/bucket/a.tif")["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    vrt = tmp_path / "stack.vrt"  # a local stack of remote bands: its sources are read remotely
    vrt.write_text('<VRTDataset><VRTRasterBand><SimpleSource><SourceFilename relativeToVRT="0">'
                   "/vsicurl/https://example.org/B02.tif</SourceFilename></SimpleSource></VRTRasterBand></VRTDataset>")
    assert read_env(vrt)["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
