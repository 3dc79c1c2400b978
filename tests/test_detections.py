"""Detections: streamed 8-connected groups equal whole-array labelling, exact attributes, formats, styles, merge."""

import sqlite3

import numpy as np
import pyogrio.raw
import pytest
from click.testing import CliRunner
from scipy import ndimage

from pipeline.cli import cli
from pipeline.detections import FIELDS, detect, find_groups, merge, read, threshold_of
from pipeline.errors import InputError
from tests.conftest import write_tif

NODATA = -9999.0


def _scores(tmp_path, rarity, name="s.tif", **kw):
    """A score raster like rsvae's: score, reconstruction, kl, rarity (score = 10 x rarity)."""
    data = np.stack([rarity * 10, rarity, rarity, rarity]).astype(np.float32)
    path = write_tif(tmp_path / name, data, nodata=NODATA, **kw)
    import rasterio

    with rasterio.open(path, "r+") as ds:
        ds.descriptions = ("score", "reconstruction", "kl", "rarity")
        ds.update_tags(rsvae_input="tile_a.tif", rsvae_input_path=str(tmp_path / "tile_a.tif"))
    return path


def _field(rng, shape=(70, 90)):
    r = rng.uniform(0, 2, shape).astype(np.float32)
    blobs = rng.random(shape) < 0.04
    r[blobs] = rng.uniform(3, 9, int(blobs.sum()))
    # shapes made to cross the 16-pixel window seams: a diagonal chain over a window corner, a ring, a bar
    for i in range(10):
        r[11 + i, 11 + i] = 7.0
    r[30:36, 14:19] = 6.0
    r[32:34, 16] = 1.0
    r[47, 5:80] = 5.5
    r[0, :4] = NODATA
    return r


def test_streamed_groups_equal_whole_array_labelling(tmp_path):
    r = _field(np.random.default_rng(0))
    path = _scores(tmp_path, r)
    flag = (r >= 3) & (r != NODATA)
    lab, k = ndimage.label(flag, structure=np.ones((3, 3)))
    expect = sorted((int(n), float(m)) for n, m in zip(ndimage.sum(flag, lab, range(1, k + 1)),
                                                       ndimage.maximum(r, lab, range(1, k + 1)), strict=True))
    for window in (16, 7, 1024):
        groups, _ = find_groups(path, 3.0, window=window)
        got = sorted((g.pixels, g.peak_rarity) for g in groups)
        assert got == expect, window
    assert k > 50


def test_attributes_ranks_and_geometry(tmp_path):
    r = np.zeros((40, 40), np.float32)
    r[10:13, 20:22] = 6.0
    r[11, 21] = 8.0
    r[30, 5] = 4.0
    path = _scores(tmp_path, r)
    out = tmp_path / "d.gpkg"
    assert detect(path, out, min_rarity=3) == 2
    rows, wkb, crs, sources = read(out)
    meta = pyogrio.read_info(str(out), layer="detections")
    assert list(meta["fields"]) == [n for n, _ in FIELDS]
    first, second = rows
    assert (first["rank"], first["pixels"], first["peak_row"], first["peak_col"]) == (1, 6, 11, 21)
    assert first["peak_rarity"] == 8.0 and first["peak_score"] == 80.0 and first["mean_rarity"] == pytest.approx(
        (5 * 6 + 8) / 6)
    assert first["area_m2"] == 6 * 900.0 and first["tile"] == "tile_a"
    assert (first["peak_x"], first["peak_y"]) == (500000 + 21.5 * 30, 5000000 - 11.5 * 30)
    assert 8.9 < first["lon"] < 9.1 and 45.0 < first["lat"] < 45.2  # UTM 32N near (500 km E, 5000 km N)
    assert (second["rank"], second["pixels"]) == (2, 1)
    import shapely

    assert shapely.from_wkb(wkb[0]).area == pytest.approx(6 * 900.0)
    assert "32632" in crs and sources["tile_a"]["input"].endswith("tile_a.tif")
    with sqlite3.connect(out) as db:
        (qml, default), = db.execute("SELECT styleQML, useAsDefault FROM layer_styles WHERE f_table_name = "
                                     "'detections'").fetchall()
    assert default == 1 and 'attr="peak_rarity"' in qml and 'fieldName="rank"' in qml


