"""The detector contract (``Detector``: a ``pipeline.scorer.Scorer`` that is fitted, calibrated and saved), and the model
folder format every detector is saved in.

A detector is fitted on pixels (n, bands), scores pixels into a dict of per-pixel arrays whose first entry is
``score`` (higher = more anomalous), and saves to / loads from a folder holding ``weights.safetensors`` (tensors
only) and ``model.json`` (everything else). Loading never unpickles: safetensors and JSON hold no code.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import uuid
from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline import __version__, rarity
from pipeline.errors import ModelError, OutputError
from pipeline.files import exchange, make_parent
from pipeline.scorer import MAX_META_BYTES, META, Scorer

MODEL_FORMAT = "rsvae-model/1"
WEIGHTS = "weights.safetensors"

#: Quantile levels of held-out normal scores kept for thresholds: dense in the body, log-spaced in the tail.
CALIBRATION_LEVELS = np.unique(np.concatenate([np.linspace(0.0, 0.99, 100), 1.0 - np.logspace(-2, -6, 41), [1.0]]))


class Detector(Scorer):
    """A Scorer fitted on normal pixels and saved to a model folder: ``fit`` (a classmethod of each detector),
    ``tensors``/``save``/``from_saved``, calibration of held-out scores and thresholds by false-alarm rate."""

    def decision_function(self, pixels: np.ndarray) -> np.ndarray:
        """Anomaly scores (n,), higher = more anomalous (the pyod convention)."""
        return self.score(pixels)["score"]

    @property
    def has_rarity(self) -> bool:
        """A rarity band for anomaly scores (first output ``score``)."""
        return bool(self.outputs) and self.outputs[0] == "score"

    def rarity_table(self) -> rarity.RarityTable:
        """Score -> rarity (-log10 of the share of held-out normal pixels scoring at least as high)."""
        return rarity.table(self.meta.get("calibration"))

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """The arrays to save in ``weights.safetensors``."""

    def save(self, folder: str | Path) -> Path:
        """Save to ``folder`` atomically (a complete folder or the earlier one, never a half-written one)."""
        meta = dict(self.meta, format=MODEL_FORMAT, detector=self.kind, bands=self.bands,
                    band_names=self.band_names, versions=versions())
        return write_model_folder(folder, meta, self.tensors())

    # ---- thresholds from held-out normal scores
    def calibrate(self, scores: np.ndarray) -> None:
        """Keep quantiles of held-out normal pixels' scores, for thresholds by false-alarm rate."""
        scores = np.asarray(scores, np.float64)
        values = np.quantile(scores, CALIBRATION_LEVELS)
        self.meta["calibration"] = {
            "levels": CALIBRATION_LEVELS.tolist(),
            "values": values.tolist(),
            "n": int(scores.size),
            "tail": rarity.fit_tail(scores, CALIBRATION_LEVELS, values).to_json(),
        }

    def threshold(self, fpr: float) -> float:
        """The score above which a fraction ``fpr`` of held-out normal pixels would be flagged."""
        cal = self.meta.get("calibration")
        if not cal:
            raise ModelError("model has no calibration of held-out scores; retrain it to use --fpr")
        if not 0 < fpr < 1:
            raise ValueError(f"fpr must be in (0, 1), not {fpr}")
        return float(np.interp(1.0 - fpr, cal["levels"], cal["values"]))


def versions() -> dict[str, str]:
    """Versions of what made a model, recorded for reproducibility."""
    import platform

    import rasterio

    return {"rsvae": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "rasterio": rasterio.__version__, "gdal": rasterio.__gdal_version__, "python": platform.python_version(),
            "platform": platform.platform(), "machine": platform.machine()}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} in model.json")


def write_model_folder(folder: str | Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``model.json`` and ``weights.safetensors`` to a temporary folder, then swap it into place."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    old = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old")
    text = json.dumps(meta, indent=2, default=_json_default, allow_nan=False) + "\n"
    if folder.is_file():
        raise OutputError(f"{folder}: exists and is a file, not a model folder")
    if folder.is_dir() and not {p.name for p in folder.iterdir()} <= {META, WEIGHTS}:
        # replacing it would delete whatever else the folder holds (a mistyped -o)
        raise OutputError(f"{folder}: exists and holds more than an rsvae model; refusing to replace it")
    try:
        make_parent(folder)
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS))
        _write_synced(tmp / META, text.encode())
        _fsync(tmp / WEIGHTS)
        if folder.exists():
            # one atomic swap where the system has it (the path always holds a complete model, even after a
            # SIGKILL); else the earlier model goes aside and the new one in, two renames
            if exchange(tmp, folder):
                tmp, old = old, tmp  # the earlier model now sits at the temporary name: removed below
            else:
                os.rename(folder, old)
                os.rename(tmp, folder)
        else:
            os.rename(tmp, folder)
    except (OSError, SafetensorError) as exc:
        raise OutputError(f"{folder}: cannot write model ({getattr(exc, 'strerror', None) or exc})") from None
    finally:
        if old.exists() and not folder.exists():  # failed or interrupted between the renames: keep the old one
            with contextlib.suppress(OSError):
                os.rename(old, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk, so a rename after it never exposes an empty file."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_model_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and check a model folder's JSON and tensors; nothing in it can execute code."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelError(f"{folder}: model folder not found")
    if not folder.is_dir():
        raise ModelError(f"{folder}: not a model folder (expected a folder with {META} and {WEIGHTS})")
    for name in (META, WEIGHTS):
        if not (folder / name).is_file():
            raise ModelError(f"{folder}: missing {name}; not a complete rsvae model folder")
    if (folder / META).stat().st_size > MAX_META_BYTES:
        raise ModelError(f"{folder / META}: too large to be an rsvae model description")
    try:
        meta = json.loads((folder / META).read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelError(f"{folder / META}: corrupted model description ({msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelError(f"{folder / META}: not an rsvae model (format {got!r}, expected {MODEL_FORMAT!r})")
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{folder / WEIGHTS}: corrupted or not a safetensors file ({exc})") from None
    for key, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ModelError(f"{folder / WEIGHTS}: tensor {key!r} holds NaN or inf")
    bands = meta.get("bands")
    names = meta.get("band_names")
    if (not isinstance(bands, int) or isinstance(bands, bool) or bands < 1 or not isinstance(names, list)
            or len(names) != bands):
        raise ModelError(f"{folder / META}: band count and band names disagree")
    cal = meta.get("calibration")
    if cal is not None and not _valid_calibration(cal):
        raise ModelError(f"{folder / META}: corrupted calibration (levels and values must be equal-length, "
                         "increasing lists of numbers; a tail needs a finite anchor, a share in (0, 1] and a "
                         "positive scale)")
    return meta, tensors


def _valid_calibration(cal: Any) -> bool:
    """Whether a model.json calibration block can give thresholds."""
    try:
        levels = np.asarray(cal["levels"], np.float64)
        values = np.asarray(cal["values"], np.float64)
        tail = cal.get("tail")
        if tail is not None:
            anchor, share, scale = (float(tail[k]) for k in ("anchor", "share", "scale"))
            if not (math.isfinite(anchor) and 0 < share <= 1 and math.isfinite(scale) and scale > 0):
                return False
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    return (levels.ndim == 1 and levels.shape == values.shape and levels.size > 1
            and bool(np.isfinite(levels).all() and np.isfinite(values).all())
            and bool((np.diff(levels) > 0).all() and (np.diff(values) >= 0).all()))


def file_digest(path: str | Path) -> str:
    """sha256 of a whole file (model files and samples are small enough to hash in full)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()
