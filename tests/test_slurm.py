"""The workflow on a real SLURM cluster, through configs/profiles/slurm: every output, and the jobs sacct saw.

Runs only where sbatch works (e.g. after `bash ../shared/tools/slurm-local.sh`, a one-node cluster with
accounting); skipped elsewhere, as in CI. About two minutes, most of it the executor's status-check waits.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from tests.test_workflow import check_geotiff, job_counts, repo, snakemake  # noqa: F401 (repo is a fixture)

#: A 12-target demo (two batches would need more than cluster.tiles_per_job targets: 12 fit one).
DEMO12 = {"synth": {"size": 32, "bands": 8, "tiles_normal": 4, "tiles_test": 12},
          "ingest": {"max_pixels": 1500}, "train": {"epochs": 3, "patience": 0, "batch_size": 256}}
#: What SLURM runs for it: one job for the ingest batch, merge+train, the target batch's group, the summary, the
#: merged detections with their review page (the demo data are made on the submitting machine, `all` is local too).
SLURM_JOBS = 5


def _slurm_works() -> bool:
    if not (shutil.which("sbatch") and shutil.which("sacct") and shutil.which("sinfo")):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0 and \
            subprocess.run(["sacct", "-n", "-X", "-S", "now-1hours"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not _slurm_works(), reason="no working SLURM (sbatch, sinfo, sacct) here")


def test_demo_through_the_slurm_profile_makes_every_output_in_few_jobs(repo):  # noqa: F811
    import rasterio

    (repo / "demo12.yaml").write_text(yaml.safe_dump(DEMO12))
    run = snakemake(repo, "--profile", "configs/profiles/slurm", "--configfile", "demo12.yaml",
                    "--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "5",
                    timeout=600)
    assert run.returncode == 0, run.stdout[-4000:]
    res, tiles = repo / "results", [f"tile_{i:03d}" for i in range(12)]
    for t in tiles:
        like = repo / "demo" / "test" / f"{t}.tif"
        check_geotiff(res / "scores" / f"{t}.tif", like, 4, "float32")
        assert (res / "detections" / f"{t}.gpkg").is_file()
        check_geotiff(res / "masks" / f"{t}.tif", like, 1, "uint8")
        with rasterio.open(res / "masks" / f"{t}.tif") as ds:
            assert set(np.unique(ds.read())) <= {0, 1, 255}
        assert (res / "metrics" / f"{t}.json").is_file()
        for png in [res / "quicklooks" / f"{t}.png", *(res / "plots" / f"{t}_{k}.png"
                                                     for k in ("roc", "quicklook", "histogram"))]:
            assert png.read_bytes()[:4] == b"\x89PNG", png
    rows = (res / "summary.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == tiles
    assert (res / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (res / "detections.gpkg").is_file() and "Detections" in (res / "review.html").read_text()

    # the jobs SLURM accounted for this run (named after Snakemake's SLURM run ID), all completed
    run_id = re.search(r"SLURM run ID: (\S+)", run.stdout)[1]
    sacct = subprocess.run(["sacct", "-X", "-n", "-P", "-S", "now-1hours", "--name", run_id, "-o", "JobID,State"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(sacct) == SLURM_JOBS and all(r.endswith("|COMPLETED") for r in sacct), sacct
    snakemake_jobs = sum(job_counts(run.stdout).values())
    assert SLURM_JOBS * 2 <= snakemake_jobs, (SLURM_JOBS, snakemake_jobs)
