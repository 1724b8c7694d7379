"""One batch of chunks, encoded and decoded with bits back, step by step (see schedule.py).

Encoder (the sender, who knows x), in Bit-Swap order:
    pop S_n ~ q(S_n | x);  push x ~ p_O(. | S_n, t=1)
    for i = n .. 1:  pop S_{i-1} ~ q(S_{i-1} | S_i) (none at i = 1: S_0 = 0);
                     push S_i ~ p_R(. | S_{i-1}, t_{i-1})
Decoder (the receiver), exactly the inverse operations in the reverse order:
    for i = 1 .. n:  pop S_i ~ p_R(. | S_{i-1});  push S_{i-1} ~ q(S_{i-1} | S_i)
    pop x ~ p_O(. | S_n);  push S_n ~ q(S_n | x)
The net cost of step i is log q - log p_R, whose mean is the step's KL; with the reconstruction
term the file's length is the n-step loss (sec. 3.6). Both sides call the network on the same
batch with the same inputs, so they see the same outputs.

Dimensions marked invalid (the padding of a short last text chunk) keep S = 0 (a uniform input
distribution) and are never coded.
"""

from __future__ import annotations

import copy
from typing import Callable, Optional

import numpy as np
import torch

from bfncli.compression.coder import Stack
from bfncli.compression.kinds import Kind
from bfncli.compression.schedule import Walk

Tick = Optional[Callable[[], None]]


class BatchCoder:
    def __init__(self, model, walk: Walk, device):
        self.model, self.walk, self.kind, self.device = model, walk, Kind(model), device
        self._one_sample_flow = copy.copy(model.flow)
        self._one_sample_flow.kl_samples = 1
        self._noise = torch.Generator(device=device).manual_seed(0)  # the loss estimate is reproducible

    def _predict(self, j: np.ndarray, i: int):
        """p_O at step i's input parameters (from S_i = delta_i j), t = i/n."""
        params = self.kind.net_params(j * self.walk.deltas[i], float(self.walk.betas[i]))
        t = torch.full((j.shape[0],), self.walk.t(i), device=self.device)
        return self.model.predict(params.to(self.device), t)

    def _receiver(self, dist, prev: np.ndarray, i: int, sel: np.ndarray):
        means, weights = self.kind.receiver(dist, float(self.walk.alphas[i]))
        c = means.shape[-1]
        centre, base, std, window = self.walk.receiver(prev[sel], i)
        means = np.broadcast_to(means, (*prev.shape, c))[sel] / self.walk.deltas[i] + base[:, None]
        weights = np.broadcast_to(weights, (*prev.shape, c))[sel]
        return centre, means, std, weights, window

    # ------------------------------------------------------------------------------ encode
    @torch.inference_mode()
    def encode(self, stack: Stack, x: torch.Tensor, valid: np.ndarray, tick: Tick = None,
               loss: Optional[list] = None) -> None:
        """Push the batch x (B, *shape) with its valid dimensions (B, D). With ``loss`` (a list), append
        the model's n-step loss of the batch per valid dimension, (B,) nats summed, and their count."""
        w, kind = self.walk, self.kind
        m = kind.sender_means(x)
        sel = np.broadcast_to(valid[:, :, None], m.shape)
        mean, std, window = w.final(m)
        centre = np.round(mean).astype(np.int64)
        j = np.zeros(m.shape, dtype=np.int64)
        j[sel] = stack.pop_gauss(centre[sel], mean[sel], std, window)
        dist = self._predict(j, w.n)
        stack.push_cat(kind.symbols(x)[valid], kind.output_table(dist)[valid])
        total = self._recon_loss(x, dist, valid) if loss is not None else None
        if tick:
            tick()
        for i in range(w.n, 0, -1):
            prev = np.zeros_like(j)
            if i > 1:
                mean, std, window = w.bridge(j, i)
                prev[sel] = stack.pop_gauss(np.round(mean[sel]).astype(np.int64), mean[sel], std, window)
            dist = self._predict(prev, i - 1)
            centre, means, std, weights, window = self._receiver(dist, prev, i, sel)
            stack.push_mixture(j[sel], centre, means, std, weights, window)
            if total is not None:
                total += self._step_loss(x, dist, i, valid)
            j = prev
            if tick:
                tick()
        if loss is not None:
            loss.append((total, valid.sum()))

    # ------------------------------------------------------------------------------ decode
    @torch.inference_mode()
    def decode(self, stack: Stack, valid: np.ndarray, tick: Tick = None) -> torch.Tensor:
        """Pop a batch with these valid dimensions (B, D); returns x (B, *shape)."""
        w, kind = self.walk, self.kind
        b, d = valid.shape
        shape = (b, d, w.coords)
        sel = np.broadcast_to(valid[:, :, None], shape)
        j = np.zeros(shape, dtype=np.int64)
        for i in range(1, w.n + 1):
            dist = self._predict(j, i - 1)
            centre, means, std, weights, window = self._receiver(dist, j, i, sel)
            new = np.zeros_like(j)
            new[sel] = stack.pop_mixture(centre, means, std, weights, window)
            if i > 1:
                mean, bstd, bwindow = w.bridge(new, i)
                stack.push_gauss(j[sel], np.round(mean[sel]).astype(np.int64), mean[sel], bstd, bwindow)
            j = new
            if tick:
                tick()
        dist = self._predict(j, w.n)
        symbols = np.zeros((b, d), dtype=np.int64)
        symbols[valid] = stack.pop_cat(kind.output_table(dist)[valid])
        x = kind.from_symbols(symbols)
        m = kind.sender_means(x)
        mean, std, window = w.final(m)
        stack.push_gauss(j[sel], np.round(mean[sel]).astype(np.int64), mean[sel], std, window)
        if tick:
            tick()
        return x

    # -------------------------------------------------------------- the model's own loss
    def _recon_loss(self, x, dist, valid) -> np.ndarray:
        flat = x.reshape(x.shape[0], -1).to(self.device)
        per_dim = self.model.flow.reconstruction_loss(flat, dist).double().cpu().numpy()
        return (per_dim * valid).sum(1)

    def _step_loss(self, x, dist, i, valid) -> np.ndarray:
        """KL of step i by the loss's own estimator (with one Monte Carlo draw: unbiased, and every step is
        estimated, not one at random): its n-step loss at t_{i-1}, divided by n."""
        n = self.walk.n
        flat = x.reshape(x.shape[0], -1).to(self.device)
        t = torch.full((x.shape[0], 1), (i - 1) / n, device=self.device)
        per_dim = self._one_sample_flow.discrete_time_loss(flat, dist, t, n, self._noise).double().cpu().numpy() / n
        return (per_dim * valid).sum(1)
