"""Hyperspectral products (ENVI, EnMAP L2A, EMIT L2A, PRISMA L2D) written in their documented layouts by
tests/hyperspectral_products.py, each stacked, trained on and scored through the CLI."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.hyperspectral import WATER_VAPOUR, recognise
from tests import hyperspectral_products as hp

TRAIN = ("--epochs", "2", "--patience", "0", "--batch-size", "256", "--threads", "1", "-q")


def run(*args: object, code: int = 0) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def _stack_train_score(product: Path, tmp: Path, *extra: object) -> tuple[str, Path, Path]:
    """``rsvae stack`` the product, ingest and train on the stack, score it: (stack's message, stack, scores)."""
    msg = run("stack", product, "-o", tmp / "scene.vrt", *extra)
    run("ingest", tmp / "scene.vrt", "-o", tmp / "s.nc", "--max-pixels", "1500")
    run("train", tmp / "s.nc", "-o", tmp / "model", *TRAIN)
    run("score", tmp / "model", tmp / "scene.vrt", "-o", tmp / "scores.tif", "-q")
    return msg, tmp / "scene.vrt", tmp / "scores.tif"


def _bands(path: Path) -> tuple[list[str], list[float]]:
    with rasterio.open(path) as ds:
        return list(ds.descriptions), [float(ds.tags(b)["wavelength"]) for b in range(1, ds.count + 1)]


def _invalid(scores: Path) -> np.ndarray:
    with rasterio.open(scores) as ds:
        return ds.read_masks(1) == 0


def _check_spectral_order(wl: list[float], keep_all: bool = False) -> None:
    assert wl == sorted(wl)
    if not keep_all:
        assert not any(lo <= w <= hi for w in wl for lo, hi in WATER_VAPOUR)


def test_envi_cube(tmp_path):
    cube = hp.write_envi(tmp_path / "in")
    msg, vrt, scores = _stack_train_score(cube, tmp_path)
    assert "ENVI 101 bands B2, B3, ..., B119 on 64 x 64" in msg
    assert "left out 19 of 120 bands (2 marked bad by the product, 17 in water-vapour windows" in msg
    names, wl = _bands(vrt)
    assert names[0] == "B2" and names[-1] == "B119"  # bbl marks B1 and B120 bad
    _check_spectral_order(wl)
    assert wl[0] == pytest.approx(417.65)  # micrometres in the header, nm in the stack
    invalid = _invalid(scores)
    assert invalid[:4, :4].all() and invalid.sum() == 16  # the data ignore value's corner
    # the header given instead of the data file is the same product
    assert recognise([str(cube.with_name(cube.name + ".hdr"))]).image == str(cube)
    run("stack", cube.parent / (cube.name + ".hdr"), "-o", tmp_path / "h.vrt", "--keep-all-bands", "-q")
    assert len(_bands(tmp_path / "h.vrt")[0]) == 120


def test_enmap_folder(tmp_path):
    folder = hp.write_enmap(tmp_path / "in")
    msg, vrt, scores = _stack_train_score(folder, tmp_path)
    assert "EnMAP L2A 199 bands B1, B2, ..., B224 on 64 x 64 pixels of 30 (EPSG:32633)" in msg
    assert "cloud masked 36 of 4096 pixels" in msg and "cloud shadow masked 16 of 4096 pixels" in msg
    names, wl = _bands(vrt)
    _check_spectral_order(wl)
    assert len(names) == 199 and wl[0] == pytest.approx(418.0)
    invalid = _invalid(scores)
    assert invalid[10:16, 10:16].all() and invalid[40:42, 5:13].all() and invalid.sum() == 36 + 16
    # --no-mask keeps the clouds; --bands picks by the product's band names
    run("stack", folder, "-o", tmp_path / "two.tif", "--no-mask", "--bands", "B50,b010", "-q")
    with rasterio.open(tmp_path / "two.tif") as ds, rasterio.open(next(folder.glob("*SPECTRAL_IMAGE.TIF"))) as src:
        assert list(ds.descriptions) == ["B50", "B10"] and not (ds.read_masks(1) == 0).any()
        assert np.array_equal(ds.read(1), src.read(50)) and np.array_equal(ds.read(2), src.read(10))


def test_emit_orthorectified_through_glt(tmp_path):
    nc = hp.write_emit(tmp_path / "in")
    msg, vrt, scores = _stack_train_score(nc, tmp_path)
    assert "EMIT L2A 240 bands" in msg and "on 85 x 85 pixels" in msg and "(EPSG:4326)" in msg
    assert "42 marked bad by the product, 3 in water-vapour windows" in msg
    names, wl = _bands(vrt)
    _check_spectral_order(wl)
    cube = tmp_path / "scene.cube.tif"
    with h5py.File(nc) as f, rasterio.open(cube) as ds:
        good = f["sensor_band_parameters/good_wavelengths"][()] != 0
        wls = f["sensor_band_parameters/wavelengths"][()]
        keep = np.flatnonzero(good & ~np.array([any(lo <= w <= hi for lo, hi in WATER_VAPOUR) for w in wls]))
        refl = f["reflectance"][()][:, :, keep]
        gx, gy = f["location/glt_x"][()], f["location/glt_y"][()]
        data = ds.read()
        assert ds.transform.to_gdal() == tuple(f.attrs["geotransform"])
        assert ds.interleaving.name == "band" and ds.block_shapes[0] == (256, 256)  # RasterWriter(cog=False)
    inside = (gx > 0) & (gy > 0)
    expect = np.full(data.shape, -9999, np.float32)
    expect[:, inside] = refl[gy[inside] - 1, gx[inside] - 1].T
    assert np.array_equal(data, expect)
    invalid = _invalid(scores)
    fill_rows = inside & (gy <= 2)  # the swath's first two rows are fill
    assert np.array_equal(invalid, ~inside | fill_rows)


def test_prisma_he5(tmp_path):
    he5 = hp.write_prisma(tmp_path / "in")
    msg, vrt, scores = _stack_train_score(he5, tmp_path)
    assert "PRISMA L2D 199 bands B1, B2, ..., B230 on 64 x 64 pixels of 30 (EPSG:32632)" in msg
    names, wl = _bands(vrt)
    _check_spectral_order(wl)
    assert wl[0] == 402 and 1010 not in wl  # VNIR's first slot (1010 nm) is flagged bad
    with h5py.File(he5) as f, rasterio.open(vrt) as ds:
        vnir = f["HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/VNIR_Cube"][()]
        swir = f["HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/SWIR_Cube"][()]
        assert np.array_equal(ds.read(1), vnir[:, 62, :])  # 402 nm: VNIR slot 63 (descending order)
        assert np.array_equal(ds.read(ds.count), swir[:, 0, :])  # 2497 nm: SWIR slot 1
    assert not _invalid(scores).any()
    run("stack", he5, "-o", tmp_path / "all.tif", "--keep-all-bands", "-q")
    assert len(_bands(tmp_path / "all.tif")[0]) == 230
    assert not (tmp_path / "all.cube.tif").exists()  # the cube was only a step towards the .tif


def test_bad_products_one_line(tmp_path):
    folder = hp.write_enmap(tmp_path / "enmap", size=8, bands=100)
    next(folder.glob("*METADATA.XML")).unlink()
    out = run("stack", folder, "-o", tmp_path / "x.vrt", code=1)
    assert out.strip().splitlines() == [f"Error: {folder}: EnMAP spectral image without its *-METADATA.XML "
                                        "(the band wavelengths)"]
    nc = hp.write_emit(tmp_path / "emit", size=8, bands=20)
    with h5py.File(nc, "a") as f:
        del f["location/glt_y"]
    out = run("stack", nc, "-o", tmp_path / "x.vrt", code=1)
    assert out.strip().splitlines() == [f"Error: {nc}: EMIT reflectance without location/glt_y"]
    cube = hp.write_envi(tmp_path / "envi", size=8, bands=10)
    header = cube.with_name(cube.name + ".hdr")
    header.write_text(header.read_text().replace("bbl = {", "wavelength = {0.4, 0.5}\nbbl = {"))
    out = run("stack", cube, "-o", tmp_path / "x.vrt", code=1)
    assert len(out.strip().splitlines()) == 1 and "2 wavelengths for 10 bands" in out
    out = run("stack", hp.write_enmap(tmp_path / "e2", size=8, bands=100), "-o", tmp_path / "x.vrt",
              "--bands", "B101", code=1)
    assert "EnMAP L2A product has no band 'B101' (it has B1 to B100)" in out
    assert not (tmp_path / "x.vrt").exists()


def test_emit_swath_grid(tmp_path):
    nc = hp.write_emit(tmp_path / "in", size=32, bands=40)
    msg = run("stack", nc, "--swath", "-o", tmp_path / "swath.tif")
    assert "EMIT L2A (swath grid) 34 bands" in msg and "on 32 x 32 pixels of 1 (no CRS)" in msg
    assert "left out" in msg and "--keep-all-bands keeps them" in msg  # the bands a default choice dropped
    with h5py.File(nc) as f, rasterio.open(tmp_path / "swath.tif") as ds:
        wl = f["sensor_band_parameters/wavelengths"][()]
        first = int(np.flatnonzero(np.isclose(wl, float(ds.tags(1)["wavelength"]), atol=1e-3))[0])
        assert ds.crs is None and np.array_equal(ds.read(1), f["reflectance"][:, :, first])
    out = run("stack", nc, "--swath", "-o", tmp_path / "swath.vrt", code=2)  # a usage conflict
    assert "--swath writes an EMIT product's swath as a .tif" in out
    out = run("stack", nc, "--swath", "--resolution", "60", "-o", tmp_path / "s2.tif", code=2)  # a usage conflict
    assert "--swath keeps the sensor's grid; --like, --resolution and --mask do not apply" in out


def test_many_band_tif_is_written_plain(tmp_path):
    nc = hp.write_emit(tmp_path / "in", size=16, bands=285)
    run("stack", nc, "-o", tmp_path / "e.tif", "-q")  # 240 float32 bands: 63 MB pixel-interleaved tiles
    with rasterio.open(tmp_path / "e.tif") as ds:
        assert ds.count == 240 and ds.interleaving.name == "band"
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"
    he5 = hp.write_prisma(tmp_path / "p", size=16)
    run("stack", he5, "-o", tmp_path / "p.tif", "-q")  # 199 uint16 bands: 26 MB tiles, still a COG
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.count == 199 and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"


def test_workflow_stacks_hyperspectral_products(tmp_path):
    from pipeline import workflow as wf
    from pipeline.config import validate

    nc = hp.write_emit(tmp_path / "emit", size=8, bands=20)
    folder = hp.write_enmap(tmp_path / "enmap", size=8, bands=100)
    he5 = hp.write_prisma(tmp_path / "prisma", size=8)
    config = validate({"demo": False, "normal": [f"{tmp_path}/enmap/ENMAP*", f"{tmp_path}/prisma/*.he5"],
                       "targets": [f"{tmp_path}/emit/*.nc"], "results": "res"})
    plan = wf.plan(config)
    assert plan.stacks == {folder.name: str(folder), he5.stem: str(he5), nc.stem: str(nc)}
    assert plan.targets == {nc.stem: f"res/stacks/{nc.stem}.vrt"}
    assert wf.stack_input(plan.stacks[nc.stem]) == [str(nc)]


def test_plain_writer_is_atomic(tmp_path):
    from rasterio.windows import Window

    from pipeline.cog_writer import RasterWriter

    out = tmp_path / "cube.tif"
    with pytest.raises(RuntimeError), RasterWriter(out, width=8, height=8, count=3, dtype="float32", crs="EPSG:32632",
                                                   transform=rasterio.transform.from_origin(0, 8, 1, 1), cog=False) as w:
        w.write(np.ones((3, 4, 8), np.float32), Window(0, 0, 8, 4))
        raise RuntimeError("stopped half-way")
    assert list(tmp_path.iterdir()) == []


def test_emit_mask_product_masks_its_aggregate_flag(tmp_path):
    nc = hp.write_emit(tmp_path / "in", size=32, bands=40)
    hp.write_emit_mask(nc, (slice(10, 20), slice(5, 15)))
    msg = run("stack", nc, "-o", tmp_path / "e.vrt")
    with h5py.File(nc) as f:
        gx, gy = f["location/glt_x"][()], f["location/glt_y"][()]
    flagged = (gy >= 11) & (gy <= 20) & (gx >= 6) & (gx <= 15)  # 1-based GLT
    assert f"Aggregate Flag masked {int(flagged.sum())} of" in msg
    with rasterio.open(tmp_path / "e.vrt") as ds:  # the mask band; the swath's fill is the bands' nodata
        assert np.array_equal(ds.read_masks(1) == 0, flagged)
        assert np.array_equal(ds.read(1) == ds.nodata, (gx == 0) | (gy <= 2))
    run("stack", nc, "-o", tmp_path / "n.vrt", "--no-mask", "-q")
    assert not (tmp_path / "n.quality.tif").exists()
    run("stack", nc, "-o", tmp_path / "e.tif", "-q")
    assert sorted(p.name for p in tmp_path.glob("e.*")) == ["e.mask.tif", "e.tif", "e.vrt"]
    mask = nc.with_name(nc.name.replace("_RFL_", "_MASK_"))
    with h5py.File(mask, "a") as f:
        del f["sensor_band_parameters/mask_bands"]
    out = run("stack", nc, "-o", tmp_path / "x.vrt", code=1)
    assert out.strip().splitlines() == [f"Error: {mask}: EMIT mask product without a 'mask' band named "
                                        "'Aggregate Flag' (sensor_band_parameters/mask_bands)"]
