"""Where the VAE's scoring time goes per pixel, and what each speed lever buys, on one CPU core.

Builds the default model's shape (hidden 128, latent 8, residual covariance) with random weights at each band count
(timings do not depend on the values) and scores 65 536 random pixels, band-major as rasterio hands blocks over:

1. a breakdown, in CPU nanoseconds per pixel, of the layered path (``ChunkScorer``) and of the folded path
   (``FoldedScorer``, the default) stage by stage (each stage timed alone on one chunk's buffers), and the whole call;
2. the levers, each alone and combined, timed interleaved in one run (so a busy machine slows all alike) and shown
   as CPU time per pixel and speed-up over the layered path: the folded path at several chunk sizes, bfloat16
   products where the CPU has native bfloat16 (AMX or AVX512-BF16), int8 dynamic quantisation of the linear layers
   (``torch.ao.quantization.quantize_dynamic``, on the nn.Module, against the same module in float32), and
   ``torch.compile`` of the folded chunk function (its compile seconds included).

Detection quality of the levers is ``benchmarks/fast_path_auc.py --levers``'s job.

    python benchmarks/inference_profile.py                  # 64 and 224 bands
    python benchmarks/inference_profile.py --bands 64,128,224 --repeat 7
    python benchmarks/inference_profile.py --isa native,avx2 # also as on a CPU without AVX-512 (benchmarks/isa.py)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa import parse_per_isa  # noqa: E402 - the benchmarks' folder, after the path above

PIXELS = 65_536  # one 256 x 256 block


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AMX or AVX512-BF16) and oneDNN may use it (not under --isa avx2)."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"}) and "ONEDNN_MAX_CPU_ISA" not in os.environ


def random_detector(bands: int, hidden: int = 128, latent: int = 8, seed: int = 0):
    """A VAEDetector of the default architecture with random weights, normalisation and residual covariance."""
    import torch

    from pipeline.detectors.rx import whitening
    from pipeline.detectors.vae import VAE, VAEDetector

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(bands, bands)) / np.sqrt(bands)
    noise = (rng.normal(size=bands) * 0.01, whitening(a @ a.T + 0.1 * np.eye(bands), 1e-6))
    meta = {"architecture": {"hidden": [hidden], "latent": latent, "beta": 1.0, "reconstruction": "gaussian",
                             "noise": "residual"}}
    return VAEDetector(VAE(bands, [hidden], latent), [f"b{i + 1}" for i in range(bands)],
                       rng.uniform(0.1, 0.3, bands), rng.uniform(0.01, 0.05, bands), meta,
                       torch.device("cpu"), noise)


def pixels_for(det, n: int = PIXELS, seed: int = 1) -> np.ndarray:
    """``n`` band-major float32 pixels around the detector's normalisation."""
    rng = np.random.default_rng(seed)
    return (det.offset[:, None] + det.scale[:, None] * rng.normal(size=(det.offset.size, n))).astype(np.float32)


def cpu_ns_per_pixel(f: Callable[[], object], pixels: int, repeat: int = 20) -> float:
    """CPU nanoseconds per pixel of ``f()`` (the fastest of ``repeat`` runs, after one warm-up)."""
    f()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        f()
        best = min(best, time.process_time() - t0)
    return best / pixels * 1e9


# ----------------------------------------------------------------------------------------------- 1. breakdown
def breakdown_previous(det, x: np.ndarray) -> dict[str, float]:
    """Stage by stage CPU ns per pixel of ``ChunkScorer`` on one chunk."""
    import torch

    from pipeline.detectors.vae_inference import SCORE_CHUNK, ChunkScorer

    p, n = ChunkScorer(det, True), SCORE_CHUNK
    buf = p.buffers(n)
    xt = torch.from_numpy(np.ascontiguousarray(x[:, :n]))
    (w1, b1, _), (wml, bml, _) = p.encoder[0], p.ml
    (wd, bd, _), (wo, bo, _) = p.decoder[0], p.decoder[-1]
    L = p.latent
    h, ml, g, out, y = buf["h0"], buf["h1"], buf["h2"], buf["h3"], buf["y"]
    mu, logvar = ml[:L], ml[L:]
    rec, kl = torch.empty(n), torch.empty(n)
    stages = {
        "normalise (x - offset) / scale": lambda: torch.sub(xt, p.offset, out=buf["x"]).mul_(p.inv_scale),
        "encoder: W1 x + b, ReLU": lambda: torch.addmm(b1, w1, buf["x"], out=h).relu_(),
        "mu, logvar: one product": lambda: torch.addmm(bml, wml, h, out=ml),
        "decoder hidden: W x + b, ReLU": lambda: torch.addmm(bd, wd, mu, out=g).relu_(),
        "decoder output + residual": lambda: torch.addmm(bo, wo, g, out=out).sub_(buf["x"]),
        "whitening: B x B product": lambda: torch.mm(p.whiten, out, out=y),
        "squared norm": lambda: torch.sum(torch.square(y), dim=0, out=rec),
        "KL": lambda: torch.sum(torch.exp(logvar).sub_(logvar).addcmul_(mu, mu), dim=0, out=kl),
    }
    with torch.inference_mode():
        return {k: cpu_ns_per_pixel(f, n, 50) for k, f in stages.items()}


