"""The paper's sampler (sec. 3.8): n Bayesian updates, then the mode of the output distribution.

For i = 1..n: t = (i-1)/n; the network turns the input parameters into p_O; draw a sample of it;
send it through the sender distribution with accuracy alpha_i; update the input parameters by
Bayes' rule (pseudocode of secs. 4.9, 5.5, 6.13). At t = 1 return the mode of p_O: n + 1 network
evaluations in all. In the terms of solvers.py it is a first-order solver of the reverse SDE with a
sample of p_O where the SDE has its mean (Xue et al. 2024).

Conditioning (known data, classes, guidance) lives in the model's predict() (see conditioning.py):
for known dimensions the drawn sample is the known value, so their input parameters follow exactly
the Bayesian flow of the known data.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from bfncli.flows import DiscreteFlow
from bfncli.samplers.conditioning import Condition, ConditionedModel
from bfncli.samplers.noise import SampleNoise

# (evaluation i = 1.., its time t, the network's input parameters, the output distribution)
StepCallback = Callable[[int, float, object, object], None]


def draw_output(dist, noise: SampleNoise, data_shape: tuple[int, ...]) -> Tensor:
    """A draw of p_O over (B, D), using the per-example noise streams."""
    d = math.prod(data_shape)
    kind = dist.noise_kind
    if kind is None:
        return dist.sample()
    return dist.sample(noise=noise.normal(d) if kind == "normal" else noise.uniform(d))


@torch.inference_mode()
def ancestral(
    model,
    noise: SampleNoise,
    steps: int,
    callback: Optional[StepCallback] = None,
    condition: Optional[Condition] = None,
) -> Tensor:
    """Draw ``len(noise)`` samples in the model's data layout (class indices or bin centres).

    ``condition`` is a shortcut for wrapping the model in a ConditionedModel with known data."""
    flow = model.flow
    b, shape = len(noise), tuple(model.data_shape)
    device = noise.device
    if condition is not None:
        model = ConditionedModel(model, b, condition, device=device)
    if isinstance(flow, DiscreteFlow):
        params = flow.prior((b, *shape), device)
    else:
        mu, rho = flow.prior((b, *shape), device)
        params = mu
    for i in range(1, steps + 1):
        t = (i - 1) / steps
        dist = model.predict(params, torch.full((b,), t, device=device))
        if callback is not None:
            callback(i, t, params, dist)
        x = draw_output(dist, noise, shape)
        alpha = flow.step_alpha(i, steps)
        if isinstance(flow, DiscreteFlow):
            y = flow.sender_sample(x, alpha, noise=noise.normal(x.shape[1], flow.n_classes))
            params = flow.update(params, y.reshape(*params.shape))
        else:
            y = flow.sender_sample(x, alpha, noise=noise.normal(x.shape[1]))
            mu, rho = flow.update(mu, rho, y.reshape(mu.shape), alpha)
            params = mu
    dist = model.predict(params, torch.ones(b, device=device))
    if callback is not None:
        callback(steps + 1, 1.0, params, dist)
    return dist.mode.reshape(b, *shape)
