"""Scoring and training throughput of rsvae against reading the raster, and against PyOD's VAE.

Builds (once, cached in --cache) a synthetic SIZE x SIZE x BANDS float32 GeoTIFF (deflate + floating-point predictor,
256-pixel tiles) and one half its size, then runs each measurement in a new process, timed from its start to its end
(start-up included, as a user sees it), with its own peak RSS:

- training the default VAE on a 200 000-pixel sample of the scene: pixels seen per second, time to early stopping
  (with the thread counts of ``--train-threads``, under the CLI's passive OpenMP wait policy);
- reading every block: with rasterio's ``read`` and one dataset handle (the targets' baseline, with GDAL's default
  threads and with ``GDAL_NUM_THREADS=ALL_CPUS``: the faster counts), and with rsvae's reader in one thread and in
  two (it decodes a pixel-interleaved GeoTIFF's tiles itself, ``pipeline/tiffdecode.py``; ``--interleave band``
  builds band-interleaved rasters, which it reads through GDAL);
- two I/O-only passes (read + write a float32 COG with as many bands as ``rsvae score`` writes, with rsvae's writer,
  no model): the plain loop the issue's target 1b names (read a block with rsvae's ``WindowReader``, write a block,
  one thread; again the faster of default and all GDAL threads; also writing 3 bands, the loop of tables before the
  score raster's rarity band), and
  rsvae's threaded streaming scorer with a model that does nothing (a stricter baseline: it shows what the model's
  arithmetic costs on top of overlapped I/O);
- ``rsvae score`` with the default model, on both rasters (peak RSS must not grow with the raster; on the large one
  with GDAL's default threads and with all, as the baselines: each side of a target's ratio is the fastest of as
  many runs), and with
  ``--scoring-path layered`` (the layers one by one, for the folded path's figure);
- in-memory scoring of 1 M pixels through the Python API, and PyOD's VAE ``decision_function`` on the same pixels
  (when pyod is installed: ``pip install rsvae[bench]``), both with one torch thread and both with torch's default
  (all cores): PyOD's VAE as it ships (its default network, the target's baseline) and with rsvae's network size
  (a comparison of the code alone).

Prints a markdown table and the pass/fail of the performance targets. Timings are noisy on shared machines: the
ratios within one run are what count.

    python benchmarks/throughput.py                 # 4096 x 4096 x 64 (4 GiB uncompressed, 2.8 GiB on disk)
    python benchmarks/throughput.py --size 512      # seconds
    python benchmarks/throughput.py --sentinel2     # only the Sentinel-2-like case: stacked VRT vs stacked GeoTIFF
    python benchmarks/throughput.py --isa native,avx2   # a table each: this CPU, and held to AVX2 (benchmarks/isa.py)

``--sentinel2`` builds a Sentinel-2-like product folder instead (one uint16 deflate GeoTIFF per band: four bands at
10 m, SIZE x SIZE, five at 20 m and one at 60 m), stacks its 10 bands with ``rsvae stack`` once as a VRT (no pixels
copied) and once as one stacked GeoTIFF (a COG), trains a small model on the stack, and runs ``rsvae score`` on both,
interleaved, in one run. Targets: the VRT at least 0.7 x as fast as the GeoTIFF, peak RSS under 512 MiB.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa import check, isa_env, isa_list  # noqa: E402 - the benchmarks' folder, after the path above

BLOCK = 256
NODATA = -9999.0
#: Targets of the performance issues (scoring and training: issue 15; RSS and PyOD: issue 4).
TARGET_READ, TARGET_IO, TARGET_RSS_MIB, TARGET_PYOD, TARGET_TRAIN_MPX, TARGET_TRAIN_S = 1.0, 0.9, 512, 10.0, 0.4, 30.0
#: The baselines (reading, the I/O-only loop) run with GDAL's default threads and with all; the faster counts.
ALL_GDAL_THREADS = ["env", "GDAL_NUM_THREADS=ALL_CPUS"]


# ----------------------------------------------------------------------------------------------- the scene
class Scene:
    """A deterministic synthetic scene of any size: smooth mixtures of a few endmember spectra, plus noise."""

    def __init__(self, bands: int, seed: int = 0, k: int = 5):
        from pipeline.synth import endmembers, wavelengths

        rng = np.random.default_rng(seed)
        self.seed = seed
        self.bands = bands
        self.ends = endmembers(rng, wavelengths(bands), k).astype(np.float64)  # (k, bands)
        # Smooth abundance fields: a few plane waves per endmember, periods of 100-1000 pixels.
        self.freq = rng.uniform(-1 / 100, 1 / 100, (k, 4, 2))
        self.phase = rng.uniform(0, 2 * np.pi, (k, 4))

    def block(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """The scene's pixels (bands, height, width) float32 at (row, col); the same wherever it is asked for."""
        r, c = np.mgrid[row:row + height, col:col + width].astype(np.float64)
        f = np.einsum("kj,kjrc->krc", np.ones(self.phase.shape),
                      np.sin(2 * np.pi * (self.freq[..., 0, None, None] * r + self.freq[..., 1, None, None] * c)
                             + self.phase[..., None, None])) / 2.0
        a = np.exp(2.0 * f)
        a /= a.sum(axis=0, keepdims=True)
        img = np.einsum("kb,krc->brc", self.ends, a).astype(np.float32)
        rng = np.random.default_rng([self.seed, row, col])
        img += rng.normal(0.0, 0.004, img.shape).astype(np.float32)
        if col == 0:
            img[:, :, :3] = NODATA  # a nodata strip along the left edge, as the demo tiles have
        return img

    def pixels(self, n: int, seed: int = 1) -> np.ndarray:
        """``n`` valid pixels (n, bands) from random blocks of the scene (a training sample)."""
        rng = np.random.default_rng(seed)
        out = []
        while sum(len(p) for p in out) < n:
            r, c = (int(v) * BLOCK for v in rng.integers(1, 64, 2))
            out.append(self.block(r, c, BLOCK, BLOCK).reshape(self.bands, -1).T)
        return np.ascontiguousarray(np.concatenate(out)[:n])


