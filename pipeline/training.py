"""Training: a sample file in, a model folder out, with everything needed to score and to reproduce it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    det = fit_detector(settings["method"], sample.pixels, sample.band_names, sample.stats, settings, progress)
    det.meta.update({
        "wavelengths": sample.wavelengths,
        "crs": str(sample.attrs.get("crs", "")),
        "sample": {"path": str(sample_path), "digest": file_digest(sample_path), "pixels": int(sample.pixels.shape[0]),
                   "sources": sample.attrs.get("sources", "[]")},
        "config": config if config is not None else {"train": settings},
    })
    det.save(out)
    return det
