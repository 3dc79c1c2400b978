"""ROC AUC of the VAE's band-major fast path against its reference path, on the dev scenes and the demo.

The fast path (``score`` / ``score_bands``, ``pipeline/detectors/vae_inference.py``: float32, in place, band-major
chunks) must not change detection quality: this prints both AUCs per scene and their difference (it must stay
below 0.001).

    python benchmarks/fast_path_auc.py [--had ../shared/data/had] [--epochs 50]
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


def scenes(had: Path):
    """(name, band-major pixels (bands, n) in the file's dtype, truth (n,)) for the dev scenes and the demo."""
    import rasterio
    import scipy.io as sio

    for path in sorted(had.glob("*.mat")):
        m = sio.loadmat(path)
        data = m["data"]
        yield path.stem, np.ascontiguousarray(data.reshape(-1, data.shape[2]).T), m["map"].reshape(-1)
    from pipeline.synth import make_demo

    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo(tmp, seed=0, tiles_normal=1, tiles_test=1)
        with rasterio.open(demo.test[0]) as ds, rasterio.open(demo.truth[0]) as t:
            x, y = ds.read(), t.read(1)
        valid = (x != ds.nodata).all(0)
        yield "demo", np.ascontiguousarray(x[:, valid]), y[valid]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--had", type=Path, default=ROOT.parent / "shared" / "data" / "had")
    p.add_argument("--epochs", type=int, default=50)
    a = p.parse_args(argv)
    import torch
    from sklearn.metrics import roc_auc_score

    from pipeline.config import load_config
    from pipeline.detectors.vae import VAEDetector
    from pipeline.sample import BandStats

    torch.set_num_threads(1)
    print("| scene | AUC reference | AUC fast path | difference | largest relative score difference |")
    print("| --- | --- | --- | --- | --- |")
    worst = 0.0
    for name, bands_major, truth in scenes(a.had):
        pixels = np.ascontiguousarray(bands_major.T.astype(np.float32))
        stats = BandStats.empty(pixels.shape[1])
        stats.update(pixels.T)
        settings = dict(load_config()["train"], threads=1, epochs=a.epochs)
        det = VAEDetector.fit(pixels, [f"b{i + 1}" for i in range(pixels.shape[1])], stats, settings)
        ref = det.score_tensor(torch.from_numpy(det.normalise(pixels)))["score"]
        fast = det.score_bands(bands_major)["score"]  # the raster's own dtype and layout, as the scorer sees it
        a_ref, a_fast = roc_auc_score(truth, ref), roc_auc_score(truth, fast)
        rel = float(np.max(np.abs(fast - ref) / np.maximum(np.abs(ref), 1e-6)))
        worst = max(worst, abs(a_fast - a_ref))
        print(f"| {name} | {a_ref:.4f} | {a_fast:.4f} | {a_fast - a_ref:+.6f} | {rel:.1e} |", flush=True)
    print(f"\nlargest AUC difference: {worst:.6f} ({'below' if worst < 0.001 else 'NOT below'} 0.001)")
    return 0 if worst < 0.001 else 1


if __name__ == "__main__":
    sys.exit(main())
