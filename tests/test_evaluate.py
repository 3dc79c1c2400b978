"""Evaluation metrics and the grid check."""

import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.evaluate import evaluate, metrics
from tests.conftest import write_tif


def test_perfect_and_random_scores():
    labels = np.r_[np.zeros(990), np.ones(10)]
    perfect = metrics(labels + 0.01 * np.arange(1000) / 1000, labels)
    assert perfect["roc_auc"] == 1.0 and perfect["detection_rate_at_far_0.001"] == 1.0
    assert perfect["best_f1"]["f1"] == 1.0
    rng = np.random.default_rng(0)
    rand = metrics(rng.random(1000), labels)
    assert 0.2 < rand["roc_auc"] < 0.8
    bs = perfect["background_suppression"]
    assert bs["auc_far_tau"] < bs["auc_pd_tau"]


def test_detection_rate_at_far():
    # 1000 background, 10 anomalies; 5 anomalies above every background pixel, 5 below all
    scores = np.r_[np.linspace(0, 1, 1000), np.full(5, 2.0), np.full(5, -1.0)]
    labels = np.r_[np.zeros(1000), np.ones(10)]
    assert metrics(scores, labels)["detection_rate_at_far_0.001"] == 0.5


def test_rasters_with_nodata_and_plots(tmp_path):
    s = np.zeros((1, 20, 20), np.float32)
    s[0, 5, 5] = 10
    s[0, :, 0] = -9999
    t = np.zeros((1, 20, 20), np.uint8)
    t[0, 5, 5] = 1
    t[0, 3, 0] = 1  # under nodata: left out
    sp = write_tif(tmp_path / "s.tif", s, nodata=-9999)
    tp = write_tif(tmp_path / "t.tif", t)
    m = evaluate(sp, tp, tmp_path / "m.json", tmp_path / "plots")
    assert m["pixels"] == 380 and m["anomaly_pixels"] == 1 and m["roc_auc"] == 1.0
    assert all((tmp_path / "plots" / f"s_{k}.png").exists() for k in ("roc", "quicklook", "histogram"))


def test_grid_mismatch(tmp_path):
    sp = write_tif(tmp_path / "s.tif", np.zeros((1, 20, 20), np.float32))
    tp = write_tif(tmp_path / "t.tif", np.zeros((1, 10, 20), np.uint8))
    with pytest.raises(InputError, match="grid"):
        evaluate(sp, tp)
