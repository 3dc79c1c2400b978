"""The VAE's training step written out by hand: forward pass, loss and gradients of the MLP in reused buffers.

A training step of the default model (64 -> 128 -> 8 -> 128 -> 64, 1024 pixels) is a few small matrix products;
through autograd, about half its time went to recording and replaying some 60 operations on small tensors (more
on CPUs without AVX-512, whose products are slower but whose per-operation cost is the same). Here the forward pass
keeps what the backward pass needs in buffers allocated once per batch size, and the backward pass is the chain rule
of ``vae.mean_loss`` written out: the same loss and gradients as autograd within float32 rounding
(``tests/test_vae_step.py`` compares them), each weight's gradient written into its ``.grad`` for the optimiser.

For the VAE's MLP (``vae.VAE``) with a Gaussian or MSE reconstruction term; ``supports`` says when it applies
(other models and the BCE term train through autograd).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.detectors.vae_inference import LOGVAR_RANGE

if TYPE_CHECKING:
    from pipeline.detectors.vae import VAE

#: The reconstruction terms written out here (BCE, with its sigmoid output, trains through autograd).
KINDS = ("gaussian", "mse")


def supports(module: nn.Module, kind: str) -> bool:
    """Whether ``TrainStep`` computes ``module``'s step: a ``VAE`` whose encoder and decoder are Linear + ReLU
    pairs (the decoder's last Linear without activation), with a Gaussian or MSE reconstruction term."""
    # exactly vae.VAE (named, not imported: vae imports this module), not a subclass with another forward
    if (type(module).__module__, type(module).__qualname__) != ("pipeline.detectors.vae", "VAE") or kind not in KINDS:
        return False
    try:
        hidden = _layers(module.encoder, last_relu=True)
        _layers(module.decoder, last_relu=False)
    except TypeError:
        return False
    return bool(hidden)  # at least one hidden layer (the schema's minimum)


def _layers(seq: nn.Sequential, last_relu: bool) -> list[nn.Linear]:
    """The Linear layers of a Sequential that alternates Linear and ReLU (ending in a ReLU when ``last_relu``)."""
    mods = list(seq)
    linears = mods[0::2]
    relus = mods[1::2]
    if (not all(type(m) is nn.Linear and m.bias is not None for m in linears)
            or not all(type(m) is nn.ReLU for m in relus)
            or len(relus) != (len(linears) if last_relu else len(linears) - 1)):
        raise TypeError("not an alternation of Linear (with bias) and ReLU layers")
    return linears


@dataclass
class _Buffers:
    """One batch size's activations and gradients: (n, width) float32, the latent ones (width, n) (contiguous rows
    for the element-wise maths on mu and the log-variance; column slices of (n, 2 latent) ran 5x slower). The
    activations that feed a layer carry a column (latent: a row) of ones, which multiplies the bias column of
    that layer's [W | b] block: no bias broadcast before each product, no column sums for the bias gradients."""

    enc: list[torch.Tensor]  # ReLU outputs of the encoder's layers, (n, width + 1) with the ones
    ml: torch.Tensor  # (2 latent, n): mu, then the clamped log-variance
    std: torch.Tensor  # (latent, n), as the other latent buffers
    var: torch.Tensor  # exp(log-variance)
    eps: torch.Tensor  # (n, latent): the noise, drawn in VAE.forward's shape (the same numbers for a seed)
    z: torch.Tensor  # (latent + 1, n) with the ones
    dec: list[torch.Tensor]  # ReLU outputs of the decoder's hidden layers, (n, width + 1) with the ones
    out: torch.Tensor  # the reconstruction, then the residual, then its gradient
    kl: torch.Tensor  # KL terms
    d_enc: list[torch.Tensor]  # gradients of the encoder's outputs
    d_ml: torch.Tensor
    d_dec: list[torch.Tensor]
    d_z: torch.Tensor
    tmp: torch.Tensor


class TrainStep:
    """The loss and gradients of one batch for a ``VAE`` (see ``supports``), into its parameters' ``.grad``.

    While it lives, the module's parameters are views of one flat tensor (``flat``) and their gradients views of
    ``flat.grad``: the optimiser then updates one tensor (fused Adam's step took 4x longer over the model's ten
    tensors). In it each layer is one [W | b] block (out, in + 1), mu's and the log-variance's layers one block
    together, so that a layer's product takes its bias along (``_Buffers``) and one product gives a layer's weight
    and bias gradients. ``release()`` gives the parameters their own memory again (safetensors saves no shared
    tensors).

    ``step(x)`` draws the reparameterisation noise from torch's global generator exactly as ``VAE.forward`` does
    (one ``randn`` of the posterior's shape), so a seeded run draws the same noise as through autograd.
    """

    def __init__(self, module: VAE, kind: str, beta: float):
        if not supports(module, kind):
            raise ValueError(f"no hand-written training step for this model and a {kind!r} term")
        self.module, self.kind, self.beta = module, kind, float(beta)
        self.encoder = _layers(module.encoder, last_relu=True)
        self.decoder = _layers(module.decoder, last_relu=False)
        self.latent = module.mu.out_features
        groups = [*([m] for m in self.encoder), [module.mu, module.logvar], *([m] for m in self.decoder)]
        shapes = [(sum(m.out_features for m in g), g[0].in_features + 1) for g in groups]
        ref = module.mu.weight
        self.flat = nn.Parameter(torch.empty(sum(a * b for a, b in shapes), dtype=ref.dtype, device=ref.device))
        self.flat.grad = torch.empty_like(self.flat)
        self.blocks: list[torch.Tensor] = []  # [W | b] per layer (mu and log-variance: one), views of flat
        self.grads: list[torch.Tensor] = []  # the same of flat.grad
        at = 0
        with torch.no_grad():
            for g, (rows, cols) in zip(groups, shapes, strict=True):
                block = self.flat.data[at:at + rows * cols].view(rows, cols)
                grad = self.flat.grad[at:at + rows * cols].view(rows, cols)
                r = 0
                for m in g:
                    k = m.out_features
                    block[r:r + k, :-1].copy_(m.weight)
                    block[r:r + k, -1].copy_(m.bias)
                    m.weight.data, m.bias.data = block[r:r + k, :-1], block[r:r + k, -1]
                    m.weight.grad, m.bias.grad = grad[r:r + k, :-1], grad[r:r + k, -1]
                    r += k
                self.blocks.append(block)
                self.grads.append(grad)
                at += rows * cols
        self._buffers: dict[int, _Buffers] = {}

    def parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: the one flat tensor behind every parameter."""
        return [self.flat]

    def release(self) -> None:
        """The module's parameters in memory of their own again (contiguous), without gradients (as autograd
        leaves them after ``zero_grad(set_to_none=True)``); the step is unusable after this."""
        with torch.no_grad():
            for t in self.module.parameters():
                t.data = t.data.contiguous().clone()
                t.grad = None
        self._buffers.clear()

    def mean_loss(self, x: torch.Tensor, chunk: int = 2048) -> float:
        """``vae.validation_loss`` of ``x``: the mean loss over chunks of ``chunk`` pixels, without gradients."""
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for i in range(0, x.shape[0], chunk):
            xb = x[i:i + chunk]
            total += self(xb, backward=False).double() * xb.shape[0]
        return float(total) / max(x.shape[0], 1)

    def buffers(self, n: int) -> _Buffers:
        """The buffers for a batch of ``n`` pixels (allocated once per size: the full batches and the last)."""
        if n not in self._buffers:
            if len(self._buffers) > 4:  # training's full and last batches, validation's full and last chunks
                self._buffers.clear()
            p = self.flat

            def empty(width: int) -> torch.Tensor:
                return torch.empty(n, width, dtype=p.dtype, device=p.device)

            def lat(rows: int) -> torch.Tensor:
                return torch.empty(rows, n, dtype=p.dtype, device=p.device)

            def with_ones(t: torch.Tensor) -> torch.Tensor:
                t[..., -1].fill_(1.0)
                return t

            L = self.latent
            enc = [with_ones(empty(m.out_features + 1)) for m in self.encoder]
            dec = [with_ones(empty(m.out_features + 1)) for m in self.decoder[:-1]]
            d_dec = [empty(m.out_features) for m in self.decoder[:-1]]
            z = lat(L + 1)
            z[-1].fill_(1.0)
            self._buffers[n] = _Buffers(
                enc=enc, ml=lat(2 * L), std=lat(L), var=lat(L), eps=empty(L), z=z, dec=dec,
                out=empty(self.decoder[-1].out_features), kl=lat(L),
                # the decoder's hidden widths mirror the encoder's: the encoder's gradients reuse the decoder's
                # buffers (done with by then), a smaller working set
                d_enc=d_dec[::-1], d_ml=lat(2 * L), d_dec=d_dec, d_z=lat(L), tmp=lat(L))
        return self._buffers[n]

    def __call__(self, x: torch.Tensor, backward: bool = True) -> torch.Tensor:
        """The mean loss of the batch ``x`` (n, bands) normalised pixels (a 0-d tensor, ``vae.mean_loss``); with
        ``backward``, every parameter's ``.grad`` then holds its gradient."""
        L, beta = self.latent, self.beta
        n = x.shape[0]
        v = self.buffers(n)
        E = len(self.encoder)
        enc_blocks, ml_block, dec_blocks = self.blocks[:E], self.blocks[E], self.blocks[E + 1:]
        with torch.no_grad():
            # ---- forward ([W | b] blocks times activations with their ones: the bias comes with the product)
            first = enc_blocks[0]
            torch.addmm(first[:, -1], x, first[:, :-1].T, out=v.enc[0][:, :-1])
            v.enc[0].relu_()  # the ones stay ones
            for block, a, out in zip(enc_blocks[1:], v.enc, v.enc[1:], strict=False):
                torch.mm(a, block.T, out=out[:, :-1])
                out.relu_()
            torch.mm(ml_block, v.enc[-1].T, out=v.ml)  # (2 latent, n)
            mu, logvar = v.ml[:L], v.ml[L:]
            logvar.clamp_(*LOGVAR_RANGE)
            torch.exp(torch.mul(logvar, 0.5, out=v.std), out=v.std)
            torch.randn(v.eps.shape, out=v.eps)
            torch.addcmul(mu, v.eps.T, v.std, out=v.z[:L])  # z (latent, n), above its row of ones
            a = v.z.T
            for block, out in zip(dec_blocks[:-1], v.dec, strict=True):
                torch.mm(a, block.T, out=out[:, :-1])
                a = out.relu_()
            r = torch.mm(a, dec_blocks[-1].T, out=v.out).sub_(x)  # the residual xhat - x
            # ---- loss: reconstruction + beta * KL, as vae.mean_loss
            flat = r.view(-1)
            sq = torch.dot(flat, flat)
            rec_scale = 0.5 / n if self.kind == "gaussian" else 1.0 / r.numel()
            torch.exp(logvar, out=v.var)
            torch.sub(v.var, logvar, out=v.kl).addcmul_(mu, mu)
            # rec_scale * |r|² + beta * (0.5 / n * sum(kl terms) - L / 2), in three operations
            loss = torch.add(sq, v.kl.sum(), alpha=0.5 * beta / n / rec_scale).mul_(rec_scale).sub_(0.5 * beta * L)
            if not backward:
                return loss
            # ---- backward: a block's gradient is grad^T [a | 1], the weight and bias gradients in one product
            grad = r.mul_(2.0 * rec_scale)  # d loss / d xhat
            dec_grads = self.grads[E + 1:]
            for i in range(len(dec_blocks) - 1, 0, -1):
                a = v.dec[i - 1]
                torch.mm(grad.T, a, out=dec_grads[i])
                grad = _relu_backward(torch.mm(grad, dec_blocks[i][:, :-1], out=v.d_dec[i - 1]), a[:, :-1])
            torch.mm(grad.T, v.z.T, out=dec_grads[0])
            d_z = torch.mm(dec_blocks[0][:, :-1].T, grad.T, out=v.d_z)  # (latent, n)
            # z = mu + eps * std; std = exp(logvar / 2); KL = 0.5 * sum(mu² + exp(logvar) - logvar) / n - L / 2
            d_mu, d_logvar = v.d_ml[:L], v.d_ml[L:]
            torch.add(d_z, mu, alpha=beta / n, out=d_mu)
            torch.mul(d_z, v.eps.T, out=v.tmp).mul_(v.std).mul_(0.5)
            torch.sub(v.var, 1.0, out=d_logvar).mul_(0.5 * beta / n).add_(v.tmp)
            # zero where the clamp held the log-variance at a bound (the clamped value equals it: hardtanh's
            # backward; autograd's clamp would pass a value exactly at a bound, a case of measure zero)
            torch.ops.aten.hardtanh_backward.grad_input(d_logvar, logvar, *LOGVAR_RANGE, grad_input=d_logvar)
            torch.mm(v.d_ml, v.enc[-1], out=self.grads[E])
            grad, weights = v.d_ml.T, [*(b[:, :-1] for b in enc_blocks[1:]), ml_block[:, :-1]]
            for i in range(E - 1, -1, -1):
                # the gradient of encoder layer i's output, then of its block
                grad = _relu_backward(torch.mm(grad, weights[i], out=v.d_enc[i]), v.enc[i][:, :-1])
                if i:
                    torch.mm(grad.T, v.enc[i - 1], out=self.grads[i])
            g0 = self.grads[0]  # the first layer's input (the batch) has no ones: weight and bias apart
            torch.mm(grad.T, x, out=g0[:, :-1])
            torch.sum(grad, 0, out=g0[:, -1])
        return loss


def _offset(flat: torch.Tensor, t: torch.Tensor) -> int:
    """Where the view ``t`` starts in ``flat``, in elements."""
    return t.storage_offset() - flat.storage_offset()


def _relu_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``grad`` zeroed where the ReLU's output ``out`` is 0, in place (as autograd's ReLU backward)."""
    return torch.ops.aten.threshold_backward.grad_input(grad, out, 0.0, grad_input=grad)
