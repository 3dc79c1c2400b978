"""Training speed of the VAE per CPU-second: the hand-written step (``vae_step.TrainStep``) against autograd.

Trains the default model (64 -> 128 -> 8 -> 128 -> 64, batch 1024) for a few epochs on the throughput benchmark's
synthetic scene, both ways, interleaved (A, B, A, B, ...), with one torch thread, and prints Mpixel per CPU-second
of the epoch loop (steps, optimiser, validation, shuffling) and the share of a step in its matrix products. CPU
time rather than wall time: it barely moves when other processes share the machine, and on a quiet one with one
thread the two agree. ``--isa avx2`` runs it held to AVX2 kernels (``benchmarks/isa.py``).

    python benchmarks/train_step.py                     # native
    python benchmarks/train_step.py --isa native,avx2   # a table each
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa import parse_per_isa  # noqa: E402 - the benchmarks' folder, after the path above


def epochs_cpu(mode: str, x_train, x_val, settings: dict, bands: int) -> tuple[float, int]:
    """(CPU seconds, pixels seen) of one training pass of ``settings['epochs']`` epochs, ``mode`` "by hand" or
    "autograd"."""
    import torch

    from pipeline.detectors import vae_step
    from pipeline.detectors.vae import VAE, VAEDetector

    meta = {"architecture": {"hidden": list(settings["hidden"]), "latent": settings["latent"], "beta": 1.0,
                             "reconstruction": "gaussian", "noise": "residual"}}
    supports = vae_step.supports
    if mode == "autograd":
        vae_step.supports = lambda *a: False
    try:
        torch.manual_seed(0)
        det = VAEDetector(VAE(bands, list(settings["hidden"]), settings["latent"]), [f"b{i}" for i in range(bands)],
                          np.zeros(bands), np.ones(bands), meta)
        t0 = time.process_time()
        history, _, _ = det._train(x_train, x_val, settings, torch.Generator().manual_seed(0), None)
        return time.process_time() - t0, len(history) * x_train.shape[0]
    finally:
        vae_step.supports = supports


def products_share(bands: int, batch: int = 1024, steps: int = 100) -> tuple[float, float]:
    """(CPU microseconds of one hand-written step with its optimiser update, share of it in matrix products),
    from torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pipeline.detectors.vae import VAE
    from pipeline.detectors.vae_step import TrainStep

    m = VAE(bands, [128], 8)
    step = TrainStep(m, "gaussian", 1.0)
    opt = torch.optim.Adam(step.parameters(), lr=1e-3, fused=True)
    x = torch.randn(batch, bands)
    for _ in range(10):
        step(x)
        opt.step()
    t0 = time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(x)
            opt.step()
    wall = (time.process_time() - t0) / steps * 1e6
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    mm = sum(e.self_cpu_time_total for e in ev if e.key in ("aten::mm", "aten::addmm"))
    return wall, mm / total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pixels", type=int, default=200_000, help="sample size (default 200000: 10 %% for validation)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per timed pass (default 3)")
    p.add_argument("--repeat", type=int, default=2, help="interleaved passes of each; the fastest counts")
    a, rc = parse_per_isa(p, __file__, argv)
    if rc is not None:
        return rc
    import torch
    from throughput import Scene

    from pipeline.config import load_config

    torch.set_num_threads(1)
    bands = 64
    pixels = Scene(bands).pixels(a.pixels)
    x = torch.from_numpy(((pixels - pixels.mean(0)) / pixels.std(0)).astype(np.float32))
    n_val = a.pixels // 10
    x_train, x_val = x[n_val:].clone(), x[:n_val].clone()
    settings = dict(load_config()["train"], epochs=a.epochs, patience=0)
    best: dict[str, float] = {}
    for mode in ("autograd", "by hand"):  # warm-up: first calls initialise torch's and MKL's kernels
        epochs_cpu(mode, x_train[:4096], x_val[:1024], dict(settings, epochs=1), bands)
    for _ in range(a.repeat):
        for mode in ("autograd", "by hand"):
            cpu, seen = epochs_cpu(mode, x_train, x_val, settings, bands)
            best[mode] = max(best.get(mode, 0.0), seen / cpu / 1e6)
    step_us, share = products_share(bands)
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()} kernels), 1 thread; "
          f"{x_train.shape[0]:,} training pixels, {a.epochs} epochs per pass, fastest of {a.repeat}\n")
    print("| training step | Mpixel per CPU-second | speed-up |")
    print("| --- | --- | --- |")
    for mode, label in (("autograd", "autograd (nn.Module, loss.backward())"),
                        ("by hand", "hand-written (vae_step.TrainStep, the default)")):
        print(f"| {label} | {best[mode]:.3f} | {best[mode] / best['autograd']:.2f}× |")
    print(f"\nhand-written step + Adam on 1024 pixels: {step_us:.0f} CPU µs, {share:.0%} of it in matrix products")
    return 0


if __name__ == "__main__":
    sys.exit(main())
