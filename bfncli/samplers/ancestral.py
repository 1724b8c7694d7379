"""The paper's sampler (sec. 3.8): n Bayesian updates, then the mode of the output distribution.

For i = 1..n: t = (i-1)/n; the network turns the input parameters into p_O; draw a sample of it;
send it through the sender distribution with accuracy alpha_i; update the input parameters by
Bayes' rule. At t = 1 return the mode of p_O.

Conditioning (inpainting, prompts): for the known dimensions the sender is fed the known data
instead of a sample of p_O. Their input parameters then follow exactly the Bayesian flow of the
known data (the distribution the network saw for every dimension in training) rather than being
clamped to values the network never saw; the unknown dimensions are generated given them. The
known values are written into the final result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from bfncli.flows import DiscreteFlow
from bfncli.flows.distributions import Bernoulli, Categorical, Delta, DiscretizedNormal
from bfncli.samplers.noise import SampleNoise


@dataclass
class Condition:
    """Known data: ``values`` in the model's data layout, ``known`` True where a value is given."""

    values: Tensor  # (*data_shape) or (B, *data_shape)
    known: Tensor  # bool, same shape


StepCallback = Callable[[int, object, object], None]  # (step i, input parameters, output distribution)


def _sample_output(dist, noise: SampleNoise, data_shape: tuple[int, ...]) -> Tensor:
    """A draw of p_O over (B, D), using the per-example noise streams."""
    d = int(torch.tensor(data_shape).prod())
    if isinstance(dist, (Bernoulli, Categorical)):
        return dist.sample(noise=noise.uniform(d))
    if isinstance(dist, DiscretizedNormal):
        return dist.sample(noise=noise.normal(d) if dist.noise_kind == "normal" else noise.uniform(d))
    assert isinstance(dist, Delta)
    return dist.sample()


@torch.inference_mode()
def ancestral(
    model,
    noise: SampleNoise,
    steps: int,
    callback: Optional[StepCallback] = None,
    condition: Optional[Condition] = None,
) -> Tensor:
    """Draw ``len(noise)`` samples in the model's data layout (class indices or bin centres)."""
    flow = model.flow
    b, shape = len(noise), tuple(model.data_shape)
    device = noise.device
    flat = (b, -1)
    known = values = None
    if condition is not None:
        known = condition.known.to(device).expand(b, *shape).reshape(flat)
        values = condition.values.to(device).expand(b, *shape).reshape(flat)

    if isinstance(flow, DiscreteFlow):
        params = flow.prior((b, *shape), device)
    else:
        mu, rho = flow.prior((b, *shape), device)
        params = mu
    for i in range(1, steps + 1):
        t = torch.full((b,), (i - 1) / steps, device=device)
        dist = model.predict(params, t)
        if callback is not None:
            callback(i, params, dist)
        x = _sample_output(dist, noise, shape)
        if known is not None:
            x = torch.where(known, values.to(x.dtype), x)
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
        callback(steps + 1, params, dist)
    out = dist.mode
    if known is not None:
        out = torch.where(known, values.to(out.dtype), out)
    return out.reshape(b, *shape)