def build_raster(path: Path, size: int, bands: int, seed: int = 0, interleave: str = "pixel") -> Path:
    """Write the scene as a tiled deflate + predictor-3 float32 GeoTIFF at ``path`` (atomically; reused if there),
    pixel- (GDAL's default) or band-interleaved."""
    import rasterio
    from rasterio.transform import from_origin

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = Scene(bands, seed)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    profile = dict(driver="GTiff", width=size, height=size, count=bands, dtype="float32", nodata=NODATA,
                   crs="EPSG:32632", transform=from_origin(500000, 5000000, 30, 30), tiled=True,
                   blockxsize=BLOCK, blockysize=BLOCK, compress="DEFLATE", predictor=3, bigtiff="IF_SAFER",
                   num_threads="ALL_CPUS", interleave=interleave)
    from rasterio.windows import Window

    with rasterio.Env(GDAL_CACHEMAX=256), rasterio.open(tmp, "w", **profile) as ds:
        for r in range(0, size, BLOCK):
            for c in range(0, size, BLOCK):
                h, w = min(BLOCK, size - r), min(BLOCK, size - c)
                ds.write(scene.block(r, c, h, w), window=Window(c, r, w, h))
    os.replace(tmp, path)
    return path


def sample_stats(pixels: np.ndarray):
    """Band statistics of a sample, as ingest computes them."""
    from pipeline.sample import BandStats

    stats = BandStats.empty(pixels.shape[1])
    stats.update(pixels.T)
    return stats


