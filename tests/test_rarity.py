"""Rarity: calibrated on held-out scores, monotone, capped, extrapolated by the tail; old model folders still work."""

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline import rarity
from pipeline.detectors import load_detector
from pipeline.detectors.base import CALIBRATION_LEVELS, Detector, read_model_folder
from pipeline.errors import ModelError


def _calibration(scores: np.ndarray) -> dict:
    values = np.quantile(scores, CALIBRATION_LEVELS)
    return {"levels": CALIBRATION_LEVELS.tolist(), "values": values.tolist(), "n": int(scores.size),
            "tail": rarity.fit_tail(scores, CALIBRATION_LEVELS, values).to_json()}


def test_rarity_matches_the_share_of_fresh_normal_scores():
    rng = np.random.default_rng(0)
    held_out, fresh = rng.chisquare(8, 200_000), rng.chisquare(8, 2_000_000)
    r = rarity.table(_calibration(held_out))(fresh)
    for level in (1, 2, 3, 4):  # 4 lies beyond what 200 000 held-out pixels measure: the tail's part
        share = float((r >= level).mean())
        assert 10 ** -level / 1.5 < share < 10 ** -level * 1.5, (level, share)


def test_tail_extrapolates_an_exponential_tail():
    rng = np.random.default_rng(1)
    t = rarity.table(_calibration(rng.exponential(2.0, 20_000)))
    s = np.array([20.0, 30.0])  # true share above s: exp(-s / 2), i.e. rarity 4.34 and 6.51
    np.testing.assert_allclose(t(s), s / 2 / math.log(10), atol=0.35)


def test_monotone_zero_below_and_capped_above():
    rng = np.random.default_rng(2)
    t = rarity.table(_calibration(rng.lognormal(0, 1, 5000)))
    s = np.sort(np.concatenate([rng.lognormal(0, 2, 10_000), [-5.0, 0.0, 1e6, 1e30]]))
    r = t(s)
    assert r.dtype == np.float32 and (np.diff(r) >= 0).all()
    assert r[0] == 0.0 and r[-1] == rarity.CAP and r.max() <= rarity.CAP


def test_quantiles_alone_give_nearly_the_same_rarity():
    """A model folder saved before rarity (no tail block) gets its tail from the stored quantiles."""
    rng = np.random.default_rng(3)
    cal = _calibration(rng.chisquare(8, 50_000))
    old = {k: v for k, v in cal.items() if k != "tail"}
    s = np.linspace(0, 60, 200)
    np.testing.assert_allclose(rarity.table(old)(s), rarity.table(cal)(s), rtol=0.05, atol=0.2)


def test_no_calibration_asks_to_retrain():
    with pytest.raises(ModelError, match="retrain"):
        rarity.table(None)


def test_old_model_folder_still_scores_rarity(model_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    meta = json.loads((old / "model.json").read_text())
    del meta["calibration"]["tail"]
    (old / "model.json").write_text(json.dumps(meta))
    new_det, old_det = load_detector(model_dir), load_detector(old)
    values = np.asarray(meta["calibration"]["values"])
    body = np.linspace(values[0], np.quantile(values, 0.5), 50)  # below the tail's anchor: the same quantiles
    np.testing.assert_allclose(old_det.rarity_table()(body), new_det.rarity_table()(body), atol=1e-3)
    far = np.linspace(values[-1], 10 * values[-1], 50)  # beyond: the tail from the stored quantiles
    r = old_det.rarity_table()(far)
    assert np.isfinite(r).all() and (np.diff(r) >= 0).all() and r[0] >= 2 and r[-1] <= rarity.CAP


def test_a_corrupted_tail_is_refused(model_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["calibration"]["tail"]["scale"] = -1
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="corrupted calibration"):
        read_model_folder(bad)


def test_calibrate_stores_the_tail():
    holder = SimpleNamespace(meta={})  # calibrate only needs the detector's meta
    Detector.calibrate(holder, np.random.default_rng(4).exponential(1.0, 10_000))
    tail = holder.meta["calibration"]["tail"]
    assert tail["model"] == "exponential" and tail["cap"] == rarity.CAP and 0.9 < tail["scale"] < 1.1


def test_the_fast_lookup_follows_the_curve():
    rng = np.random.default_rng(5)
    t = rarity.table(_calibration(rng.chisquare(8, 20_000)))
    s = np.concatenate([rng.chisquare(8, 100_000), rng.uniform(0, 3 * t.scores[-1], 10_000), t.scores]).astype(
        np.float32)
    np.testing.assert_allclose(t(s), t.exact(s), atol=1e-4)
    assert t(np.float32([t.scores[-1], 1e20])).tolist() == [rarity.CAP, rarity.CAP]
