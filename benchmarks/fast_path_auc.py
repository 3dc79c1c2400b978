"""Detection quality of the VAE's scoring paths: the folded path (the default) against the reference and the layered one.

On the dev scenes and the demo, a default model is trained on the scene (as ``benchmarks/had.py`` does) and every
pixel is scored three ways: the reference path (``score_tensor``: the nn.Module on float64-normalised pixels), the
layered path (``scoring_path="layered"``, ``ChunkScorer``: the layers one by one) and the default folded path
(``FoldedScorer``), both in the raster's own dtype and band-major layout, as the streaming scorer hands over GDAL's
blocks, and the folded path once more on pixel rows (n, bands), as it hands over the tiles it decodes itself
(``pipeline/tiffdecode.py``). It prints ROC AUC per scene and the largest difference (it must stay below 0.001).

Then the mask calibration: a model trained on demo tiles of normal ground flags pixels of an unseen normal tile at
``--fpr``'s thresholds; the share flagged by the folded path must stay within 10 % of the layered path's.

``--levers`` adds the ROC AUC of the speed levers that were measured and not kept (``inference_profile.py`` has
their speed): bfloat16 products, int8 dynamic quantisation of the linear layers, and a low-rank-plus-isotropic
(probabilistic PCA) form of the residual covariance at 99 % and 99.9 % of its variance.

    python benchmarks/fast_path_auc.py [--had ../shared/data/had] [--epochs 50] [--levers]
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

AUC_TOLERANCE, CALIBRATION_TOLERANCE = 0.001, 0.10


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


def fit(bands_major: np.ndarray, epochs: int):
    """The default VAE trained on the scene's own pixels (it is mostly normal ground)."""
    from pipeline.config import load_config
    from pipeline.detectors.vae import VAEDetector
    from pipeline.sample import BandStats

    pixels = np.ascontiguousarray(bands_major.T.astype(np.float32))
    stats = BandStats.empty(pixels.shape[1])
    stats.update(pixels.T)
    settings = dict(load_config()["train"], threads=1, epochs=epochs)
    return VAEDetector.fit(pixels, [f"b{i + 1}" for i in range(pixels.shape[1])], stats, settings)