def stage_train(folder: str, n: int, bands: int, threads: int) -> dict:
    """Train the default VAE on ``n`` scene pixels with ``threads`` torch threads (0 = the config's default: all
    cores); save it to ``folder``; return the training record."""
    from pipeline.config import load_config
    from pipeline.detectors import fit_detector

    scene = Scene(bands)
    pixels = scene.pixels(n)
    settings = dict(load_config()["train"])
    if threads:
        settings["threads"] = threads
    t0 = time.perf_counter()
    det = fit_detector("vae", pixels, [f"b{i + 1}" for i in range(bands)], sample_stats(pixels), settings)
    wall = time.perf_counter() - t0
    det.meta.update({"crs": "", "wavelengths": None})
    det.save(folder)
    t = det.meta["training"]
    import torch

    # pixels seen: every pass's training pixels times its epochs, over the seconds of the passes' epoch loops
    # (steps and the per-epoch validation; not the residual covariance fits between passes)
    passes = t["passes"]
    seen = sum(p["n_train"] * p["epochs_run"] for p in passes)
    return {"seconds": wall, "train_seconds": t["seconds"], "passes": len(passes), "seen": seen,
            "epochs": "+".join(str(p["epochs_run"]) for p in passes), "n_train": t["n_train"],
            "mpx_s": seen / t["seconds"] / 1e6, "best_epoch": t["best_epoch"], "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------------------------- stages
#: The null detector's outputs: the I/O-only loops write as many bands as ``rsvae score`` does (a VAE's three outputs
#: and the rarity band; ``report`` checks the two rasters' band counts agree).
NULL_OUTPUTS = ("score", "reconstruction", "kl", "rarity")


def null_detector(bands: int) -> object:
    """A detector that does no maths (its outputs are copies of band 1): the I/O-only loop. A bare Scorer (no rarity
    band, band-major blocks scored as their transposed view). ``pipeline.scorer`` and the streaming scorer import
    no torch, so this stage runs without it, as a scorer written in numpy would."""
    from pipeline.scorer import Scorer

    class NullDetector(Scorer):
        kind = "null"
        outputs = NULL_OUTPUTS

        def __init__(self, bands: int):
            self.band_names = [f"band_{i + 1}" for i in range(bands)]
            self.meta: dict = {}

        def check_bands(self, count: int, source: str) -> None:
            """Any band count is fine."""

        def score(self, pixels: np.ndarray, **_: object) -> dict[str, np.ndarray]:
            """Band 1 as every output."""
            first = np.ascontiguousarray(pixels[:, 0], np.float32)
            return {k: first for k in self.outputs}

    return NullDetector(bands)


def stage_read(raster: str, reader: str = "gdal") -> dict:
    """Read every block once, as rsvae opens rasters (same GDAL settings): ``gdal``, rasterio's ``read`` with one
    dataset handle in one thread (the targets' baseline); ``rsvae1``, rsvae's reader in one thread (tiles of a
    pixel-interleaved GeoTIFF decoded directly, ``pipeline/tiffdecode.py``); ``rsvae2``, its streaming reader with
    two threads (a handle each), as ``rsvae score`` reads."""
    from pipeline.raster import info_of, iter_windows, open_raster
    from pipeline.streaming import BlockReader

    t0 = time.perf_counter()
    total = 0
    with open_raster(raster) as ds:
        if reader == "gdal":
            for w in iter_windows(ds):
                block = ds.read(window=w)
                total += block.shape[1] * block.shape[2]
        else:
            info = info_of(ds)
            threads = {"rsvae1": 0, "rsvae2": 2}[reader]
            with BlockReader(raster, iter_windows(ds), info.width, info.height, threads=threads) as blocks:
                for b in blocks:
                    total += b.data.shape[1] * b.data.shape[2]
    return {"seconds": time.perf_counter() - t0, "pixels": total}


def stage_io(raster: str, out: str) -> dict:
    """``score_raster`` with a model that does no maths."""
    from pipeline.raster import describe
    from pipeline.scoring import score_raster

    det = null_detector(describe(raster).count)
    t0 = time.perf_counter()
    s = score_raster(det, raster, out)
    return {"seconds": time.perf_counter() - t0, "pixels": s.pixels, "finish": s.finish_seconds}


def stage_api(model: str, n: int, bands: int, pyod: str = "yes", repeat: int = 2, threads: int = 0) -> dict:
    """In-memory scoring of ``n`` pixels through the Python API, and PyOD's VAE on the same pixels, both with
    ``threads`` torch threads (0: torch's default, all cores, as a user of either library gets it). Each is timed
    ``repeat`` times, interleaved; the fastest counts."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from pipeline.detectors import load_detector

    scene = Scene(bands)
    pixels = scene.pixels(n, seed=2)
    det = load_detector(model)
    det.score(pixels[:1000])
    contenders = {"seconds": lambda: _timed(lambda: det.score(pixels))}  # each returns seconds
    if pyod == "yes":
        try:
            from pyod.models.vae import VAE as PyodVAE
        except ImportError:
            PyodVAE = None
        if PyodVAE is not None:
            arch = det.architecture
            variants = {  # PyOD's VAE as it ships (its default network), and with rsvae's network size
                "pyod_seconds": {},
                "pyod_same_seconds": {"encoder_neuron_list": list(arch["hidden"]),
                                      "decoder_neuron_list": list(reversed(arch["hidden"])),
                                      "latent_dim": int(arch["latent"])},
            }
            train_pixels = scene.pixels(min(n, 20000), seed=3)
            for key, network in variants.items():
                torch.manual_seed(0)
                model_pyod = PyodVAE(epoch_num=1, batch_size=256, verbose=0, device="cpu", random_state=0, **network)
                model_pyod.fit(train_pixels)
                # PyOD at its better batch sizes (its default of 32 is many times slower)
                contenders[key] = functools.partial(_best_pyod, model_pyod, pixels)
    res: dict = {"pixels": n, "threads": torch.get_num_threads()}
    for _ in range(max(1, repeat)):
        for key, run in contenders.items():
            dt = run()
            res[key] = min(dt, res.get(key, dt))
    return res


def _best_pyod(model, pixels: np.ndarray) -> float:
    """Seconds of PyOD's ``decision_function`` on ``pixels`` at the faster of two large batch sizes."""
    return min(_timed(functools.partial(model.decision_function, pixels, batch_size=b)) for b in (1024, 8192))


def _timed(f) -> float:
    """Seconds ``f()`` takes."""
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def stage_io_plain(raster: str, out: str, bands: int = len(NULL_OUTPUTS)) -> dict:
    """An I/O-only loop without any overlap: read a block, write a ``bands``-band block (band 1 in each) with rsvae's
    writer, repeat."""
    from pipeline.cog_writer import output_nodata, writer_like
    from pipeline.raster import WindowReader, info_of, iter_windows, open_raster

    t0 = time.perf_counter()
    with open_raster(raster) as ds:
        info = info_of(ds)
        nodata = output_nodata(info)
        reader = WindowReader(ds)
        with writer_like(info, out, bands, "float32", nodata, descriptions=list(NULL_OUTPUTS[:bands])) as w:
            for window in iter_windows(ds):
                data, valid = reader.read(window)
                block = np.full((bands, *valid.shape), nodata, np.float32)
                block[:, valid] = data[0][valid]
                w.write(block, window)
    return {"seconds": time.perf_counter() - t0, "finish": w.finish_seconds}


STAGES = {"read": stage_read, "io": stage_io, "io_plain": stage_io_plain, "api": stage_api, "train": stage_train}


LAUNCHER = r"""
import json, os, subprocess, sys, tempfile, time
for line in sys.stdin:
    argv = json.loads(line)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0); err.seek(0)
        print(json.dumps({"wall": wall, "maxrss": usage.ru_maxrss, "rc": proc.returncode, "out": out.read(),
                          "err": err.read()[-3000:]}), flush=True)
"""


class Launcher:
    """Starts the measured child processes from a small process of its own, so that their peak RSS is theirs.

    A child's ru_maxrss starts from the memory of the process that spawned it (fork and vfork share or copy its
    pages until exec), so children spawned by this benchmark after it trained a model would all report its size.
    """

    def __init__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.prefix: list[str] = []  # put before every command: ``env VAR=value ...`` of the ISA measured (--isa)

    def run(self, argv: list[str]) -> tuple[float, float, str]:
        """Run ``argv`` (after ``prefix``); return (wall seconds, peak RSS in MiB, stdout)."""
        argv = [*self.prefix, *argv]
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        r = json.loads(self.proc.stdout.readline())
        if r["rc"] != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r['rc']}):\n{r['err']}")
        return r["wall"], r["maxrss"] / 1024, r["out"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def stage(launcher: Launcher, name: str, *args: object) -> tuple[dict, float, float]:
    """Run one stage of this script in a child process: (its JSON result, wall seconds, peak RSS MiB)."""
    wall, rss, out = launcher.run([sys.executable, __file__, "--stage", name, *map(str, args)])
    return json.loads(out.strip().splitlines()[-1]), wall, rss


# ----------------------------------------------------------------------------------------------- the report
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=4096, help="raster width and height in pixels (default 4096)")
    p.add_argument("--bands", type=int, default=64)
    p.add_argument("--interleave", choices=["pixel", "band"], default="pixel",
                   help="the test rasters' layout: pixel-interleaved (GDAL's default; rsvae decodes its tiles "
                        "directly) or band-interleaved (read through GDAL)")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "rsvae-bench",
                   help="folder for the test rasters, kept between runs")
    p.add_argument("--train-pixels", type=int, default=200_000, help="training sample size (default 200000)")
    p.add_argument("--api-pixels", type=int, default=1_000_000, help="pixels for the in-memory comparison")
    p.add_argument("--no-pyod", action="store_true", help="skip PyOD even when it is installed")
    p.add_argument("--repeat", type=int, default=2, help="runs of each reading/scoring stage; the fastest counts")
    p.add_argument("--train-threads", default="0,1",
                   help="torch thread counts to train with, comma-separated; 0 = the config's default (all cores)")
    p.add_argument("--isa", default="native",
                   help="instruction sets to measure under, comma-separated, a table each: native (this CPU's best) "
                        "and/or avx2 (torch, MKL, oneDNN and numpy held to AVX2 kernels, as on CPUs without "
                        "AVX-512: benchmarks/isa.py); default native")
    p.add_argument("--sentinel2", action="store_true",
                   help="only the Sentinel-2-like case: `rsvae score` on a stacked VRT vs one stacked GeoTIFF")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.stage:
        if a.stage == "train":  # as `rsvae train` runs it: the CLI sets this before torch loads OpenMP
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        print(json.dumps(STAGES[a.stage](*[int(x) if x.isdigit() else x for x in a.rest])))
        return 0

    isas = isa_list(p, a.isa)
    launcher = Launcher()  # first, while this process is small
    work = Path(tempfile.mkdtemp(prefix="rsvae-bench-"))
    try:
        rc = 0
        for isa in isas:
            env = isa_env(isa)
            launcher.prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
            heading = check(isa)  # raises when the AVX2 environment does not take effect
            print(f"\n### ISA {heading}", flush=True)
            (work / isa).mkdir()
            run = sentinel2_report if a.sentinel2 else report
            rc |= run(a, launcher, work / isa)
        return rc
    finally:
        launcher.close()
        shutil.rmtree(work, ignore_errors=True)


