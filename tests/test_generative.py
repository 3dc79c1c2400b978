"""The generative side of the VAE: latent feature rasters, spectra from the prior, latent interpolation."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from pipeline import generative as gen
from pipeline.cli import cli
from pipeline.detectors import DETECTORS, load_detector
from pipeline.detectors.base import Detector
from pipeline.errors import InputError, ModelError
from pipeline.sample import load_sample
from tests.conftest import write_tif

#: How far (as a share of a band's range over the training tiles) a decoded prior draw may fall outside that range.
#: The decoder's output is unconstrained (Gaussian reconstruction), so draws from the prior's tails (|z| > 3) decode
#: to spectra a little beyond the data: for the conftest model (8 epochs, 4000 pixels) at most 3.5 % of a band's
#: range over 3 x 1000 draws, for 0.03 % of the values. 5 % leaves room for other platforms' arithmetic without
#: hiding a broken decoder; and at least 99 % of the values must lie strictly inside the range.
RANGE_TOLERANCE = 0.05


def run(*args, code: int = 0) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def read_csv(path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], np.array(rows[1:], dtype=float)


@pytest.fixture(scope="module")
def vae(model_dir):
    return load_detector(model_dir)


def valid_pixels(tile, n: int, seed: int = 0):
    """``n`` random valid pixels of ``tile``: their rows, cols and spectra (n, bands)."""
    with rasterio.open(tile) as ds:
        data = ds.read()
        nodata = ds.nodata
    ok = np.isfinite(data).all(0) & (data != nodata).all(0)
    rows, cols = np.nonzero(ok)
    pick = np.random.default_rng(seed).choice(rows.size, n, replace=False)
    r, c = rows[pick], cols[pick]
    return r, c, data[:, r, c].T


# --------------------------------------------------------------------------------------------- features

def test_features_are_the_encoders_posterior_means_on_the_inputs_grid(demo, vae, tmp_path):
    tile = demo.test[0]
    out = gen.features(vae, tile, tmp_path / "latent.tif").output
    latent = vae.architecture["latent"]
    with rasterio.open(tile) as src, rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.transform, ds.crs) == (src.width, src.height, src.transform, src.crs)
        assert ds.nodata == src.nodata
        assert ds.count == latent and ds.dtypes[0] == "float32"
        assert list(ds.descriptions) == [f"latent_{i + 1}" for i in range(latent)]
        feats = ds.read()
        valid = ds.read_masks(1) != 0
    r, c, pix = valid_pixels(tile, 300)
    mu, _ = vae.encode(pix)
    np.testing.assert_allclose(feats[:, r, c].T, mu, rtol=1e-5, atol=1e-5)
    # The demo's nodata strip (left columns) is nodata in every feature band, and only it.
    with rasterio.open(tile) as src:
        src_valid = (src.read() != src.nodata).all(0)
    assert not src_valid.all()
    assert (valid == src_valid).all()
    assert (feats[:, ~src_valid] == src.nodata).all()


def test_features_pixel_missing_one_band_is_nodata(demo, vae, tmp_path):
    with rasterio.open(demo.test[0]) as src:
        data, profile = src.read(), src.profile
    data[5, 20, 30] = profile["nodata"]  # one band of one pixel
    tile = write_tif(tmp_path / "holed.tif", data, nodata=profile["nodata"], transform=profile["transform"])
    with rasterio.open(gen.features(vae, tile, tmp_path / "latent.tif").output) as ds:
        feats = ds.read()
    assert (feats[:, 20, 30] == profile["nodata"]).all()
    assert (feats[:, 20, 31] != profile["nodata"]).all()


def test_features_refuse_another_band_count(demo, vae, tmp_path):
    with rasterio.open(demo.test[0]) as src:
        data = src.read()[:-1]
    tile = write_tif(tmp_path / "short.tif", data, nodata=-9999.0)
    with pytest.raises(InputError, match="15 bands but the model was trained on 16"):
        gen.features(vae, tile, tmp_path / "latent.tif")
    assert not (tmp_path / "latent.tif").exists()


# --------------------------------------------------------------------------------------------- sampling

def test_generated_spectra_look_like_the_training_data(vae, sample_file):
    smp = load_sample(sample_file)
    spectra = gen.sample(vae, 500, seed=0)
    assert spectra.shape == (500, smp.bands)
    assert np.isfinite(spectra).all()
    lo, hi = smp.stats.min, smp.stats.max
    slack = RANGE_TOLERANCE * (hi - lo)
    assert (spectra >= lo - slack).all() and (spectra <= hi + slack).all()
    assert ((spectra >= lo) & (spectra <= hi)).mean() >= 0.99
    # Not just inside the box: on average they sit where the real spectra do.
    real = smp.pixels.astype(float)
    assert (np.abs(spectra.mean(0) - real.mean(0)) < 0.5 * real.std(0)).all()


def test_temperature_scales_the_prior_draws(vae, model_dir, tmp_path):
    """Temperature 0 decodes the origin every time; lower temperatures spread less around it; bad values refused."""
    origin = vae.decode(np.zeros((1, vae.architecture["latent"])))
    np.testing.assert_allclose(gen.sample(vae, 5, seed=3, temperature=0.0), np.repeat(origin, 5, axis=0))
    spread = [np.abs(gen.sample(vae, 400, seed=3, temperature=t) - origin).mean() for t in (0.25, 0.5, 1.0, 2.0)]
    assert spread == sorted(spread) and spread[0] < 0.5 * spread[2]
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="temperature"):
            gen.sample(vae, 4, temperature=bad)
    out = tmp_path / "g.csv"
    run("generate", model_dir, "-n", 3, "--temperature", 0, "-o", out)
    rows = np.loadtxt(out, delimiter=",", skiprows=1)[:, 1:]
    np.testing.assert_allclose(rows, np.repeat(origin, 3, axis=0), rtol=1e-5)
    assert "Invalid value for '--temperature'" in run("generate", model_dir, "--temperature", -1, "-o", out, code=2)


def test_sampling_is_seeded(vae):
    a, b, c = gen.sample(vae, 8, seed=1), gen.sample(vae, 8, seed=1), gen.sample(vae, 8, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    with pytest.raises(InputError, match="at least 1"):
        gen.sample(vae, 0)


def test_columns_are_wavelengths_or_band_names(vae):
    cols = gen.spectrum_columns(vae)
    assert cols == [f"{w:.1f}nm" for w in vae.meta["wavelengths"]]
    assert cols[0] == "400.0nm"
    vae_nowl = type(vae)(vae.module, vae.band_names, vae.offset, vae.scale, dict(vae.meta, wavelengths=None))
    assert gen.spectrum_columns(vae_nowl) == vae.band_names


# --------------------------------------------------------------------------------------------- interpolation

def test_interpolation_ends_are_the_models_reconstructions(demo, vae):
    _, _, pix = valid_pixels(demo.test[0], 2, seed=3)
    path = gen.interpolate(vae, pix[0], pix[1], steps=7)
    assert path.spectra.shape == (7, vae.bands) and path.t[0] == 0 and path.t[-1] == 1
    mu, _ = vae.encode(pix)
    np.testing.assert_allclose(path.spectra[[0, -1]], vae.decode(mu), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(path.latent[3], mu.mean(0), rtol=1e-5, atol=1e-6)  # the straight line's middle
    np.testing.assert_array_equal(path.ends, pix)
    # The path moves: its middle differs from both ends.
    assert not np.allclose(path.spectra[3], path.spectra[0]) and not np.allclose(path.spectra[3], path.spectra[-1])
    with pytest.raises(InputError, match="at least 2"):
        gen.interpolate(vae, pix[0], pix[1], steps=1)


def test_pixels_by_row_col_and_by_map_coordinates(demo):
    tile = demo.test[0]
    with rasterio.open(tile) as ds:
        data, transform, nodata = ds.read(), ds.transform, ds.nodata
    np.testing.assert_array_equal(gen.pixel_spectrum(tile, 10, 40), data[:, 10, 40])
    x, y = rasterio.transform.xy(transform, 10.8, 40.3, offset="ul")  # a point inside pixel (10, 40)
    assert gen.locate(tile, x, y) == (10, 40)
    with pytest.raises(InputError, match="outside the raster"):
        gen.pixel_spectrum(tile, 64, 0)
    with pytest.raises(InputError, match="outside the raster"):
        gen.pixel_spectrum(tile, 0, -1)
    with pytest.raises(InputError, match=r"point \(0, 0\) lies outside"):
        gen.locate(tile, 0.0, 0.0)
    assert data[0, 10, 0] == nodata
    with pytest.raises(InputError, match="not valid"):
        gen.pixel_spectrum(tile, 10, 0)


# --------------------------------------------------------------------------------------------- non-VAE models

class FakeRX(Detector):
    """A stand-in for any detector without a latent space (the RX baselines)."""

    kind = "rx"

    def __init__(self, meta):
        self.meta, self.band_names = meta, meta["band_names"]

    def score(self, pixels):
        return {"score": np.zeros(len(pixels), np.float32)}

    def tensors(self):
        return {"mean": torch.zeros(len(self.band_names))}

    @classmethod
    def from_saved(cls, meta, tensors, where, device="cpu"):
        return cls(meta)


@pytest.fixture
def rx_model(tmp_path, monkeypatch, vae):
    monkeypatch.setitem(DETECTORS, "rx", FakeRX)
    return FakeRX({"band_names": vae.band_names}).save(tmp_path / "rx")


def test_non_vae_models_are_refused(rx_model, demo, tmp_path):
    det = load_detector(rx_model)
    for call in (lambda: gen.features(det, demo.test[0], tmp_path / "f.tif"), lambda: gen.sample(det, 3),
                 lambda: gen.interpolate(det, np.zeros(16), np.ones(16), 3)):
        with pytest.raises(ModelError, match="'rx' model; .* needs a VAE model"):
            call()
    out = run("features", rx_model, demo.test[0], "-o", tmp_path / "f.tif", code=1)
    assert "needs a VAE model" in out and "Traceback" not in out
    assert "needs a VAE model" in run("generate", rx_model, "-o", tmp_path / "g.csv", code=1)
    assert "needs a VAE model" in run("interpolate", rx_model, demo.test[0], "--from", "5,5", "--to", "6,6",
                                      "-o", tmp_path / "p.csv", code=1)
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob("*.tif"))


# --------------------------------------------------------------------------------------------- CLI

def test_cli_features(demo, model_dir, vae, tmp_path):
    out = tmp_path / "feat" / "latent.tif"
    msg = run("features", model_dir, demo.test[0], "-o", out)
    assert "8 latent bands" in msg
    r, c, pix = valid_pixels(demo.test[0], 50, seed=1)
    with rasterio.open(out) as ds:
        np.testing.assert_allclose(ds.read()[:, r, c].T, vae.encode(pix)[0], rtol=1e-5, atol=1e-5)


def test_cli_generate_csv_and_plot(model_dir, vae, sample_file, tmp_path):
    out, png = tmp_path / "spectra.csv", tmp_path / "spectra.png"
    msg = run("generate", model_dir, "-n", 12, "--seed", 4, "-o", out, "--plot", png)
    assert f"real spectra from {sample_file}" in msg
    header, values = read_csv(out)
    assert header == ["sample", *gen.spectrum_columns(vae)]
    np.testing.assert_array_equal(values[:, 0], np.arange(12))
    np.testing.assert_allclose(values[:, 1:], gen.sample(vae, 12, seed=4), rtol=1e-6)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_generate_plot_without_the_training_sample(model_dir, sample_file, tmp_path):
    moved = shutil.copytree(model_dir, tmp_path / "model")
    meta = json.loads((moved / "model.json").read_text())
    meta["sample"]["path"] = str(tmp_path / "gone.nc")
    (moved / "model.json").write_text(json.dumps(meta))
    png = tmp_path / "a.png"
    msg = run("generate", moved, "-o", tmp_path / "a.csv", "--plot", png)
    assert "gone.nc is not found" in msg and "--sample FILE" in msg and png.is_file()
    msg = run("generate", moved, "-o", tmp_path / "b.csv", "--plot", tmp_path / "b.png", "--sample", sample_file)
    assert "not found" not in msg and f"real spectra from {sample_file}" in msg


def test_cli_interpolate_by_row_col_and_by_map_coordinates(demo, model_dir, vae, tmp_path):
    tile = demo.test[0]
    with rasterio.open(tile) as ds:
        data, transform = ds.read(), ds.transform
    out, png = tmp_path / "path.csv", tmp_path / "path.png"
    run("interpolate", model_dir, tile, "--from", "5,10", "--to", "50,60", "--steps", 6, "-o", out, "--plot", png)
    header, values = read_csv(out)
    assert header[:2] == ["step", "t"] and len(header) == 2 + vae.bands and values.shape == (6, 2 + vae.bands)
    np.testing.assert_allclose(values[[0, -1], 1], [0, 1])
    mu, _ = vae.encode(data[:, [5, 50], [10, 60]].T)
    np.testing.assert_allclose(values[[0, -1], 2:], vae.decode(mu), rtol=1e-6)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The same pixels by map coordinates (pixel centres), and mixing the two forms.
    (x0, y0), (x1, y1) = (rasterio.transform.xy(transform, r, c) for r, c in ((5, 10), (50, 60)))
    run("interpolate", model_dir, tile, "--from-xy", f"{x0},{y0}", "--to-xy", f"{x1},{y1}", "--steps", 6,
        "-o", tmp_path / "xy.csv")
    run("interpolate", model_dir, tile, "--from", "5,10", "--to-xy", f"{x1},{y1}", "--steps", 6,
        "-o", tmp_path / "mixed.csv")
    for other in ("xy.csv", "mixed.csv"):
        assert (tmp_path / other).read_text() == out.read_text()


@pytest.mark.parametrize("args, message", [
    (["--from", "5,1", "--to", "6,6"], "pixel (row 5, col 1) is not valid"),
    (["--from", "5,5", "--to", "64,6"], "pixel (row 64, col 6) lies outside the raster (64 rows x 64 cols"),
    (["--from-xy", "0,0", "--to", "6,6"], "point (0, 0) lies outside the raster"),
    (["--to", "6,6"], "give exactly one of --from ROW,COL and --from-xy X,Y"),
    (["--from", "5,5", "--from-xy", "0,0", "--to", "6,6"], "give exactly one of --from"),
    (["--from", "5", "--to", "6,6"], "expected ROW,COL"),
])
def test_cli_interpolate_errors(demo, model_dir, tmp_path, args, message):
    result = CliRunner().invoke(cli, ["interpolate", str(model_dir), str(demo.test[0]), *args,
                                      "-o", str(tmp_path / "p.csv")])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "p.csv").exists()


def test_cli_unknown_plot_format_fails_before_writing(model_dir, tmp_path):
    out = run("generate", model_dir, "-o", tmp_path / "g.csv", "--plot", tmp_path / "g.xyz", code=1)
    assert "cannot write a plot as .xyz" in out
    assert list(tmp_path.iterdir()) == []
