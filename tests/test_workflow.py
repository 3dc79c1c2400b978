"""The Snakemake workflow: its planning functions, and whole runs in a temporary copy of the repository.

The end-to-end run uses a tiny demo (32x32 tiles, 8 bands, 3 epochs) so it stays well under a minute.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import workflow as wf
from pipeline.errors import ConfigError, RsvaeWarning

ROOT = Path(__file__).resolve().parents[1]
#: What a run needs from the repository.
#: A tiny demo with latent features: the test config laid over configs/config.yaml.
TINY = {
    "features": True,
    "synth": {"size": 32, "bands": 8, "tiles_normal": 2, "tiles_test": 2},
    "ingest": {"max_pixels": 1500},
    "train": {"epochs": 3, "patience": 0, "batch_size": 256},
}
#: Jobs of the tiny demo, by rule: its two normal and two target tiles are one batch each (tiles_per_job 25).
TINY_JOBS = {"demo": 1, "ingest_b0000": 1, "merge": 1, "train": 1, "score_b0000": 1, "quicklook_b0000": 1,
             "evaluate_b0000": 1, "features_b0000": 1, "detect_b0000": 1, "summarize_b0000": 1,
             "merge_detections": 1, "review": 1, "summarize": 1, "all": 1}


# ---- planning (pipeline/workflow.py) ---------------------------------------------------------------------

def test_demo_plan_names_the_files_synth_writes(demo):
    from pipeline.config import validate

    outdir = demo.normal[0].parent.parent
    config = validate({"synth": {"outdir": str(outdir), "tiles_normal": 2, "tiles_test": 1}})
    plan = wf.plan(config)
    assert sorted(plan.normal.values()) == sorted(map(str, demo.normal))
    assert sorted(plan.targets.values()) == sorted(map(str, demo.test))
    assert sorted(plan.truth.values()) == sorted(map(str, demo.truth))
    assert sorted(plan.demo_files) == sorted(map(str, [*demo.normal, *demo.test, *demo.truth]))


def test_own_data_plan_globs_tiles_and_finds_truth_where_it_exists(tmp_path):
    from pipeline.config import validate

    for name in ["n/b.tif", "n/a.tif", "t/x.tif", "t/y.tif", "truth/x_truth.tif", "n/notes.txt"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    config = validate({"demo": False, "normal": [f"{tmp_path}/n/*.tif"], "targets": [f"{tmp_path}/t/*.tif"],
                       "truth": f"{tmp_path}/truth/{{tile}}_truth.tif"})
    plan = wf.plan(config)
    assert list(plan.normal) == ["a", "b"]
    assert list(plan.targets) == ["x", "y"]
    assert plan.truth == {"x": f"{tmp_path}/truth/x_truth.tif"}
    assert plan.demo_files == []


def test_own_tiles_with_demo_still_on_is_an_error():
    from pipeline.config import validate

    with pytest.raises(ConfigError, match="demo: is true.*targets.*set demo: false"):
        wf.plan(validate({"targets": ["mine/*.tif"]}))


def test_tile_names_must_be_unique_and_globs_must_match(tmp_path):
    for name in ["a/t.tif", "b/t.tif"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    with pytest.raises(ConfigError, match="two tiles named 't'"):
        wf.expand_tiles([f"{tmp_path}/*/t.tif"], "normal")
    with pytest.raises(ConfigError, match="targets: .*matches no file"):
        wf.expand_tiles([f"{tmp_path}/none/*.tif"], "targets")
    # the same file through two globs is one tile
    assert wf.expand_tiles([f"{tmp_path}/a/*.tif", f"{tmp_path}/a/t.tif"], "normal") == {"t": f"{tmp_path}/a/t.tif"}


def test_start_stops_with_the_key_and_the_config_files():
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match=r"config \(my.yaml\): train.epochs: 'x' is not of type"):
        wf.start({"train": {"epochs": "x"}}, ["my.yaml"])
    with pytest.raises(WorkflowError, match="normal: '/nonexistent/.*' matches no file"):
        wf.start({"demo": False, "normal": ["/nonexistent/*.tif"]})
    with pytest.raises(WorkflowError, match=r"train.context: ring needs .* set ingest.context"):
        wf.start({"train": {"context": "ring"}})


def test_tiles_are_batched_by_sorted_name():
    from pipeline.config import validate

    assert wf.batches(["c", "a", "e", "b", "d"], 2) == [
        wf.Batch("b0000", ["a", "b"]), wf.Batch("b0001", ["c", "d"]), wf.Batch("b0002", ["e"])]
    assert wf.batches([], 3) == []
    plan = wf.plan(validate({"cluster": {"tiles_per_job": 1}, "synth": {"tiles_test": 3}}))
    assert [b.tiles for b in plan.batches] == [["tile_000"], ["tile_001"], ["tile_002"]]
    assert [len(b.tiles) for b in plan.normal_batches] == [1] * 4
    assert plan.truth_of(plan.batches[1]) == ["tile_001"]
    assert plan.truth_pattern.replace("{tile}", "tile_001") == plan.truth["tile_001"]


def test_truth_pattern_needs_the_tile(tmp_path):
    from pipeline.config import validate

    (tmp_path / "t.tif").touch()
    with pytest.raises(ConfigError, match="truth: .* has no {tile}"):
        wf.plan(validate({"demo": False, "normal": [f"{tmp_path}/*.tif"], "targets": [f"{tmp_path}/*.tif"],
                          "truth": f"{tmp_path}/truth.tif"}))


def test_batch_runtime_grows_with_tiles_and_attempts():
    assert wf.batch_runtime(25, per_tile=2)(None, 1) == 60
    assert wf.batch_runtime(25, per_tile=2)(None, 2) == 120


def test_cluster_account_and_partition_from_config_then_environment():
    env = {"SBATCH_ACCOUNT": "env-acct", "SBATCH_PARTITION": "env-part"}
    assert wf.cluster_resources({"cluster": {"account": "cfg", "partition": ""}}, env) == {
        "slurm_account": "cfg", "slurm_partition": "env-part"}
    assert wf.cluster_resources({"cluster": {"account": "", "partition": ""}}, {}) == {}


def test_write_config_is_the_validated_config_and_leaves_an_unchanged_file_alone(tmp_path):
    from pipeline.config import load_config

    path = tmp_path / "results" / "config.yaml"
    wf.write_config({"train": {"epochs": 3}}, path)
    assert load_config(path)["train"]["epochs"] == 3
    assert load_config(path)["score"]["fpr"] == 0.001  # defaults written out
    before = path.stat().st_mtime_ns
    wf.write_config({"train": {"epochs": 3}}, path)
    assert path.stat().st_mtime_ns == before
    wf.write_config({"train": {"epochs": 4}}, path)
    assert load_config(path)["train"]["epochs"] == 4
    # score.fast, the old name: the resolved config the jobs read carries only score.scoring_path
    with pytest.warns(RsvaeWarning, match="score.fast is deprecated"):  # auto: as Snakemake's check fills it in
        wf.write_config({"score": {"fast": False, "scoring_path": "auto"}}, path)
    written = yaml.safe_load(path.read_text())["score"]
    assert written["scoring_path"] == "layered" and "fast" not in written


# ---- Snakemake runs in a copy of the repository ----------------------------------------------------------

def _env(copy: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), PYTHONPATH=str(copy),
                OMP_NUM_THREADS="1", SBATCH_ACCOUNT="", SBATCH_PARTITION="")


@pytest.fixture
def repo(tmp_path) -> Path:
    """A copy of the workflow's files (no results, no demo) with the tiny test config beside them."""
    pytest.importorskip("snakemake")
    copy = tmp_path / "repo"
    copy.mkdir()
    wf.copy_workflow(ROOT, copy)
    (copy / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    if shutil.which("rsvae", path=_env(copy)["PATH"]) is None:
        pytest.skip("the rsvae command is not installed next to this Python")
    return copy


def snakemake(copy: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run snakemake in ``copy``; stdout and stderr together in ``.stdout``."""
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=copy, env=_env(copy), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table as {rule: count}."""
    table = output.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def check_geotiff(path: Path, like: Path, count: int, dtype: str) -> None:
    """``path`` is a readable GeoTIFF with ``count`` bands of ``dtype`` on the grid of ``like``."""
    import rasterio

    with rasterio.open(path) as ds, rasterio.open(like) as ref:
        assert ds.driver == "GTiff"
        assert (ds.count, ds.dtypes[0]) == (count, dtype)
        assert (ds.width, ds.height, ds.transform) == (ref.width, ref.height, ref.transform)
        assert ds.crs == ref.crs and ds.crs is not None
        ds.read()  # every block decodes


@pytest.mark.slow  # end to end, > 15 s: run by .ci/run, not by the README's test command
def test_demo_runs_end_to_end_and_builds_the_report(repo):
    import numpy as np
    import rasterio

    run = snakemake(repo, "-c2", "--configfile", "tiny.yaml")
    assert run.returncode == 0, run.stdout[-3000:]
    res, tiles = repo / "results", ["tile_000", "tile_001"]
    for t in tiles:
        check_geotiff(res / "scores" / f"{t}.tif", repo / "demo" / "test" / f"{t}.tif", 4, "float32")
        assert (res / "scores" / f"{t}.qml").is_file() and (res / "detections" / f"{t}.gpkg").is_file()
        check_geotiff(res / "masks" / f"{t}.tif", repo / "demo" / "test" / f"{t}.tif", 1, "uint8")
        check_geotiff(res / "features" / f"{t}.tif", repo / "demo" / "test" / f"{t}.tif", 8, "float32")
        with rasterio.open(res / "masks" / f"{t}.tif") as ds:
            assert set(np.unique(ds.read())) <= {0, 1, 255}
        metrics = json.loads((res / "metrics" / f"{t}.json").read_text())
        assert 0.5 < metrics["roc_auc"] <= 1
        for png in [res / "quicklooks" / f"{t}.png", *(res / "plots" / f"{t}_{k}.png"
                                                     for k in ("roc", "quicklook", "histogram"))]:
            assert png.read_bytes()[:4] == b"\x89PNG"
    for step in ("ingest", "score", "quicklook", "evaluate", "features"):  # one batch of each
        assert (res / "logs" / step / "b0000.log").is_file()
        assert (res / "benchmarks" / step / "b0000.tsv").is_file()
    # every job read the run's config: the model trained for the test config's 3 epochs
    model = json.loads((res / "model" / "model.json").read_text())
    assert model["training"]["epochs_run"] == 3 and model["config"]["synth"]["size"] == 32
    summary = (res / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("tile,") and [line.split(",")[0] for line in summary[1:]] == tiles
    assert (res / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "detections" in summary[0] and "top_rarity" in summary[0]
    from pipeline.detections import read

    merged = read(res / "detections.gpkg")[0]
    assert [r["rank"] for r in merged] == list(range(1, len(merged) + 1))
    assert sorted(r["tile"] for r in merged) == sorted(
        r["tile"] for t in tiles for r in read(res / "detections" / f"{t}.gpkg")[0])
    assert "<h1>Detections" in (res / "review.html").read_text()
    # a second run has nothing to do: the written config and the params do not retrigger jobs
    again = snakemake(repo, "-n", "-c2", "--configfile", "tiny.yaml")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout[-2000:]
    report = snakemake(repo, "--configfile", "tiny.yaml", "--report", "results/report.html")
    assert report.returncode == 0, report.stdout[-2000:]
    html = (res / "report.html").read_text()
    for item in ("quicklooks/tile_000.png", "tile_001_roc.png", "training_curve.png", "summary.html", "review.html",
                 "4. Detections"):
        assert item in html


def test_slurm_profile_dry_run_plans_every_job_with_account_partition_and_gpu(repo):
    (repo / "cluster.yaml").write_text(yaml.safe_dump({"cluster": {"account": "proj42", "gpu": True}}))
    env_part = _env(repo)
    env_part["SBATCH_PARTITION"] = "batch"
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--profile", "configs/profiles/slurm",
                          "--configfile", "tiny.yaml", "cluster.yaml"], cwd=repo, env=env_part, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]
    assert job_counts(run.stdout) == TINY_JOBS
    resources = re.findall(r"^\s*rule (\w+):.*?resources: ([^\n]*)", run.stdout, re.M | re.S)
    assert {rule for rule, _ in resources} == set(TINY_JOBS)
    for rule, res in resources:
        if rule != "all":
            assert "slurm_account=proj42" in res and "slurm_partition=batch" in res, (rule, res)
            assert re.search(r"\bmem_mb=\d+", res) and re.search(r"\bruntime=\d+", res)
        assert ("gpu=1" in res) == (rule == "train"), (rule, res)
    # a batch's per-tile steps are one group job (printed indented), the merged detections and their review page
    # another; merge and train are not grouped when training asks for a GPU
    grouped = set(re.findall(r"^ +rule (\w+):", run.stdout, re.M))
    assert grouped == {"score_b0000", "quicklook_b0000", "evaluate_b0000", "features_b0000", "detect_b0000",
                       "summarize_b0000", "merge_detections", "review"}
    assert not (repo / "results").exists() and not (repo / "demo").exists()


@pytest.mark.parametrize("bad, key", [
    ({"train": {"epochs": "many"}}, "train.epochs"),
    ({"trian": {"epochs": 3}}, "unknown key 'trian'"),
])
def test_bad_config_stops_before_any_job_naming_the_key(repo, bad, key):
    (repo / "bad.yaml").write_text(yaml.safe_dump(bad))
    run = snakemake(repo, "-c1", "--configfile", "bad.yaml")
    assert run.returncode != 0
    assert re.search(key, run.stdout), run.stdout[-2000:]
    assert "bad.yaml" in run.stdout
    assert not (repo / "results").exists() and not (repo / "demo").exists()


def test_lint_is_clean(repo):
    run = snakemake(repo, "--lint")
    assert run.returncode == 0, run.stdout[-3000:]
    assert "Lints for" not in run.stdout and "Congratulations" in run.stdout


# ---- product folders (rules/stack.smk) -----------------------------------------------------------------------

def _band_folder(folder: Path, seed: int, size: int = 40) -> Path:
    """A BigEarthNet-like Sentinel-2 patch: one GeoTIFF per band, B02-B04/B08 at 10 m, the rest at 20 m."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i, band in enumerate(["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]):
        res = 10 if band in ("B02", "B03", "B04", "B08") else 20
        n = size * 10 // res
        data = (1000 + 100 * i + rng.integers(0, 200, (1, n, n))).astype("uint16")
        with rasterio.open(folder / f"{folder.name}_{band}.tif", "w", driver="GTiff", width=n, height=n, count=1,
                           dtype="uint16", crs="EPSG:32632", transform=from_origin(600000, 5000000, res, res)) as ds:
            ds.write(data)
    return folder


def test_plan_stacks_product_folders_and_takes_urls(tmp_path):
    from pipeline.config import validate

    _band_folder(tmp_path / "S2" / "S2A_MSIL2A_20170617T113321_4_55", 0)
    _band_folder(tmp_path / "S2" / "S2B_MSIL2A_20170924T93020_69_24", 1)
    (tmp_path / "S2" / "notes").mkdir()  # a folder the glob matches that is no product: skipped
    config = validate({"demo": False, "normal": [f"{tmp_path}/S2/*"],
                       "targets": ["https://example.org/cogs/scene_a.tif?sig=1"], "results": "res"})
    plan = wf.plan(config)
    assert plan.normal == {"S2A_MSIL2A_20170617T113321_4_55": "res/stacks/S2A_MSIL2A_20170617T113321_4_55.vrt",
                           "S2B_MSIL2A_20170924T93020_69_24": "res/stacks/S2B_MSIL2A_20170924T93020_69_24.vrt"}
    assert plan.stacks["S2A_MSIL2A_20170617T113321_4_55"] == f"{tmp_path}/S2/S2A_MSIL2A_20170617T113321_4_55"
    assert plan.targets == {"scene_a": "res/stacks/scene_a.vrt"}  # a local VRT of the URL, for Snakemake
    assert plan.stacks["scene_a"] == "https://example.org/cogs/scene_a.tif?sig=1"
    assert wf.stack_input(plan.stacks["scene_a"]) == []
    with pytest.raises(ConfigError, match=r"normal: no Sentinel-2 or Landsat band files in .*notes"):
        wf.plan(validate(dict(config, normal=[f"{tmp_path}/S2/notes"])))


@pytest.mark.slow  # end to end, > 15 s: run by .ci/run, not by the README's test command
def test_product_folders_run_through_the_workflow(repo):
    import rasterio

    for k in range(3):
        _band_folder(repo / "data" / ("normal" if k < 2 else "target") / f"S2A_MSIL2A_2024060{k}T103031_{k}_0", k)
    (repo / "own.yaml").write_text(yaml.safe_dump({
        "demo": False, "normal": ["data/normal/*"], "targets": ["data/target/*"], "truth": "none/{tile}.tif",
        "ingest": {"max_pixels": 1000}, "train": {"epochs": 2, "patience": 0, "batch_size": 256},
        "stack": {"bands": ["B02", "B03", "B04", "B08", "B8A"]}}))
    run = snakemake(repo, "-c2", "--configfile", "own.yaml", timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    assert job_counts(run.stdout)["stack"] == 3
    res = repo / "results"
    with rasterio.open(res / "stacks" / "S2A_MSIL2A_20240600T103031_0_0.vrt") as ds:
        assert ds.descriptions == ("B02", "B03", "B04", "B08", "B8A") and ds.res == (10, 10)
    target = "S2A_MSIL2A_20240602T103031_2_0"
    check_geotiff(res / "scores" / f"{target}.tif", res / "stacks" / f"{target}.vrt", 4, "float32")
    model = json.loads((res / "model" / "model.json").read_text())
    assert model["wavelengths"] == [490, 560, 665, 842, 865]
