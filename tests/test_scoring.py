"""Streaming scoring: georeference kept, nodata where invalid, scores equal the in-memory API, mask by fpr."""

import numpy as np
import pytest
import rasterio

from pipeline.detectors import load_detector
from pipeline.errors import InputError
from pipeline.scoring import score_raster
from tests.conftest import write_tif


def test_georeference_nodata_and_values(model_dir, demo, tmp_path):
    det = load_detector(model_dir)
    out, mask = tmp_path / "s.tif", tmp_path / "m.tif"
    summary = score_raster(det, demo.test[0], out, mask_out=mask, fpr=0.01)
    with rasterio.open(demo.test[0]) as src, rasterio.open(out) as ds, rasterio.open(mask) as m:
        assert ds.crs == src.crs and ds.transform == src.transform and ds.nodata == src.nodata
        assert ds.count == 3 and ds.dtypes[0] == "float32"
        assert ds.descriptions == ("score", "reconstruction", "kl")
        data = src.read()
        valid = (data != src.nodata).all(0)
        scores = ds.read()
        assert (scores[:, ~valid] == ds.nodata).all()
        direct = det.score(data[:, valid].T)
        assert np.allclose(scores[0][valid], direct["score"], rtol=1e-6)
        mk = m.read(1)
        assert (mk[~valid] == 255).all()
        assert np.array_equal(mk[valid] == 1, scores[0][valid] > summary.threshold)
    assert summary.valid_pixels == int(valid.sum())


def test_anomalies_score_higher(model_dir, demo, tmp_path):
    from sklearn.metrics import roc_auc_score

    det = load_detector(model_dir)
    out = tmp_path / "s.tif"
    score_raster(det, demo.test[0], out)
    with rasterio.open(out) as ds, rasterio.open(demo.truth[0]) as t:
        s, y = ds.read(1), t.read(1)
        valid = s != ds.nodata
    assert roc_auc_score(y[valid], s[valid]) > 0.9  # a briefly trained model on 16 bands; the CLI test checks 0.98


def test_band_mismatch_names_file_and_counts(model_dir, tmp_path):
    tif = write_tif(tmp_path / "eight.tif", np.ones((8, 16, 16), np.float32))
    with pytest.raises(InputError, match=r"eight.tif: has 8 bands but the model was trained on 16"):
        score_raster(load_detector(model_dir), tif, tmp_path / "o.tif")
    assert not (tmp_path / "o.tif").exists()


def test_mask_needs_fpr(model_dir, demo, tmp_path):
    with pytest.raises(InputError, match="--fpr"):
        score_raster(load_detector(model_dir), demo.test[0], tmp_path / "o.tif", mask_out=tmp_path / "m.tif")
