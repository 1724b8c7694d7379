"""A Bayesian flow seen as a Gaussian process z_t = a(t) v + s(t) eps, for the fast solvers.

Xue et al. (ICML 2024, "Unifying Bayesian Flow Networks and Diffusion Models through Stochastic
Differential Equations", BFN-Solver) show that the input parameters of a BFN follow such a process,
so the solvers of diffusion models apply (DPM-Solver++, Lu et al. 2022). Both flows fit one form:

continuous and discretized data (paper sec. 4.5): the state z is the mean mu of the input
    distribution, v = x the data, a(t) = gamma(t) = 1 - sigma_1^(2t), s(t)^2 = gamma (1 - gamma);
    the network sees mu itself.
discrete data (paper sec. 6.8): the state z is the logits y of the input distribution
    (theta = softmax(z)), v = K e_x - 1, a(t) = beta(t) = beta_1 t^2, s(t)^2 = K beta(t); the network
    sees softmax(z). Working on the logits keeps every update free of overflowing exponentials.

In both, lambda(t) = log(a / s) grows with t, and the data prediction v_hat = E[v | z_t] comes from
the output distribution: its mean for continuous data (the expected bin centre, or the delta
output's clipped x_hat), K p_hat - 1 for discrete data (p_hat its class probabilities).

The forward transition from s to t > s, given v, is exactly the Bayesian update of the paper
(sec. 4.4 / 6.4): z_t = (s_t/s_s) e^-h z_s + a_t (1 - e^-2h) v + s_t sqrt(1 - e^-2h) eps with
h = lambda_t - lambda_s. That identity is what makes the paper's sampler a first-order SDE solver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from bfncli.flows import DiscreteFlow

Grid = Literal["lambda", "time", "early", "accuracy"]


@dataclass(frozen=True)
class GaussianForm:
    """a(t), s(t), lambda(t) of a flow and the maps between solver state, network input and prediction."""

    flow: object
    data_shape: tuple[int, ...]

    @property
    def discrete(self) -> bool:
        return isinstance(self.flow, DiscreteFlow)

    # --------------------------------------------------------------------------- schedule
    def a(self, t: float) -> float:
        if self.discrete:
            return self.flow.beta_1 * t * t
        return -math.expm1(t * math.log(self.flow.min_variance))  # 1 - sigma_1^(2t), without cancellation

    def s(self, t: float) -> float:
        if self.discrete:
            return math.sqrt(self.flow.n_classes * self.flow.beta_1) * t
        gamma = self.a(t)
        return math.sqrt(gamma * self.flow.min_variance**t)

    def lam(self, t: float) -> float:
        """lambda(t) = log(a(t) / s(t)): half the log signal-to-noise ratio."""
        if self.discrete:
            return 0.5 * math.log(self.flow.beta_1 / self.flow.n_classes) + math.log(t)
        return 0.5 * (math.log(self.a(t)) - t * math.log(self.flow.min_variance))

    def t_of_lam(self, lam: float) -> float:
        """The inverse of lambda(t)."""
        if self.discrete:
            return math.exp(lam - 0.5 * math.log(self.flow.beta_1 / self.flow.n_classes))
        # gamma / (1 - gamma) = e^(2 lambda)  =>  1 - gamma = 1 / (1 + e^(2 lambda)) = sigma_1^(2t)
        return -math.log1p(math.exp(2 * lam)) / math.log(self.flow.min_variance)

    def grid(self, eta: float, points: int, kind: Grid = "lambda") -> list[float]:
        """``points`` times from eta to 1, equally spaced in: lambda (the solvers' natural clock: equal
        steps in log signal-to-noise), t (the paper's sampler), sqrt(t) (denser early), or the
        accuracy a(t) (beta_1 t^2 or gamma(t): equal amounts of information, denser late)."""
        if kind not in ("lambda", "time", "early", "accuracy"):
            raise ValueError(f"unknown time grid {kind!r}")
        if points == 1:
            return [1.0]
        u = [i / (points - 1) for i in range(points)]
        if kind == "time":
            out = [eta + (1 - eta) * x for x in u]
        elif kind == "early":
            out = [(math.sqrt(eta) + (1 - math.sqrt(eta)) * x) ** 2 for x in u]
        elif kind == "accuracy":
            lo, hi = self.a(eta), self.a(1.0)
            out = [self.t_of_a(lo + (hi - lo) * x) for x in u]
        else:
            lo, hi = self.lam(eta), self.lam(1.0)
            out = [self.t_of_lam(lo + (hi - lo) * x) for x in u]
        out[0], out[-1] = eta, 1.0
        return out

    def t_of_a(self, a: float) -> float:
        """The inverse of a(t)."""
        if self.discrete:
            return math.sqrt(a / self.flow.beta_1)
        return math.log1p(-a) / math.log(self.flow.min_variance)

    # ------------------------------------------------------------------------- the state
    def network_input(self, z: Tensor) -> Tensor:
        """What the model's predict() takes: mu, or theta = softmax of the logits."""
        return torch.softmax(z, -1) if self.discrete else z

    def data_prediction(self, dist) -> Tensor:
        """v_hat, shaped like the state: the output distribution's mean, or K p_hat - 1."""
        if self.discrete:
            return self.flow.n_classes * dist.probs - 1
        return dist.mean

    def state_shape(self, batch: int) -> tuple[int, ...]:
        d = math.prod(self.data_shape)
        return (batch, d, self.flow.n_classes) if self.discrete else (batch, d)

    def initial_state(self, eta: float, noise, dist_at_zero=None) -> Tensor:
        """z at t = eta: s(eta) eps, plus a(eta) times a draw of the output distribution at t = 0
        (the network's guess before any information, e.g. N(0, 1) bins for noise-predicting
        networks), as the paper's first step would add. None: that term is left out, i.e. replaced
        by its prior mean 0: negligible for discrete data, where a(eta) = beta_1 eta^2; for a
        continuous network that predicts the data directly (none of the paper's configs) the
        solver then starts from a slightly narrower state than the flow's."""
        b = len(noise)
        if self.discrete:
            return self.s(eta) * noise.normal(*self.state_shape(b)[1:])
        z = self.s(eta) * noise.normal(self.state_shape(b)[1])
        if dist_at_zero is not None:
            from bfncli.samplers.paper import draw_output

            z = z + self.a(eta) * draw_output(dist_at_zero, noise, self.data_shape).to(z.device, z.dtype)
        return z


def exponential_integrals(h: float, noise: bool) -> tuple[float, float, float]:
    """The weights c0, c1, c2 of v_hat, d v_hat/d lambda and d^2 v_hat/d lambda^2 (all at the step's
    start) in one step of length h in lambda of the data-prediction exponential integrator:

    ODE (probability flow, DPM-Solver++):  int_0^h e^-(h - u) u^k / k! du
    SDE (noise from the Bayesian update): int_0^h 2 e^-2(h - u) u^k / k! du

    computed with expm1 so that small steps lose no digits."""
    if noise:
        c0 = -math.expm1(-2 * h)
        c1 = h - c0 / 2
        c2 = h * h / 2 - c1 / 2
    else:
        c0 = -math.expm1(-h)
        c1 = h - c0
        c2 = h * h / 2 - c1
    return c0, c1, c2
