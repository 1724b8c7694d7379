"""The Bayesian flow for continuous and discretized data (paper sections 4 and 5).

Each data dimension has a Gaussian input distribution N(mu, 1/rho), starting from the prior
mu = 0, rho = 1. A sender sample y ~ N(x, 1/alpha) updates it by Bayes' rule; the accuracy
schedule makes the total precision at time t equal 1/sigma_1^(2t). Data live in [-1, 1]
(discretized data at bin centres). Shapes: ``x`` and ``mu`` are (B, ...); ``t`` broadcasts to them.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from bfncli.flows.distributions import (
    Delta,
    DiscretizedNormal,
    bin_centres,
    broadcast_shape,
    chunked,
    mixture_weights,
    safe_exp,
)

MIN_T = 1e-6  # below this the noise-prediction parameterisation is undefined (gamma -> 0)

OutputDist = Union[Delta, DiscretizedNormal]


class ContinuousFlow:
    """sigma_1^2 = ``min_variance``; the output is ``delta`` (continuous) or ``discretized_normal``."""

    def __init__(
        self,
        min_variance: float,
        output: Literal["delta", "discretized_normal"] = "discretized_normal",
        num_bins: Optional[int] = None,
        noise_pred: bool = True,
        clip: bool = True,
        recon_num_bins: Optional[int] = None,
        recon_std: Optional[float] = None,
        kl_samples: int = 10,
    ):
        if output == "discretized_normal" and num_bins is None:
            raise ValueError("the discretized_normal output needs num_bins")
        self.min_variance = min_variance
        self.sigma_1 = math.sqrt(min_variance)
        self.output = output
        self.num_bins = num_bins
        self.noise_pred = noise_pred
        self.clip = clip
        # The reconstruction loss of a delta output is measured with a discretized normal of
        # this std and these bins, so that it is comparable with discretized models (sec. 7.2).
        self.recon_num_bins = recon_num_bins or num_bins or 256
        self.recon_std = recon_std if recon_std is not None else self.sigma_1
        self.kl_samples = kl_samples

    # ------------------------------------------------------------------ schedule and updates
    def gamma(self, t: Tensor) -> Tensor:
        """gamma(t) = 1 - sigma_1^(2t): the fraction of the data in the flow's mean (sec. 4.5)."""
        return 1 - self.remaining_variance(t)

    def remaining_variance(self, t: Tensor) -> Tensor:
        """1 - gamma(t) = sigma_1^(2t), computed directly: near t = 1 the difference 1 - gamma loses
        most of its float32 digits (1.3% error at sigma_1^2 = 1e-6)."""
        return torch.pow(self.min_variance, t)

    def step_alpha(self, i: Union[int, Tensor], n_steps: int) -> Union[float, Tensor]:
        """alpha_i = sigma_1^(-2i/n) (1 - sigma_1^(2/n)): accuracy of step i of n (sec. 4.7)."""
        return self.sigma_1 ** (-2 * i / n_steps) * (1 - self.sigma_1 ** (2 / n_steps))

    def prior(self, shape: tuple[int, ...], device=None) -> tuple[Tensor, float]:
        """Input prior: mu = 0, rho = 1 (sec. 4.1)."""
        return torch.zeros(shape, device=device), 1.0

    def sender_sample(self, x: Tensor, alpha, generator: Optional[torch.Generator] = None,
                      noise: Optional[Tensor] = None) -> Tensor:
        """y ~ p_S(. | x; alpha) = N(x, 1/alpha) (sec. 4.3); ``noise``: standard normal, shaped like x."""
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + noise / math.sqrt(alpha) if not torch.is_tensor(alpha) else x + noise / alpha.sqrt()

    @staticmethod
    def update(mu: Tensor, rho, y: Tensor, alpha) -> tuple[Tensor, Union[float, Tensor]]:
        """Bayesian update (sec. 4.2): rho' = rho + alpha, mu' = (rho mu + alpha y) / rho'."""
        new_rho = rho + alpha
        return (rho * mu + alpha * y) / new_rho, new_rho

    def flow_sample(self, x: Tensor, t: Tensor, generator: Optional[torch.Generator] = None,
                    noise: Optional[Tensor] = None) -> Tensor:
        """mu ~ p_F(. | x; t) = N(gamma x, gamma (1 - gamma)) (sec. 4.5). The network sees mu only.
        ``noise``: the standard normal draw, if already drawn (see :meth:`flow_noise`)."""
        rest = self.remaining_variance(t)
        gamma = 1 - rest
        if noise is None:
            noise = torch.randn(broadcast_shape(x.shape, t.shape), generator=generator, device=x.device)
        return gamma * x + (gamma * rest).sqrt() * noise

    @staticmethod
    def flow_noise(x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The standard normal draw that :meth:`flow_sample` turns into mu, one per data dimension (what it
        draws itself when ``t`` has one time per example)."""
        return torch.randn(x.shape, generator=generator, device=x.device)

    def loss_noise(self, x: Tensor, generator: Optional[torch.Generator] = None) -> list[Tensor]:
        """The Monte Carlo draws of :meth:`discrete_time_loss` for flat data ``x`` (none for a delta output)."""
        if self.output == "delta":
            return []
        return [torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                for _ in range(self.kl_samples)]

    @staticmethod
    def net_input(mu: Tensor) -> Tensor:
        return mu

    # ------------------------------------------------------------------- output distribution
    def output_distribution(self, params: Tensor, mu: Tensor, t: Tensor) -> OutputDist:
        """p_O from the network's output ``params`` (shape (*data, P), P = 1 or 2).

        With noise prediction (sec. 4.1) the network predicts the noise eps in
        mu = gamma x + sqrt(gamma (1 - gamma)) eps, so x_hat = mu/gamma - sqrt((1-gamma)/gamma) eps,
        and x_hat = 0 (std = 1) for t < 1e-6 where gamma vanishes.
        """
        t = torch.as_tensor(t, dtype=mu.dtype, device=mu.device).expand_as(mu)
        mean_param = params[..., 0]
        if self.noise_pred:
            tiny = t < MIN_T
            rest = self.remaining_variance(t.clamp(min=MIN_T))
            ratio = (rest / (1 - rest)).sqrt()
            mean = torch.where(tiny, torch.zeros_like(mu), mu / (1 - rest) - ratio * mean_param)
        else:
            mean = mean_param
        if self.output == "delta":
            return Delta(mean)
        std = safe_exp(params[..., 1])
        if self.noise_pred:
            std = torch.where(tiny, torch.ones_like(std), ratio * std)
        return DiscretizedNormal(mean, std, self.num_bins, clip=self.clip)

    # ----------------------------------------------------------------------------- losses
    def continuous_time_loss(self, x: Tensor, dist: OutputDist, t: Tensor) -> Tensor:
        """L^inf(x) = -ln(sigma_1) |x - x_hat|^2 / sigma_1^(2t), per dimension (sec. 4.12, 5.4)."""
        return -math.log(self.sigma_1) * (dist.mean - x).square() / torch.pow(self.min_variance, t)

    def discrete_time_loss(
        self, x: Tensor, dist: OutputDist, t: Tensor, n_steps: int, generator: Optional[torch.Generator] = None,
        noise: Optional[list[Tensor]] = None,
    ) -> Tensor:
        """L^n(x) at t = t_{i-1}, per dimension (sec. 4.11, 5.3); ``noise``: the draws of
        :meth:`loss_noise`, if already drawn.

        Delta output: n alpha_i |x - x_hat|^2 / 2. Discretized output: n KL(N(x, 1/alpha) ||
        sum_k p(k) N(k_c, 1/alpha)), estimated with ``kl_samples`` draws y = x + e / sqrt(alpha) of
        the sender, a chunk of dimensions at a time so that memory is bounded at any batch size.

        For one draw, log N(y | x) - log sum_k p(k) N(y | k_c) = -log sum_k p(k) e^(d_k) with
        d_k = sqrt(alpha) e (k_c - x) - alpha (k_c - x)^2 / 2, computed from d_k directly (no
        difference of two large log-densities) and without rounding being multiplied by n (see
        :func:`log_mean_exp_shift`). Its first-order part, -sqrt(alpha) e (x_hat - x) with x_hat the
        mixture's mean, has mean zero (e is symmetric) and is added back as a control variate: the
        estimate keeps its expectation (the official loss's) while its variance no longer grows with n.
        """
        i = t * n_steps + 1  # t = (i - 1)/n
        alpha = self.step_alpha(i, n_steps).expand_as(x)
        if isinstance(dist, Delta):
            return n_steps * alpha * (x - dist.mean).square() / 2
        centres = bin_centres(dist.num_bins, x.device, x.dtype)

        def kl_term(x_, a_, e_, loc_, scale_):
            w = mixture_weights(dist._probs_flat(loc_, scale_))
            offset = centres - x_.unsqueeze(-1)  # k_c - x; 0 at x's own bin, so the sum below is >= w_x
            root = a_.sqrt().unsqueeze(-1)
            d = root * e_.unsqueeze(-1) * offset - 0.5 * a_.unsqueeze(-1) * offset.square()  # <= e^2 / 2
            # sum_k w_k e^d_k = 1 + sum_k w_k (e^d_k - 1): where that sum is near 1, log1p keeps its digits
            excess = (w * torch.expm1(d)).sum(-1)
            near_one = excess.abs() < 0.5
            log_receiver_ratio = torch.where(near_one, torch.log1p(torch.where(near_one, excess, 0.0)),
                                             torch.log((w * torch.exp(d)).sum(-1)))
            first_order = root.squeeze(-1) * e_ * (w * offset).sum(-1)
            return first_order - log_receiver_ratio

        total = torch.zeros_like(x)
        for e in noise if noise is not None else self.loss_noise(x, generator):
            total = total + chunked(kl_term, x, alpha, e, dist.loc, dist.scale, width=dist.num_bins)
        return n_steps * total / self.kl_samples

    def reconstruction_loss(self, x: Tensor, dist: OutputDist) -> Tensor:
        """-log p_O(x | theta, 1), per dimension (sec. 4.10, 5.2)."""
        if isinstance(dist, Delta):
            std = torch.full_like(dist.mean, self.recon_std)
            dist = DiscretizedNormal(dist.mean, std, self.recon_num_bins, clip=True)
        return -dist.log_prob(x)
