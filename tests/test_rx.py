"""Global and local RX: the maths against direct numpy, targets found, model folders, CLI and halo scoring."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.detectors import LRXDetector, RXDetector, load_detector
from pipeline.errors import RsvaeWarning
from pipeline.sample import BandStats
from pipeline.scorer import saved_halo
from pipeline.scoring import score_raster
from tests.conftest import write_tif


def settings(**over):
    return dict(load_config()["train"], **over)


def stats_of(x: np.ndarray) -> BandStats:
    s = BandStats.empty(x.shape[1])
    s.update(x.T)
    return s


def correlated(n: int, bands: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(bands, bands))
    return rng.normal(size=(n, bands)) @ mix + rng.uniform(100, 1000, bands)


def mahalanobis(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    mu = ref.mean(axis=0)
    inv = np.linalg.inv(np.cov(ref, rowvar=False, bias=True))
    return np.einsum("ij,jk,ik->i", x - mu, inv, x - mu)


def test_rx_equals_direct_mahalanobis():
    x = correlated(400, 6)
    det = RXDetector.fit(x, [f"b{i}" for i in range(6)], stats_of(x), settings(ridge=0.0))
    probe = correlated(50, 6, seed=1)
    np.testing.assert_allclose(det.score(probe)["score"], mahalanobis(probe, x), rtol=1e-4)


def test_rx_survives_a_singular_covariance():
    x = correlated(300, 4)
    x = np.concatenate([x, x[:, :1], np.full((300, 1), 7.0)], axis=1)  # a duplicated band and a constant one
    det = RXDetector.fit(x, [f"b{i}" for i in range(6)], stats_of(x), settings())
    s = det.score(x)["score"]
    assert np.isfinite(s).all()
    # On the non-degenerate bands it agrees with plain RX (the ridge of 1e-6 barely moves it).
    np.testing.assert_allclose(s, mahalanobis(x[:, :4], x[:, :4]), rtol=1e-3)


def test_rx_threshold_follows_the_fpr():
    x = correlated(2000, 5)
    det = RXDetector.fit(x, [f"b{i}" for i in range(5)], stats_of(x), settings())
    s = det.score(x)["score"]
    assert abs(np.mean(s > det.threshold(0.01)) - 0.01) < 0.003


def planted_scene(size: int = 40, bands: int = 5, seed: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """A smooth, correlated background (bands, rows, cols) with one 1-pixel target of another spectrum."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    fields = np.stack([gaussian_filter(rng.normal(size=(size, size)), 4) for _ in range(2)])
    ends = rng.uniform(0.2, 1.0, size=(2, bands))
    img = np.einsum("kb,krc->brc", ends, fields * 20) + 100 + rng.normal(0, 0.05, (bands, size, size))
    where = (17, 23)
    img[:, where[0], where[1]] += rng.normal(0, 6.0, bands)
    return img.astype(np.float32), where


def test_lrx_scores_the_planted_target_highest():
    img, where = planted_scene()
    x = img.reshape(img.shape[0], -1).T
    det = LRXDetector.fit(x, [f"b{i}" for i in range(img.shape[0])], stats_of(x), settings())
    h = det.halo
    s = det.score_block(np.pad(img, ((0, 0), (h, h), (h, h))), np.pad(np.ones(img.shape[1:], bool), h))["score"]
    assert s.shape == img.shape[1:]
    assert np.unravel_index(np.nanargmax(s), s.shape) == where


