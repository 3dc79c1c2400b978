"""The context VAE and its neighbourhood statistics: ring means against brute force, ingest records them, the
model trains, saves, loads and scores the same whole or window by window, masked pixels are nobody's context."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from pipeline.config import load_config
from pipeline.detectors import ContextVAEDetector, VAEDetector, load_detector
from pipeline.errors import ConfigError, ModelError
from pipeline.neighbourhood import Scratch, block_ring_sums, ring_mean
from pipeline.sample import ingest, load_sample
from pipeline.scorer import saved_halo
from pipeline.scoring import score_raster
from pipeline.training import train
from tests.conftest import FAST_TRAIN, write_tif

NODATA = -9999.0


def brute_ring(data: np.ndarray, valid: np.ndarray, i: int, j: int, inner: int, outer: int):
    """Mean and count of the valid pixels of (i, j)'s ring, one pixel at a time."""
    total, n = np.zeros(data.shape[0]), 0
    for a in range(i - outer // 2, i + outer // 2 + 1):
        for b in range(j - outer // 2, j + outer // 2 + 1):
            inside = 0 <= a < data.shape[1] and 0 <= b < data.shape[2]
            if inside and max(abs(a - i), abs(b - j)) > inner // 2 and valid[a, b]:
                total, n = total + data[:, a, b], n + 1
    return (total / n if n else np.full(data.shape[0], np.nan)), n


def test_ring_mean_equals_brute_force_with_masks_and_edges():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3, 13, 17))
    valid = rng.random((13, 17)) > 0.3
    data[:, ~valid] = 1e30  # invalid values must never reach anyone's mean
    mean, count = ring_mean(data, valid, 3, 7)
    for i in range(13):
        for j in range(17):
            want, n = brute_ring(data, valid, i, j, 3, 7)
            assert count[i, j] == n
            np.testing.assert_allclose(mean[:, i, j], want, rtol=1e-9, atol=1e-12)


def test_block_ring_sums_of_the_interior_equal_brute_force():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(2, 15, 12))
    valid = rng.random((15, 12)) > 0.3
    data[:, ~valid] = np.nan  # invalid values must never reach anyone's sum
    scratch = Scratch()
    for values in (data.transpose(1, 2, 0), np.ascontiguousarray(data.transpose(1, 2, 0))):  # any layout
        sums, count = block_ring_sums(values, valid, 3, 7, scratch)
        assert sums.shape == (9, 6, 2) and count.shape == (9, 6)
        for i in range(9):
            for j in range(6):
                want, n = brute_ring(data, valid, i + 3, j + 3, 3, 7)
                assert count[i, j] == n
                np.testing.assert_allclose(sums[i, j], want * n if n else 0.0, rtol=1e-9, atol=1e-12)


def test_scratch_reuses_arrays_within_a_thread_not_across_threads():
    import threading

    scratch, got = Scratch(), []
    a = scratch.get("x", (4, 3), np.float64)
    assert np.shares_memory(a, scratch.get("x", (2, 5), np.float64))  # fits: the same memory
    assert not np.shares_memory(a, scratch.get("x", (2, 5), np.float32))  # another type: new memory
    t = threading.Thread(target=lambda: got.append(scratch.get("x", (4, 3), np.float32)))
    t.start()
    t.join()
    assert not np.shares_memory(scratch.get("x", (4, 3), np.float32), got[0])


def test_a_pixel_with_no_valid_ring_gets_nan():
    valid = np.zeros((9, 9), bool)
    valid[4, 4] = True
    mean, count = ring_mean(np.ones((2, 9, 9)), valid, 3, 5)
    assert count[4, 4] == 0 and np.isnan(mean[:, 4, 4]).all()


def test_ring_mean_rejects_even_windows():
    with pytest.raises(ValueError, match="odd"):
        ring_mean(np.ones((1, 5, 5)), np.ones((5, 5), bool), 2, 5)


