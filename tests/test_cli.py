"""The CLI end to end on demo data, as a user runs it step by step."""

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from pipeline.cli import cli


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """synth -> ingest -> train -> score on a 64-band demo, with a config file and CLI overrides."""
    root = tmp_path_factory.mktemp("cli")
    cfg = root / "config.yaml"
    cfg.write_text("train:\n  epochs: 30\n  threads: 1\ningest:\n  max_pixels: 10000\n")
    demo, work = root / "demo", root / "work"
    run("synth", demo, "--seed", 0, "--size", 96, "--tiles-normal", 2, "--tiles-test", 2, "-q")
    run("ingest", *sorted((demo / "normal").glob("*.tif")), "-o", work / "sample.nc", "--config", cfg, "-q")
    run("train", work / "sample.nc", "-o", work / "model", "--config", cfg, "--seed", 0, "-q")
    for tile in sorted((demo / "test").glob("*.tif")):
        run("score", work / "model", tile, "-o", work / "scores" / tile.name, "--mask-out",
            work / "masks" / tile.name, "--fpr", 0.001, "-q")
    return demo, work


def test_demo_auc_at_least_098(pipeline_run):
    demo, work = pipeline_run
    scores, labels = [], []
    for tile in sorted((demo / "test").glob("*.tif")):
        with rasterio.open(work / "scores" / tile.name) as s, rasterio.open(demo / "truth" / tile.name) as t:
            a, y = s.read(1), t.read(1)
            valid = a != s.nodata
            scores.append(a[valid])
            labels.append(y[valid])
    assert roc_auc_score(np.concatenate(labels), np.concatenate(scores)) >= 0.98


def test_outputs_keep_georeference(pipeline_run):
    demo, work = pipeline_run
    tile = sorted((demo / "test").glob("*.tif"))[0]
    with rasterio.open(tile) as src, rasterio.open(work / "scores" / tile.name) as s, \
            rasterio.open(work / "masks" / tile.name) as m:
        assert s.crs == src.crs == m.crs and s.transform == src.transform == m.transform
        assert s.nodata == src.nodata
        assert m.dtypes[0] == "uint8" and set(np.unique(m.read(1))) <= {0, 1, 255}


def test_config_file_reached_training(pipeline_run):
    _, work = pipeline_run
    meta = json.loads((work / "model" / "model.json").read_text())
    assert meta["config"]["ingest"]["max_pixels"] == 10000
    assert meta["sample"]["pixels"] == 10000
    assert len(meta["training"]["history"]) <= 30


def test_evaluate_command(pipeline_run, tmp_path):
    demo, work = pipeline_run
    tile = sorted((demo / "test").glob("*.tif"))[0]
    run("evaluate", work / "scores" / tile.name, demo / "truth" / tile.name, "-o", tmp_path / "m.json", "-q")
    assert json.loads((tmp_path / "m.json").read_text())["roc_auc"] > 0.9


def test_band_mismatch_one_line_error(pipeline_run, tmp_path):
    _, work = pipeline_run
    from tests.conftest import write_tif

    tif = write_tif(tmp_path / "three.tif", np.ones((3, 8, 8), np.float32))
    out = run("score", work / "model", tif, "-o", tmp_path / "o.tif", code=1)
    assert out.strip() == f"Error: {tif}: has 3 bands but the model was trained on 64"
    assert "Traceback" not in out and not (tmp_path / "o.tif").exists()


def test_bad_config_names_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epoch: 3\n")
    out = run("train", tmp_path / "x.nc", "-o", tmp_path / "m", "--config", cfg, code=2)
    assert "unknown key 'train.epoch'" in out


@pytest.mark.parametrize("command", ["synth", "ingest", "merge", "train", "score", "evaluate"])
def test_help_has_examples(command):
    out = run(command, "--help")
    assert "Example" in out


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True, check=True)
    assert "rsvae" in out.stdout


def test_score_layered_path_gives_the_same_scores(pipeline_run, tmp_path):
    """`--scoring-path layered` (or `score: {scoring_path: layered}` in the config) runs the layers one by one:
    the same scores as the default folded path within float32 rounding, and the same mask."""
    demo, work = pipeline_run
    tile = sorted((demo / "test").glob("*.tif"))[0]
    cfg = tmp_path / "layered.yaml"
    cfg.write_text("score:\n  scoring_path: layered\n")
    run("score", work / "model", tile, "-o", tmp_path / "layered.tif", "--scoring-path", "layered", "-q")
    run("score", work / "model", tile, "-o", tmp_path / "config.tif", "--config", cfg, "--mask-out",
        tmp_path / "mask.tif", "--fpr", 0.001, "-q")
    with rasterio.open(work / "scores" / tile.name) as a, rasterio.open(tmp_path / "layered.tif") as b, \
            rasterio.open(tmp_path / "config.tif") as c:
        folded, layered, again = a.read(), b.read(), c.read()
        assert b.tags()["rsvae_scoring_path"].startswith("layered (asked for;")
        assert c.tags()["rsvae_scoring_path"].startswith("layered (asked for;")
    np.testing.assert_allclose(layered, folded, rtol=1e-4, atol=1e-4 * float(np.abs(folded).max()))
    np.testing.assert_array_equal(layered, again)
    with rasterio.open(work / "masks" / tile.name) as a, rasterio.open(tmp_path / "mask.tif") as b:
        assert (a.read() != b.read()).mean() < 1e-3
    run("score", work / "model", tile, "-o", tmp_path / "x.tif", "--scoring-path", "exact", code=2)


