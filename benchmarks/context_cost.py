"""What the context VAE costs against the per-pixel VAE: ingest, training and `rsvae score`, in one run.

Builds (once, cached) the synthetic SIZE x SIZE x BANDS float32 GeoTIFF of ``throughput.py``, ingests it with and
without ring means (``ingest.context``), trains both models with the CLI (default settings, ``train.context``
none and ring), then runs ``rsvae score`` with each model, interleaved, ``--repeat`` times. Each command runs in its
own process; its CPU seconds (user + system, from the kernel's accounting of the child) and wall seconds are
printed, the fastest run of each counting, and the ratio context / per-pixel. Timings on a shared machine are noise
except as ratios within one run.

    python benchmarks/context_cost.py                  # 1024 x 1024 x 64
    python benchmarks/context_cost.py --size 512 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import build_raster  # noqa: E402


def measured(argv: list[str]) -> tuple[float, float]:
    """Run ``rsvae ARGV`` in a new process; its (CPU seconds, wall seconds). A failure stops the benchmark."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pipeline", *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode:
        raise SystemExit(f"rsvae {' '.join(argv)} failed:\n{res.stderr}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main(argv: list[str] | None = None) -> int:
    """Build, ingest, train both models, score with both; print the table and the ratios."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--bands", type=int, default=64)
    p.add_argument("--repeat", type=int, default=2, help="scoring runs per model (interleaved); the fastest counts")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rsvae-bench")
    a = p.parse_args(argv)
    raster = build_raster(a.cache / f"scene-{a.size}-{a.bands}-pixel.tif", a.size, a.bands)
    pixels = a.size * a.size
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plain_cfg, ring_cfg = work / "plain.yaml", work / "ring.yaml"
        plain_cfg.write_text("ingest:\n  context: null\n")
        ring_cfg.write_text("ingest:\n  context: [3, 9]\ntrain:\n  context: ring\n")
        rows = []
        for name, cfg in (("per-pixel", plain_cfg), ("context", ring_cfg)):
            ing = measured(["ingest", str(raster), "-o", str(work / f"{name}.nc"), "--config", str(cfg), "-q"])
            trn = measured(["train", str(work / f"{name}.nc"), "-o", str(work / name), "--config", str(cfg), "-q"])
            rows.append((name, ing, trn))
        best: dict[str, tuple[float, float]] = {}
        for _ in range(a.repeat):
            for name in ("per-pixel", "context"):
                got = measured(["score", str(work / name), str(raster), "-o", str(work / f"{name}.tif"), "-q"])
                best[name] = min(best.get(name, got), got)
    print(f"{a.size} x {a.size} x {a.bands} float32, {os.cpu_count()} cores; CPU and wall seconds per process")
    print("| model | ingest CPU s | train CPU s (wall) | score CPU s (wall) | score CPU µs per pixel |")
    print("| --- | --- | --- | --- | --- |")
    for name, ing, trn in rows:
        cpu, wall = best[name]
        print(f"| {name} | {ing[0]:.1f} | {trn[0]:.1f} ({trn[1]:.1f}) | {cpu:.1f} ({wall:.1f}) | "
              f"{cpu / pixels * 1e6:.2f} |")
    ratio = best["context"][0] / best["per-pixel"][0]
    print(f"\nscoring CPU seconds, context / per-pixel: {ratio:.2f} x (target ≤ 1.5 x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
