"""The n-step loss must approach the continuous-time loss from above as n grows, at any n.

The network here is Bayes-optimal for a data set of two examples: given the input distribution at
time t it predicts the exact posterior over the two. For such a predictor the n-step loss is a
left Riemann sum of a decreasing error, so it lies above the continuous-time loss and falls
towards it. In float32 the Monte Carlo KL of the discretized and discrete losses used to lose its
digits for large n (``bfn eval --steps 100000`` reported a negative loss).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from bfncli.flows import ContinuousFlow, DiscreteFlow
from bfncli.flows.distributions import Categorical, Delta, DiscretizedNormal, bin_centres

N = 4000  # examples per estimate


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _two_points_continuous(bins=16, dims=32):
    centres = bin_centres(bins)
    return centres[torch.randint(0, bins, (2, dims), generator=_gen(0))]


def _continuous_prediction(flow, points, mu, t, output):
    """p_O from the exact posterior over the two points given mu ~ N(gamma x, gamma (1 - gamma))."""
    gamma = flow.gamma(t.clamp(min=1e-6))  # at t = 0 the posterior is the prior, 1/2 each
    var = gamma * (1 - gamma)
    log_w = torch.stack([-(mu - gamma * p).square().sum(-1) / (2 * var.squeeze(-1)) for p in points], -1)
    w = torch.softmax(log_w, -1)
    mean = w @ points
    if output == "delta":
        return Delta(mean)
    spread = (w[:, :1] * w[:, 1:] * (points[0] - points[1]).square()).sqrt()
    return DiscretizedNormal(mean, spread.clamp(min=1e-3), points.numel() and 16)


def _continuous_losses(output, n_values, kl_samples=1):
    flow = ContinuousFlow(min_variance=1e-3, output=output, num_bins=16, kl_samples=kl_samples)
    points = _two_points_continuous()
    which = torch.randint(0, 2, (N,), generator=_gen(1))
    x = points[which]
    out = {}
    for n in n_values:
        g = _gen(2 + n % 1000)
        t = (torch.randint(0, n, (N, 1), generator=g) / n) if n else torch.rand(N, 1, generator=g)
        mu = flow.flow_sample(x, t, g)
        dist = _continuous_prediction(flow, points, mu, t, output)
        per_example = (flow.discrete_time_loss(x, dist, t, n, g) if n else flow.continuous_time_loss(x, dist, t))
        per_example = per_example.mean(-1)
        out[n] = (per_example.mean().item(), per_example.std().item() / math.sqrt(N))
    return out


def _two_points_discrete(k, dims=16):
    return torch.randint(0, k, (2, dims), generator=_gen(3))


def _discrete_losses(k, n_values, kl="official"):
    flow = DiscreteFlow(n_classes=k, max_sqrt_beta=1.5 if k == 2 else 1.0, kl_samples=1, discrete_time_kl=kl)
    points = _two_points_discrete(k)
    x = points[torch.randint(0, 2, (N,), generator=_gen(4))]
    onehot = F.one_hot(points, k).float()  # (2, D, K)
    out = {}
    for n in n_values:
        g = _gen(5 + n % 1000)
        t = (torch.randint(0, n, (N, 1), generator=g) / n) if n else torch.rand(N, 1, generator=g)
        theta = flow.flow_sample(x, t, g)
        # theta is the posterior of each dimension under a uniform prior: the posterior over the two
        # points is proportional to the product of their dimensions' probabilities.
        log_w = torch.stack([(theta.clamp(min=1e-30).log() * o).sum((-1, -2)) for o in onehot], -1)
        w = torch.softmax(log_w, -1)
        probs = torch.einsum("bp,pdk->bdk", w, onehot).clamp(min=1e-12)
        dist = Categorical(probs.log())
        if n:
            per_example = flow.discrete_time_loss(x, dist, t, n, g)
        else:
            per_example = flow.continuous_time_loss(x, dist, t)
        per_example = per_example.mean(-1)
        out[n] = (per_example.mean().item(), per_example.std().item() / math.sqrt(N))
    return out


def _assert_approaches_from_above(losses, large):
    cont, cont_err = losses[0]
    steps = sorted(n for n in losses if n)
    for n in steps:
        mean, err = losses[n]
        noise = 4 * math.hypot(err, cont_err)
        assert mean > 0, (n, losses)
        assert mean > cont - noise, (n, losses)  # never below the limit
    for small, big in zip(steps, steps[1:]):
        noise = 4 * math.hypot(losses[small][1], losses[big][1])
        assert losses[big][0] < losses[small][0] + noise, (small, big, losses)  # more steps, no worse
    for n in large:
        assert abs(losses[n][0] - cont) < 4 * math.hypot(losses[n][1], cont_err) + 0.02 * cont, (n, losses)


def test_delta_output_n_step_loss_falls_to_the_continuous_time_loss():
    losses = _continuous_losses("delta", [0, 3, 30, 300, 3000, 100_000])
    assert losses[3][0] > 1.5 * losses[0][0]  # few steps cost clearly more
    _assert_approaches_from_above(losses, large=[100_000])


def test_discretized_output_n_step_loss_stays_sound_at_large_n():
    losses = _continuous_losses("discretized_normal", [0, 1000, 10_000, 100_000, 1_000_000])
    _assert_approaches_from_above(losses, large=[100_000, 1_000_000])


@pytest.mark.parametrize("k,kl", [(2, "official"), (27, "official"), (27, "exact")])
def test_discrete_n_step_loss_falls_to_the_continuous_time_loss(k, kl):
    losses = _discrete_losses(k, [0, 10, 100, 1000, 100_000, 1_000_000], kl)
    assert losses[10][0] > losses[0][0] + 4 * math.hypot(losses[10][1], losses[0][1])
    _assert_approaches_from_above(losses, large=[100_000, 1_000_000])


class FixedOutput(torch.nn.Module):
    """A network whose output does not depend on the precision it runs in: a stored float32 tensor."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, t, classes=None):
        return self.out.expand(x.shape[0], *self.out.shape[1:])


def test_losses_are_float32_under_mixed_precision():
    # Under autocast the flow's mathematics (here `probs @ centres` of the 256-bin discretized normal)
    # must not drop to bf16/fp16: with a network whose output autocast cannot change, every loss is the
    # float32 one, bit for bit (without the float32 regions the continuous-time loss here is 7.85
    # under bf16 instead of 7.16).
    from bfncli.config import resolve_config
    from bfncli.model import BFN

    cfg = resolve_config("cifar10-256d", environ={})
    out = torch.randn(1, 32 * 32 * 3, 2, generator=_gen(7)) * 0.5  # noise prediction and log-std per dimension
    model = BFN(cfg, net=FixedOutput(out))
    x = bin_centres(256)[torch.randint(0, 256, (8, 32, 32, 3), generator=_gen(8))]

    def losses():
        return torch.stack([model.loss(x, 0, _gen(9)), model.loss(x, 10, _gen(10)), model.reconstruction_loss(x, _gen(11))])

    full = losses()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = losses()
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, full), (mixed, full)
