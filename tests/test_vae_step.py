"""The VAE's hand-written training step: the same loss and gradients as autograd, the same training."""

import copy

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.detectors import vae_step
from pipeline.detectors.vae import LOGVAR_RANGE, VAE, VAEDetector, mean_loss, validation_loss
from pipeline.detectors.vae_step import TrainStep, supports
from pipeline.sample import load_sample
from tests.conftest import FAST_TRAIN


def _autograd(m: VAE, x: torch.Tensor, kind: str, beta: float, seed: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of ``m`` on ``x`` through autograd, with the noise of ``seed``."""
    m = copy.deepcopy(m)
    for p in m.parameters():
        p.grad = None
    torch.manual_seed(seed)
    xhat, mu, logvar = m(x)
    loss = mean_loss(x, xhat, mu, logvar, kind, beta)
    loss.backward()
    return float(loss.detach()), {k: p.grad.clone() for k, p in m.named_parameters()}


@pytest.mark.parametrize(("hidden", "latent", "kind", "beta"), [
    ([128], 8, "gaussian", 1.0), ([12, 7], 3, "mse", 0.5), ([12, 9, 5], 3, "gaussian", 2.0), ([5], 2, "gaussian", 0.0)])
def test_loss_and_gradients_equal_autograds(hidden, latent, kind, beta):
    torch.manual_seed(0)
    m = VAE(16, hidden, latent)
    x = torch.randn(300, 16)
    want_loss, want = _autograd(m, x, kind, beta, seed=3)
    step = TrainStep(m, kind, beta)
    torch.manual_seed(3)
    got_loss = float(step(x))
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    for k, p in m.named_parameters():
        scale = float(want[k].abs().max()) or 1.0
        assert torch.allclose(p.grad, want[k], rtol=1e-4, atol=1e-5 * scale), k
    assert float(step(x[:7])) > 0  # another batch size: its own buffers


def test_gradients_where_the_log_variance_is_clamped():
    """Pixels whose log-variance the clamp holds at a bound pass no gradient to it, as in autograd."""
    torch.manual_seed(1)
    m = VAE(6, [10], 4)
    with torch.no_grad():
        m.logvar.weight.mul_(400.0)  # most log-variances far outside LOGVAR_RANGE, both ways
    x = torch.randn(64, 6)
    with torch.no_grad():
        raw = m.logvar(m.encoder(x))
    assert (raw < LOGVAR_RANGE[0]).any() and (raw > LOGVAR_RANGE[1]).any() and (raw.abs() < 5).any()
    want_loss, want = _autograd(m, x, "gaussian", 1.0, seed=0)
    step = TrainStep(m, "gaussian", 1.0)
    torch.manual_seed(0)
    assert float(step(x)) == pytest.approx(want_loss, rel=1e-5)
    for k, p in m.named_parameters():
        assert torch.allclose(p.grad, want[k], rtol=1e-4, atol=1e-5 * float(want[k].abs().max())), k


def test_mean_loss_is_the_validation_loss():
    torch.manual_seed(0)
    m = VAE(8, [16], 3)
    x = torch.randn(5000, 8)
    torch.manual_seed(4)
    want = validation_loss(m, x, "gaussian", 1.0)
    step = TrainStep(m, "gaussian", 1.0)
    torch.manual_seed(4)
    assert step.mean_loss(x) == pytest.approx(want, rel=1e-5)


def test_parameters_are_one_tensor_until_released():
    m = VAE(8, [16], 3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    step = TrainStep(m, "gaussian", 1.0)
    (flat,) = step.parameters()
    assert flat.numel() == sum(v.numel() for v in before.values())
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]) and v.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    with torch.no_grad():
        flat.add_(1.0)  # what the optimiser does: the module's weights follow
    assert torch.equal(m.mu.weight, before["mu.weight"] + 1.0)
    step.release()
    ptrs = {v.untyped_storage().data_ptr() for v in m.state_dict().values()}
    assert len(ptrs) == len(before) and all(p.grad is None for p in m.parameters())
    assert torch.equal(m.decoder[-1].bias, before["decoder.2.bias"] + 1.0)


def test_supports_the_vae_mlp_only():
    assert supports(VAE(8, [16], 3), "gaussian") and supports(VAE(8, [16, 4], 3), "mse")
    assert not supports(VAE(8, [16], 3, sigmoid_output=True), "bce")
    assert not supports(VAE(8, [16], 3), "bce") and not supports(VAE(8, [], 3), "gaussian")
    wider = VAE(8, [16], 3)
    wider.encoder.append(torch.nn.Dropout())
    assert not supports(wider, "gaussian")
    with pytest.raises(ValueError, match="no hand-written training step"):
        TrainStep(VAE(8, [16], 3), "bce", 1.0)


def test_training_by_hand_follows_autograds_training(sample_file, monkeypatch):
    """Two epochs with the hand-written step end where autograd's training ends, within float32 drift."""
    s = load_sample(sample_file)
    settings = {**load_config()["train"], **FAST_TRAIN, "epochs": 2, "trim": 0.0, "noise": "unit"}
    by_hand = VAEDetector.fit(s.pixels, s.band_names, s.stats, settings)
    monkeypatch.setattr(vae_step, "supports", lambda *a: False)
    plain = VAEDetector.fit(s.pixels, s.band_names, s.stats, settings)
    for k, v in plain.module.state_dict().items():
        assert torch.allclose(by_hand.module.state_dict()[k], v, rtol=1e-3, atol=1e-4), k
    a, b = by_hand.meta["training"]["history"], plain.meta["training"]["history"]
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    assert np.allclose([r["val_loss"] for r in a], [r["val_loss"] for r in b], rtol=1e-4)
    for p in by_hand.module.parameters():  # released: their own memory, saved as usual
        assert p.grad is None and p.is_contiguous()
