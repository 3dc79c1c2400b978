"""Stacking and scoring one EnMAP-size hyperspectral scene: ``rsvae stack`` -> ingest -> train -> ``rsvae score``.

Builds (once, cached in --cache) a synthetic EnMAP L2A folder in the documented layout
(``tests/hyperspectral_products.write_enmap``: SIZE x SIZE x 224 int16 band-interleaved deflate GeoTIFF, METADATA.XML,
cloud and shadow quality layers), then runs each step as its own ``rsvae`` process, timed from its start to its end
(start-up included, as a user sees it), with its peak RSS (``os.wait4``; this small parent's own memory is the
floor a child's figure starts from). Training (a 100 000-pixel sample, --epochs) is reported apart: the figure the
README quotes is stack + score.

    python benchmarks/hyperspectral.py                # 1000 x 1000 x 224, as EnMAP delivers a scene
    python benchmarks/hyperspectral.py --size 200     # seconds
    python benchmarks/hyperspectral.py --emit         # an EMIT-size NetCDF (1242 x 1280 x 285, GLT to the map)

``--emit`` builds an EMIT L2A reflectance file instead (its swath rotated by 20 degrees on the map grid), so the
stack step includes orthorectifying it into ``SCENE.cube.tif``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import hyperspectral_products as hp  # noqa: E402


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Run ``argv``; return (wall seconds, peak RSS in MiB, its output); stop on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{out}")
    return wall, usage.ru_maxrss / 1024, out.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1000, help="scene rows and columns (EnMAP: 1000)")
    ap.add_argument("--emit", action="store_true", help="an EMIT-size NetCDF instead of an EnMAP folder")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs (not part of stack + score)")
    ap.add_argument("--cache", default="/tmp/rsvae-bench-hyperspectral", help="folder for the synthetic scene")
    ap.add_argument("--make", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    rsvae = str(Path(sys.executable).with_name("rsvae"))
    cache = Path(args.cache)
    kind = "emit" if args.emit else "enmap"
    product_dir = cache / f"{kind}-{args.size}"
    t0 = time.perf_counter()
    if args.make:  # in its own process (below), so this one stays small: a child's peak RSS starts from ours
        if args.emit:
            hp.write_emit(product_dir, size=args.size, bands=285)
        else:
            hp.write_enmap(product_dir, size=args.size)
        return
    if args.emit:
        product = product_dir / "EMIT_L2A_RFL_001_20230401T061523_2309104_002.nc"
        done = product.exists()
    else:
        product = product_dir / hp.ENMAP_ID
        done = (product / f"{hp.ENMAP_ID}-METADATA.XML").exists()
    if not done:
        timed([sys.executable, __file__, "--make", "--size", str(args.size), "--cache", str(cache),
               *(["--emit"] if args.emit else [])])
    print(f"scene: {product} (made or found in {time.perf_counter() - t0:.1f} s)")
    work = cache / f"work-{kind}-{args.size}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    vrt, sample, model, scores = work / "scene.vrt", work / "s.nc", work / "model", work / "scores.tif"
    steps = [
        ("stack (VRT)", [rsvae, "stack", str(product), "-o", str(vrt)]),
        ("ingest (100 000 pixels)", [rsvae, "ingest", str(vrt), "-o", str(sample), "--max-pixels", "100000"]),
        (f"train ({args.epochs} epochs)", [rsvae, "train", str(sample), "-o", str(model), "--epochs",
                                           str(args.epochs), "-q"]),
        ("score", [rsvae, "score", str(model), str(vrt), "-o", str(scores), "-q"]),
    ]
    rows = []
    for name, argv in steps:
        wall, rss, out = timed(argv)
        rows.append((name, wall, rss))
        if out:
            print(f"{name}: {out.splitlines()[-1][:300]}")
    print(f"\n| step ({kind}, {args.size} x {args.size}) | wall s | peak RSS MiB |\n|---|---:|---:|")
    for name, wall, rss in rows:
        print(f"| {name} | {wall:.1f} | {rss:.0f} |")
    total = rows[0][1] + rows[3][1]
    print(f"| **stack + score** | **{total:.1f}** | |")
    print(f"\ncpus: {os.cpu_count()}, load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
