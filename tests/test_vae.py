"""The VAE detector: training, scoring terms, calibration, save/load without pickle."""

import json

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.detectors import load_detector
from pipeline.detectors.vae import VAE, VAEDetector, kl_term
from pipeline.errors import InputError, ModelError
from pipeline.sample import load_sample
from tests.conftest import FAST_TRAIN


def test_score_is_reconstruction_plus_beta_kl(model_dir, sample_file):
    det = load_detector(model_dir)
    s = load_sample(sample_file)
    out = det.score(s.pixels[:200])
    assert set(out) == {"score", "reconstruction", "kl"}
    assert np.allclose(out["score"], out["reconstruction"] + det.beta * out["kl"], rtol=1e-5)
    assert (out["kl"] >= 0).all()


def test_reload_gives_identical_scores(model_dir, sample_file, tmp_path):
    det = load_detector(model_dir)
    det.save(tmp_path / "copy")
    again = load_detector(tmp_path / "copy")
    x = load_sample(sample_file).pixels[:500]
    assert np.array_equal(det.score(x)["score"], again.score(x)["score"])


def test_model_json_records_what_scoring_needs(model_dir):
    meta = json.loads((model_dir / "model.json").read_text())
    for key in ("architecture", "band_names", "calibration", "training", "versions", "wavelengths", "sample"):
        assert key in meta
    assert meta["bands"] == 16 and meta["training"]["history"]
    assert meta["calibration"]["values"] == sorted(meta["calibration"]["values"])


def test_threshold_matches_fpr_on_held_out(model_dir):
    det = load_detector(model_dir)
    assert det.threshold(0.01) < det.threshold(0.001)


def test_band_mismatch_is_clear(model_dir):
    det = load_detector(model_dir)
    with pytest.raises(InputError, match="has 5 bands but the model was trained on 16"):
        det.score(np.zeros((3, 5), np.float32))


def test_seed_preset_is_the_textbook_model(sample_file):
    s = load_sample(sample_file)
    settings = {**load_config()["train"], **FAST_TRAIN, "preset": "seed", "epochs": 1}
    det = VAEDetector.fit(s.pixels, s.band_names, s.stats, settings)
    m = det.module
    assert det.architecture == {"hidden": [32], "latent": 32, "beta": 1.0, "reconstruction": "bce", "noise": "unit"}
    assert m.encoder[0].in_features == 16 and m.encoder[0].out_features == 32 and m.mu.out_features == 32
    assert isinstance(m.decoder[-1], torch.nn.Sigmoid)


def test_kl_zero_at_prior():
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    assert torch.allclose(kl_term(mu, logvar), torch.zeros(2))


def test_training_reproducible(sample_file):
    s = load_sample(sample_file)
    settings = {**load_config()["train"], **FAST_TRAIN, "epochs": 2}
    a = VAEDetector.fit(s.pixels, s.band_names, s.stats, settings)
    b = VAEDetector.fit(s.pixels, s.band_names, s.stats, settings)
    for k, v in a.module.state_dict().items():
        assert torch.equal(v, b.module.state_dict()[k])


def test_corrupted_model_files(model_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    (bad / "weights.safetensors").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ModelError, match="weights.safetensors"):
        load_detector(bad)
    (bad / "weights.safetensors").unlink()
    with pytest.raises(ModelError, match="missing weights.safetensors"):
        load_detector(bad)


def test_weights_must_fit_architecture(model_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    meta = json.loads((bad / "model.json").read_text())
    meta["architecture"]["latent"] = 3
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="do not match"):
        load_detector(bad)


def test_module_shapes():
    m = VAE(10, [8, 4], 2)
    xhat, mu, logvar = m(torch.zeros(5, 10))
    assert xhat.shape == (5, 10) and mu.shape == (5, 2)


# ---- the band-major fast path follows the reference path (nn.Module, float64 normalisation)

def _assert_close_to_reference(det, pixels, got):
    ref = det.score_tensor(torch.from_numpy(det.normalise(pixels)))
    for k in det.outputs:
        np.testing.assert_allclose(got[k], ref[k], rtol=2e-5, atol=2e-5 * float(np.abs(ref[k]).max()), err_msg=k)


def test_fast_path_equals_reference_path(model_dir, sample_file):
    det = load_detector(model_dir)
    x = load_sample(sample_file).pixels[:5000]
    _assert_close_to_reference(det, x, det.score(x))
    band_major = np.ascontiguousarray(x.T)  # rasterio's layout
    _assert_close_to_reference(det, x, det.score_bands(band_major))
    _assert_close_to_reference(det, x, det.score(band_major.T))  # a transposed view goes the band-major way
    _assert_close_to_reference(det, x, det.score(x.astype(np.float64), chunk=777))
    assert all(v.shape == (0,) for v in det.score(x[:0]).values())