def scene(size: int = 48, bands: int = 6, seed: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """Smooth fields of two materials, and a 1-pixel target whose spectrum is common elsewhere (the other
    material) but not among its neighbours: a context anomaly."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(200, 800, bands), rng.uniform(200, 800, bands)
    img = np.empty((bands, size, size))
    half = size // 2
    img[:, :, :half] = a[:, None, None]
    img[:, :, half:] = b[:, None, None]
    img += rng.normal(0, 5, img.shape)
    where = (size // 3, size // 5)
    img[:, where[0], where[1]] = b + rng.normal(0, 5, bands)
    return img.astype(np.float32), where


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """A 48x48 tile in 16-pixel blocks (9 windows) with a nodata pixel, its sample with ring means, a model."""
    root = tmp_path_factory.mktemp("ctx")
    img, where = scene()
    img[:, 30, 5] = NODATA
    tile = write_tif(root / "t.tif", img, nodata=NODATA, tiled=True, blockxsize=16, blockysize=16)
    sample = ingest([tile], root / "s.nc", max_pixels=5000, seed=0, context=(3, 7))
    settings = dict(load_config()["train"], **FAST_TRAIN, context="ring", context_components=4)
    train(sample, root / "model", settings)
    return img, where, tile, sample, root / "model"


def test_ingest_records_each_sampled_pixels_ring_mean(tiled):
    img, _, _, sample, _ = tiled
    s = load_sample(sample)
    import xarray as xr

    with xr.open_dataset(sample, engine="h5netcdf") as ds:
        rows, cols = ds.row.values, ds.col.values
    valid = (img != NODATA).all(axis=0)
    assert s.windows == (3, 7) and s.context.shape == s.pixels.shape
    mean, _ = ring_mean(img.astype(np.float64), valid, 3, 7)  # the whole tile at once
    np.testing.assert_allclose(s.context, mean[:, rows, cols].T, rtol=1e-6)


def test_context_model_loads_and_scores_whole_or_in_windows_alike(tiled, tmp_path):
    img, where, tile, _, model = tiled
    det = load_detector(model)
    assert isinstance(det, ContextVAEDetector) and det.halo == 3 and det.meta["calibration"]["n"] > 0
    summary = score_raster(det, tile, tmp_path / "s.tif")
    with rasterio.open(tmp_path / "s.tif") as ds:
        got, nodata = ds.read(), ds.nodata
        assert ds.descriptions == ("score", "reconstruction", "kl", "rarity")
    valid = (img != NODATA).all(axis=0)
    h = det.halo
    whole = det.score_block(np.pad(img, ((0, 0), (h, h), (h, h))), np.pad(valid, h))
    assert got[0, 30, 5] == nodata and summary.valid_pixels == valid.sum()
    for i, k in enumerate(det.outputs):
        np.testing.assert_allclose(got[i][valid], whole[k][valid], rtol=1e-5, atol=1e-5)
    # the target's spectrum is the other half's material: out of place, so it scores highest
    assert np.unravel_index(np.argmax(np.where(valid, got[0], -np.inf)), valid.shape) == where


def test_masked_pixels_are_nobodys_context(tiled):
    img, _, _, _, model = tiled
    det = load_detector(model)
    h = det.halo
    valid = np.pad((img != NODATA).all(axis=0), h)
    scores = []
    for value in (NODATA, 1e6):  # whatever an invalid pixel holds, its neighbours score the same
        data = img.copy()
        data[:, 30, 5] = value
        scores.append(det.score_block(np.pad(data, ((0, 0), (h, h), (h, h))), valid)["score"])
    np.testing.assert_array_equal(scores[0], scores[1])
    assert np.isnan(scores[0][30, 5])


def test_features_project_first_then_take_the_ring_mean(tiled):
    """The ring mean of the pixels' components (what the model computes) is the components of the ring mean of
    their spectra, in either memory layout; masked pixels (here NaN) are nobody's context."""
    img, _, _, _, model = tiled
    det = load_detector(model)
    h, bands = det.halo, img.shape[0]
    valid = np.random.default_rng(4).random(img.shape[1:]) > 0.15
    valid[:6, :6] = False  # a corner whose pixels have no valid ring pixel
    data = img.copy()
    data[:, ~valid] = np.nan
    block, v = np.pad(data, ((0, 0), (h, h), (h, h))), np.pad(valid, h)
    mean, count = ring_mean(block.astype(np.float64), v, *det.windows)
    inner = (slice(h, -h), slice(h, -h))
    want_ok = v[inner] & (count[inner] > 0)
    assert not want_ok[:2, :2].any() and want_ok.sum() > 0.7 * want_ok.size
    want = mean[(slice(None), *inner)][:, want_ok].T @ det.projection - det.centre
    pixel_rows = np.ascontiguousarray(block.transpose(1, 2, 0)).transpose(2, 0, 1)
    for layout in (block, pixel_rows):
        feats, ok = det.features(layout, v)
        np.testing.assert_array_equal(ok, want_ok)
        np.testing.assert_array_equal(feats[:bands], data[:, want_ok])
        np.testing.assert_allclose(feats[bands:].T, want, rtol=1e-4, atol=1e-3)
    scores = [det.score_block(layout, v)["score"] for layout in (block, pixel_rows)]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5)
    assert np.isnan(scores[0][~want_ok]).all() and np.isfinite(scores[0][want_ok]).all()


