"""Many tiles per process: `rsvae score/features TILES... --outdir`, the shared loop in pipeline/batch.py."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from pipeline.batch import TilesFailed, plan_outputs, run_tiles
from pipeline.cli import cli
from pipeline.errors import InputError


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture
def tiles(demo, tmp_path):
    """Two good target tiles and, between them, a file that is no raster."""
    folder = tmp_path / "tiles"
    folder.mkdir()
    good = [shutil.copy(demo.test[0], folder / "a.tif"), shutil.copy(demo.normal[0], folder / "c.tif")]
    bad = folder / "b.tif"
    bad.write_text("not a GeoTIFF")
    return [good[0], bad, good[1]]


def test_score_many_tiles_writes_each_and_names_the_bad_one(model_dir, tiles, tmp_path):
    out, masks = tmp_path / "scores", tmp_path / "masks"
    code, output = invoke("score", model_dir, *tiles, "--outdir", out, "--mask-dir", masks, "--fpr", 0.01)
    assert code == 1
    assert f"Error: {tiles[1]}: not a readable raster" in output
    assert output.strip().splitlines()[-1] == f"Error: 1 of 3 tiles failed: {tiles[1]}"
    assert sorted(p.name for p in out.glob("*.tif")) == sorted(p.name for p in masks.iterdir()) == ["a.tif", "c.tif"]
    assert sorted(p.name for p in out.glob("*.qml")) == ["a.qml", "c.qml"]  # each score raster's QGIS style
    # each output is what scoring the tile alone gives
    alone = tmp_path / "alone.tif"
    assert invoke("score", model_dir, tiles[0], "-o", alone, "-q")[0] == 0
    with rasterio.open(out / "a.tif") as many, rasterio.open(alone) as one:
        np.testing.assert_array_equal(many.read(), one.read())
    with rasterio.open(masks / "c.tif") as ds:
        assert set(np.unique(ds.read())) <= {0, 1, 255}


def test_features_many_tiles(model_dir, tiles, tmp_path):
    code, output = invoke("features", model_dir, tiles[0], tiles[2], "--outdir", tmp_path / "f", "-q")
    assert code == 0, output
    for name in ("a", "c"):
        with rasterio.open(tmp_path / "f" / f"{name}.tif") as ds:
            assert ds.count == 8 and ds.descriptions[0] == "latent_1"


@pytest.mark.parametrize("args, message", [
    (["-o", "x.tif", "--outdir", "d"], "give -o FILE"),
    ([], "give -o FILE"),
    (["--outdir", "d", "--mask-out", "m.tif"], "--mask-out goes with -o"),
    (["-o", "x.tif", "--mask-dir", "m"], "--mask-dir goes with --outdir"),
])
def test_output_options_must_fit_the_mode(model_dir, tiles, args, message):
    code, output = invoke("score", model_dir, tiles[0], *args)
    assert code == 2 and message in output


def test_one_output_file_for_many_tiles_is_refused(model_dir, tiles):
    code, output = invoke("score", model_dir, tiles[0], tiles[2], "-o", "x.tif")
    assert code == 2 and "for 2 tiles give --outdir" in output


def test_tiles_with_one_name_are_refused_before_any_work(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match=r"x/t.tif: has the same name 't' as .*t.tif"):
        plan_outputs([tmp_path / "t.tif", tmp_path / "x" / "t.tif"], {"scores": tmp_path / "out"})


def test_run_tiles_goes_on_after_user_errors_and_stops_on_bugs(tmp_path):
    jobs = plan_outputs(["a.tif", "b.tif", "c.tif"], {"scores": tmp_path, "mask": None})
    assert [list(j.outputs) for j in jobs] == [["scores"]] * 3
    seen = []

    def work(job):
        if job.name == "b":
            raise InputError("b.tif: broken")
        return job.name

    result = run_tiles(jobs, work, seen.append)
    assert [o.result for o in result.outcomes] == ["a", None, "c"] and [o.ok for o in seen] == [True, False, True]
    with pytest.raises(TilesFailed, match=r"1 of 3 tiles failed: b.tif"):
        result.check()

    def buggy(job):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        run_tiles(jobs, buggy)


def test_ingest_quicklook_and_evaluate_many(demo, model_dir, tmp_path):
    """The workflow's other per-batch commands: partial samples, quicklooks, evaluation (a missing truth named)."""
    parts = tmp_path / "parts"
    code, output = invoke("ingest", *demo.normal, "--partial", "--outdir", parts, "--max-pixels", 500, "-q")
    assert code == 0, output
    assert sorted(p.name for p in parts.iterdir()) == sorted(f"{p.stem}.nc" for p in demo.normal)
    scores, masks = tmp_path / "scores", tmp_path / "masks"
    lone = shutil.copy(demo.test[0], tmp_path / "lone.tif")  # a target without truth
    assert invoke("score", model_dir, demo.test[0], lone, "--outdir", scores, "--mask-dir", masks,
                  "--fpr", 0.01, "-q")[0] == 0
    rasters = sorted(scores.glob("*.tif"))  # not the .qml styles beside them
    code, output = invoke("quicklook", *rasters, "--mask-dir", masks, "--outdir", tmp_path / "ql", "-q")
    assert code == 0 and sorted(p.name for p in (tmp_path / "ql").iterdir()) == [f"{r.stem}.png" for r in rasters]
    truth = str(demo.truth[0].parent / "{tile}.tif")
    code, output = invoke("evaluate", *rasters, "--truth", truth, "--outdir", tmp_path / "m", "-q")
    assert code == 1 and f"Error: 1 of 2 tiles failed: {scores / 'lone.tif'}" in output
    assert [p.name for p in (tmp_path / "m").iterdir()] == [f"{demo.test[0].stem}.json"]
    code, output = invoke("evaluate", *rasters, "--truth", "truth.tif", "--outdir", tmp_path / "m2")
    assert code == 1 and "needs {tile}" in output