def test_fast_path_equals_reference_path_for_bce(sample_file):
    s = load_sample(sample_file)
    settings = {**load_config()["train"], **FAST_TRAIN, "preset": "seed", "epochs": 1}
    det = VAEDetector.fit(s.pixels, s.band_names, s.stats, settings)
    x = s.pixels[:3000] * 1.5  # some pixels outside the training range: min-max clipping at work
    _assert_close_to_reference(det, x, det.score(x))


@pytest.mark.parametrize("kind,noise", [("gaussian", "unit"), ("mse", "unit"), ("gaussian", "residual")])
def test_fast_path_deep_models_and_chunk_edges(sample_file, kind, noise):
    """Two hidden layers, each reconstruction term, and pixel counts around the chunk size all follow the reference."""
    from pipeline.detectors.vae_inference import SCORE_CHUNK

    s = load_sample(sample_file)
    settings = {**load_config()["train"], **FAST_TRAIN, "hidden": [24, 12], "reconstruction": kind, "noise": noise,
                "epochs": 1}
    det = VAEDetector.fit(s.pixels, s.band_names, s.stats, settings)
    for n in (1, SCORE_CHUNK - 1, SCORE_CHUNK, 2 * SCORE_CHUNK + 3):
        x = s.pixels[:n]
        _assert_close_to_reference(det, x, det.score(x))
        _assert_close_to_reference(det, x, det.score_bands(np.ascontiguousarray(x.T)))


def test_fast_path_follows_new_weights(model_dir, sample_file):
    """The fast path's cached plan is rebuilt when the weights or the residual covariance change."""
    det = load_detector(model_dir)
    x = load_sample(sample_file).pixels[:500]
    before = det.score(x)["score"].copy()
    with torch.no_grad():
        det.module.mu.bias += 0.5
    after = det.score(x)
    _assert_close_to_reference(det, x, after)
    assert not np.allclose(after["score"], before)
    det.set_noise(None)
    _assert_close_to_reference(det, x, det.score(x))



def test_fast_path_is_thread_safe(model_dir, sample_file):
    """Callers in several threads each get their own buffers: the same scores as one caller."""
    from concurrent.futures import ThreadPoolExecutor

    det = load_detector(model_dir)
    x = load_sample(sample_file).pixels
    expected = det.score(x)["score"]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: det.score(x)["score"], range(8)))
    for got in results:
        np.testing.assert_array_equal(got, expected)


# ---- the scoring paths: folded (fewer passes per pixel) and layered (the layers one by one)

def test_scoring_path_picks_the_path_and_both_follow_the_reference(model_dir, sample_file):
    """``scoring_path="folded"`` runs the folded scorer, ``"layered"`` the layers one by one; both equal the
    reference within float32 rounding, in both layouts; a name that is no path is refused."""
    from pipeline.detectors.vae_inference import ChunkScorer, FoldedScorer

    det = load_detector(model_dir)
    x = load_sample(sample_file).pixels[:3000]
    for path, kind in (("folded", FoldedScorer), ("layered", ChunkScorer)):
        _assert_close_to_reference(det, x, det.score(x, scoring_path=path))
        _assert_close_to_reference(det, x, det.score_bands(np.ascontiguousarray(x.T), scoring_path=path))
        assert type(det._plan(True, path == "folded")) is kind and type(det._plan(False, path == "folded")) is kind
        assert det.scoring_path(path).describe().startswith(f"{path} (asked for; ")
    with pytest.raises(ValueError, match="unknown scoring path 'exact'"):
        det.score(x, scoring_path="exact")


def test_path_picked_per_cpu_is_measured_once_and_kept_unless_clearly_slower(model_dir, sample_file, monkeypatch):
    """``scoring_path="auto"`` (the default) times both paths once on this CPU (both layouts, thread CPU time) and keeps the
    folded one unless the other beats it by more than PICK_MARGIN; new weights measure again; BCE models have one
    path."""
    from pipeline.detectors import vae_inference

    det = load_detector(model_dir)
    choice = det.scoring_path()
    assert choice.path in vae_inference.PATHS and choice.reason.startswith("measured")
    assert set(choice.ns_per_pixel) == set(vae_inference.PATHS) and min(choice.ns_per_pixel.values()) > 0
    assert det.scoring_path() is choice  # measured once
    assert det.scoring_path("layered").path == "layered" and det.scoring_path("folded").path == "folded"
    x = load_sample(sample_file).pixels[:500]
    _assert_close_to_reference(det, x, det.score(x))

    timings = {}
    monkeypatch.setattr(vae_inference, "measure_paths", lambda *_: dict(timings))
    for folded, layered, picked in ((100.0, 95.0, "folded"), (100.0, 80.0, "layered"), (80.0, 100.0, "folded")):
        timings.update(folded=folded, layered=layered)
        with torch.no_grad():
            det.module.mu.bias.add_(0.0)  # new weights (a new version): measured again
        assert det.scoring_path().path == picked
        assert det.scoring_path().describe().startswith(f"{picked} (measured on this CPU at start; ")
        if picked == "layered":  # the choice is what runs
            from pipeline.detectors.vae_inference import ChunkScorer

            calls: list[int] = []

            def count(self, *a, calls=calls):
                calls.append(1)
            monkeypatch.setattr(ChunkScorer, "__call__", count)
            det.score(x)
            assert calls
            monkeypatch.undo()
            monkeypatch.setattr(vae_inference, "measure_paths", lambda *_: dict(timings))