def lever_scores(det, bands_major: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of the levers not kept: bf16 products, int8 dynamic quantisation, low-rank residual covariance."""
    import copy
    import warnings

    import torch

    from pipeline.detectors.vae import LOGVAR_RANGE, kl_term
    from pipeline.detectors.vae_inference import FOLDED_CHUNK, FoldedScorer

    out: dict[str, np.ndarray] = {}
    pixels = np.ascontiguousarray(bands_major.astype(np.float32))
    for low in (("encoder",), ("encoder", "output", "whiten")):
        plan, n = FoldedScorer(det, True, low), pixels.shape[1]
        got, x = torch.empty(3, n), torch.from_numpy(pixels)
        with torch.inference_mode():
            for i in range(0, n, FOLDED_CHUNK):
                plan(x[:, i:i + FOLDED_CHUNK], got[:, i:i + FOLDED_CHUNK])
        out[f"bf16 {'+'.join(low)}"] = got[0].numpy()
    xn = torch.from_numpy(det.normalise(bands_major.T))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = copy.copy(det)
        q.module = torch.ao.quantization.quantize_dynamic(copy.deepcopy(det.module), {torch.nn.Linear},
                                                          dtype=torch.qint8)
    out["int8 dynamic"] = q.score_tensor(xn)["score"]
    # low rank + isotropic rest (PPCA) of the residual covariance: |r|²/σ² - Σ_i≤k (v_i·r)² (1/σ² - 1/λ_i)
    mean, whiten = (np.asarray(a, np.float64) for a in det.noise_arrays)
    cov = np.linalg.pinv(whiten @ whiten.T)
    lam, vec = np.linalg.eigh(cov)
    lam, vec = lam[::-1], vec[:, ::-1]
    with torch.inference_mode():
        mu, logvar = det.module.encode(xn)
        r = (xn - det.module.decode(mu)).double().numpy() - mean
        kl = kl_term(mu, logvar.clamp(*LOGVAR_RANGE)).double().numpy()
    for share in (0.99, 0.999):
        k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), share)) + 1
        s2 = lam[k:].mean() if k < lam.size else lam[-1]
        d = np.square(r).sum(1) / s2 - (np.square(r @ vec[:, :k]) * (1 / s2 - 1 / lam[:k])).sum(1)
        out[f"low rank {share:.1%} (k={k} of {lam.size})"] = 0.5 * d + det.beta * kl
    return out


def calibration(fprs: tuple[float, ...], epochs: int) -> list[tuple[float, float, float]]:
    """(fpr, share flagged by the layered path, by the folded path) on an unseen normal demo tile."""
    import rasterio

    from pipeline.config import load_config
    from pipeline.detectors import load_detector
    from pipeline.sample import ingest
    from pipeline.synth import make_demo
    from pipeline.training import train

    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo(Path(tmp) / "demo", seed=1, tiles_normal=3, tiles_test=0)
        sample = ingest(demo.normal[:2], Path(tmp) / "sample.nc", max_pixels=200_000, seed=0)
        train(sample, Path(tmp) / "model", dict(load_config()["train"], threads=1, epochs=epochs))
        det = load_detector(Path(tmp) / "model")
        with rasterio.open(demo.normal[2]) as ds:
            x = ds.read()
        pixels = np.ascontiguousarray(x[:, (x != ds.nodata).all(0)])
    prev = det.score_bands(pixels, scoring_path="layered")["score"]
    new = det.score_bands(pixels, scoring_path="folded")["score"]
    return [(f, float((prev > det.threshold(f)).mean()), float((new > det.threshold(f)).mean())) for f in fprs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--had", type=Path, default=ROOT.parent / "shared" / "data" / "had")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--levers", action="store_true", help="also the ROC AUC of the levers not kept")
    a = p.parse_args(argv)
    import torch
    from sklearn.metrics import roc_auc_score

    torch.set_num_threads(1)
    print("| scene | AUC reference | AUC layered path | AUC folded path (default) | folded − reference | "
          "folded − layered | folded on pixel rows − reference | largest relative score difference, folded vs "
          "reference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    worst, levers = 0.0, {}
    for name, bands_major, truth in scenes(a.had):
        det = fit(bands_major, a.epochs)
        ref = det.score_tensor(torch.from_numpy(det.normalise(bands_major.T)))["score"]
        prev = det.score_bands(bands_major, scoring_path="layered")["score"]  # the raster's own dtype and layout
        new = det.score_bands(bands_major, scoring_path="folded")["score"]
        # pixel rows, as decoded tiles come
        rows = det.score(np.ascontiguousarray(bands_major.T), scoring_path="folded")["score"]
        auc = {k: roc_auc_score(truth, v) for k, v in (("ref", ref), ("prev", prev), ("new", new), ("rows", rows))}
        rel = float(np.max(np.abs(np.stack([new, rows]) - ref) / np.maximum(np.abs(ref), 1e-6)))
        worst = max(worst, abs(auc["new"] - auc["ref"]), abs(auc["new"] - auc["prev"]), abs(auc["rows"] - auc["ref"]))
        print(f"| {name} | {auc['ref']:.4f} | {auc['prev']:.4f} | {auc['new']:.4f} | {auc['new'] - auc['ref']:+.6f} "
              f"| {auc['new'] - auc['prev']:+.6f} | {auc['rows'] - auc['ref']:+.6f} | {rel:.1e} |", flush=True)
        if a.levers:
            for k, v in lever_scores(det, bands_major).items():
                levers.setdefault(k.split(" (")[0], []).append((name, k, roc_auc_score(truth, v) - auc["ref"]))
    ok_auc = worst < AUC_TOLERANCE
    print(f"\nlargest AUC difference of the folded path: {worst:.6f} "
          f"({'below' if ok_auc else 'NOT below'} {AUC_TOLERANCE})")
    if levers:
        print("\n| lever not kept | largest ROC AUC difference to the reference | per scene |")
        print("| --- | --- | --- |")
        for k, rows in levers.items():
            per = ", ".join(f"{n} {d:+.4f}" + (f" ({lab.split('(')[1]}" if "(" in lab else "") for n, lab, d in rows)
            print(f"| {k} | {max(abs(d) for _, _, d in rows):.4f} | {per} |")
    print("\n| --fpr | share flagged, layered path | share flagged, folded path | relative change |")
    print("| --- | --- | --- | --- |")
    ok_cal = True
    for fpr, prev, new in calibration((0.01, 0.001), a.epochs):
        change = abs(new - prev) / max(prev, 1e-12)
        ok_cal &= change <= CALIBRATION_TOLERANCE
        print(f"| {fpr} | {prev:.5f} | {new:.5f} | {change:.1%} |")
    print(f"\nmask calibration on an unseen normal tile: {'within' if ok_cal else 'NOT within'} "
          f"{CALIBRATION_TOLERANCE:.0%}")
    return 0 if ok_auc and ok_cal else 1


if __name__ == "__main__":
    sys.exit(main())
