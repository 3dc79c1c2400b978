"""Training: a sample file in, a model folder out, with everything needed to score and to reproduce it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.detectors import fit_detector
from pipeline.detectors.base import Detector, file_digest
from pipeline.sample import load_sample


def train(sample_path: str | Path, out: str | Path, settings: dict[str, Any],
          progress: Callable[[dict[str, float]], None] | None = None,
          config: dict[str, Any] | None = None) -> Detector:
    """Fit the detector ``settings['method']`` on a sample file and save it to the folder ``out``.

    ``settings`` is the config's ``train`` section; ``config`` (the whole config) is recorded in model.json.
    """
    sample = load_sample(sample_path)
    det = fit_detector(settings["method"], sample.pixels, sample.band_names, sample.stats, settings, progress,
                       context=sample.context, windows=sample.windows)
    # The config as run: the file's sections with the train section that was used (command-line included).
    recorded = dict(config or {}, train=settings)
    det.meta.update({
        "wavelengths": sample.wavelengths,
        "crs": str(sample.attrs.get("crs", "")),
        "sample": {"path": str(sample_path), "digest": file_digest(sample_path), "pixels": int(sample.pixels.shape[0]),
                   "seed": _plain(sample.attrs.get("seed")), "max_pixels": _plain(sample.attrs.get("max_pixels")),
                   "sources": sample.attrs.get("sources", "[]")},
        "config": recorded,
        "torch_threads": torch.get_num_threads(),
    })
    det.save(out)
    return det


def _plain(value: Any) -> Any:
    """A NetCDF attribute (numpy scalar) as a JSON-ready Python value."""
    return value.item() if hasattr(value, "item") else value
