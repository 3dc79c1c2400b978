"""Ingest: bounded fair sampling, exact mergeable statistics, per-tile partials equal to one-process ingest."""

import numpy as np
import pytest
import rasterio

from pipeline.errors import InputError
from pipeline.sample import (
    BandStats,
    _allocate,
    ingest,
    load_sample,
    merge_samples,
    sample_tile,
    write_sample,
)
from tests.conftest import write_tif


def test_stats_merge_equals_direct():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, (4, 1000))
    a, b = BandStats.empty(4), BandStats.empty(4)
    a.update(x[:, :300])
    b.update(x[:, 300:])
    a.merge(b)
    assert np.allclose(a.mean, x.mean(1)) and np.allclose(a.std, x.std(1))
    assert np.array_equal(a.min, x.min(1)) and a.count[0] == 1000


def test_allocation_is_fair_and_passes_on():
    assert _allocate([10, 100, 100], 150) == [10, 70, 70]
    assert sum(_allocate([7, 8, 9], 10)) == 10
    assert _allocate([5, 5], 100) == [5, 5]


def test_stats_cover_all_valid_pixels(demo, sample_file):
    s = load_sample(sample_file)
    total = 0
    for p in demo.normal:
        with rasterio.open(p) as ds:
            a = ds.read()
            total += int((a != ds.nodata).all(0).sum())
    assert s.stats.count[0] == total
    assert s.pixels.shape == (4000, 16)
    assert (s.pixels != -9999).all()
    assert s.band_names[0].startswith("B001") and len(s.wavelengths) == 16


def test_sample_values_come_from_their_pixels(demo, sample_file):
    s = load_sample(sample_file)
    import xarray as xr

    ds = xr.open_dataset(sample_file, engine="h5netcdf")
    tile, row, col = str(ds.tile.values[0]), int(ds.row.values[0]), int(ds.col.values[0])
    path = next(p for p in demo.normal if p.name == tile)
    with rasterio.open(path) as r:
        assert np.allclose(r.read()[:, row, col], s.pixels[0])


def test_partials_merge_to_single_ingest(demo, tmp_path):
    single = load_sample(ingest(demo.normal, tmp_path / "one.nc", max_pixels=3000, seed=1))
    parts = [sample_tile(p, 3000, seed=1) for p in demo.normal]
    merged = merge_samples(parts, 3000)
    assert np.array_equal(single.pixels, merged["pixels"].values)


def test_seed_reproducible_and_bounded(demo, tmp_path):
    a = load_sample(ingest(demo.normal, tmp_path / "a.nc", max_pixels=500, seed=2))
    b = load_sample(ingest(demo.normal, tmp_path / "b.nc", max_pixels=500, seed=2))
    c = load_sample(ingest(demo.normal, tmp_path / "c.nc", max_pixels=500, seed=3))
    assert np.array_equal(a.pixels, b.pixels) and not np.array_equal(a.pixels, c.pixels)
    assert a.pixels.shape[0] == 500


def test_band_count_mismatch_named(demo, tmp_path):
    other = write_tif(tmp_path / "five.tif", np.ones((5, 16, 16), np.float32))
    with pytest.raises(InputError, match="five.tif: has 5 bands"):
        ingest([demo.normal[0], other], tmp_path / "s.nc", max_pixels=100)


def test_all_invalid_tiles_rejected(tmp_path):
    tif = write_tif(tmp_path / "nan.tif", np.full((2, 8, 8), np.nan, np.float32))
    with pytest.raises(InputError, match="no valid pixels"):
        ingest([tif], tmp_path / "s.nc", max_pixels=100)


def test_written_atomically(tmp_path, demo):
    out = tmp_path / "s.nc"
    write_sample(sample_tile(demo.normal[0], 10), out)
    assert [p.name for p in tmp_path.iterdir()] == ["s.nc"]
