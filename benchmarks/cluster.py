"""The workflow on a real SLURM cluster: jobs submitted, wall time and CPU seconds per tile beyond scoring.

Runs a demo of N small target tiles through ``--profile configs/profiles/slurm`` in a temporary copy of the
workflow (this working tree, or ``--revision`` of the repository for a before/after comparison), then reads
``sacct`` for the run's jobs (they are named after Snakemake's SLURM run ID) and prints one markdown table row:

* SLURM jobs submitted, and Snakemake jobs;
* wall seconds of the whole `snakemake` command (including the executor's status-check waits);
* CPU seconds per target tile beyond scoring: the CPU time SLURM accounted to the jobs of the per-target steps
  (score, quicklook, evaluate, features; each job's Snakemake and every process it started), less the CPU that
  scoring the same tiles takes in one process here (``score_raster``, model loaded once), divided by the tiles;
  and "of which jobs and processes": less also the CPU of their quicklooks and evaluations (metrics and three
  plots) in one process, i.e. what the jobs, Snakemake and process starts cost.

Needs a working ``sbatch``/``sacct`` (e.g. ``bash ../shared/tools/slurm-local.sh``).

    python benchmarks/cluster.py --tiles 200 --tiles-per-job 25
    python benchmarks/cluster.py --tiles 200 --revision 029bf0a      # the workflow before batching
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from pipeline import workflow

ROOT = Path(__file__).resolve().parents[1]
#: Per-target steps: a SLURM job whose Snakemake log folder names one of them is a per-target job.
TARGET_STEPS = ("score", "quicklook", "evaluate", "features")
#: Short executor waits, so the small demo's wall time is not all polling (the defaults suit real clusters).
FAST_POLLING = ["--slurm-init-seconds-before-status-checks", "5", "--seconds-between-status-checks", "5"]


def checkout_workflow(dest: Path, revision: str | None) -> None:
    """The workflow's files from this working tree, or from a git revision of it."""
    if revision:
        archive = subprocess.run(["git", "archive", revision, *workflow.WORKFLOW_FILES], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    workflow.copy_workflow(ROOT, dest)


def seconds(text: str) -> float:
    """sacct's [D-][HH:]MM:SS[.mmm] as seconds."""
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return (float(days) if days else 0.0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def sacct_jobs(run_id: str) -> dict[str, dict[str, object]]:
    """The run's SLURM jobs: id -> state and CPU seconds (the job's own row sums its steps)."""
    rows = subprocess.run(["sacct", "-X", "-n", "-P", "--starttime", "now-1days", "--name", run_id,
                           "-o", "JobID,State"], capture_output=True, text=True, check=True).stdout.splitlines()
    jobs = {r.split("|")[0]: {"state": r.split("|")[1]} for r in rows if r}
    if jobs:
        out = subprocess.run(["sacct", "-n", "-P", "-j", ",".join(jobs), "-o", "JobID,TotalCPU"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        for row in out:
            job_id, cpu = row.split("|")
            if job_id in jobs:
                jobs[job_id]["cpu"] = seconds(cpu)
    return jobs


def job_steps(folder: Path) -> dict[str, str]:
    """SLURM job id -> its Snakemake log folder (e.g. group_tiles_evaluate_b0000_..., rule_score/tile_000)."""
    logs = folder / ".snakemake" / "slurm_logs"
    return {p.stem: str(p.relative_to(logs).parent) for p in logs.rglob("*.log")}


def in_process_cpu(folder: Path, targets: list[Path]) -> tuple[float, float]:
    """CPU seconds, in this one process with everything imported and the model loaded, to score ``targets``
    (score raster + mask) and to draw and evaluate them (quicklook; metrics and the three plots)."""
    sys.path.insert(0, str(folder))
    import torch

    from pipeline.detectors import load_detector
    from pipeline.evaluate import evaluate
    from pipeline.report import quicklook
    from pipeline.scoring import score_raster

    torch.set_num_threads(1)
    det = load_detector(folder / "results" / "model")
    truth = folder / "demo" / "truth"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)

        def score(tile: Path) -> None:
            score_raster(det, tile, out / tile.name, mask_out=out / f"m_{tile.name}", fpr=0.001)

        def follow_up(tile: Path) -> None:
            quicklook(out / tile.name, out / f"{tile.stem}.png", mask=out / f"m_{tile.name}")
            evaluate(out / tile.name, truth / tile.name, out / f"{tile.stem}.json", out / "plots")

        score(targets[0])
        follow_up(targets[0])  # warm: imports, fonts
        t0 = time.process_time()
        for tile in targets:
            score(tile)
        t1 = time.process_time()
        for tile in targets:
            follow_up(tile)
        return t1 - t0, time.process_time() - t1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=200, help="target tiles (demo test tiles)")
    parser.add_argument("--size", type=int, default=32, help="tile width and height")
    parser.add_argument("--tiles-per-job", type=int, help="cluster.tiles_per_job (default: the schema's)")
    parser.add_argument("--revision", help="git revision of the workflow to run (default: this working tree)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds before the run is stopped")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--again", action="store_true",
                        help="only measure the finished run kept in --keep again (sacct, in-process CPU)")
    args = parser.parse_args(argv)
    if args.again:
        output = (args.keep / "snakemake.out").read_text()
        finished = "steps (100%) done" in output
        return report(args, args.keep, output, finished, wall=float("nan"))

    folder = args.keep or Path(tempfile.mkdtemp(prefix="rsvae-cluster-"))
    folder.mkdir(parents=True, exist_ok=True)
    checkout_workflow(folder, args.revision)
    config = {"synth": {"size": args.size, "bands": 8, "tiles_normal": 4, "tiles_test": args.tiles},
              "ingest": {"max_pixels": 4000}, "train": {"epochs": 3, "patience": 0, "batch_size": 256}}
    if args.tiles_per_job:
        config["cluster"] = {"tiles_per_job": args.tiles_per_job}
    (folder / "bench.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(folder), OMP_NUM_THREADS="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    t0 = time.perf_counter()
    try:
        run = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "configs/profiles/slurm",
                              "--configfile", "bench.yaml", "--slurm-keep-successful-logs", *FAST_POLLING],
                             cwd=folder, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=args.timeout)
        output, finished = run.stdout, run.returncode == 0
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        finished = False
    wall = time.perf_counter() - t0
    (folder / "snakemake.out").write_text(output)
    return report(args, folder, output, finished, wall)


