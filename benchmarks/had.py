"""Detection quality on hyperspectral anomaly-detection scenes: the real pipeline, RX and LRX, one table.

For every ``.mat`` scene in a folder (MATLAB arrays ``data`` rows×cols×bands and ``map`` rows×cols, 1 = anomaly)
this writes the scene and its truth as GeoTIFFs, then runs what a user runs with default settings: ingest a
sample from the scene itself (unsupervised: the anomalies are rare, so the scene is its own "normal" data), train,
score; the VAE with several seeds, global RX and local RX once each. ``context`` is the context VAE
(``train.context: ring``, with ``ingest.context`` [3, 9] unless the config sets other windows), with several seeds. It prints a markdown table of pixel-level
ROC AUC and average precision, and the seconds each run took (ingest + train + score).

    python benchmarks/had.py                      # the scenes in ../shared/data/had
    python benchmarks/had.py SCENES/ --seeds 5 --methods vae,rx
    python benchmarks/had.py --methods vae --config my.yaml   # other model settings
    python benchmarks/had.py --methods vae,context,rx         # README's table: per-pixel, context VAE, RX
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.cog_writer import write_raster  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.detectors import load_detector  # noqa: E402
from pipeline.evaluate import evaluate  # noqa: E402
from pipeline.sample import ingest  # noqa: E402
from pipeline.scoring import score_raster  # noqa: E402
from pipeline.training import train  # noqa: E402

DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "had"


def load_scene(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``data`` as (bands, rows, cols) and ``map`` as (rows, cols) uint8 from a MATLAB file (v5, or v7.3/HDF5)."""
    try:
        from scipy.io import loadmat

        m = loadmat(path)
        data, truth = m["data"], m["map"]
    except NotImplementedError:  # v7.3 files are HDF5, stored column-major
        import h5py

        with h5py.File(path, "r") as f:
            data, truth = np.asarray(f["data"]).T, np.asarray(f["map"]).T
    if data.ndim != 3 or truth.shape != data.shape[:2]:
        raise ValueError(f"{path}: expected data rows×cols×bands and map rows×cols, got {data.shape}, {truth.shape}")
    return np.ascontiguousarray(np.moveaxis(data, -1, 0)), (truth != 0).astype(np.uint8)


def metrics(scores: Path, truth: Path) -> dict[str, float]:
    """Pixel ROC AUC and average precision of a score raster against a truth raster (``rsvae evaluate``'s)."""
    m = evaluate(scores, truth)
    return {"auc": m["roc_auc"], "ap": m["average_precision"]}


def run(tile: Path, truth: Path, work: Path, method: str, seed: int,
        config_path: Path | None = None) -> dict[str, float]:
    """Ingest, train and score ``tile`` with the defaults, or the config at ``config_path`` (but ``method`` and
    ``seed``); metrics and seconds."""
    config = load_config(config_path)
    windows, label = config["ingest"]["context"], method
    if method == "context":
        method, windows, config["train"]["context"] = "vae", windows or [3, 9], "ring"
    t0 = time.perf_counter()
    sample = ingest([tile], work / "sample.nc", max_pixels=config["ingest"]["max_pixels"],
                    seed=config["ingest"]["seed"], context=windows)
    settings = dict(config["train"], method=method, seed=seed)
    train(sample, work / f"{label}-{seed}", settings, config=config)
    det = load_detector(work / f"{label}-{seed}", config["score"]["device"])
    out = work / f"scores-{label}-{seed}.tif"
    score_raster(det, tile, out, chunk=config["score"]["chunk"])
    seconds = time.perf_counter() - t0
    return dict(metrics(out, truth), seconds=seconds)


def fmt(values: list[float], digits: int = 3) -> str:
    """``mean ± std`` of several runs, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    """Run every scene of the folder and print the markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER, help="folder of .mat scenes")
    ap.add_argument("--seeds", type=int, default=3, help="VAE training seeds per scene (default 3)")
    ap.add_argument("--methods", default="vae,rx,lrx", help="comma-separated detectors (default vae,rx,lrx)")
    ap.add_argument("--work", type=Path, help="keep the GeoTIFFs, models and score rasters here")
    ap.add_argument("--config", type=Path, help="an rsvae config file to use instead of the defaults (to compare "
                                                "model settings)")
    args = ap.parse_args(argv)
    scenes = sorted(Path(args.folder).glob("*.mat"))
    if not scenes:
        print(f"no .mat scenes in {args.folder}", file=sys.stderr)
        return 1
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", message=".*has no CRS.*")  # the scenes carry no georeference
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    rows, summary = [], {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        for path in scenes:
            data, truth = load_scene(path)
            work = root / path.stem
            tile, truth_tif = work / "scene.tif", work / "truth.tif"
            write_raster(tile, data)
            write_raster(truth_tif, truth[None], resampling="NEAREST")
            for method in methods:
                seeds = range(args.seeds) if method in ("vae", "context") else [0]
                runs = [run(tile, truth_tif, work, method, s, args.config) for s in seeds]
                auc = [r["auc"] for r in runs]
                summary[method].append(float(np.mean(auc)))
                rows.append(f"| {path.stem} | {data.shape[0]} | {method} | {fmt(auc)} | {fmt([r['ap'] for r in runs])} "
                            f"| {fmt([r['seconds'] for r in runs], 1)} |")
                print(rows[-1], file=sys.stderr, flush=True)
    print("| scene | bands | method | ROC AUC | AP | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print()
    for m in methods:
        line = f"mean ROC AUC, {m}: {np.mean(summary[m]):.3f}"
        if m != "rx" and "rx" in summary:
            wins = sum(a >= b for a, b in zip(summary[m], summary["rx"], strict=True))
            line += f" (≥ RX on {wins} of {len(scenes)} scenes)"
        if m == "context" and "vae" in summary:
            held = sum(a >= max(b, c) - 0.003 for a, b, c in zip(summary[m], summary["vae"],
                                                                  summary.get("rx", summary["vae"]), strict=True))
            line += f"; within 0.003 of both the per-pixel VAE and RX or above on {held} of {len(scenes)}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
