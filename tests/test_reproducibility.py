"""Reproducibility: the same inputs, config and seed give bit-identical samples, model weights and score rasters
on CPU, run after run; model.json records what is needed to reproduce the model (config as run, input digests,
versions), and training again from that record gives the same weights. (Across processes: test_interrupts.py
compares reruns in fresh processes with runs in this one.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import rasterio
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from pipeline.cli import cli
from pipeline.sample import quick_digest

TRAIN = ["--epochs", "4", "--hidden", "32,16", "--latent", "4", "--batch-size", "128", "--threads", "1",
         "--device", "cpu", "--seed", "5"]


def rsvae(*args: object) -> None:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def weights(model: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    return {k: (str(v.dtype), tuple(v.shape), v.numpy().tobytes())
            for k, v in load_file(str(model / "weights.safetensors")).items()}


def without_timings(node):
    """model.json without wall-clock fields, which are the only things allowed to differ between runs."""
    if isinstance(node, dict):
        return {k: without_timings(v) for k, v in node.items() if k != "seconds"}
    if isinstance(node, list):
        return [without_timings(v) for v in node]
    return node


def meta(model: Path) -> dict:
    return json.loads((model / "model.json").read_text())


def test_same_seed_same_bits_and_the_record_reproduces_the_model(demo, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        rsvae("ingest", *demo.normal, "-o", run / "sample.nc", "--max-pixels", "3000", "--seed", "2")
    assert (a / "sample.nc").read_bytes() == (b / "sample.nc").read_bytes()
    for run in (a, b):
        rsvae("train", a / "sample.nc", "-o", run / "model", *TRAIN)
    assert weights(a / "model") == weights(b / "model")
    assert without_timings(meta(a / "model")) == without_timings(meta(b / "model"))
    for run in (a, b):
        rsvae("score", run / "model", demo.test[0], "-o", run / "scores.tif", "--samples", "4", "--seed", "1")
    with rasterio.open(a / "scores.tif") as sa, rasterio.open(b / "scores.tif") as sb:
        assert sa.read().tobytes() == sb.read().tobytes()
        assert sa.profile == sb.profile
    rsvae("score", a / "model", demo.test[0], "-o", a / "again.tif", "--samples", "4", "--seed", "1")
    assert (a / "again.tif").read_bytes() == (a / "scores.tif").read_bytes()  # the very same file

    # a different seed does change the weights (the comparison above can fail)
    rsvae("train", a / "sample.nc", "-o", tmp_path / "other", *TRAIN[:-1], "6")
    assert weights(tmp_path / "other") != weights(a / "model")

    # what model.json records
    m = meta(a / "model")
    assert m["config"]["train"]["seed"] == 5 and m["config"]["train"]["epochs"] == 4  # as run, options included
    assert m["config"]["train"]["hidden"] == [32, 16]
    assert m["sample"]["digest"] == "sha256:" + hashlib.sha256((a / "sample.nc").read_bytes()).hexdigest()
    assert (m["sample"]["seed"], m["sample"]["max_pixels"]) == (2, 3000)
    sources = json.loads(m["sample"]["sources"])
    assert sorted(s["name"] for s in sources) == sorted(p.name for p in demo.normal)
    assert all(s["digest"] == quick_digest(Path(s["path"])) for s in sources)
    assert {"rsvae", "torch", "numpy", "rasterio", "gdal", "python", "platform"} <= set(m["versions"])
    assert m["torch_threads"] == 1

    # the record alone reproduces the model: train again with the recorded config and no options
    recorded = tmp_path / "recorded.yaml"
    recorded.write_text(yaml.safe_dump(m["config"]))
    rsvae("train", a / "sample.nc", "-o", tmp_path / "from-record", "--config", recorded)
    assert weights(tmp_path / "from-record") == weights(a / "model")
    assert np.isfinite(m["training"]["history"][-1]["val_loss"])
