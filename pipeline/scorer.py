"""The scoring contract: what the streaming scorer (``pipeline.scoring``) runs over a raster.

It imports no torch, so a scorer written without it (the throughput benchmark's null model, an adapter in numpy)
streams a raster without loading torch; fitted, saved detectors extend it in ``pipeline.detectors.base``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from pipeline import rarity
from pipeline.errors import InputError

#: A model folder's description (``detectors.base`` writes and checks it; read here too, without torch).
META = "model.json"
#: model.json is a few hundred kB at most; a far larger one is not an rsvae model.
MAX_META_BYTES = 64 << 20


class Scorer(ABC):
    """What the streaming scorer (``pipeline.scoring``) needs of anything it runs over a raster: named per-pixel
    outputs (``score`` first for anomaly detectors), the bands it expects, the halo of context it needs, where it
    was loaded from, and the score -> rarity lookup. Every method here has a working default but ``score``.

    Detectors (below) are Scorers that are also fitted, calibrated and saved; an adapter that only scores (the
    generative side's ``LatentMeans``) is a Scorer and nothing more.
    """

    kind: ClassVar[str]
    #: Names of the per-pixel arrays ``score`` returns, in output-band order.
    outputs: ClassVar[tuple[str, ...]] = ("score",)

    band_names: list[str]
    meta: dict[str, Any]

    #: Pixels of context a detector needs on every side of a pixel (0: each pixel is scored on its own).
    #: Detectors with a halo score windows read with that margin through ``score_block``.
    halo: int = 0

    #: Where the model was loaded from: ``{"path": folder, "digest": weights' sha256}`` (set by
    #: ``detectors.load_detector``; empty for a detector fitted in this process). Score rasters are tagged with it.
    origin: Mapping[str, str] = MappingProxyType({})

    @property
    def bands(self) -> int:
        return len(self.band_names)

    @abstractmethod
    def score(self, pixels: np.ndarray, **options: Any) -> dict[str, np.ndarray]:
        """Per-pixel outputs for ``pixels`` (n, bands): a dict of float32 arrays (n,), keys as ``outputs``;
        ``options`` are the scoring settings (``samples``, ``seed``, ``chunk``, ...), ignored where they mean nothing."""

    def score_bands(self, pixels: np.ndarray, **options: Any) -> dict[str, np.ndarray]:
        """``score`` of band-major ``pixels`` (bands, n), e.g. a view of a rasterio block. This default scores the
        transposed view; a detector with a faster band-major path (the VAE) overrides it."""
        return self.score(pixels.T, **options)

    def score_block(self, data: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for the interior of a block ``data`` (bands, rows, cols) read with ``halo`` pixels of margin.

        ``valid`` (rows, cols) marks valid pixels (margin included); the arrays returned are
        (rows - 2·halo, cols - 2·halo), NaN at invalid pixels. This default scores each interior pixel on its own.
        """
        h = self.halo
        inner = (slice(h, data.shape[1] - h), slice(h, data.shape[2] - h))
        v = valid[inner]
        out = {k: np.full(v.shape, np.nan, np.float32) for k in self.outputs}
        if v.any():
            terms = self.score(data[(slice(None), *inner)][:, v].T)
            for k in self.outputs:
                out[k][v] = terms[k]
        return out

    def scoring_path(self, path: str = "auto") -> Any:
        """The scoring path ``path`` selects, for detectors with more than one (the VAE: ``folded``, ``layered``, or
        ``auto``, the faster on this CPU; an object whose ``describe()`` the raster's tags record); None where there
        is one path."""
        return None

    def check_bands(self, count: int, source: str) -> None:
        """Raise InputError when data with ``count`` bands cannot be scored by this model."""
        if count != self.bands:
            raise InputError(f"{source}: has {count} bands but the model was trained on {self.bands}")

    @property
    def has_rarity(self) -> bool:
        """Whether score rasters get a ``rarity`` band after the outputs (looked up with ``rarity_table``, a band of
        nodata where the model has no calibration). A bare Scorer has no calibration of its own: no band."""
        return False

    def rarity_table(self) -> rarity.RarityTable | None:
        """Score -> rarity, for Scorers with ``has_rarity``."""
        return None


def halo_of(kind: str, meta: Mapping[str, Any]) -> int:
    """The halo of a detector of ``kind`` described by ``meta`` (its ``model.json``): half the outer window of
    the detectors that score a pixel with its neighbourhood (the context VAE, local RX), 0 for the others. The
    detectors' own ``halo`` is this, so the scorer can start reading a tile before torch and the model load."""
    if kind == "context-vae":
        return int(meta["context"]["windows"][1]) // 2
    if kind == "lrx":
        return int(meta["outer_window"]) // 2
    return 0


def saved_halo(folder: str | Path) -> int | None:
    """``halo_of`` the model saved in ``folder``, from its description alone (no torch), or None where that
    cannot be read: loading the model (``detectors.load_detector``) then says what is wrong with it."""
    try:
        path = Path(folder) / META
        if path.stat().st_size > MAX_META_BYTES:
            return None
        meta = json.loads(path.read_bytes())
        return halo_of(meta.get("detector"), meta)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        return None
