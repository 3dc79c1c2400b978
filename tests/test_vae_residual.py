"""The VAE's residual-covariance reconstruction term and its trimmed second training pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.detectors import load_detector
from pipeline.detectors.vae import VAEDetector, reconstruction_term
from pipeline.sample import BandStats, load_sample
from tests.conftest import FAST_TRAIN


def settings(**over):
    return dict(load_config()["train"], **FAST_TRAIN, **over)


def test_reconstruction_term_is_half_the_mahalanobis_distance_of_the_residual():
    from pipeline.detectors.rx import whitening

    rng = np.random.default_rng(0)
    r = rng.normal(size=(500, 5)) @ rng.normal(size=(5, 5))
    mean, cov = r.mean(axis=0), np.cov(r, rowvar=False, bias=True)
    x, xhat = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
    noise = (torch.tensor(mean, dtype=torch.float64), torch.tensor(whitening(cov, 0.0)))
    got = reconstruction_term(torch.tensor(x), torch.tensor(xhat), "gaussian", noise).numpy()
    d = x - xhat - mean
    np.testing.assert_allclose(got, 0.5 * np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d), rtol=1e-8)


@pytest.fixture(scope="module")
def contaminated(sample_file):
    """The demo sample with 1 % of its pixels replaced by an odd spectrum (anomalies hidden in training data)."""
    s = load_sample(sample_file)
    rng = np.random.default_rng(1)
    px = s.pixels.astype(np.float64).copy()
    bad = rng.choice(len(px), size=len(px) // 100, replace=False)
    px[bad] = px.mean(axis=0) + px.std(axis=0) * np.sin(np.arange(px.shape[1]))
    stats = BandStats.empty(px.shape[1])
    stats.update(px.T)
    return px.astype(np.float32), bad, s.band_names, stats


@pytest.fixture(scope="module")
def trimmed(contaminated):
    px, bad, names, stats = contaminated
    return VAEDetector.fit(px, names, stats, settings())


def test_default_model_scores_with_the_residual_covariance_after_a_trimmed_second_pass(trimmed, contaminated):
    px, bad, _, _ = contaminated
    passes = trimmed.meta["training"]["passes"]
    assert len(passes) == 2 and passes[1]["trimmed"] == round(0.02 * len(px))
    assert trimmed.architecture["noise"] == "residual" and trimmed.noise is not None
    terms = trimmed.score(px)
    np.testing.assert_allclose(terms["score"], terms["reconstruction"] + trimmed.beta * terms["kl"], rtol=1e-5)
    # Normal pixels' reconstruction terms look like half a chi-square with one degree of freedom per band.
    normal = np.setdiff1d(np.arange(len(px)), bad)
    assert 0.3 * px.shape[1] < np.median(terms["reconstruction"][normal]) < 0.7 * px.shape[1]


def test_hidden_anomalies_stay_anomalous(trimmed, contaminated):
    """The planted pixels were in the training data, yet score above 99 % of the normal ones.

    (With the unit-variance reconstruction term they score below the normal pixels' 99th percentile: the
    residual covariance is what finds them.)
    """
    px, bad, _, _ = contaminated
    s = trimmed.score(px)["score"]
    normal = np.setdiff1d(np.arange(len(px)), bad)
    assert np.quantile(s[bad], 0.05) > np.quantile(s[normal], 0.99)


def test_unit_noise_and_one_pass_remain_available(contaminated):
    px, _, names, stats = contaminated
    det = VAEDetector.fit(px, names, stats, settings(noise="unit", trim=0.0))
    assert det.noise is None and len(det.meta["training"]["passes"]) == 1
    terms = det.score(px[:50])
    x = torch.from_numpy(det.normalise(px[:50]))
    with torch.inference_mode():
        se = 0.5 * (x - det.module.decode(det.module.encode(x)[0])).pow(2).sum(dim=1).numpy()
    np.testing.assert_allclose(terms["reconstruction"], se, rtol=1e-4)


def test_residual_covariance_survives_save_and_load(trimmed, contaminated, tmp_path):
    px = contaminated[0][:300]
    trimmed.save(tmp_path / "m")
    back = load_detector(tmp_path / "m")
    assert back.architecture["noise"] == "residual"
    for k, v in trimmed.score(px).items():
        np.testing.assert_array_equal(back.score(px)[k], v)


def test_a_model_folder_missing_its_covariance_is_refused(trimmed, tmp_path):
    from safetensors.torch import load_file, save_file

    from pipeline.errors import ModelError

    trimmed.save(tmp_path / "m")
    weights = tmp_path / "m" / "weights.safetensors"
    t = load_file(str(weights))
    del t["noise.whiten"]
    save_file(t, str(weights))
    with pytest.raises(ModelError, match="do not match"):
        load_detector(tmp_path / "m")