def breakdown_folded(det, x: np.ndarray) -> dict[str, float]:
    """Stage by stage CPU ns per pixel of ``FoldedScorer`` on one chunk."""
    import torch

    from pipeline.detectors.vae_inference import FOLDED_CHUNK, FoldedScorer

    p, n = FoldedScorer(det, True), FOLDED_CHUNK
    v = p.buffers(n)
    xt = torch.from_numpy(np.ascontiguousarray(x[:, :n]))
    out = torch.empty(3, n)
    stages = {
        "centre x - offset (scale folded)": lambda: torch.sub(xt, p.offset, out=v.xin),
        "encoder: [W1/s, b] [x; 1], ReLU": lambda: torch.mm(p.encoder[0], v.x, out=v.hidden[0]).relu_(),
        "mu, ones, logvar: one product": lambda: torch.mm(p.ml, v.hidden[0], out=v.ml),
        "decoder hidden, ReLU": lambda: torch.mm(p.decoder[0], v.mu1, out=v.hidden[0]).relu_(),
        "decoder output: residual in place": lambda: v.residual.addmm_(p.output, v.hidden[0], alpha=-1.0),
        "whitening: triangular factor in row blocks, square": lambda: p.whiten_into(v.residual, v.squares).square_(),
        "KL terms + the 3 sums in one product": lambda: (
            torch.exp(v.logvar, out=v.kl).sub_(v.logvar).addcmul_(v.mu, v.mu), torch.mm(p.sums, v.z, out=out)),
    }
    with torch.inference_mode():
        return {k: cpu_ns_per_pixel(f, n, 50) for k, f in stages.items()}


