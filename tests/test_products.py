"""Product folders: pre-collection Landsat names, and a missing default band named when stacking and at scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from pipeline.cli import cli
from pipeline.product_folders import recognise
from pipeline.products import band_of_file

TRAIN = ("--epochs", "2", "--patience", "0", "--batch-size", "256", "--threads", "1", "-q")


def run(*args: object, code: int = 0) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def _write(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs="EPSG:32632", transform=from_origin(600000, 5000000, 30, 30),
                       nodata=0) as ds:
        ds.write(data, 1)
    return path


def _band(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(100, 3000, (size, size)).astype(np.uint16)


@pytest.mark.parametrize(("scene", "bands", "sensor", "default"), [
    ("LT52240631988227CUB02", [f"B{b}" for b in range(1, 8)], "Landsat 5 pre-collection",
     ["B1", "B2", "B3", "B4", "B5", "B7"]),
    # Landsat 7 keeps its two thermal gains as B6_VCID_1/2 (no bands of the stack) and pan B8
    ("LE71930292002224EDC00", ["B1", "B2", "B3", "B4", "B5", "B6_VCID_1", "B6_VCID_2", "B7", "B8"],
     "Landsat 7 pre-collection", ["B1", "B2", "B3", "B4", "B5", "B7"]),
    ("LC81930292014219LGN00", [f"B{b}" for b in range(1, 12)] + ["BQA"], "Landsat 8 pre-collection",
     ["B2", "B3", "B4", "B5", "B6", "B7"]),
])
def test_pre_collection_landsat_recognised(tmp_path, scene, bands, sensor, default):
    folder = tmp_path / scene
    folder.mkdir()
    for b in bands:
        (folder / f"{scene}_{b}.TIF").touch()
    product = recognise(folder)
    assert product.sensor == sensor and product.quality is None
    assert [b.name for b in product.select()] == default
    assert band_of_file(folder / f"{scene}_B4.TIF")[0] == "B4"
    assert band_of_file(folder / f"{scene}_B4.TIF")[1] == (655 if "Landsat 8" in sensor else 835)


def test_pre_collection_scene_stacks(tmp_path):
    scene = "LT52240631988227CUB02"
    for b in range(1, 8):
        _write(tmp_path / scene / f"{scene}_B{b}.TIF", _band(b))
    msg = run("stack", tmp_path / scene, "-o", tmp_path / "tm.vrt")
    assert "Landsat 5 pre-collection bands B1, B2, B3, B4, B5, B7 on 32 x 32" in msg
    with rasterio.open(tmp_path / "tm.vrt") as ds:
        assert ds.count == 6 and ds.tags(5)["wavelength"] == "1650"


def test_missing_default_band_named_when_stacking_and_scoring(tmp_path):
    names = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    full, partial = tmp_path / "full", tmp_path / "partial"
    for i, name in enumerate(names):
        _write(full / f"S2A_MSIL2A_20240601_{name}.tif", _band(i))
        if name != "B8A":
            _write(partial / f"S2A_MSIL2A_20240601_{name}.tif", _band(i + 20))
    msg = run("stack", full, "-o", tmp_path / "full.vrt")
    assert "Warning" not in msg
    run("ingest", tmp_path / "full.vrt", "-o", tmp_path / "s.nc", "--max-pixels", "800")
    run("train", tmp_path / "s.nc", "-o", tmp_path / "model", *TRAIN)
    msg = run("stack", partial, "-o", tmp_path / "partial.vrt")
    assert "lacks default band(s) B8A; stacking the other 9" in msg
    assert "bands B02, B03, B04, B05, B06, B07, B08, B11, B12 on" in msg
    msg = run("score", tmp_path / "model", tmp_path / "partial.vrt", "-o", tmp_path / "x.tif", code=1)
    assert msg.strip().splitlines() == [
        f"Error: {tmp_path / 'partial.vrt'}: has 9 bands but the model was trained on 10 (the tile lacks B8A)"]