def test_lrx_finds_a_locally_odd_pixel_that_global_rx_misses():
    """A pixel of the left half's material inside the right half: normal globally, anomalous locally."""
    rng = np.random.default_rng(3)
    bands, size = 6, 40
    a, b = rng.uniform(50, 150, bands), rng.uniform(50, 150, bands)
    img = np.where(np.arange(size)[None, None, :] < size // 2, a[:, None, None], b[:, None, None])
    img = img + rng.normal(0, 1.0, (bands, size, size))
    img[:, 20, 30] = a + rng.normal(0, 1.0, bands)
    x = img.reshape(bands, -1).T
    names = [f"b{i}" for i in range(bands)]
    lrx = LRXDetector.fit(x, names, stats_of(x), settings(outer_window=9))
    h = lrx.halo
    s = lrx.score_block(np.pad(img, ((0, 0), (h, h), (h, h))), np.pad(np.ones((size, size), bool), h))["score"]
    assert np.unravel_index(np.nanargmax(s), s.shape) == (20, 30)
    g = RXDetector.fit(x, names, stats_of(x), settings()).score(x)["score"].reshape(size, size)
    assert (g > g[20, 30]).mean() > 0.2  # globally it is an ordinary pixel


def test_lrx_rejects_bad_windows():
    from pipeline.errors import ConfigError

    x = correlated(50, 3)
    with pytest.raises(ConfigError, match="odd"):
        LRXDetector.fit(x, ["a", "b", "c"], stats_of(x), settings(inner_window=4))
    with pytest.raises(ConfigError, match="outer window larger"):
        LRXDetector.fit(x, ["a", "b", "c"], stats_of(x), settings(inner_window=5, outer_window=5))


@pytest.mark.parametrize("kind", [RXDetector, LRXDetector])
def test_save_load_round_trip(kind, tmp_path):
    img, _ = planted_scene(size=24)
    x = img.reshape(img.shape[0], -1).T
    det = kind.fit(x, [f"b{i}" for i in range(img.shape[0])], stats_of(x), settings(outer_window=7))
    det.save(tmp_path / "m")
    back = load_detector(tmp_path / "m")
    assert type(back) is kind and back.band_names == det.band_names
    h = det.halo
    assert saved_halo(tmp_path / "m") == back.halo == h == (3 if kind is LRXDetector else 0)  # outer window 7
    block, valid = np.pad(img, ((0, 0), (h, h), (h, h))), np.pad(np.ones(img.shape[1:], bool), h)
    np.testing.assert_array_equal(back.score_block(block, valid)["score"], det.score_block(block, valid)["score"])


def test_halo_scoring_matches_the_whole_image(tmp_path):
    """Window by window with a margin (16-pixel blocks, 9 windows) gives what scoring the whole image gives."""
    img, where = planted_scene(size=48)
    img[:, 30, 5] = -9999.0  # a nodata pixel: never scored, never anyone's background
    tile = write_tif(tmp_path / "t.tif", img, nodata=-9999.0, tiled=True, blockxsize=16, blockysize=16)
    valid = (img != -9999.0).all(axis=0)
    x = img[:, valid].T
    det = LRXDetector.fit(x, [f"b{i}" for i in range(img.shape[0])], stats_of(x), settings(outer_window=9))
    with pytest.warns(RsvaeWarning, match="no calibration of held-out scores: the rarity band is nodata"):
        summary = score_raster(det, tile, tmp_path / "s.tif")
    with rasterio.open(tmp_path / "s.tif") as ds:
        got, nodata = ds.read(1), ds.nodata
        assert ds.descriptions == ("score", "rarity") and (ds.read(2) == nodata).all()
    h = det.halo
    want = det.score_block(np.pad(img, ((0, 0), (h, h), (h, h))), np.pad(valid, h))["score"]
    assert got[30, 5] == nodata and summary.valid_pixels == valid.sum()
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-5)
    assert np.unravel_index(np.argmax(np.where(valid, got, -np.inf)), got.shape) == where


def test_cli_train_rx_then_score(tmp_path):
    img, where = planted_scene(size=32, bands=4)
    tile = write_tif(tmp_path / "t.tif", img)
    runner = CliRunner()
    for args in (["ingest", str(tile), "-o", str(tmp_path / "s.nc")],
                 ["train", str(tmp_path / "s.nc"), "-o", str(tmp_path / "rx"), "--method", "rx"],
                 ["score", str(tmp_path / "rx"), str(tile), "-o", str(tmp_path / "scores.tif")]):
        res = runner.invoke(cli, args)
        assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "scores.tif") as ds:
        assert ds.count == 2 and ds.descriptions == ("score", "rarity")
        s = ds.read(1)
    assert np.unravel_index(np.argmax(s), s.shape) == where
    direct = RXDetector.fit(img.reshape(4, -1).T, ["a"] * 4, stats_of(img.reshape(4, -1).T.astype(np.float64)),
                            settings())
    np.testing.assert_allclose(s.ravel(), direct.score(img.reshape(4, -1).T)["score"], rtol=1e-4)


def test_cli_lrx_has_no_fpr_threshold(tmp_path):
    img, _ = planted_scene(size=24, bands=3)
    tile = write_tif(tmp_path / "t.tif", img)
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", str(tile), "-o", str(tmp_path / "s.nc")]).exit_code == 0
    res = runner.invoke(cli, ["train", str(tmp_path / "s.nc"), "-o", str(tmp_path / "lrx"), "--method", "lrx",
                              "--outer-window", "7"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["score", str(tmp_path / "lrx"), str(tile), "-o", str(tmp_path / "o.tif"),
                              "--mask-out", str(tmp_path / "m.tif"), "--fpr", "0.01"])
    assert res.exit_code != 0 and "no calibration" in res.output
    assert not (tmp_path / "o.tif").exists()