def report(a: argparse.Namespace, launcher: Launcher, work: Path) -> int:
    """Run every measurement in the scratch folder ``work`` and print the table."""
    a.cache.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []
    checks: list[tuple[str, bool, str]] = []
    say = functools.partial(print, file=sys.stderr, flush=True)
    t_build = time.perf_counter()
    layout = "" if a.interleave == "pixel" else f"_{a.interleave}"
    raster = build_raster(a.cache / f"scene_{a.size}x{a.size}x{a.bands}{layout}.tif", a.size, a.bands,
                          interleave=a.interleave)
    half = max(BLOCK, a.size // 2)
    small = build_raster(a.cache / f"scene_{half}x{half}x{a.bands}{layout}.tif", half, a.bands,
                         interleave=a.interleave)
    say(f"rasters ready in {time.perf_counter() - t_build:.1f} s: {raster} ({raster.stat().st_size / 2**20:.0f} MiB)")
    px = a.size * a.size
    model = work / "model"

    trainings = []
    for i, threads in enumerate(int(t) for t in a.train_threads.split(",")):
        say(f"training with {threads or 'all'} thread(s) ...")
        result, _, rss_train = stage(launcher, "train", model if i == 0 else work / f"model-{i}", a.train_pixels,
                                     a.bands, threads)
        trainings.append((result, rss_train))

    # Every stage below is a new process, timed from its start to its end (start-up included, as a user sees it).
    # Each runs --repeat times, interleaved with the others, and the fastest run counts (peak RSS: the largest):
    # other processes on a shared machine only ever slow a run down.
    rsvae = [sys.executable, "-m", "pipeline", "score", "-q", str(model)]
    stage_argv = [sys.executable, __file__, "--stage"]

    def both(key: str, argv: list[str]) -> dict[str, list[str]]:
        """``key`` with GDAL's default threads and ``key_all`` with all: the faster of the two counts."""
        return {key: argv, f"{key}_all": [*ALL_GDAL_THREADS, *argv]}

    runs = {
        **both("read", [*stage_argv, "read", str(raster), "gdal"]),
        "read1": [*stage_argv, "read", str(raster), "rsvae1"],
        "read2": [*stage_argv, "read", str(raster), "rsvae2"],
        **both("plain", [*stage_argv, "io_plain", str(raster), str(work / "plain.tif")]),
        **both("plain3", [*stage_argv, "io_plain", str(raster), str(work / "plain3.tif"), "3"]),
        "io": [*stage_argv, "io", str(raster), str(work / "io.tif")],
        **both("score", [*rsvae, str(raster), "-o", str(work / "score.tif")]),
        "score_layered": [*rsvae, "--scoring-path", "layered", str(raster), "-o", str(work / "score_layered.tif")],
        "score_half": [*rsvae, str(small), "-o", str(work / "score_half.tif")],
    }
    best: dict[str, tuple[float, float, str]] = {}
    for r in range(a.repeat):
        for key, argv in runs.items():
            say(f"run {r + 1}/{a.repeat}: {key} ...")
            wall, rss, out = launcher.run(argv)
            old = best.get(key)
            best[key] = (min(wall, old[0]) if old else wall, max(rss, old[1]) if old else rss,
                         out if not old or wall < old[0] else old[2])
    import rasterio

    with rasterio.open(work / "score.tif") as s, rasterio.open(work / "plain.tif") as p:
        if s.count != p.count:
            raise SystemExit(f"the I/O-only loop wrote {p.count} bands but rsvae score {s.count}: update NULL_OUTPUTS")
    mpx = {k: (half**2 if k == "score_half" else px) / v[0] / 1e6 for k, v in best.items()}
    rss = {k: v[1] for k, v in best.items()}
    finish = {k: json.loads(best[k][2].strip().splitlines()[-1])["finish"]
              for k in ("plain", "plain_all", "plain3", "plain3_all", "io")}
    read_mpx, read2_mpx, plain_mpx, io_mpx = (mpx[k] for k in ("read", "read2", "plain", "io"))
    # the targets' baselines: the faster of GDAL's default threads and all; rsvae score runs under both too
    base_read, base_plain = max(mpx["read"], mpx["read_all"]), max(mpx["plain"], mpx["plain_all"])
    base_plain3 = max(mpx["plain3"], mpx["plain3_all"])
    score_mpx = max(mpx["score"], mpx["score_all"])
    rows.append(("read every block, one dataset handle (the targets' baseline)", f"{read_mpx:.2f}", "1.00",
                 f"{rss['read']:.0f}"))
    rows.append(("the same with GDAL_NUM_THREADS=ALL_CPUS", f"{mpx['read_all']:.2f}",
                 f"{mpx['read_all'] / read_mpx:.2f}", f"{rss['read_all']:.0f}"))
    how = "its tiles decoded directly" if a.interleave == "pixel" else "through GDAL: band-interleaved"
    rows.append((f"read every block with rsvae's reader, one thread ({how})", f"{mpx['read1']:.2f}",
                 f"{mpx['read1'] / read_mpx:.2f}", f"{rss['read1']:.0f}"))
    rows.append(("read every block with rsvae's reader (2 threads, a handle each)", f"{read2_mpx:.2f}",
                 f"{read2_mpx / read_mpx:.2f}", f"{rss['read2']:.0f}"))
    bands = len(NULL_OUTPUTS)
    rows.append((f"I/O-only, one plain loop: read a block, write a {bands}-band float32 block (as many bands as "
                 f"`rsvae score` writes) with rsvae's writer (COG step {finish['plain']:.1f} s)", f"{plain_mpx:.2f}",
                 f"{plain_mpx / read_mpx:.2f}", f"{rss['plain']:.0f}"))
    rows.append((f"the same with GDAL_NUM_THREADS=ALL_CPUS (COG step {finish['plain_all']:.1f} s)",
                 f"{mpx['plain_all']:.2f}", f"{mpx['plain_all'] / read_mpx:.2f}", f"{rss['plain_all']:.0f}"))
    rows.append((f"the same loop writing 3 bands, as in tables before the rarity band (COG step "
                 f"{finish['plain3']:.1f} s; with all GDAL threads {mpx['plain3_all']:.2f} Mpixel/s, COG step "
                 f"{finish['plain3_all']:.1f} s)", f"{mpx['plain3']:.2f}", f"{mpx['plain3'] / read_mpx:.2f}",
                 f"{rss['plain3']:.0f}"))
    rows.append((f"I/O-only through rsvae's streaming scorer with a model that does nothing "
                 f"(COG step {finish['io']:.1f} s)", f"{io_mpx:.2f}", f"{io_mpx / read_mpx:.2f}", f"{rss['io']:.0f}"))
    rows.append((f"`rsvae score`, default model (the faster of GDAL's default threads, {mpx['score']:.2f}, and all, "
                 f"{mpx['score_all']:.2f})", f"{score_mpx:.2f}", f"{score_mpx / read_mpx:.2f}",
                 f"{max(rss['score'], rss['score_all']):.0f}"))
    rows.append(("`rsvae score --scoring-path layered` (the layers one by one, for comparison)",
                 f"{mpx['score_layered']:.2f}", f"{mpx['score_layered'] / read_mpx:.2f}", f"{rss['score_layered']:.0f}"))
    rows.append((f"`rsvae score` on the {half}² raster", f"{mpx['score_half']:.2f}", "–", f"{rss['score_half']:.0f}"))
    rss, rss_s = max(rss["score"], rss["score_all"]), rss["score_half"]

    apis = {}
    for threads in (1, 0):
        say(f"in-memory scoring, {threads or 'all'} torch thread(s) ...")
        apis[threads], _, rss_api = stage(launcher, "api", model, a.api_pixels, a.bands, "no" if a.no_pyod else "yes",
                                          a.repeat, threads)
        api = apis[threads]
        label = f"{api['threads']} torch thread{'s' if api['threads'] > 1 else ''}"
        rows.append((f"Python API `score` on {api['pixels']:,} in-memory pixels ({label})",
                     f"{api['pixels'] / api['seconds'] / 1e6:.2f}", "–", f"{rss_api:.0f}"))
        if "pyod_seconds" in api:
            rows.append((f"PyOD VAE `decision_function` on the same pixels, its default network (64→128→64→32→2 "
                         f"and back; {label}, its better batch size)",
                         f"{api['pixels'] / api['pyod_seconds'] / 1e6:.3f}", "–", "–"))
            rows.append((f"PyOD VAE `decision_function`, rsvae's network size ({label}, its better batch size)",
                         f"{api['pixels'] / api['pyod_same_seconds'] / 1e6:.3f}", "–", "–"))
    api, api1 = apis[0], apis[1]
    for t, rss_train in trainings:
        rows.append((f"training the default model, {t['threads']} torch thread{'s' if t['threads'] > 1 else ''} "
                     f"({t['passes']} passes, {t['epochs']} epochs: {t['seen'] / 1e6:.1f} M pixels seen in "
                     f"{t['train_seconds']:.1f} s of epochs; {t['seconds']:.1f} s to the fitted model)",
                     f"{t['mpx_s']:.2f}", "–", f"{rss_train:.0f}"))

    layered_mpx = mpx["score_layered"]
    checks.append((f"1a. `rsvae score` ≥ {TARGET_READ} × reading every block (the faster of GDAL's default "
                   f"threads and all)", score_mpx >= TARGET_READ * base_read,
                   f"{score_mpx / base_read:.2f} × (layered: {layered_mpx / base_read:.2f} ×; × rsvae's 2-thread "
                   f"read: {score_mpx / read2_mpx:.2f})"))
    checks.append((f"1b. `rsvae score` ≥ {TARGET_IO} × the I/O-only loop (read a block, write a block, no model; "
                   f"the faster of GDAL's default threads and all)", score_mpx >= TARGET_IO * base_plain,
                   f"{score_mpx / base_plain:.2f} × (layered: {layered_mpx / base_plain:.2f} ×; × the loop writing 3 "
                   f"bands: {score_mpx / base_plain3:.2f}; × rsvae's threaded streaming with a null model: "
                   f"{score_mpx / io_mpx:.2f})"))
    checks.append(("2. peak RSS of `rsvae score` < 512 MiB, flat in raster size",
                   rss < TARGET_RSS_MIB and rss_s < TARGET_RSS_MIB and rss <= rss_s * 1.1 + 16,
                   f"{rss:.0f} MiB at {a.size}², {rss_s:.0f} MiB at {half}²"))
    if "pyod_seconds" in api:
        checks.append(("3. API scoring ≥ 10 × PyOD's VAE (as it ships; both with torch's default threads)",
                       api["pyod_seconds"] >= TARGET_PYOD * api["seconds"],
                       f"{api['pyod_seconds'] / api['seconds']:.1f} × (PyOD with rsvae's network size: "
                       f"{api['pyod_same_seconds'] / api['seconds']:.1f} ×; both on 1 thread: "
                       f"{api1['pyod_seconds'] / api1['seconds']:.1f} × and "
                       f"{api1['pyod_same_seconds'] / api1['seconds']:.1f} ×)"))
    else:
        checks.append(("3. API scoring ≥ 10 × PyOD's VAE", False, "not measured (pyod is not installed)"))
    best = max((t for t, _ in trainings), key=lambda t: t["mpx_s"])
    checks.append((f"4. training ≥ {TARGET_TRAIN_MPX} Mpixel/s per epoch and < {TARGET_TRAIN_S:.0f} s to the "
                   f"fitted model",
                   best["mpx_s"] >= TARGET_TRAIN_MPX and best["seconds"] < TARGET_TRAIN_S,
                   "; ".join(f"{t['mpx_s']:.2f} Mpixel/s, {t['seconds']:.1f} s ({t['threads']} thread"
                             f"{'s' if t['threads'] > 1 else ''})" for t, _ in trainings)))

    import torch

    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "GDAL_NUM_THREADS", "GDAL_CACHEMAX") if k in os.environ}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n{a.size} × {a.size} × {a.bands} float32 GeoTIFF ({a.interleave}-interleaved, deflate, predictor 3, "
          f"256-pixel tiles, "
          f"{raster.stat().st_size / 2**20:.0f} MiB); {os.cpu_count()} CPUs (load {load:.1f} at the end), "
          f"torch {torch.__version__}, GDAL {rasterio.__gdal_version__}" + (f", env {env}" if env else "") + "\n")
    print("| stage | Mpixel/s | × read | peak RSS (MiB) |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("\n| target | measured | met |")
    print("| --- | --- | --- |")
    for name, ok, value in checks:
        print(f"| {name} | {value} | {'yes' if ok else 'NO'} |")
    return 0


# ----------------------------------------------------------------------------------------------- Sentinel-2-like
#: Band files of the Sentinel-2-like product: name -> pixel size in m (10 bands at 10, 20 and 60 m).
S2_LIKE = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10, "B11": 20,
           "B12": 20}
