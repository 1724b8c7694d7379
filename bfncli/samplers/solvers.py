"""Fast samplers: multistep exponential integrators of the BFN's probability-flow ODE and SDE.

The input parameters of a BFN follow z_t = a(t) v + s(t) eps (see gaussian_form.py); in
lambda = log(a/s) the exact solution from s to t of the probability-flow ODE, in data-prediction form,
is (Lu et al. 2022, DPM-Solver++, eq. 9; Xue et al. 2024, BFN-Solver, for BFNs)

    z_t = (s_t / s_s) z_s + a_t int_0^h e^-(h - u) v_hat(lambda_s + u) du,          h = lambda_t - lambda_s

and of the reverse SDE whose transitions are the paper's Bayesian updates (Xue et al. 2024, sec. 4;
DPM-Solver++ SDE, Lu et al. 2022, eq. 13, and the identity in gaussian_form.py)

    z_t = (s_t / s_s) e^-h z_s + a_t int_0^h 2 e^-2(h - u) v_hat(lambda_s + u) du + s_t sqrt(1 - e^-2h) eps.

v_hat along the step is a Taylor polynomial in lambda whose derivatives come from the network's
predictions at the previous steps (multistep: one network evaluation per step), so the integrals
are exact for it (``exponential_integrals``). Order 1 is DDIM-like for the ODE and, for the SDE, the
paper's sampler with the expected data in place of a sampled one; order 2 the multistep BFN-Solver++2
(with exact phi-weights instead of DPM-Solver++(2M)'s midpoint approximation); order 3 adds the
curvature from a quadratic through three predictions (as DPM-Solver++(3M) / UniPC's predictors).

N network evaluations (``steps``) happen at a grid t_0 = eta < ... < t_{N-1} = 1; the N - 1 steps
between them use the evaluations at their starts, and the evaluation at t = 1 gives the result: the
mode of the output distribution (as in the paper's sampler), so no evaluation is wasted on a
denoising step of its own. Conditioning and guidance happen inside ``model.predict`` (see
conditioning.py): the solvers never see them.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from bfncli.samplers.gaussian_form import GaussianForm, Grid, exponential_integrals


@torch.inference_mode()
def ode(model, noise, steps: int, callback=None, *, order: int = 2, eta: Optional[float] = None,
        grid: Optional[Grid] = None) -> Tensor:
    """Probability-flow ODE, multistep, data prediction (BFN-Solver++ for order 2)."""
    return _multistep(model, noise, steps, callback, stochastic=False, order=order, eta=eta, grid=grid)


@torch.inference_mode()
def sde(model, noise, steps: int, callback=None, *, order: int = 2, eta: Optional[float] = None,
        grid: Optional[Grid] = None) -> Tensor:
    """Reverse SDE of the Bayesian updates, multistep, data prediction (SDE-BFN-Solver++ for order 2)."""
    return _multistep(model, noise, steps, callback, stochastic=True, order=order, eta=eta, grid=grid)


DEFAULT_ETA = {"continuous": 1e-2, "discrete": 1e-3}  # BFN-Solver's start times for images and text
# Time grids measured best by benchmarks/samplers.py: equal steps in lambda for continuous data; for
# discrete data equal steps in t (as the paper's sampler), since lambda = log t + const would spend
# most steps at t < 0.1, where beta = beta_1 t^2 has carried almost no information yet.
DEFAULT_GRID = {"continuous": "lambda", "discrete": "time"}


def smallest_eta(flow, data_shape) -> float:
    """The smallest start time the solvers can begin at in float32 (what the network and the state
    are computed in): t itself, a(t) and s(t) must be normal float32 numbers there. Below it the
    state underflows to 0 and the samples collapse to a few values."""
    form = GaussianForm(flow, tuple(data_shape))
    tiny = torch.finfo(torch.float32).tiny

    def fits(t: float) -> bool:
        try:
            return min(t, form.a(t), form.s(t)) >= tiny
        except (ValueError, OverflowError, ZeroDivisionError):
            return False

    low, high = 1e-300, 0.5  # fits(high); bisect in log space
    for _ in range(100):
        mid = math.sqrt(low * high)
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high


def _multistep(model, noise, steps: int, callback, stochastic: bool, order: int, eta: Optional[float],
               grid: Optional[Grid]) -> Tensor:
    if steps < 2:
        raise ValueError("the ODE/SDE solvers need at least 2 network evaluations")
    if order not in (1, 2, 3):
        raise ValueError("solver order must be 1, 2 or 3")
    form = GaussianForm(model.flow, tuple(model.data_shape))
    kind = "discrete" if form.discrete else "continuous"
    eta = DEFAULT_ETA[kind] if eta is None else eta
    grid = grid or DEFAULT_GRID[kind]
    if not 0 < eta < 1:
        raise ValueError("eta must lie in (0, 1)")
    b, device = len(noise), noise.device
    times = form.grid(eta, steps, grid)
    z = form.initial_state(eta, noise, None if form.discrete else model.prior_prediction(b, device))
    z = z.to(device).reshape(b, *model.data_shape, *((model.flow.n_classes,) if form.discrete else ()))
    history: list[tuple[float, Tensor]] = []  # (lambda, v_hat) of the latest evaluations, newest last
    for i, t in enumerate(times):
        params = form.network_input(z)
        dist = model.predict(params, torch.full((b,), t, device=device))
        if callback is not None:
            callback(i + 1, t, params, dist)
        if i == steps - 1:
            return dist.mode.reshape(b, *model.data_shape)
        history = (history + [(form.lam(t), form.data_prediction(dist).reshape(z.shape))])[-order:]
        eps = noise.normal(*z.shape[1:]).to(z.device, z.dtype) if stochastic else None
        z = step(form, z, t, times[i + 1], history, eps)
    raise AssertionError("unreachable")


def step(form: GaussianForm, z: Tensor, t: float, t_next: float, history: list[tuple[float, Tensor]],
         eps: Optional[Tensor] = None) -> Tensor:
    """One step from t to t_next, with the data predictions ``history`` [(lambda, v_hat), ...] (the
    last one at t); ``eps``, standard normal like z, makes it a step of the SDE, None of the ODE."""
    h = form.lam(t_next) - form.lam(t)
    c0, c1, c2 = exponential_integrals(h, noise=eps is not None)
    slope, second = _derivatives(history)
    drift = c0 * history[-1][1]
    if slope is not None:
        drift = drift + c1 * slope
    if second is not None:
        drift = drift + c2 * second
    ratio = form.s(t_next) / form.s(t) * (math.exp(-h) if eps is not None else 1.0)
    z_next = ratio * z + form.a(t_next) * drift
    if eps is not None:
        z_next = z_next + form.s(t_next) * math.sqrt(c0) * eps
    return z_next


def _derivatives(history: list[tuple[float, Tensor]]) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """dv/dlambda and d^2v/dlambda^2 at the newest point, from the polynomial through the history."""
    if len(history) == 1:
        return None, None
    (l1, v1), (l0, v0) = history[-2], history[-1]
    slope = (v0 - v1) / (l0 - l1)
    if len(history) == 2:
        return slope, None
    l2, v2 = history[-3]
    curvature = (slope - (v1 - v2) / (l1 - l2)) / (l0 - l2)  # the quadratic's leading coefficient
    return slope + curvature * (l0 - l1), 2 * curvature
