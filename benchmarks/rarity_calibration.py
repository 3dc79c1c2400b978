"""Is rarity calibrated, and do the detections hold the targets? Prints both checks of issue 13.

Settings: configs/config.yaml (what `snakemake -c2` runs).

1. Calibration: `rsvae synth --tiles-normal 6`, train on the first four normal tiles, score the
   last two (normal ground the model never saw): the share of pixels with rarity >= 2 and >= 3 must lie within a
   factor 2 of 1 % and 0.1 %.
2. Targets: on the default demo (4 normal tiles, 2 test tiles of 12 targets each), train, score and detect with
   the default threshold: how many of each test tile's 12 targets the 12 highest-ranked detections hold (a target
   is held when a detection's pixels touch one of its truth pixels), and how many detections there are.

    python benchmarks/rarity_calibration.py [--workdir DIR] [--context]   # --context: the context VAE
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


#: Set by --context: train the context VAE (ring means of guard 3, outer 9 recorded at ingest).
CONTEXT = {"on": False}


def _train(normal: list[Path], folder: Path) -> Path:
    from pipeline.config import load_config
    from pipeline.sample import ingest
    from pipeline.training import train

    config = load_config(ROOT / "configs" / "config.yaml")  # the workflow's settings: "the default demo"
    if CONTEXT["on"]:
        config["ingest"]["context"] = config["ingest"]["context"] or [3, 9]
        config["train"]["context"] = "ring"
    sample = ingest(normal, folder / "sample.nc", max_pixels=config["ingest"]["max_pixels"], seed=0,
                    context=config["ingest"]["context"])
    train(sample, folder / "model", config["train"], config=config)
    return folder / "model"


def _score(model: Path, tile: Path, out: Path) -> Path:
    from pipeline.detectors import load_detector
    from pipeline.scoring import score_raster

    score_raster(load_detector(model), tile, out)
    return out


def calibration(work: Path) -> bool:
    """Check 1; returns whether it holds."""
    import rasterio

    from pipeline.synth import make_demo

    demo = make_demo(work / "demo6", tiles_normal=6)
    model = _train(demo.normal[:4], work / "cal")
    values = []
    for tile in demo.normal[4:]:
        with rasterio.open(_score(model, tile, work / "cal" / f"{tile.stem}.tif")) as ds:
            values.append(ds.read(4, masked=True).compressed())
    r = np.concatenate(values)
    ok = True
    print(f"1. calibration: {r.size} pixels of 2 unseen normal tiles (model trained on 4 others)")
    for level, target in ((2, 0.01), (3, 0.001)):
        share = float((r >= level).mean())
        holds = target / 2 <= share <= target * 2
        ok &= holds
        print(f"   rarity >= {level}: {share:.5f} of pixels (expected {target:g}, within a factor 2: {holds})")
    return ok


def targets(work: Path) -> bool:
    """Check 2; returns whether every test tile's top 12 hold at least 10 of its 12 targets."""
    import rasterio
    from scipy import ndimage

    from pipeline.detections import DEFAULT_MIN_RARITY, detect, read
    from pipeline.synth import make_demo

    demo = make_demo(work / "demo")
    model = _train(demo.normal, work / "run")
    ok = True
    eight = np.ones((3, 3), bool)
    print(f"2. targets on the default demo (threshold: rarity >= {DEFAULT_MIN_RARITY:g})")
    for tile, truth_path in zip(demo.test, demo.truth, strict=True):
        scores = _score(model, tile, work / "run" / f"{tile.stem}.tif")
        n = detect(scores, work / "run" / f"{tile.stem}.gpkg")
        rows = read(work / "run" / f"{tile.stem}.gpkg")[0]
        with rasterio.open(scores) as ds, rasterio.open(truth_path) as t:
            rarity, truth = ds.read(4, masked=True).filled(-1), t.read(1) > 0
        groups, _ = ndimage.label(rarity >= DEFAULT_MIN_RARITY, structure=eight)
        target_labels, n_targets = ndimage.label(truth, structure=eight)
        held = set()
        for row in rows[:12]:
            g = groups[row["peak_row"], row["peak_col"]]
            held.update(np.unique(target_labels[(groups == g) & truth]).tolist())
        false = sum(1 for row in rows if not truth[groups == groups[row["peak_row"], row["peak_col"]]].any())
        ok &= len(held) >= 10
        print(f"   {tile.stem}: top 12 hold {len(held)} of {n_targets} targets; {n} detections, {false} on no "
              f"target; top rarity {rows[0]['peak_rarity'] if rows else float('nan'):.1f}")
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run both checks; exit status 0 when both hold."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, help="Keep the files here (default: a temporary folder).")
    parser.add_argument("--context", action="store_true", help="Check the context VAE (train.context: ring).")
    args = parser.parse_args(argv)
    CONTEXT["on"] = args.context
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ok = calibration(work)
        ok &= targets(work)
    print("both checks hold" if ok else "a check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
