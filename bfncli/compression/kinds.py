"""What differs between the kinds of data: the sender's means, the network's input parameters, the
receiver's mixture and the output distribution's bin probabilities, derived as the losses do.

- discrete data (sec. 6): per coordinate a of y the receiver of the official discrete-time loss,
  a mixture of N(alpha (K - 1), alpha K) with weight p_a and N(-alpha, alpha K) with weight
  1 - p_a (MATH.md: the product over coordinates of 1-D mixtures); x with p_O(x | theta_n);
- discretized data (sec. 5): alpha y ~ sum_k p_O(k) N(alpha k_c, alpha), the output distribution
  convolved with the sender noise; x's bin with the discretized p_O at t = 1;
- continuous data (sec. 4, delta output): alpha y ~ N(alpha x_hat, alpha); x's bin with the
  discretized normal of the reconstruction loss (centred on x_hat, std and bins from the config).

Shapes: D data dimensions per chunk, c coordinates per dimension, C mixture components.
"""

from __future__ import annotations

import numpy as np
import torch

from bfncli.flows.distributions import Delta, DiscretizedNormal, bin_centres, bin_index


class Kind:
    def __init__(self, model):
        self.model = model
        self.flow = model.flow
        self.discrete = model.discrete
        self.shape = tuple(model.data_shape)
        self.delta_output = not self.discrete and self.flow.output == "delta"

    # ------------------------------------------------------------------------------ sender
    def sender_means(self, x: torch.Tensor) -> np.ndarray:
        """m(x), (B, D, c): K e_x - 1 for discrete data, x itself otherwise."""
        b = x.shape[0]
        if self.discrete:
            k = self.flow.n_classes
            return (k * np.eye(k)[x.reshape(b, -1).cpu().numpy()] - 1).astype(np.float64)
        return x.reshape(b, -1, 1).double().cpu().numpy()

    def net_params(self, s: np.ndarray, beta: float) -> torch.Tensor:
        """The network's input parameters for sums S (B, D, c): theta = softmax(S) or mu = S/(1 + beta)."""
        b = s.shape[0]
        total = torch.from_numpy(s)
        if self.discrete:
            return torch.softmax(total, -1).float().reshape(b, *self.shape, self.flow.n_classes)
        return (total / (1 + beta)).float().reshape(b, *self.shape)

    # ---------------------------------------------------------------------------- receiver
    def receiver(self, dist, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """The step's increment mixture: component means (B, D, c, C) and weights (B, D, c, C)."""
        if self.discrete:
            k = self.flow.n_classes
            p = _probs(dist)  # (B, D, K)
            means = np.broadcast_to(np.array([alpha * (k - 1), -alpha]), (*p.shape, 2))
            return means, np.stack([p, 1 - p], -1)
        if isinstance(dist, Delta):
            mean = dist.mean.double().cpu().numpy()
            return (alpha * mean)[..., None, None], np.ones((*mean.shape, 1, 1))
        centres = bin_centres(dist.num_bins, dtype=torch.float64).numpy()
        probs = dist.probs.double().cpu().numpy()  # (B, D, bins)
        return np.broadcast_to(alpha * centres, probs.shape)[:, :, None, :], probs[:, :, None, :]

    # ------------------------------------------------------------------------------ output
    def output_table(self, dist) -> np.ndarray:
        """p_O(. | theta_n, 1) over the symbols of x, (B, D, symbols)."""
        if self.discrete:
            return _probs(dist)
        if isinstance(dist, Delta):
            std = torch.full_like(dist.mean, self.flow.recon_std)
            dist = DiscretizedNormal(dist.mean, std, self.flow.recon_num_bins, clip=True)
        return dist.probs.double().cpu().numpy()

    @property
    def bins(self) -> int:
        """How many values one data dimension takes."""
        if self.discrete:
            return self.flow.n_classes
        return self.flow.recon_num_bins if self.delta_output else self.flow.num_bins

    def symbols(self, x: torch.Tensor) -> np.ndarray:
        """x (B, *shape) as symbols (B, D): class indices or bin indices."""
        b = x.shape[0]
        if self.discrete:
            return x.reshape(b, -1).long().cpu().numpy()
        return bin_index(x.reshape(b, -1), self.bins).cpu().numpy()

    def from_symbols(self, symbols: np.ndarray) -> torch.Tensor:
        b = symbols.shape[0]
        s = torch.from_numpy(symbols).long()
        if self.discrete:
            return s.reshape(b, *self.shape)
        return bin_centres(self.bins)[s].reshape(b, *self.shape)


def _probs(dist) -> np.ndarray:
    return dist.probs.double().cpu().numpy()