def test_context_model_round_trip_and_no_loose_pixels(tiled, tmp_path):
    img, _, _, _, model = tiled
    det = load_detector(model)
    back = load_detector(det.save(tmp_path / "again"))
    h = det.halo
    assert saved_halo(tmp_path / "again") == back.halo == h == det.windows[1] // 2 > 0  # read without torch
    block, valid = np.pad(img, ((0, 0), (h, h), (h, h))), np.pad((img != NODATA).all(axis=0), h)
    np.testing.assert_array_equal(back.score_block(block, valid)["score"], det.score_block(block, valid)["score"])
    with pytest.raises(ModelError, match="neighbourhood"):
        det.score(img[:, 0, :4].T)


def test_ring_context_needs_a_sample_with_ring_means(sample_file, tmp_path):
    settings = dict(load_config()["train"], **FAST_TRAIN, context="ring")
    with pytest.raises(ConfigError, match="ingest.context"):
        train(sample_file, tmp_path / "m", settings)


def test_per_pixel_model_is_still_the_plain_vae(model_dir):
    assert isinstance(load_detector(model_dir), VAEDetector)


def test_cli_ingest_train_score_with_context(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    img, where = scene(size=32, bands=4)
    tile = write_tif(tmp_path / "t.tif", img)
    run = CliRunner().invoke
    res = run(cli, ["ingest", str(tile), "-o", str(tmp_path / "s.nc"), "--context", "3,7", "-q"])
    assert res.exit_code == 0, res.output
    res = run(cli, ["train", str(tmp_path / "s.nc"), "-o", str(tmp_path / "m"), "--context", "ring", "--epochs", "3",
                    "-q"])
    assert res.exit_code == 0, res.output
    res = run(cli, ["score", str(tmp_path / "m"), str(tile), "-o", str(tmp_path / "o.tif"), "-q"])
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert ds.count == 4 and ds.tags()["rsvae_detector"] == "context-vae"
    res = run(cli, ["score", str(tmp_path / "m"), str(tile), "-o", str(tmp_path / "o2.tif"), "-q", "--samples", "3"])
    assert res.exit_code == 0 and "--samples 3 is not used" in res.output, res.output  # said, not ignored silently
    res = run(cli, ["ingest", str(tile), "-o", str(tmp_path / "bad.nc"), "--context", "4,7"])
    assert res.exit_code != 0 and "odd" in res.output and "Traceback" not in res.output


def test_generative_side_of_a_context_model(tiled, tmp_path):
    """features, generate and interpolate work on a context model: a pixel is encoded with its surroundings (read
    with the halo), decoded spectra are the spectrum part; the features raster matches encoding pixel by pixel."""
    from click.testing import CliRunner

    from pipeline import generative as gen
    from pipeline.cli import cli

    img, where, tile, _, model = tiled
    det = load_detector(model)
    bands, latent = img.shape[0], int(det.architecture["latent"])
    res = CliRunner().invoke(cli, ["features", str(model), str(tile), "-o", str(tmp_path / "f.tif"), "-q"])
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "f.tif") as ds:
        feats, nodata = ds.read(), ds.nodata
        assert ds.count == latent and ds.descriptions[0] == "latent_1"
    assert (feats[:, 30, 5] == nodata).all()  # the nodata pixel
    for r, c in [where, (0, 0), (47, 20), (29, 5)]:  # the target, a corner, an edge, beside the nodata pixel
        x = gen.pixel_inputs(det, tile, r, c)
        assert x.shape == (bands + det.projection.shape[1],)
        np.testing.assert_allclose(feats[:, r, c], det.encode(x[None])[0][0], rtol=1e-4, atol=1e-4)
    with pytest.raises(gen.InputError, match="not valid"):
        gen.pixel_inputs(det, tile, 30, 5)
    spectra = gen.sample(det, 5, seed=1)
    assert spectra.shape == (5, bands) and np.isfinite(spectra).all()
    a, b = gen.pixel_inputs(det, tile, *where), gen.pixel_inputs(det, tile, 5, 40)
    path = gen.interpolate(det, a, b, steps=4)
    assert path.spectra.shape == (4, bands) and path.latent.shape == (4, latent)
    np.testing.assert_allclose(path.ends, np.stack([a, b])[:, :bands])
    np.testing.assert_allclose(path.spectra[0], det.decode(det.encode(a[None])[0])[0], rtol=1e-5)
    for argv in (["generate", str(model), "-n", "3", "-o", str(tmp_path / "g.csv")],
                 ["interpolate", str(model), str(tile), "--from", "16,9", "--to", "5,40", "--steps", "3",
                  "-o", str(tmp_path / "i.csv")]):
        res = CliRunner().invoke(cli, argv)
        assert res.exit_code == 0, res.output


