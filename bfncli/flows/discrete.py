"""The Bayesian flow for discrete data (paper section 6).

Each data dimension has a categorical input distribution theta over K classes, starting
uniform. A sender sample y ~ N(alpha (K e_x - 1), alpha K I) updates it by Bayes' rule,
theta' ∝ theta exp(y); the accuracy schedule is beta(t) = beta_1 t^2. Shapes: ``x`` holds class
indices (B, ...); ``theta`` is (B, ..., K); ``t`` broadcasts to ``x``.

For K = 2 (binarized MNIST) the network sees one value per dimension, 2 theta_0 - 1, and the
output distribution is a Bernoulli with one logit per dimension, as in the official code.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from bfncli.flows.distributions import MIX_EPS, Bernoulli, Categorical, log_mean_exp_shift

MAX_T = 1 - 1e-6  # the flow is sampled with t clamped here
MIN_SQRT_BETA = 1e-10  # below this the flow's theta is exactly uniform

OutputDist = Union[Bernoulli, Categorical]


class DiscreteFlow:
    """K = ``n_classes``; beta_1 = ``max_sqrt_beta``^2."""

    def __init__(
        self,
        n_classes: int,
        max_sqrt_beta: float,
        kl_samples: int = 10,
        discrete_time_kl: Literal["official", "exact"] = "official",
    ):
        self.n_classes = n_classes
        self.max_sqrt_beta = max_sqrt_beta
        self.beta_1 = max_sqrt_beta**2
        self.kl_samples = kl_samples
        self.discrete_time_kl = discrete_time_kl

    # ------------------------------------------------------------------ schedule and updates
    def beta(self, t: Tensor) -> Tensor:
        """beta(t) = beta_1 t^2 (sec. 6.8)."""
        return self.beta_1 * t.square()

    def step_alpha(self, i: Union[int, Tensor], n_steps: int) -> Union[float, Tensor]:
        """alpha_i = beta_1 (2i - 1) / n^2 (sec. 6.8)."""
        return self.beta_1 * (2 * i - 1) / n_steps**2

    def prior(self, shape: tuple[int, ...], device=None) -> Tensor:
        """Input prior: uniform theta = 1/K (sec. 6.1)."""
        return torch.full((*shape, self.n_classes), 1.0 / self.n_classes, device=device)

    def _sender_mean(self, x: Tensor) -> Tensor:
        return self.n_classes * F.one_hot(x.long(), self.n_classes).float() - 1

    def sender_sample(self, x: Tensor, alpha, generator: Optional[torch.Generator] = None,
                      noise: Optional[Tensor] = None) -> Tensor:
        """y ~ p_S(. | x; alpha) = N(alpha (K e_x - 1), alpha K I) (sec. 6.3); ``noise``: (*x.shape, K)."""
        alpha = torch.as_tensor(alpha, dtype=torch.float32, device=x.device)
        if alpha.dim():
            alpha = alpha.unsqueeze(-1)
        mean = alpha * self._sender_mean(x)
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device=x.device)
        return mean + (alpha * self.n_classes).sqrt() * noise

    @staticmethod
    def update(theta: Tensor, y: Tensor) -> Tensor:
        """Bayesian update (sec. 6.4): theta' = theta e^y / sum_k theta_k e^y_k (in log space)."""
        return torch.softmax(theta.clamp(min=1e-38).log() + y, -1)

    def flow_sample(self, x: Tensor, t: Tensor, generator: Optional[torch.Generator] = None,
                    noise: Optional[Tensor] = None) -> Tensor:
        """theta ~ p_F(. | x; t) = softmax(y), y ~ N(beta (K e_x - 1), beta K I) (sec. 6.8).

        t is clamped to 1 - 1e-6; where sqrt(beta) < 1e-10 theta is exactly uniform. ``noise``: the
        standard normal draw, if already drawn (see :meth:`flow_noise`).
        """
        sqrt_beta = self.max_sqrt_beta * t.clamp(max=MAX_T)
        uniform = (sqrt_beta < MIN_SQRT_BETA).unsqueeze(-1)
        beta = sqrt_beta.clamp(min=MIN_SQRT_BETA).square().unsqueeze(-1)
        mean = beta * self._sender_mean(x)
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device=x.device)
        theta = torch.softmax(mean + (beta * self.n_classes).sqrt() * noise, -1)
        return torch.where(uniform, torch.full_like(theta, 1.0 / self.n_classes), theta)

    def flow_noise(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The standard normal draw that :meth:`flow_sample` turns into theta, K per data dimension (what it
        draws itself when ``t`` has one time per example)."""
        return torch.randn((*x.shape, self.n_classes), generator=generator, device=x.device)

    def loss_noise(self, x: Tensor, generator: Optional[torch.Generator] = None) -> list[Tensor]:
        """The Monte Carlo draws of :meth:`discrete_time_loss` for flat data ``x``."""
        return [torch.randn((*x.shape, self.n_classes), generator=generator, device=x.device)
                for _ in range(self.kl_samples)]

    def net_input(self, theta: Tensor) -> Tensor:
        """What the network sees: theta for K > 2; 2 theta_0 - 1 per dimension for K = 2."""
        if self.n_classes == 2:
            return 2 * theta[..., 0] - 1
        return theta

    # ------------------------------------------------------------------- output distribution
    def output_distribution(self, params: Tensor) -> OutputDist:
        """Bernoulli from one logit per dimension (K = 2), else categorical from K logits."""
        if self.n_classes == 2:
            return Bernoulli(params[..., 0] if params.shape[-1] == 1 else params)
        return Categorical(params)

    # ----------------------------------------------------------------------------- losses
    def continuous_time_loss(self, x: Tensor, dist: OutputDist, t: Tensor) -> Tensor:
        """L^inf(x) = K beta_1 t |e_x - e_hat|^2, per dimension (sec. 6.12)."""
        e_x = F.one_hot(x.long(), self.n_classes).to(dist.probs.dtype)
        return self.n_classes * self.beta_1 * t * (e_x - dist.probs).square().sum(-1)

    def discrete_time_loss(
        self, x: Tensor, dist: OutputDist, t: Tensor, n_steps: int, generator: Optional[torch.Generator] = None,
        noise: Optional[list[Tensor]] = None,
    ) -> Tensor:
        """L^n(x) at t = t_{i-1}, per dimension (sec. 6.11), by Monte Carlo over y ~ p_S(. | x; alpha_i)
        (``noise``: the draws of :meth:`loss_noise`, if already drawn).

        ``official`` (the default, as the released code and the paper's numbers): the receiver is a
        product over the K coordinates of 1-D mixtures sum_k p(k) N(y_a | alpha (K delta_ka - 1), alpha K).
        For coordinate a only two means occur (alpha (K-1) when k = a, -alpha otherwise), so each
        mixture is p_a N(y_a | alpha (K-1)) + (1 - p_a) N(y_a | -alpha): O(K), not O(K^2).

        ``exact``: the paper's receiver sum_k p(k) N(y | alpha (K e_k - 1), alpha K I).

        With y_a = sender mean + s e_a, s = sqrt(alpha K), the sender's own component is the one
        whose mean y was drawn around, and the log-ratio of the other component's density to it is
        r_a = -alpha K / 2 + sign_a s e_a (sign -1 at the data's class x, +1 elsewhere). Coordinate a
        then costs -log((1 - w_a) + w_a e^(r_a)), w_a the weight of the other component (1 - p_x at x,
        p_a elsewhere); the exact receiver costs -log(p_x + sum_(k != x) p_k e^(r_k + r_x)). Both are
        computed from r directly (see :func:`log_mean_exp_shift`: no difference of two large
        log-densities, no rounding multiplied by n), and the zero-mean first-order term
        s sum_a w_a sign_a e_a is added back as a control variate, so that the variance of the
        estimate stays bounded as n grows while its expectation is unchanged.
        """
        k = self.n_classes
        i = t * n_steps + 1  # t = (i - 1)/n
        alpha = self.step_alpha(i, n_steps).expand_as(x).unsqueeze(-1)
        scale = (alpha * k).sqrt()
        is_x = F.one_hot(x.long(), k).bool()
        sign = torch.where(is_x, -1.0, 1.0)
        # Mixture weights as torch.distributions (and so the official code) uses them: floored at
        # eps and renormalised. log_rest: the log of the total weight of the other classes.
        clamped = dist.probs.clamp(min=MIX_EPS, max=1 - MIX_EPS)
        total_weight = clamped.sum(-1, keepdim=True)
        log_p = clamped.log() - total_weight.log()
        log_rest = (total_weight - clamped).log() - total_weight.log()
        log_other = torch.where(is_x, log_rest, log_p)  # log w_a
        log_own = torch.where(is_x, log_p, log_rest)  # log (1 - w_a)
        total = torch.zeros_like(x, dtype=torch.float32)
        for e in noise if noise is not None else self.loss_noise(x, generator):
            r = -0.5 * alpha * k + sign * scale * e
            first_order = (log_other.exp() * sign * scale * e).sum(-1)
            if self.discrete_time_kl == "official":
                pair_w = torch.stack([log_own, log_other], -1)
                pair_d = torch.stack([torch.zeros_like(r), r], -1)
                log_receiver_ratio = log_mean_exp_shift(pair_w, pair_d).sum(-1)
            else:
                r_x = (r * is_x).sum(-1, keepdim=True)
                d = torch.where(is_x, torch.zeros_like(r), r + r_x)
                log_receiver_ratio = log_mean_exp_shift(log_p, d)
            total = total + first_order - log_receiver_ratio
        return n_steps * total / self.kl_samples

    @staticmethod
    def reconstruction_loss(x: Tensor, dist: OutputDist) -> Tensor:
        """-log p_O(x | theta, 1), per dimension (sec. 6.10)."""
        return -dist.log_prob(x)
