"""How long Snakemake takes to plan a run of many tiles: `snakemake -n` on N empty target files.

Makes N empty target tiles (and truth files for every other one, a few normal tiles) in a temporary copy of the
workflow, then times `snakemake -n --quiet` for each N. Nothing is read from the tiles: planning only globs them
and checks which truth files exist. Prints a markdown table: targets, Snakemake jobs planned, seconds.

    python benchmarks/planning.py                    # 2000 and 10000 targets
    python benchmarks/planning.py -n 200 2000 --profile configs/profiles/slurm
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

from pipeline.workflow import copy_workflow

ROOT = Path(__file__).resolve().parents[1]


def make_copy(folder: Path, targets: int, normal: int = 4) -> Path:
    """A copy of the workflow in ``folder`` with ``targets`` empty tiles (truth for every other one)."""
    copy_workflow(ROOT, folder)
    for sub in ("normal", "targets", "truth"):
        (folder / "tiles" / sub).mkdir(parents=True)
    for i in range(normal):
        (folder / "tiles" / "normal" / f"n{i:05d}.tif").touch()
    for i in range(targets):
        (folder / "tiles" / "targets" / f"t{i:05d}.tif").touch()
        if i % 2 == 0:
            (folder / "tiles" / "truth" / f"t{i:05d}.tif").touch()
    config = {"demo": False, "normal": ["tiles/normal/*.tif"], "targets": ["tiles/targets/*.tif"],
              "truth": "tiles/truth/{tile}.tif", "features": True}
    (folder / "plan.yaml").write_text(yaml.safe_dump(config))
    return folder


def plan_seconds(folder: Path, extra: list[str]) -> tuple[float, int, str]:
    """Seconds `snakemake -n` took, the jobs it planned, and its output's tail."""
    env = dict(os.environ, PYTHONPATH=str(folder))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-c1", "--configfile", "plan.yaml", *extra],
                         cwd=folder, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{run.stdout[-3000:]}")
    total = re.search(r"^total\s+(\d+)$", run.stdout, re.M)
    return seconds, int(total[1]) if total else 0, run.stdout[-400:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--targets", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--profile", help="a Snakemake profile to plan with (e.g. configs/profiles/slurm)")
    args = parser.parse_args(argv)
    extra = ["--profile", args.profile] if args.profile else []
    print("| targets | jobs planned | seconds |\n| ---: | ---: | ---: |")
    for n in args.targets:
        with tempfile.TemporaryDirectory() as tmp:
            seconds, jobs, _ = plan_seconds(make_copy(Path(tmp), n), extra)
        print(f"| {n} | {jobs} | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