def test_fit_log_scale_recovers_a_log_linear_scale_despite_outliers():
    from pipeline.detectors.context import fit_log_scale

    rng = np.random.default_rng(0)
    f = rng.normal(size=(4000, 2))
    y = 0.5 * f[:, 0] - 0.3 * f[:, 1] + 1.0 + rng.normal(0, 0.1, 4000)
    y[:80] += 6.0  # anomalies: far above what their surroundings predict
    np.testing.assert_allclose(fit_log_scale(f, y, 0.95), [0.5, -0.3, 1.0], atol=0.05)


def quiet_and_busy(size: int = 40, bands: int = 6, seed: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """Two materials, one with little pixel-to-pixel spread (left, 2 per band) and one with much (right, 20), and a
    target in the quiet half that departs from it by 30 per band: far for the quiet half, usual for the busy one."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(200, 800, bands), rng.uniform(200, 800, bands)
    img = np.empty((bands, size, size))
    half = size // 2
    img[:, :, :half] = a[:, None, None] + rng.normal(0, 2, (bands, size, half))
    img[:, :, half:] = b[:, None, None] + rng.normal(0, 20, (bands, size, size - half))
    where = (size // 2, size // 4)
    img[:, where[0], where[1]] = a + 30 * rng.choice([-1, 1], bands)
    return img.astype(np.float32), where


def fit_quiet_and_busy(noise: str) -> tuple[ContextVAEDetector, np.ndarray, np.ndarray, tuple[int, int]]:
    """A context model of ``quiet_and_busy`` with ``train.context_noise`` = ``noise``; the padded block, its
    validity and the target's place."""
    from pipeline.detectors.context import FeatureStats

    img, where = quiet_and_busy()
    bands, rows, cols = img.shape
    valid = np.ones((rows, cols), bool)
    ctx, _ = ring_mean(img, valid, 3, 7)
    px = img.reshape(bands, -1).T
    settings = dict(load_config()["train"], **FAST_TRAIN, context="ring", context_components=4, context_noise=noise)
    det = ContextVAEDetector.fit(px, [f"b{i}" for i in range(bands)], FeatureStats(px.mean(0), px.std(0)), settings,
                                 context=ctx.reshape(bands, -1).T, windows=(3, 7))
    h = det.halo
    return det, np.pad(img, ((0, 0), (h, h), (h, h))), np.pad(valid, h), where


def test_noise_scale_judges_a_residual_against_its_surroundings():
    det, block, ok, where = fit_quiet_and_busy("ring")
    assert det.meta["context"]["noise_scale"] and det.vae.noise_scale is not None
    h = det.halo
    bands, rows, cols = block.shape[0], block.shape[1] - 2 * h, block.shape[2] - 2 * h
    scores = det.score_block(block, ok)
    # the busy half's rings predict a larger spread: there, residuals count for less
    feats, _ = det.features(block, ok)
    x = torch.from_numpy(det.vae.normalise(feats.T))
    logg = x[:, bands:].double().numpy() @ det.vae.noise_scale[:-3]
    logg = logg.reshape(rows, cols)
    assert np.median(logg[:, cols // 2 + h:]) > np.median(logg[:, :cols // 2 - h]) + 1.0
    # so the quiet half's target outranks every busy pixel (away from the boundary, whose rings hold both halves);
    # the fast path and the reference path agree
    busy = scores["score"][:, cols // 2 + h:]
    assert scores["score"][where] > busy.max()
    ref = det.vae.score_tensor(x)
    for k in det.outputs:
        np.testing.assert_allclose(scores[k].ravel(), ref[k], rtol=1e-4, atol=1e-3)
    assert (scores["reconstruction"] >= 0).all()


def test_fixed_context_noise_is_one_covariance_for_all():
    det, block, ok, where = fit_quiet_and_busy("fixed")
    assert not det.meta["context"]["noise_scale"] and det.vae.noise_scale is None
    scores = det.score_block(block, ok)["score"]
    assert scores[where] < scores[:, scores.shape[1] // 2 + det.halo:].max()  # the busy half outranks the target


def test_context_model_saved_without_noise_scale_scores_as_before(tiled, tmp_path):
    import json

    img, _, _, _, model = tiled
    det = load_detector(model)
    det.vae.set_noise_scale(None)  # what a model saved before the scale holds: the covariance alone
    det.meta["context"].pop("noise_scale")
    old = load_detector(det.save(tmp_path / "old"))
    assert old.vae.noise_scale is None
    h = det.halo
    block, valid = np.pad(img, ((0, 0), (h, h), (h, h))), np.pad((img != NODATA).all(axis=0), h)
    got, want = old.score_block(block, valid), det.score_block(block, valid)
    for k in det.outputs:
        np.testing.assert_array_equal(got[k], want[k])
    meta = json.loads((tmp_path / "old" / "model.json").read_text())
    meta["context"]["noise_scale"] = True  # says it has one, but the weights do not
    (tmp_path / "old" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="noise scale"):
        load_detector(tmp_path / "old")
