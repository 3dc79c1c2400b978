"""Implanted sub-pixel targets: does a detector find one-pixel targets it was not tuned on, on other imagery?

The dev scenes' own truth judges the models on the targets those scenes happen to hold (aircraft, vehicles: objects
of several pixels), which is what a change can end up fitted to. Here each scene gets new targets of another kind:
``--count`` single pixels, each moved a fraction ``--strength`` of the way from its local (3×3) mean towards a
target spectrum (x + s·(t - local mean): the pixel keeps its own noise, so the target is a sub-pixel fill, not
a smoother mixture). On the hyperspectral scenes of ``../shared/data/had`` the target spectrum is one of the scene's
own truth pixels (a real target material, put where it is not); on the Sentinel-2 patches of
``../shared/data/real/sentinel2`` (10 bands at 10 m, the 20 m bands repeated) it is a flat grey of 30 %
reflectance. Targets avoid the scenes' own anomalies and their 2-pixel surroundings, and those are left out of
the evaluation. Each detector is run as ``benchmarks/had.py`` runs it (ingest, train, score, plain defaults, the
scene as its own sample). It prints ROC AUC of the implanted pixels against the rest.

    python benchmarks/implants.py                              # vae, context, context with one covariance
    python benchmarks/implants.py --seeds 2 --strength 0.3 --methods vae,context
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from had import DEFAULT_FOLDER, load_scene, run  # noqa: E402

from pipeline.cog_writer import write_raster  # noqa: E402

SENTINEL2 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "sentinel2"
S2_BANDS = ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12")
#: Methods: (had.run method, train.context_noise or None for the defaults).
METHODS = {"vae": ("vae", None), "context": ("context", None), "context-fixed": ("context", "fixed")}


def load_sentinel2(folder: Path) -> np.ndarray:
    """A BigEarthNet patch's 10 m and 20 m bands as (bands, 120, 120) float32, the 20 m bands repeated 2×2."""
    import rasterio

    out = []
    for name in S2_BANDS:
        with rasterio.open(next(folder.glob(f"*_{name}.tif"))) as ds:
            band = ds.read(1).astype(np.float32)
        f = 120 // band.shape[0]
        out.append(np.kron(band, np.ones((f, f), np.float32)))
    return np.stack(out)


def implant(data: np.ndarray, truth: np.ndarray, count: int, strength: float,
            seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``data`` with ``count`` one-pixel targets (see the module's docstring), the targets' map, and the pixels to
    evaluate (all but the scene's own anomalies and their surroundings)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    bands, rows, cols = data.shape
    own = ndimage.binary_dilation(truth > 0, iterations=2)
    spots = np.argwhere(~own[2:-2, 2:-2]) + 2
    spots = spots[rng.choice(len(spots), count, replace=False)]
    materials = data[:, truth > 0].T if truth.any() else np.full((1, bands), 3000.0)
    out, where = data.astype(np.float64), np.zeros((rows, cols), np.uint8)
    for i, j in spots:
        local = data[:, i - 1:i + 2, j - 1:j + 2].mean(axis=(1, 2))
        out[:, i, j] += strength * (materials[rng.integers(len(materials))] - local)
        where[i, j] = 1
    return out.astype(np.float32), where, ~own


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC of ``scores`` against boolean ``truth`` (ties counted half), NaN scores left out."""
    from scipy.stats import rankdata

    ok = np.isfinite(scores)
    s, t = scores[ok], truth[ok].astype(bool)
    r = rankdata(s)
    pos, neg = t.sum(), (~t).sum()
    return float((r[t].sum() - pos * (pos + 1) / 2) / (pos * neg))


def main(argv: list[str] | None = None) -> int:
    """Run every scene and method; print the markdown table."""
    import rasterio

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per scene and method (default 1)")
    ap.add_argument("--methods", default="vae,context,context-fixed", help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--count", type=int, default=40, help="targets per scene (default 40)")
    ap.add_argument("--strength", type=float, default=0.3, help="fraction of the way to the target (default 0.3)")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := set(methods) - set(METHODS):
        ap.error(f"unknown methods {sorted(unknown)}")
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    warnings.filterwarnings("ignore", message=".*has no CRS.*")
    warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
    scenes = [(p.stem, *load_scene(p)) for p in sorted(Path(DEFAULT_FOLDER).glob("*.mat"))]
    scenes += [(Path(f).name.split("_")[2] + "-s2", load_sentinel2(Path(f)), np.zeros((120, 120), np.uint8))
               for f in sorted(glob.glob(str(SENTINEL2 / "*")))]
    if not scenes:
        print("no scenes found under ../shared/data", file=sys.stderr)
        return 1
    table: dict[str, list[float]] = {m: [] for m in methods}
    print(f"| scene | {' | '.join(methods)} |")
    print(f"| --- |{' --- |' * len(methods)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, data, truth in scenes:
            work = Path(tmp) / name
            moved, where, keep = implant(data, truth, args.count, args.strength, seed=0)
            tile, truth_tif = work / "scene.tif", work / "truth.tif"
            write_raster(tile, moved)
            write_raster(truth_tif, where[None], resampling="NEAREST")
            cells = []
            for m in methods:
                method, noise = METHODS[m]
                config = None
                if noise:
                    config = work / f"{m}.yaml"
                    config.write_text(f"train: {{context_noise: {noise}}}\n")
                aucs = []
                for seed in range(args.seeds):
                    run(tile, truth_tif, work, method, seed, config)
                    with rasterio.open(work / f"scores-{method}-{seed}.tif") as ds:
                        aucs.append(roc_auc(ds.read(1)[keep], where[keep]))
                table[m].append(float(np.mean(aucs)))
                cells.append(f"{np.mean(aucs):.3f}" + (f" ± {np.std(aucs):.3f}" if len(aucs) > 1 else ""))
            print(f"| {name} | {' | '.join(cells)} |", flush=True)
    print(f"| mean | {' | '.join(f'{np.mean(v):.3f}' for v in table.values())} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
