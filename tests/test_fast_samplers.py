"""The ODE/SDE solvers: each step against its closed form, whole runs against the exact flow of a
network whose prediction is known, and what every sampler must honour (known data, chunking)."""

import math

import pytest
import torch
from torch import nn

from bfncli.config import resolve_config
from bfncli.flows.distributions import bin_centres
from bfncli.model import BFN
from bfncli.samplers import SAMPLERS, Condition, ConditionedModel, SampleNoise
from bfncli.samplers.gaussian_form import GaussianForm, exponential_integrals
from bfncli.samplers.solvers import ode, sde, step

DELTA = ["output.kind=delta", "network.output_adapter.output_height=1"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _form(preset, sets=()):
    cfg = resolve_config(preset, sets=list(sets), environ={})
    model = BFN(cfg)
    return GaussianForm(model.flow, tuple(model.data_shape))


# ------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("preset", ["default", "cifar10-256d", "text8-tiny", "mnist-tiny"])
def test_the_gaussian_form_is_the_flow(preset):
    form = _form(preset)
    flow = form.flow
    for t in (1e-3, 0.01, 0.3, 0.77, 1.0):
        if form.discrete:
            assert form.a(t) == pytest.approx(flow.beta_1 * t * t)
            assert form.s(t) ** 2 == pytest.approx(flow.n_classes * flow.beta_1 * t * t)
        else:
            gamma = flow.gamma(torch.tensor(t, dtype=torch.float64)).item()
            assert form.a(t) == pytest.approx(gamma, rel=1e-12)
            assert form.s(t) ** 2 == pytest.approx(gamma * (1 - gamma), rel=1e-9)
        assert form.lam(t) == pytest.approx(math.log(form.a(t) / form.s(t)))
        assert form.t_of_lam(form.lam(t)) == pytest.approx(t, rel=1e-9)
        assert form.t_of_a(form.a(t)) == pytest.approx(t, rel=1e-9)
    for kind in ("lambda", "time", "early", "accuracy"):
        grid = form.grid(1e-3, 7, kind)
        assert grid[0] == 1e-3 and grid[-1] == 1.0 and all(a < b for a, b in zip(grid, grid[1:]))
    lams = [form.lam(t) for t in form.grid(1e-3, 6, "lambda")]
    steps = [b - a for a, b in zip(lams, lams[1:])]
    assert max(steps) == pytest.approx(min(steps), rel=1e-6)


# ------------------------------------------------------------------------- one step, exactly
def _quadrature(h, poly, noise):
    """int_0^h k(h - u) poly(u) du by Simpson's rule on 20001 points (k = e^-x, or 2 e^-2x)."""
    n = 20000
    u = torch.linspace(0, h, n + 1, dtype=torch.float64)
    kernel = 2 * torch.exp(-2 * (h - u)) if noise else torch.exp(-(h - u))
    f = kernel * poly(u)
    weights = torch.ones(n + 1, dtype=torch.float64)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    return (f * weights).sum().item() * h / (3 * n)


@pytest.mark.parametrize("noise", [False, True])
def test_exponential_integrals_are_the_integrals(noise):
    for h in (1e-4, 0.05, 0.7, 3.0):
        c0, c1, c2 = exponential_integrals(h, noise)
        for coefficient, poly in ((c0, lambda u: u**0), (c1, lambda u: u), (c2, lambda u: u**2 / 2)):
            assert coefficient == pytest.approx(_quadrature(h, poly, noise), rel=1e-7, abs=1e-15)


@pytest.mark.parametrize("preset", ["default", "text8-tiny"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("noisy", [False, True])
def test_a_step_is_exact_for_predictions_polynomial_in_lambda(preset, order, noisy):
    """With v_hat(lambda) a polynomial of degree order - 1 and the previous predictions on it, one step
    equals the exact solution z_t = (s_t/s_s)[e^-h] z_s + a_t int k(h - u) v_hat(lambda_s + u) du."""
    form = _form(preset)
    g = _gen(order)
    shape = (3, 5, form.flow.n_classes) if form.discrete else (3, 5)
    coeffs = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(order)]

    def v_hat(lam):
        return sum(c * lam**k for k, c in enumerate(coeffs))

    times = [0.21, 0.35, 0.5, 0.62]  # the step is from times[2] to times[3]
    history = [(form.lam(t), v_hat(form.lam(t))) for t in times[3 - order:3]]
    z = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64) if noisy else None
    got = step(form, z, times[2], times[3], history, eps)

    lam_s, lam_t = form.lam(times[2]), form.lam(times[3])
    h = lam_t - lam_s
    decay = math.exp(-h) if noisy else 1.0
    expected = form.s(times[3]) / form.s(times[2]) * decay * z
    for index in range(z.numel()):  # the integral, one coordinate at a time
        coordinate = [c.reshape(-1)[index].item() for c in coeffs]
        integral = _quadrature(h, lambda u: sum(c * (lam_s + u) ** k for k, c in enumerate(coordinate)), noisy)
        expected.view(-1)[index] += form.a(times[3]) * integral
    if noisy:
        expected += form.s(times[3]) * math.sqrt(-math.expm1(-2 * h)) * eps
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)


