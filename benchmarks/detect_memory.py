"""`rsvae detect` streams: its peak memory follows the number of detections, not the raster's size.

Writes synthetic score rasters (bands ``score`` and ``rarity``, tiled, deflate) of growing size holding the same
number of rare blobs, plus one with many more blobs, runs `rsvae detect` on each in a fresh process and prints
its peak resident memory (ru_maxrss of the child) and time.

    python benchmarks/detect_memory.py [--sizes 2048 8192] [--blobs 300] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_scores(path: Path, size: int, blobs: int, seed: int = 0) -> None:
    """A ``size``² two-band score raster with ``blobs`` rare 3x3 blobs at random places, written strip by strip."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, size - 3, blobs), rng.integers(0, size - 3, blobs)
    profile = dict(driver="GTiff", width=size, height=size, count=2, dtype="float32", nodata=-9999.0,
                   crs="EPSG:32632", transform=from_origin(500000, 5000000, 10, 10), tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate")
    strip = 1024
    with rasterio.open(path, "w", **profile) as ds:
        ds.descriptions = ("score", "rarity")
        for r0 in range(0, size, strip):
            h = min(strip, size - r0)
            rarity = rng.uniform(0, 2, (h, size)).astype(np.float32)
            for r, c in zip(rows, cols, strict=True):
                if r0 <= r < r0 + h - 3:
                    rarity[r - r0:r - r0 + 3, c:c + 3] = 9.0
            ds.write(np.stack([rarity * 10, rarity]), window=Window(0, r0, size, h))


def run_detect(scores: Path, out: Path) -> tuple[float, float, str]:
    """Run `rsvae detect` in a fresh process: (peak RSS in MiB, seconds, its summary line)."""
    code = ("import resource, sys; from pipeline.cli import main; sys.argv = ['rsvae'] + sys.argv[1:]\n"
            "try:\n    main()\nfinally:\n"
            "    print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, "detect", str(scores), "-o", str(out)], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t0
    lines = res.stderr.strip().splitlines()
    rss = next(int(line.split()[1]) for line in lines if line.startswith("maxrss"))
    summary = next((line for line in lines if line.startswith("wrote")), "")
    return rss / 1024, seconds, summary


def main(argv: list[str] | None = None) -> int:
    """Print peak memory and time of `rsvae detect` per raster size and blob count."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--blobs", type=int, default=300)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cases = [(s, args.blobs) for s in args.sizes] + [(args.sizes[0], args.blobs * 10)]
        print(f"{'raster':>12} {'raw MiB':>8} {'blobs':>6} {'peak RSS MiB':>13} {'seconds':>8}  result")
        for size, blobs in cases:
            path = work / f"scores_{size}_{blobs}.tif"
            if not path.exists():
                write_scores(path, size, blobs)
            rss, seconds, summary = run_detect(path, work / f"d_{size}_{blobs}.gpkg")
            raw = size * size * 2 * 4 / 2**20
            print(f"{size:>5}x{size:<6} {raw:>8.0f} {blobs:>6} {rss:>13.0f} {seconds:>8.1f}  {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