def report(args: argparse.Namespace, folder: Path, output: str, finished: bool, wall: float) -> int:
    """Read sacct and the outputs of the run in ``folder``, measure in-process CPU, print the table row."""
    run_id = re.search(r"SLURM run ID: (\S+)", output)
    if not run_id:
        print(output[-3000:])
        return 1
    if not finished:  # a stopped Snakemake leaves its queued and running jobs behind
        subprocess.run(["scancel", "--name", run_id[1]], check=False)
        time.sleep(5)
    jobs = sacct_jobs(run_id[1])
    steps = job_steps(folder)
    total = re.search(r"^total\s+(\d+)$", output, re.M)
    per_target = {j: v for j, v in jobs.items() if any(s in steps.get(j, "") for s in TARGET_STEPS)
                  and v["state"] == "COMPLETED"}
    res = folder / "results"
    done = sorted((res / "scores").glob("*.tif")) if (res / "scores").is_dir() else []
    targets = sorted((folder / "demo" / "test").glob("*.tif"))
    scoring, follow_up = in_process_cpu(folder, targets) if (res / "model").is_dir() else (float("nan"),) * 2
    target_cpu = sum(float(v.get("cpu", 0.0)) for v in per_target.values())
    if finished:
        per_tile = target_cpu / max(len(targets), 1)
    else:  # stopped early (one job per tile and step): a tile costs one job of each step, at the mean seen
        per_step: dict[str, list[float]] = {}
        for job_id, v in per_target.items():
            step = next(s for s in TARGET_STEPS if s in steps[job_id])
            per_step.setdefault(step, []).append(float(v.get("cpu", 0.0)))
        per_tile = sum(sum(c) / len(c) for c in per_step.values())
        print("stopped early; CPU per job by step: "
              + ", ".join(f"{k} {sum(c) / len(c):.2f} s ({len(c)} jobs)" for k, c in per_step.items()))
    beyond = per_tile - scoring / max(len(targets), 1)
    overhead = per_tile - (scoring + follow_up) / max(len(targets), 1)
    label = f"revision {args.revision}" if args.revision else f"tiles_per_job {args.tiles_per_job or 'default'}"
    print("| workflow | targets | Snakemake jobs | SLURM jobs | per-target SLURM jobs | wall s | "
          "per-target CPU s | in one process: scoring, quicklook+evaluate CPU s | "
          "CPU s per tile beyond scoring | of which jobs and processes | finished |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    print(f"| {label} | {len(targets)} | {total[1] if total else '?'} | {len(jobs)} | {len(per_target)} | "
          f"{wall:.0f} | {target_cpu:.1f} | {scoring:.1f}, {follow_up:.1f} | {beyond:.2f} | {overhead:.2f} | "
          f"{'yes' if finished else f'no ({len(done)} tiles scored)'} |")
    print(f"(run folder {folder}; SLURM run ID {run_id[1]})")
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