def test_a_first_order_sde_step_with_the_data_is_the_bayesian_update():
    """The identity that makes the paper's sampler a first-order SDE solver (continuous and discrete)."""
    for preset in ("default", "text8-tiny"):
        form = _form(preset)
        flow = form.flow
        g = _gen(3)
        s, t = 0.3, 0.45
        if form.discrete:
            x = torch.randint(0, flow.n_classes, (4, 6), generator=g)
            v = flow.n_classes * torch.nn.functional.one_hot(x, flow.n_classes).double() - 1
            z = torch.randn(4, 6, flow.n_classes, generator=g, dtype=torch.float64)
            eps = torch.randn(z.shape, generator=g, dtype=torch.float64)
            alpha = form.a(t) - form.a(s)  # beta(t) - beta(s)
            expected = z + alpha * v + math.sqrt(alpha * flow.n_classes) * eps  # y added to the logits
        else:
            x = torch.rand(4, 6, generator=g, dtype=torch.float64) * 2 - 1
            v = x
            z = torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.3
            eps = torch.randn(z.shape, generator=g, dtype=torch.float64)
            rho_s, rho_t = 1 / (1 - form.a(s)), 1 / (1 - form.a(t))  # rho = 1/(1 - gamma)
            alpha = rho_t - rho_s
            mu, _ = flow.update(z, rho_s, x + eps / math.sqrt(alpha), alpha)  # y ~ N(x, 1/alpha)
            expected = mu
        got = step(form, z, s, t, [(form.lam(s), v)], eps)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ whole runs, known flows
class DataOracle(nn.Module):
    """Predicts the data ``target``: continuous (noise parameterisation, delta or sharp discretized
    output) or discrete (confident logits)."""

    def __init__(self, target, flow=None, params=1, k=None):
        super().__init__()
        self.target, self.flow, self.p, self.k = target, flow, params, k

    def forward(self, inputs, t):
        b = inputs.shape[0]
        if self.k:
            logits = 30.0 * torch.nn.functional.one_hot(self.target, self.k).float() - 15.0
            logits = logits.expand(b, *logits.shape)
            return logits if self.k > 2 else (logits[..., 1] - logits[..., 0]).reshape(b, -1, 1, 1)
        t = t.clamp(min=1e-6)
        gamma = self.flow.gamma(t)
        eps = (inputs - gamma * self.target) / (gamma * (1 - gamma)).sqrt()
        out = torch.stack([eps, torch.full_like(eps, -10.0)][: self.p], -1)
        return out.reshape(b, -1, inputs.shape[-1], self.p)


def _image_model(sets=DELTA, params=1, seed=0):
    cfg = resolve_config("default", sets=list(sets), environ={})
    target = bin_centres(16)[torch.randint(0, 16, (8, 8, 1), generator=_gen(seed))]
    model = BFN(cfg, net=DataOracle(target, params=params))
    model.net.flow = model.flow
    return model, target


def _text_model(preset="text8-tiny", k=27, seed=1):
    cfg = resolve_config(preset, environ={})
    shape = (32,) if k == 27 else (28, 28, 1)
    target = torch.randint(0, k, shape, generator=_gen(seed))
    return BFN(cfg, net=DataOracle(target, k=k)), target