TARGET_VRT_RATIO = 0.7


def build_s2_product(folder: Path, size: int, seed: int = 0) -> Path:
    """A folder of Sentinel-2-like band files (uint16, deflate, 256-pixel tiles; ``size`` pixels a side at 10 m),
    written band by band from the synthetic scene at each band's resolution; reused when complete."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    scene = Scene(len(S2_LIKE), seed)
    for k, (band, res) in enumerate(S2_LIKE.items()):
        n = size * 10 // res
        profile = dict(driver="GTiff", width=n, height=n, count=1, dtype="uint16", nodata=0, crs="EPSG:32632",
                       transform=from_origin(500000, 5000000, res, res), tiled=True, blockxsize=BLOCK,
                       blockysize=BLOCK, compress="DEFLATE", predictor=2)
        with rasterio.Env(GDAL_CACHEMAX=256), rasterio.open(folder / f"T32TQM_20240601T103031_{band}.tif", "w",
                                                             **profile) as ds:
            for r in range(0, n, BLOCK):
                for c in range(0, n, BLOCK):
                    h, w = min(BLOCK, n - r), min(BLOCK, n - c)
                    block = scene.block(r, c, h, w)[k]
                    block = np.where(block == NODATA, 0, np.clip(block * 10000, 1, 65535)).astype(np.uint16)
                    ds.write(block[None], window=Window(c, r, w, h))
    done.touch()
    return folder


def _measured(argv: list[str]) -> tuple[float, float, float]:
    """Run ``argv``; return (wall seconds, CPU seconds (user + system), peak RSS in MiB). CPU time barely depends
    on what else runs on the machine, so it compares two runs even where wall time is noisy. Started from this
    process while it is small (no torch, no GDAL loaded), so the child's peak RSS is its own."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(argv)} failed:\n{err.read()[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def sentinel2_report(a: argparse.Namespace, launcher: Launcher, work: Path) -> int:
    """The Sentinel-2-like case: `rsvae score` on the stacked VRT vs on the same scene as one stacked GeoTIFF."""
    say = functools.partial(print, file=sys.stderr, flush=True)
    rsvae = [sys.executable, "-m", "pipeline"]
    t0 = time.perf_counter()
    product = build_s2_product(a.cache / f"s2like_{a.size}", a.size)
    say(f"product ready in {time.perf_counter() - t0:.1f} s: {product}")
    bands = ",".join(S2_LIKE)
    vrt, tif = work / "stack.vrt", a.cache / f"s2like_{a.size}_stacked.tif"
    wall_vrt, rss_vrt_stack, _ = launcher.run([*rsvae, "stack", str(product), "--bands", bands, "-o", str(vrt), "-q"])
    wall_tif = rss_tif_stack = float("nan")
    if not tif.exists():
        wall_tif, rss_tif_stack, _ = launcher.run([*rsvae, "stack", str(product), "--bands", bands, "-o", str(tif),
                                                   "-q"])
    say("training a small model on the stack ...")
    model = work / "model"
    launcher.run([*rsvae, "ingest", str(tif), "-o", str(work / "sample.nc"), "--max-pixels", "50000", "-q"])
    launcher.run([*rsvae, "train", str(work / "sample.nc"), "-o", str(model), "--epochs", "3", "-q"])
    runs = {"vrt": [*rsvae, "score", "-q", str(model), str(vrt), "-o", str(work / "score_vrt.tif")],
            "tif": [*rsvae, "score", "-q", str(model), str(tif), "-o", str(work / "score_tif.tif")]}
    best: dict[str, tuple[float, float, float]] = {}  # fastest wall, least CPU, largest peak RSS
    for r in range(a.repeat):
        for key, argv in runs.items():
            say(f"run {r + 1}/{a.repeat}: score the {key} ...")
            wall, cpu, rss = _measured([*launcher.prefix, *argv])
            old = best.get(key)
            best[key] = (min(wall, old[0]), min(cpu, old[1]), max(rss, old[2])) if old else (wall, cpu, rss)
    px = a.size * a.size
    mpx = {k: px / v[0] / 1e6 for k, v in best.items()}
    ratio = mpx["vrt"] / mpx["tif"]
    cpu_ratio = best["tif"][1] / best["vrt"][1]
    size_tif = tif.stat().st_size / 2**20
    size_bands = sum(f.stat().st_size for f in product.glob("*.tif")) / 2**20
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    import rasterio

    print(f"\nSentinel-2-like scene: {len(S2_LIKE)} uint16 band files (deflate; {a.size}² at 10 m, 20 m and 60 m "
          f"bands; {size_bands:.0f} MiB), {os.cpu_count()} CPUs (load {load:.1f} at the end), "
          f"GDAL {rasterio.__gdal_version__}\n")
    print("| stage | seconds | Mpixel/s | CPU seconds | peak RSS (MiB) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| `rsvae stack` -> VRT ({vrt.stat().st_size / 1024:.0f} KiB) | {wall_vrt:.1f} | – | – "
          f"| {rss_vrt_stack:.0f} |")
    if math.isnan(wall_tif):
        print(f"| `rsvae stack` -> stacked GeoTIFF (COG, {size_tif:.0f} MiB) | cached from an earlier run | – | – | – |")
    else:
        print(f"| `rsvae stack` -> stacked GeoTIFF (COG, {size_tif:.0f} MiB) | {wall_tif:.1f} | – | – "
              f"| {rss_tif_stack:.0f} |")
    for key, label in (("vrt", "`rsvae score` on the stacked VRT"), ("tif", "`rsvae score` on the stacked GeoTIFF")):
        print(f"| {label} | {best[key][0]:.1f} | {mpx[key]:.2f} | {best[key][1]:.1f} | {best[key][2]:.0f} |")
    rss = max(best["vrt"][2], best["tif"][2])
    print("\n| target | measured | met |")
    print("| --- | --- | --- |")
    print(f"| VRT ≥ {TARGET_VRT_RATIO} × the stacked GeoTIFF (wall time, fastest of {a.repeat}) | {ratio:.2f} × "
          f"(per CPU second: {cpu_ratio:.2f} ×) | {'yes' if ratio >= TARGET_VRT_RATIO else 'NO'} |")
    print(f"| peak RSS of `rsvae score` < {TARGET_RSS_MIB} MiB | VRT {best['vrt'][2]:.0f} MiB, GeoTIFF "
          f"{best['tif'][2]:.0f} MiB | {'yes' if rss < TARGET_RSS_MIB else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
