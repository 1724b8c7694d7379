"""The n-step message as a random walk on a lattice (paper secs. 4.7, 6.8; Bit-Swap order).

The sender samples of step i are y_i ~ N(alpha_i m(x), alpha_i v): for discrete data each
coordinate of y (m = K e_x - 1, v = K; sec. 6.3); for continuous and discretized data alpha_i y_i
(m = x, v = 1; sec. 4.3). Their running sum S_i = sum_{j<=i} y_j is all the receiver's input
parameters depend on: theta_i = softmax(S_i) (sec. 6.4 from the uniform prior) or
mu_i = S_i / (1 + beta_i) (sec. 4.2 from the prior N(0, 1)), with beta_i = sum_{j<=i} alpha_j.

Given x, S is a Gaussian random walk, S_i ~ N(beta_i m, beta_i v), whose bridge
S_{i-1} | S_i ~ N(beta_{i-1}/beta_i S_i, v beta_{i-1} alpha_i / beta_i) does not depend on x. So
the sender's joint q(S_1..S_n | x) = q(S_n | x) prod_i q(S_{i-1} | S_i), and the code runs in
Bit-Swap order (Kingma, Abbeel & Ho 2019): it needs initial bits for S_n alone, not for n steps.

Each S_i lives on its own lattice of width delta_i (the smallest standard deviation that codes it,
over the resolution R), as integers j with S_i = delta_i j. A pop (the sender's q) takes its value
from a window of +-6 standard deviations around its own mean, so that the coder's floor
probability never hands out a far-fetched value; the push of the same variable (the receiver's
p_R, which cannot know the sender's mean) uses a window just wide enough to hold every value such
a pop can produce. constriction gives each symbol of a window one unit of its 24-bit precision, so
the two windows' difference in size costs (difference) / 2^24 nats a coordinate and step: small
windows keep that far below 1% of the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

POP_SIGMAS = 6.0  # a pop's window: this many standard deviations each side of its mean
REACH_SIGMAS = 7.0  # how far (in the sender's own terms) a sum may stray for the receiver's window
RESOLUTION = 16  # lattice points per standard deviation of the narrowest distribution of a variable


@dataclass(frozen=True)
class Walk:
    n: int
    coords: int  # coordinates per data dimension: K for discrete data, 1 otherwise
    v: float  # variance of one unit of accuracy: K (discrete) or 1
    alphas: np.ndarray  # alpha_1..alpha_n at index 1..n (index 0 unused)
    betas: np.ndarray  # beta_0..beta_n
    deltas: np.ndarray  # lattice widths delta_1..delta_n (index 0: S_0 = 0, width 1)
    resolution: float
    discrete: bool

    # ---------------------------------------------------------------- in lattice units
    def final(self, m: np.ndarray) -> tuple[np.ndarray, float, int]:
        """q(S_n | x): mean and std of j_n for sender means m, and the pop's window."""
        n = self.n
        std = math.sqrt(self.v * self.betas[n]) / self.deltas[n]
        return self.betas[n] * m / self.deltas[n], std, pop_window(std)

    def bridge(self, j: np.ndarray, i: int) -> tuple[np.ndarray, float, int]:
        """q(S_{i-1} | S_i) for i >= 2: mean and std of j_{i-1} given j_i, and the pop's window."""
        b0, b1 = self.betas[i - 1], self.betas[i]
        std = math.sqrt(self.v * b0 * self.alphas[i] / b1) / self.deltas[i - 1]
        return (b0 / b1) * j * self.deltas[i] / self.deltas[i - 1], std, pop_window(std)

    def receiver(self, prev: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray, float, int]:
        """p_R(S_i | S_{i-1}) in j_i's units: its window centre, the offset of S_{i-1}, std, window.

        The window holds S_i - S_{i-1} for any S_{i-1} the bridge can pop given S_i: S_i alpha_i/beta_i
        (alpha_i m plus the sender's noise) within the pop's window, and alpha_i m within the spread
        of the components around their middle."""
        a, d = self.alphas[i], self.deltas[i]
        base = prev * self.deltas[i - 1] / d if i > 1 else np.zeros_like(prev, dtype=np.float64)
        middle = a * (self.coords - 2) / 2 if self.discrete else 0.0
        sigma = math.sqrt(self.v * a)
        spread = a * (self.coords if self.discrete else 2.0)
        pop = (self.bridge(np.zeros(1), i)[2] + 1) * self.deltas[i - 1] if i > 1 else 0.0
        reach = REACH_SIGMAS * sigma * math.sqrt(a / self.betas[i]) + spread / 2 + pop
        return np.round(base + middle / d).astype(np.int64), base, sigma / d, int(math.ceil(reach / d)) + 2

    def t(self, i: int) -> float:
        return i / self.n


def pop_window(std: float) -> int:
    return int(math.ceil(POP_SIGMAS * std)) + 1


def make_walk(flow, n: int, discrete: bool, resolution: float = RESOLUTION) -> Walk:
    """The walk of a model's flow for n steps."""
    alphas = np.array([0.0] + [float(flow.step_alpha(i, n)) for i in range(1, n + 1)])
    if discrete:
        k, v = flow.n_classes, float(flow.n_classes)
        betas = np.array([flow.beta_1 * i * i / n**2 for i in range(n + 1)])
    else:
        k, v = 1, 1.0
        betas = np.array([flow.min_variance ** (-i / n) - 1 for i in range(n + 1)])
    deltas = np.ones(n + 1)
    for i in range(1, n + 1):
        stds = [math.sqrt(v * alphas[i])]  # the receiver of S_i
        if i < n:
            stds.append(math.sqrt(v * betas[i] * alphas[i + 1] / betas[i + 1]))  # the bridge to S_i
        deltas[i] = min(stds) / resolution
    return Walk(n, k, v, alphas, betas, deltas, resolution, discrete)