def test_geojson_and_flatgeobuf_hold_the_same_rows(tmp_path):
    path = _scores(tmp_path, _field(np.random.default_rng(1)))
    rows = {}
    for ext in (".gpkg", ".geojson", ".fgb"):
        detect(path, tmp_path / f"d{ext}", min_rarity=4, min_pixels=2)
        rows[ext] = read(tmp_path / f"d{ext}")[0]
    assert rows[".gpkg"] == rows[".geojson"] == rows[".fgb"] and all(r["pixels"] >= 2 for r in rows[".fgb"])
    assert [r["rank"] for r in rows[".gpkg"]] == list(range(1, len(rows[".gpkg"]) + 1))


def test_merge_ranks_across_tiles(tmp_path):
    a, b = np.zeros((20, 20), np.float32), np.zeros((20, 20), np.float32)
    a[2, 2], a[10, 10], b[5, 5] = 6.0, 9.0, 7.0
    detect(_scores(tmp_path, a, "a.tif"), tmp_path / "a.gpkg", min_rarity=3)
    pb = _scores(tmp_path, b, "b.tif")
    import rasterio

    with rasterio.open(pb, "r+") as ds:
        ds.update_tags(rsvae_input="tile_b.tif")
    detect(pb, tmp_path / "b.gpkg", min_rarity=3)
    assert merge([tmp_path / "a.gpkg", tmp_path / "b.gpkg"], tmp_path / "all.gpkg") == 3
    rows, _, _, sources = read(tmp_path / "all.gpkg")
    assert [(r["rank"], r["tile"], r["peak_rarity"]) for r in rows] == [
        (1, "tile_a", 9.0), (2, "tile_b", 7.0), (3, "tile_a", 6.0)]
    assert set(sources) == {"tile_a", "tile_b"}


def test_thresholds_and_errors(tmp_path):
    assert threshold_of(None, 1e-4) == pytest.approx(4.0) and threshold_of(2.5, None) == 2.5
    with pytest.raises(InputError, match="not both"):
        threshold_of(3, 1e-3)
    plain = write_tif(tmp_path / "three.tif", np.ones((3, 8, 8), np.float32))
    with pytest.raises(InputError, match=r"three.tif: has no rarity band; score the tile again"):
        detect(plain, tmp_path / "d.gpkg")
    with pytest.raises(InputError, match=r"unknown vector format"):
        detect(_scores(tmp_path, np.zeros((8, 8), np.float32)), tmp_path / "d.shp")
    assert not (tmp_path / "d.gpkg").exists()


def test_cli_detect(tmp_path):
    r = np.zeros((30, 30), np.float32)
    r[3, 3], r[20, 20] = 6.0, 4.5
    path = _scores(tmp_path, r)
    runner = CliRunner()
    res = runner.invoke(cli, ["detect", str(path), "-o", str(tmp_path / "d.gpkg")])
    assert res.exit_code == 0 and "1 detections" in res.output  # default --min-rarity 5
    res = runner.invoke(cli, ["detect", str(path), "-o", str(tmp_path / "d.gpkg"), "--fpr", "1e-4"])
    assert res.exit_code == 0 and "2 detections" in res.output
    res = runner.invoke(cli, ["detect", str(path), "-o", str(tmp_path / "d.gpkg"), "--fpr", "1e-4",
                              "--min-rarity", "3"])
    assert res.exit_code == 2 and res.output.strip() == "Error: give --min-rarity or --fpr, not both"


def test_cli_detect_many_rasters_into_a_folder(tmp_path):
    """--outdir: one file per raster (NAME.gpkg, or --format), a bad raster named while the others are written."""
    r = np.zeros((30, 30), np.float32)
    r[3, 3], r[20, 20] = 6.0, 8.0
    a, b = _scores(tmp_path, r, "a.tif"), _scores(tmp_path, r * 0, "b.tif")
    bad = tmp_path / "c.tif"
    bad.write_text("not a raster")
    out = tmp_path / "det"
    res = CliRunner().invoke(cli, ["detect", str(a), str(bad), str(b), "--outdir", str(out)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == f"Error: 1 of 3 tiles failed: {bad}"
    assert sorted(p.name for p in out.iterdir()) == ["a.gpkg", "b.gpkg"]
    assert [row["peak_rarity"] for row in read(out / "a.gpkg")[0]] == [8.0, 6.0] and not read(out / "b.gpkg")[0]
    res = CliRunner().invoke(cli, ["detect", str(a), "--outdir", str(out), "--format", ".fgb", "-q"])
    assert res.exit_code == 0 and (out / "a.fgb").is_file()
    res = CliRunner().invoke(cli, ["detect", str(a), str(b), "-o", str(tmp_path / "x.gpkg")])
    assert res.exit_code != 0 and "for 2 tiles give --outdir DIR" in res.output