# ----------------------------------------------------------------------------------------------- 2. levers
def levers(det, x: np.ndarray, repeat: int) -> tuple[dict[str, float], dict[str, str]]:
    """CPU ns per pixel of each lever, timed interleaved (the fastest of ``repeat`` rounds); notes per lever."""
    import torch

    from pipeline.detectors.vae_inference import FOLDED_CHUNK, SCORE_CHUNK, ChunkScorer, FoldedScorer

    notes: dict[str, str] = {}
    out, xt = torch.empty(3, x.shape[1]), torch.from_numpy(x)

    def chunked(plan, step: int) -> Callable[[], None]:
        """Score the pixels with ``plan`` in chunks of ``step``, as ``vae_inference.score_chunks`` does."""
        folded = not isinstance(plan, ChunkScorer)  # the folded scorer, or it compiled

        def run() -> None:
            with torch.inference_mode():
                for i in range(0, x.shape[1], step):
                    j = min(x.shape[1], i + step)
                    if folded:
                        plan(xt[:, i:j], out[:, i:j])
                    else:
                        plan(xt[:, i:j], *out[:, i:j])
        return run

    contenders: dict[str, Callable[[], None]] = {
        f"layered path (ChunkScorer, {SCORE_CHUNK})": chunked(det._plan(True, False), SCORE_CHUNK)}
    folded = FoldedScorer(det, True)
    for step in (1024, 2048, 4096):
        tag = " (the default)" if step == FOLDED_CHUNK else ""
        contenders[f"folded, chunk {step}{tag}"] = chunked(folded, step)
    if native_bf16():
        for low in (("encoder",), ("encoder", "output", "whiten")):
            contenders[f"folded + bf16 {'+'.join(low)}"] = chunked(FoldedScorer(det, True, low), FOLDED_CHUNK)
    else:
        notes["bf16"] = "skipped: no native bfloat16 on this CPU"
    # int8 dynamic quantisation acts on nn.Linear modules: measured on the reference path against itself
    xn = torch.from_numpy(det.normalise(x.T))
    contenders["nn.Module reference path, float32"] = lambda: det.score_tensor(xn)
    try:
        import copy
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = copy.copy(det)
            q.module = torch.ao.quantization.quantize_dynamic(copy.deepcopy(det.module), {torch.nn.Linear},
                                                              dtype=torch.qint8)
        contenders["nn.Module reference path, int8 dynamic (quantize_dynamic)"] = lambda: q.score_tensor(xn)
        notes["int8"] = f"engine {torch.backends.quantized.engine}"
    except (RuntimeError, AssertionError) as exc:  # no quantized engine in this torch build
        notes["int8"] = f"skipped: {exc}"
    try:
        compiled = _compiled(folded)
        t0 = time.perf_counter()
        chunked(compiled, FOLDED_CHUNK)()
        notes["compile"] = f"first call (compiling) {time.perf_counter() - t0:.1f} s"
        contenders["folded, torch.compile of the chunk function"] = chunked(compiled, FOLDED_CHUNK)
    except Exception as exc:  # noqa: BLE001 - any compiler failure is a finding, not a crash
        notes["compile"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    best = {k: float("inf") for k in contenders}
    for f in contenders.values():
        f()  # warm-up
    for _ in range(repeat):
        for k, f in contenders.items():
            t0 = time.process_time()
            f()
            best[k] = min(best[k], time.process_time() - t0)
    return {k: v / x.shape[1] * 1e9 for k, v in best.items()}, notes


def _compiled(plan) -> Callable:
    """The folded scorer's chunk function under ``torch.compile`` (inductor), same signature."""
    import torch

    fn = torch.compile(plan.__call__, dynamic=False)

    def call(x, out) -> None:
        fn(x, out)
    return call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bands", default="64,224", help="band counts, comma-separated (default 64,224)")
    p.add_argument("--repeat", type=int, default=5, help="interleaved rounds of the levers; the fastest counts")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it compiles for ~10-60 s)")
    a, rc = parse_per_isa(p, __file__, argv)
    if rc is not None:
        return rc
    import torch

    torch.set_num_threads(1)
    flags = cpu_flags()
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()} kernels), 1 thread; CPU bfloat16: "
          f"{', '.join(sorted(flags & {'amx_bf16', 'avx512_bf16', 'amx_int8', 'avx512_vnni'})) or 'none'}")
    for bands in (int(b) for b in a.bands.split(",")):
        det = random_detector(bands)
        x = pixels_for(det)
        print(f"\n## {bands} bands, hidden 128, latent 8, residual covariance\n")
        prev, fold = breakdown_previous(det, x), breakdown_folded(det, x)
        print("| layered path: stage | CPU ns/pixel | folded path: stage | CPU ns/pixel |")
        print("| --- | --- | --- | --- |")
        for (k1, v1), (k2, v2) in zip(prev.items(), [*fold.items(), ("", float("nan"))], strict=False):
            print(f"| {k1} | {v1:.0f} | {k2} | {'' if v2 != v2 else f'{v2:.0f}'} |")
        print(f"| sum of stages | {sum(prev.values()):.0f} | sum of stages | {sum(fold.values()):.0f} |")
        if a.no_compile:
            global _compiled  # noqa: PLW0603 - a flag for one run

            def _compiled(plan):  # noqa: ARG001
                raise RuntimeError("skipped (--no-compile)")
        ns, notes = levers(det, x, a.repeat)
        base = ns[next(iter(ns))]
        ref = ns["nn.Module reference path, float32"]
        print("\n| lever (65 536 pixels, band-major; interleaved) | CPU ns/pixel | Mpixel/s per core | speed-up |")
        print("| --- | --- | --- | --- |")
        for k, v in ns.items():
            against = ref if k.startswith("nn.Module") else base
            print(f"| {k} | {v:.0f} | {1e3 / v:.2f} | {against / v:.2f}× |")
        print("\n(speed-up: over the layered path; the nn.Module rows over the float32 nn.Module)")
        for k, v in notes.items():
            print(f"- {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
