"""Interrupted and concurrent runs, with real processes: ``rsvae score`` and ``rsvae train`` killed mid-run by
SIGINT, SIGTERM or SIGKILL leave the previous complete output (or none) at the output path, never a partial one,
and a rerun completes with the same result as an uninterrupted run; several ``rsvae score`` processes writing
into one folder at once do not interfere.

The processes come from a fork server (tests/forkserver.py) that imports torch once: each is a real process
running the console script's entry point, without paying a two-second import per run.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from safetensors.torch import load_file

from pipeline.cli import cli
from tests.conftest import write_tif

pytestmark = pytest.mark.skipif(not (hasattr(os, "fork") and Path("/proc/self/stat").exists()),
                                reason="needs fork and /proc (Linux)")

INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}
TRAIN = ["--hidden", "32", "--latent", "4", "--batch-size", "256", "--threads", "1", "--device", "cpu",
         "--patience", "0", "--seed", "3"]


# --------------------------------------------------------------------------------------------- processes


@dataclass
class Child:
    pid: int
    stdout: Path
    stderr: Path

    def alive(self) -> bool:
        """Running (not exited and waiting to be reaped)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except FileNotFoundError:
            return False
        return stat.rpartition(")")[2].split()[0] != "Z"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ForkServer:
    """Starts real ``rsvae`` processes cheaply (see tests/forkserver.py)."""

    def __init__(self, logs: Path):
        root = Path(__file__).resolve().parents[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, str(root / "tests" / "forkserver.py")], cwd=root, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.logs = logs
        self.running: set[int] = set()

    def _ask(self, request: dict, timeout: float = 120) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"fork server did not answer {request} in {timeout} s")
        return json.loads(self.proc.stdout.readline())

    def start(self, *argv: object, cwd: Path, hook: dict | None = None) -> Child:
        n = len(list(self.logs.glob("*.err")))
        child = Child(0, self.logs / f"{n}.out", self.logs / f"{n}.err")
        reply = self._ask({"op": "run", "argv": [str(a) for a in argv], "cwd": str(cwd),
                           "stdout": str(child.stdout), "stderr": str(child.stderr), "hook": hook})
        child.pid = reply["pid"]
        self.running.add(child.pid)
        return child

    def wait(self, child: Child, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while child.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if child.alive():
            os.kill(child.pid, signal.SIGKILL)
        code = self._ask({"op": "wait", "pid": child.pid})["code"]
        self.running.discard(child.pid)
        assert code != -signal.SIGKILL or not child.alive(), f"{child} hung and was killed"
        return code

    def close(self) -> None:
        for pid in list(self.running):
            os.kill(pid, signal.SIGKILL)
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ForkServer(tmp_path_factory.mktemp("logs"))
    yield s
    s.close()


def wait_until(condition, child: Child, what: str, timeout: float = 120) -> None:
    """Poll ``condition`` until true; fail if the child ends first (then the kill would not land mid-run)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not child.alive():
            pytest.fail(f"the process ended before {what}: {child.stderr.read_text()[-500:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else b"/"
            for p in sorted(folder.rglob("*"))}


def hidden(folder: Path, suffix: str = "") -> list[Path]:
    """rsvae's temporaries in ``folder`` (hidden names next to the output)."""
    return [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(suffix)]


def rsvae(*args: object) -> None:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def pixels(path: Path) -> bytes:
    with rasterio.open(path) as ds:
        return ds.read().tobytes()


def weights(model: Path) -> dict[str, bytes]:
    return {k: v.numpy().tobytes() for k, v in load_file(str(model / "weights.safetensors")).items()}


def check_interrupted(code: int, sig: int, child: Child, clean_stderr: bool = True) -> None:
    assert code == INTERRUPTED[sig], child.stderr.read_text()
    if sig != signal.SIGKILL:
        err = child.stderr.read_text()
        if clean_stderr:
            assert "Traceback" not in err
        assert err.strip().splitlines()[-1] == "Interrupted; no partial output was left.", err


# --------------------------------------------------------------------------------------------- score


@pytest.fixture(scope="module")
def big_tile(tmp_path_factory) -> Path:
    """A tile that takes a second or so to score with posterior sampling, long enough to be killed mid-write."""
    rng = np.random.default_rng(5)
    data = (0.3 + 0.05 * rng.standard_normal((16, 512, 512))).astype(np.float32)
    return write_tif(tmp_path_factory.mktemp("big") / "big.tif", data, tiled=True, blockxsize=128,
                     blockysize=128)


SCORE_OPTS = ["--samples", "16", "--chunk", "4096"]


@pytest.fixture(scope="module")
def score_reference(model_dir, big_tile, demo, tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted run's output, and an earlier complete result of another tile to plant at the path."""
    d = tmp_path_factory.mktemp("reference")
    rsvae("score", model_dir, big_tile, "-o", d / "big.tif", *SCORE_OPTS)
    rsvae("score", model_dir, demo.test[0], "-o", d / "earlier.tif")
    return {"big": d / "big.tif", "earlier": d / "earlier.tif"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_score_killed_mid_write(sig, server, model_dir, big_tile, score_reference, tmp_path):
    folder = tmp_path / "scores"
    folder.mkdir()
    out = folder / "big.tif"
    shutil.copy(score_reference["earlier"], out)
    before = snapshot(folder)
    child = server.start("score", model_dir, big_tile, "-o", out, *SCORE_OPTS, cwd=tmp_path)
    wait_until(lambda: hidden(folder), child, "it started writing")  # a temporary file beside the output
    os.kill(child.pid, sig)
    code = server.wait(child)
    check_interrupted(code, sig, child)
    assert out.read_bytes() == before["big.tif"]  # the previous complete output, untouched
    if sig == signal.SIGKILL:  # no chance to clean up: only hidden temporaries may remain beside it
        assert {p.name for p in folder.iterdir()} - {"big.tif"} == {p.name for p in hidden(folder)}
        child = server.start("score", model_dir, big_tile, "-o", out, *SCORE_OPTS, cwd=tmp_path)
        assert server.wait(child) == 0, child.stderr.read_text()
        assert pixels(out) == pixels(score_reference["big"])  # the rerun completes, as if never interrupted
    else:
        assert snapshot(folder) == before  # temporaries removed too


SCORE_POINTS = {
    # exact points of the writer where a signal lands (the outside kills above land wherever they happen to)
    "entering the writer": {"target": "rasterio.io.DatasetWriter.set_band_description", "call": 1,
                            "when": "after"},
    "first block": {"target": "rasterio.io.DatasetWriter.write", "call": 1, "when": "before"},
    "just before the rename": {"target": "os.replace", "call": 1, "when": "before"},
}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
@pytest.mark.parametrize("point", SCORE_POINTS)
def test_score_interrupted_at_exact_points(point, sig, server, model_dir, demo, score_reference, tmp_path):
    folder = tmp_path / "scores"
    folder.mkdir()
    out = folder / "t.tif"
    shutil.copy(score_reference["earlier"], out)
    (folder / "t_mask.tif").write_bytes(b"earlier mask")
    before = snapshot(folder)
    hook = dict(SCORE_POINTS[point], signal=int(sig))
    child = server.start("score", model_dir, demo.test[0], "-o", out, "--mask-out", folder / "t_mask.tif",
                         "--fpr", "0.01", cwd=tmp_path, hook=hook)
    check_interrupted(server.wait(child), sig, child)
    assert out.read_bytes() == before["t.tif"]
    assert (folder / "t_mask.tif").read_bytes() == b"earlier mask"
    if sig != signal.SIGKILL:
        assert snapshot(folder) == before  # no temporary left, whichever point the signal hit


# --------------------------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def train_reference(sample_file, model_dir, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("train-reference")
    rsvae("train", sample_file, "-o", d / "model", "--epochs", "3", *TRAIN)
    return {"model": d / "model", "earlier": model_dir}


def _plant_model(folder: Path, earlier: Path) -> Path:
    out = folder / "model"
    shutil.copytree(earlier, out)
    return out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_train_killed_mid_training(sig, server, sample_file, train_reference, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    out = _plant_model(folder, train_reference["earlier"])
    before = snapshot(folder)
    # --max-steps too: training is fast enough that the default cap (2000 steps) ends it within seconds of CPU
    child = server.start("train", sample_file, "-o", out, "--epochs", "100000", "--max-steps", "100000000", *TRAIN,
                         cwd=tmp_path)
    wait_until(lambda: child.cpu_seconds() >= 0.5, child, "it was training")
    os.kill(child.pid, sig)
    check_interrupted(server.wait(child), sig, child)
    assert snapshot(folder) == before  # nothing is written before training ends
    if sig == signal.SIGKILL:
        child = server.start("train", sample_file, "-o", out, "--epochs", "3", *TRAIN, cwd=tmp_path)
        assert server.wait(child) == 0, child.stderr.read_text()
        # the rerun completes, bit-identical to an uninterrupted run in another process
        assert weights(out) == weights(train_reference["model"])


SAVE_POINTS = {
    # where, in the model folder swap, the process is hit
    "weights written": {"target": "pipeline.detectors.base.save_file", "call": 1, "when": "after"},
    # the earlier model and the new one swap places in one step (renameat2 RENAME_EXCHANGE)
    "before the swap": {"target": "pipeline.detectors.base.exchange", "call": 1, "when": "before"},
    "after the swap": {"target": "pipeline.detectors.base.exchange", "call": 1, "when": "after"},
}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
@pytest.mark.parametrize("point", SAVE_POINTS)
def test_train_killed_while_saving(point, sig, server, sample_file, train_reference, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    out = _plant_model(folder, train_reference["earlier"])
    before = snapshot(folder)
    hook = dict(SAVE_POINTS[point], signal=int(sig))
    child = server.start("train", sample_file, "-o", out, "--epochs", "3", *TRAIN, cwd=tmp_path, hook=hook)
    check_interrupted(server.wait(child), sig, child)
    earlier = {k: v for k, v in before.items() if k.startswith("model")}
    now = {k: v for k, v in snapshot(folder).items() if k.startswith("model")}
    if point == "after the swap":
        # the new model was complete and in place before the signal: it stays, the path never lacked a model
        assert weights(out) == weights(train_reference["model"])
        if sig == signal.SIGTERM:
            assert not hidden(folder)  # the earlier model, swapped out, was removed
    elif sig == signal.SIGTERM:
        assert snapshot(folder) == before  # the earlier model is in place and the temporaries are gone
    else:
        assert now == earlier  # SIGKILL before the swap: the earlier model, whole, at the path
    child = server.start("train", sample_file, "-o", out, "--epochs", "3", *TRAIN, cwd=tmp_path)
    assert server.wait(child) == 0, child.stderr.read_text()
    assert weights(out) == weights(train_reference["model"])


# --------------------------------------------------------------------------------------------- concurrency


def test_concurrent_scoring_into_one_folder(server, model_dir, demo, tmp_path):
    rng = np.random.default_rng(11)
    tiles = [demo.test[0]] + [
        write_tif(tmp_path / f"t{i}.tif", (0.3 + 0.05 * rng.standard_normal((16, 200, 160))).astype(np.float32))
        for i in range(2)]
    references = {}
    for t in tiles:  # one after another, in this process
        references[t.stem] = tmp_path / "ref" / f"{t.stem}.tif"
        rsvae("score", model_dir, t, "-o", references[t.stem])
    folder = tmp_path / "scores"
    runs = [(t, folder / f"{t.stem}.tif") for t in tiles]
    runs += [(tiles[1], folder / "same.tif")] * 2  # two processes racing for one output too
    children = [server.start("score", model_dir, t, "-o", out, "--mask-out", out.with_suffix(".mask.tif"),
                             "--fpr", "0.01", cwd=tmp_path) for t, out in runs]
    assert sum(c.alive() for c in children) >= 2  # they do run at the same time
    for child in children:
        assert server.wait(child) == 0, child.stderr.read_text()
    for t, out in runs:
        assert pixels(out) == pixels(references[t.stem])
        with rasterio.open(out.with_suffix(".mask.tif")) as m, rasterio.open(t) as src:
            assert m.read().shape[1:] == src.shape
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        {n for _, out in runs for n in (out.name, out.with_suffix(".qml").name, out.with_suffix(".mask.tif").name)})
