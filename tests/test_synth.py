"""The demo generator: deterministic, georeferenced, non-overlapping, with truth and nodata strips."""

import numpy as np
import rasterio

from pipeline.synth import NODATA_STRIP, make_demo


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.profile, ds.bounds, ds.tags(1), ds.descriptions


def test_deterministic_by_seed(tmp_path):
    a = make_demo(tmp_path / "a", seed=3, bands=8, size=32, tiles_normal=1, tiles_test=1)
    b = make_demo(tmp_path / "b", seed=3, bands=8, size=32, tiles_normal=1, tiles_test=1)
    c = make_demo(tmp_path / "c", seed=4, bands=8, size=32, tiles_normal=1, tiles_test=1)
    assert np.array_equal(_read(a.test[0])[0], _read(b.test[0])[0])
    assert not np.array_equal(_read(a.test[0])[0], _read(c.test[0])[0])


def test_layout_georeference_and_bands(demo):
    data, profile, _, tags, desc = _read(demo.test[0])
    assert profile["crs"].is_projected
    assert data.shape == (16, 64, 64)
    assert "wavelength" in tags and desc[0].startswith("B001")
    assert (data[:, :, :NODATA_STRIP] == profile["nodata"]).all()
    truth = _read(demo.truth[0])[0][0]
    assert truth.dtype == np.uint8 and 0 < truth.sum() < truth.size // 50
    bounds = [_read(p)[2] for p in demo.normal + demo.test]
    for i, a in enumerate(bounds):
        for b in bounds[i + 1:]:
            assert a.right <= b.left or b.right <= a.left or a.top <= b.bottom or b.top <= a.bottom


def test_spectra_are_smooth_not_noise(demo):
    data = _read(demo.normal[0])[0][:, :, NODATA_STRIP:].astype(np.float64)
    # neighbouring bands correlate strongly in real imagery; white noise would not
    d = data.reshape(data.shape[0], -1)
    r = np.corrcoef(d[5], d[6])[0, 1]
    assert r > 0.8


def test_uint16_variant(tmp_path):
    lay = make_demo(tmp_path, seed=0, bands=4, size=32, tiles_normal=1, tiles_test=0, dtype="uint16")
    data, profile, *_ = _read(lay.normal[0])
    assert data.dtype == np.uint16 and profile["nodata"] == 0
    assert (data[:, :, NODATA_STRIP:] > 0).all()
