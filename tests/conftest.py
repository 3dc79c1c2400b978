"""Shared fixtures: small georeferenced rasters made by code in a temporary folder, never committed binaries."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# One torch/BLAS thread keeps the suite fast and deterministic on small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SMALL = {"seed": 0, "bands": 16, "size": 64, "tiles_normal": 2, "tiles_test": 1}
FAST_TRAIN = {"epochs": 8, "patience": 0, "threads": 1, "batch_size": 256}


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """A small demo data set (16 bands, 64x64 tiles): DemoLayout with normal, test and truth paths."""
    from pipeline.synth import make_demo

    return make_demo(tmp_path_factory.mktemp("demo"), **SMALL)


@pytest.fixture(scope="session")
def sample_file(demo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sample ingested from the small demo's normal tiles."""
    from pipeline.sample import ingest

    return ingest(demo.normal, tmp_path_factory.mktemp("sample") / "sample.nc", max_pixels=4000, seed=0)


@pytest.fixture(scope="session")
def model_dir(sample_file, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VAE trained briefly on the small demo sample."""
    from pipeline.config import load_config
    from pipeline.training import train

    settings = dict(load_config()["train"], **FAST_TRAIN)
    out = tmp_path_factory.mktemp("model") / "model"
    train(sample_file, out, settings)
    return out


def write_tif(path: Path, data: np.ndarray, *, nodata=None, crs="EPSG:32632", transform=None, **profile) -> Path:
    """Write a (bands, rows, cols) array as a plain GeoTIFF for tests (not through rsvae's writer)."""
    import rasterio
    from rasterio.transform import from_origin

    if data.ndim == 2:
        data = data[None]
    kwargs = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                  dtype=data.dtype, nodata=nodata)
    if crs is not None:
        kwargs["crs"] = crs
        kwargs["transform"] = transform or from_origin(500000, 5000000, 30, 30)
    kwargs.update(profile)
    with rasterio.open(path, "w", **kwargs) as ds:
        ds.write(data)
    return path
