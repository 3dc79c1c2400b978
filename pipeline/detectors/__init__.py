"""Detectors behind one contract (fit on pixels, score pixels, save, load): the VAE, and classic baselines.

``load_detector`` reads any model folder and returns the detector it names; nothing is unpickled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.detectors.base import WEIGHTS, Detector, file_digest, read_model_folder
from pipeline.detectors.context import ContextVAEDetector
from pipeline.detectors.rx import LRXDetector, RXDetector
from pipeline.detectors.vae import VAEDetector
from pipeline.errors import ConfigError, ModelError

#: Detector classes by the name ``train.method`` and ``model.json``'s ``detector`` use.
DETECTORS: dict[str, type[Detector]] = {"vae": VAEDetector, "rx": RXDetector, "lrx": LRXDetector,
                                        "context-vae": ContextVAEDetector}
#: What ``train.method`` may name (the context VAE is ``method: vae`` with ``context: ring``).
METHODS = ("vae", "rx", "lrx")


def fit_detector(method: str, pixels: Any, band_names: list[str], stats: Any, settings: dict[str, Any],
                 progress: Callable[[dict[str, float]], None] | None = None, *, context: Any = None,
                 windows: tuple[int, int] | None = None) -> Detector:
    """Fit the detector named ``method`` on normal ``pixels`` (n, bands); with ``settings['context']`` = ring,
    the context VAE on the pixels and their ring means ``context`` (recorded at ingest with ``windows``)."""
    if method not in METHODS:
        raise ConfigError(f"train.method: unknown method {method!r} (known: {', '.join(METHODS)})")
    if settings.get("context", "none") != "none":
        if method != "vae":
            raise ConfigError(f"train.context: {settings['context']} works with method vae, not {method}")
        return ContextVAEDetector.fit(pixels, band_names, stats, settings, progress, context=context,
                                      windows=windows)
    return DETECTORS[method].fit(pixels, band_names, stats, settings, progress)


def load_detector(folder: str | Path, device: str = "cpu") -> Detector:
    """Load whatever detector a model folder holds."""
    meta, tensors = read_model_folder(folder)
    kind = meta.get("detector")
    if not isinstance(kind, str) or kind not in DETECTORS:
        raise ModelError(f"{folder}: unknown detector {kind!r} in model.json (known: {', '.join(DETECTORS)})")
    det = DETECTORS[kind].from_saved(meta, tensors, str(folder), device)
    det.origin = {"path": str(folder), "digest": file_digest(Path(folder) / WEIGHTS)}
    return det


__all__ = ["DETECTORS", "ContextVAEDetector", "Detector", "LRXDetector", "RXDetector", "VAEDetector", "fit_detector", "load_detector"]