def test_folded_path_on_integer_input_and_pixels_far_from_the_sample(model_dir, sample_file):
    """Pixels far outside the training range, and raw integer bands far from zero (digital numbers around 10 000,
    as many sensors deliver): still the reference within float32 rounding (folding the scale into the weights must
    not cost precision where the offset is large against the spread)."""
    from pipeline.sample import BandStats

    det = load_detector(model_dir)
    x = load_sample(sample_file).pixels[:2000]
    wild = np.concatenate([x, x * 3.0 + 0.2, x[:, ::-1].copy()])
    _assert_close_to_reference(det, wild, det.score(wild))
    dn = np.round(10_000 + 2_000 * x).astype(np.float32)
    stats = BandStats.empty(dn.shape[1])
    stats.update(dn.T)
    settings = {**load_config()["train"], **FAST_TRAIN, "epochs": 2}
    det = VAEDetector.fit(dn, [f"b{i}" for i in range(dn.shape[1])], stats, settings)
    ints = np.ascontiguousarray(dn.T.astype(np.uint16))  # band-major, as rasterio reads a uint16 file
    _assert_close_to_reference(det, dn, det.score_bands(ints))


def test_bce_models_keep_the_layered_path_when_folded_is_asked_for(sample_file):
    from pipeline.detectors.vae_inference import ChunkScorer

    s = load_sample(sample_file)
    settings = {**load_config()["train"], **FAST_TRAIN, "preset": "seed", "epochs": 1}
    det = VAEDetector.fit(s.pixels, s.band_names, s.stats, settings)
    assert type(det._plan(True, True)) is ChunkScorer
    assert det.scoring_path().path == "layered" and det.scoring_path().reason == "the only path for a bce term"
    assert det.scoring_path("folded").path == "layered"
    _assert_close_to_reference(det, s.pixels[:500], det.score(s.pixels[:500], scoring_path="folded"))


@pytest.mark.parametrize("kind", ["gaussian", "mse", "bce"])
def test_training_loss_is_the_mean_of_the_per_pixel_terms(kind):
    """The fused training loss equals averaging the per-pixel reconstruction and KL terms (any beta)."""
    from pipeline.detectors.vae import mean_loss, reconstruction_term

    g = torch.Generator().manual_seed(0)
    x, xhat = torch.rand(300, 7, generator=g), torch.rand(300, 7, generator=g)
    mu, logvar = torch.randn(300, 3, generator=g), torch.randn(300, 3, generator=g)
    expected = (reconstruction_term(x, xhat, kind) + 0.7 * kl_term(mu, logvar)).mean()
    torch.testing.assert_close(mean_loss(x, xhat, mu, logvar, kind, 0.7), expected, rtol=1e-5, atol=1e-6)


def test_bf16_lever_restores_the_process_wide_setting(model_dir, sample_file):
    """The measured-only bfloat16 lever switches oneDNN's float32 precision for its products and always restores it;
    unknown product names are refused."""
    from pipeline.detectors.vae_inference import FoldedScorer

    det = load_detector(model_dir)
    x = np.ascontiguousarray(load_sample(sample_file).pixels[:500].T)
    before = torch.backends.mkldnn.matmul.fp32_precision
    plan = FoldedScorer(det, True, ("encoder", "output", "whiten"))
    out = torch.empty(3, x.shape[1])
    with torch.inference_mode():
        plan(torch.from_numpy(x), out)
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    assert np.isfinite(out.numpy()).all()
    with pytest.raises(ValueError, match="unknown products"):
        FoldedScorer(det, True, ("decoder",))


def test_validation_loss_in_chunks_is_the_mean_loss_of_the_whole_set():
    """Validation runs in chunks for speed; with the same noise draws it is the one-pass mean."""
    from pipeline.detectors.vae import mean_loss, validation_loss

    m = VAE(16, [32], 4).eval()
    x = torch.randn(5000, 16)  # not a multiple of the chunk
    for kind in ("gaussian", "mse"):
        torch.manual_seed(1)
        chunked = validation_loss(m, x, kind, 0.5, chunk=1024)
        torch.manual_seed(1)
        with torch.inference_mode():
            xhat, mu, logvar = m(x)
            whole = float(mean_loss(x, xhat, mu, logvar, kind, 0.5))
        assert abs(chunked - whole) <= 1e-6 * abs(whole)