def test_score_leaves_the_garbage_collector_on(pipeline_run, tmp_path, monkeypatch):
    """`rsvae score` turns Python's cyclic garbage collector off while torch and the model load (a faster
    start and exit); it is on again for the scoring, and after, in the same process."""
    import gc

    import pipeline.scoring

    demo, work = pipeline_run
    tile = sorted((demo / "test").glob("*.tif"))[0]
    seen = []
    real = pipeline.scoring.score_block

    def spy(*args, **kwargs):
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline.scoring, "score_block", spy)
    run("score", work / "model", tile, "-o", tmp_path / "s.tif", "-q")
    assert seen and all(seen) and gc.isenabled()
    with rasterio.open(work / "scores" / tile.name) as a, rasterio.open(tmp_path / "s.tif") as b:
        assert np.array_equal(a.read(), b.read())  # read ahead of the model: the same raster


def test_score_old_path_names_warn_and_map(pipeline_run, tmp_path):
    """`--fast`/`--exact` and `score.fast` in a config, the old names, still work: one warning line naming the new
    one, the same path run (its tag); given with the new name, a usage error (exit 2)."""
    demo, work = pipeline_run
    tile = sorted((demo / "test").glob("*.tif"))[0]
    for flag, path in (("--exact", "layered"), ("--fast", "folded")):
        out = run("score", work / "model", tile, "-o", tmp_path / f"{path}.tif", flag, "-q")
        warned = [ln for ln in out.splitlines() if ln.startswith("Warning")]
        assert warned == [f"Warning: {flag} is deprecated; use --scoring-path {path}"]
        with rasterio.open(tmp_path / f"{path}.tif") as ds:
            assert ds.tags()["rsvae_scoring_path"].startswith(f"{path} (asked for;")
        out = run("score", work / "model", tile, "-o", tmp_path / "both.tif", flag, "--scoring-path", path, code=2)
        assert f"{flag} is the deprecated form of --scoring-path; give only --scoring-path" in out
        assert not (tmp_path / "both.tif").exists()
    cfg = tmp_path / "old.yaml"
    cfg.write_text("score:\n  fast: false\n")
    out = run("score", work / "model", tile, "-o", tmp_path / "old.tif", "--config", cfg, "-q")
    assert [ln for ln in out.splitlines() if ln.startswith("Warning")] == [
        "Warning: score.fast is deprecated; use score.scoring_path: layered"]
    with rasterio.open(tmp_path / "old.tif") as ds:
        assert ds.tags()["rsvae_scoring_path"].startswith("layered (asked for;")
    cfg.write_text("score:\n  fast: true\n  scoring_path: layered\n")
    out = run("score", work / "model", tile, "-o", tmp_path / "both.tif", "--config", cfg, code=2)
    assert "score.fast is the deprecated name of score.scoring_path; give only score.scoring_path" in out


def test_score_picks_its_path_says_which_with_verbose_and_records_it(pipeline_run, tmp_path):
    """By default (auto) the path is measured at start (--verbose says so, with the figures), --scoring-path
    folded or layered forces one; the output's tags record the path run."""
    demo, work = pipeline_run
    tile = sorted((demo / "test").glob("*.tif"))[0]
    out = run("score", work / "model", tile, "-o", tmp_path / "auto.tif", "--verbose", "-q")
    line = next(ln for ln in out.splitlines() if ln.startswith("scoring path: "))
    assert "measured on this CPU" in line and "folded " in line and "layered " in line and "kernels" in line
    for path in ("layered", "folded"):
        out = run("score", work / "model", tile, "-o", tmp_path / f"{path}.tif", "--scoring-path", path, "-v", "-q")
        assert f"scoring path: {path} (asked for;" in out
        with rasterio.open(tmp_path / f"{path}.tif") as ds:
            assert ds.tags()["rsvae_scoring_path"].startswith(f"{path} (asked for;")
    with rasterio.open(tmp_path / "auto.tif") as ds:
        assert ds.tags()["rsvae_scoring_path"].split(" (")[0] in ("folded", "layered")
    assert "scoring path" not in run("score", work / "model", tile, "-o", tmp_path / "quiet.tif", "-q")