def test_the_ode_carries_the_start_along_the_exact_flow_of_the_known_data():
    """With v_hat = x at every t the ODE's solution is z_t = (s_t/s_eta) z_eta + (a_t - a_eta s_t/s_eta) x."""
    for model, target in (_image_model(), _text_model()):
        form = GaussianForm(model.flow, tuple(model.data_shape))
        seen = []
        out = ode(model, SampleNoise(0, 0, 3), 9, lambda i, t, params, dist: seen.append((t, params.clone())))
        assert len(seen) == 9 and seen[0][0] == pytest.approx(1e-3 if form.discrete else 1e-2) and seen[-1][0] == 1.0
        if form.discrete:
            v = (model.flow.n_classes * torch.nn.functional.one_hot(target, model.flow.n_classes) - 1).double()
            states = [torch.log(p.double()) for _, p in seen]  # softmax loses the logits' mean: compare centred
        else:
            v = target.double()
            states = [p.double() for _, p in seen]
        t0, z0 = seen[0][0], states[0]
        for (t, _), z in zip(seen[1:], states[1:]):
            ratio = form.s(t) / form.s(t0)
            expected = ratio * z0 + (form.a(t) - form.a(t0) * ratio) * v
            if form.discrete:
                expected, z = expected - expected.mean(-1, keepdim=True), z - z.mean(-1, keepdim=True)
            torch.testing.assert_close(z, expected.expand_as(z), rtol=1e-4, atol=2e-3)
        torch.testing.assert_close(out, target.expand(3, *target.shape).to(out.dtype), atol=1e-4, rtol=0)


def test_the_sde_lands_on_the_flow_distribution_at_t1():
    """With v_hat = x the SDE's steps are the Bayesian updates: at t = 1, mu ~ N(gamma_1 x, gamma_1 (1 - gamma_1))."""
    model, _ = _image_model()
    x = 0.3
    model.net.target = torch.full((8, 8, 1), x)
    final = {}
    sde(model, SampleNoise(5, 0, 300), 12, lambda i, t, params, dist: final.update(mu=params))
    gamma = 1 - model.cfg.flow.min_variance
    assert final["mu"].mean().item() == pytest.approx(gamma * x, abs=3e-3)
    assert final["mu"].var().item() == pytest.approx(gamma * (1 - gamma), rel=0.06)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_finds_what_the_network_predicts(name):
    for model, target in (_image_model(DELTA), _image_model([], params=2), _text_model(), _text_model("mnist-tiny", 2)):
        out = SAMPLERS[name].run(model, SampleNoise(0, 0, 3), 6)
        torch.testing.assert_close(out, target.expand(3, *target.shape).to(out.dtype), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_known_data_is_kept_and_chunks_do_not_change_samples(name):
    torch.manual_seed(0)
    for preset, known_part in (("text8-tiny", slice(0, 10)), ("default", slice(0, 4))):
        cfg = resolve_config(preset, environ={})
        model = BFN(cfg).eval()  # a real (random) network: examples do not interact
        shape = tuple(model.data_shape)
        values = torch.randint(0, 27, shape) if model.discrete else bin_centres(16)[torch.randint(0, 16, shape)]
        known = torch.zeros(shape, dtype=torch.bool)
        known[known_part] = True
        condition = Condition(values, known)

        def draw(first, count):
            conditioned = ConditionedModel(model, count, condition)
            return SAMPLERS[name].run(conditioned, SampleNoise(3, first, count), 5)

        whole = draw(0, 5)
        assert torch.equal(whole[:, known], values[known].expand(5, -1).to(whole.dtype))
        parts = torch.cat([draw(0, 3), draw(3, 2)])
        assert torch.equal(whole, parts), name
        assert not torch.equal(whole[:, ~known], whole[:1, ~known].expand(5, -1))  # the rest is generated


def test_solvers_refuse_bad_settings():
    model, _ = _image_model()
    with pytest.raises(ValueError, match="at least 2"):
        ode(model, SampleNoise(0, 0, 1), 1)
    with pytest.raises(ValueError, match="eta"):
        sde(model, SampleNoise(0, 0, 1), 5, eta=1.5)
