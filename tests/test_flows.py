"""The paper's mathematics: closed forms, limits, exact predictions, normalisation, parity with the
official formulas, and bounded memory."""

import math

import pytest
import torch
import torch.distributions as D
import torch.nn.functional as F

from bfncli.flows import Bernoulli, Categorical, ContinuousFlow, Delta, DiscreteFlow, DiscretizedNormal
from bfncli.flows import distributions as dist_mod


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------ continuous data
def test_n_updates_land_on_the_flow_distribution_at_t1():
    """Posterior after n sender updates ~ p_F(. | x; 1): precision 1/sigma_1^2, mean ~ N(g x, g(1-g))."""
    flow = ContinuousFlow(min_variance=1e-3, output="delta")
    x = torch.full((200_000,), 0.4)
    n = 25
    mu, rho = flow.prior(x.shape)
    g = gen(1)
    for i in range(1, n + 1):
        alpha = flow.step_alpha(i, n)
        mu, rho = flow.update(mu, rho, flow.sender_sample(x, alpha, g), alpha)
    assert rho == pytest.approx(1 / 1e-3, rel=1e-9)
    gamma = flow.gamma(torch.tensor(1.0)).item()
    ref = flow.flow_sample(x, torch.ones(()), gen(2))
    assert mu.mean().item() == pytest.approx(gamma * 0.4, abs=2e-4)
    assert mu.var().item() == pytest.approx(gamma * (1 - gamma), rel=0.02)
    assert ref.mean().item() == pytest.approx(gamma * 0.4, abs=2e-4)
    assert ref.var().item() == pytest.approx(gamma * (1 - gamma), rel=0.02)


def test_flow_at_intermediate_t_matches_partial_updates():
    flow = ContinuousFlow(min_variance=1e-6, output="delta")
    n, m = 10, 4  # after m of n steps the flow is at t = m/n
    x = torch.full((100_000,), -0.3)
    mu, rho = flow.prior(x.shape)
    g = gen(3)
    for i in range(1, m + 1):
        alpha = flow.step_alpha(i, n)
        mu, rho = flow.update(mu, rho, flow.sender_sample(x, alpha, g), alpha)
    gamma = flow.gamma(torch.tensor(m / n)).item()
    assert 1 - 1 / rho == pytest.approx(gamma, rel=1e-6)  # gamma is float32
    assert mu.mean().item() == pytest.approx(gamma * -0.3, abs=3e-3)
    assert mu.var().item() == pytest.approx(gamma * (1 - gamma), rel=0.03)


def test_noise_prediction_recovers_the_data_from_the_true_noise():
    flow = ContinuousFlow(min_variance=1e-6, output="delta")
    x = torch.rand(1000) * 2 - 1
    t = torch.rand(1000) * 0.98 + 0.01
    gamma = flow.gamma(t)
    eps = torch.randn(1000, generator=gen(4))
    mu = gamma * x + (gamma * (1 - gamma)).sqrt() * eps
    dist = flow.output_distribution(eps.unsqueeze(-1), mu, t)
    torch.testing.assert_close(dist.mean, x.clamp(-1, 1), atol=1e-4, rtol=0)
    # Below t = 1e-6 the prediction is 0 (std 1), whatever the network says.
    tiny = flow.output_distribution(torch.randn(5, 1), torch.randn(5), torch.zeros(5))
    assert torch.all(tiny.mean == 0)
    flow_d = ContinuousFlow(min_variance=1e-6, output="discretized_normal", num_bins=256)
    d = flow_d.output_distribution(torch.randn(5, 2), torch.randn(5), torch.zeros(5))
    assert torch.all(d.loc == 0) and torch.all(d.scale == 1)


def test_continuous_losses_vanish_for_an_exact_prediction():
    flow = ContinuousFlow(min_variance=1e-6, output="delta")
    x = torch.rand(64) * 2 - 1
    t = torch.rand(64)
    exact = Delta(x.clone())
    assert torch.all(flow.continuous_time_loss(x, exact, t) == 0)
    ti = torch.randint(0, 10, (64,)) / 10
    assert torch.all(flow.discrete_time_loss(x, exact, ti, 10) == 0)


def test_discretized_reconstruction_is_near_zero_for_a_sharp_correct_prediction():
    flow = ContinuousFlow(min_variance=1e-3, output="discretized_normal", num_bins=16)
    centres = dist_mod.bin_centres(16)
    x = centres[torch.randint(0, 16, (500,), generator=gen(5))]
    sharp = DiscretizedNormal(x, torch.full_like(x, 1e-3), 16)
    assert flow.reconstruction_loss(x, sharp).abs().max().item() < 1e-6
    wrong = DiscretizedNormal(-x, torch.full_like(x, 1e-3), 16)
    assert flow.reconstruction_loss(x, wrong).min().item() > 10


def test_discrete_time_loss_averages_to_continuous_time_loss_for_a_fixed_delta_prediction():
    """For a prediction that does not depend on t both equal |x - x_hat|^2 (sigma_1^-2 - 1) / 2, for any n."""
    flow = ContinuousFlow(min_variance=1e-3, output="delta")
    x, pred = torch.tensor([0.5]), Delta(torch.tensor([0.3]))
    closed_form = 0.2**2 * (1 / 1e-3 - 1) / 2
    for n in (1, 10, 1000):
        steps = [flow.discrete_time_loss(x, pred, torch.tensor([(i - 1) / n]), n).item() for i in range(1, n + 1)]
        assert sum(steps) / n == pytest.approx(closed_form, rel=1e-4)
    ts = (torch.arange(100_000) + 0.5) / 100_000
    continuous = flow.continuous_time_loss(torch.full_like(ts, 0.5), Delta(torch.full_like(ts, 0.3)), ts).mean()
    assert continuous.item() == pytest.approx(closed_form, rel=1e-4)


def _stratified_times(numel, n):
    return (torch.arange(numel) % n) / n  # every step i equally often


def test_discretized_discrete_time_loss_approaches_continuous_time_loss():
    flow = ContinuousFlow(min_variance=1e-2, output="discretized_normal", num_bins=16, kl_samples=4)
    x = dist_mod.bin_centres(16)[torch.randint(0, 16, (100_000,), generator=gen(6))]
    pred = DiscretizedNormal(x + 0.1, torch.full_like(x, 0.1), 16)
    # E_t of the continuous-time loss for a t-independent prediction, in closed form.
    continuous = ((x - pred.mean) ** 2).mean().item() * (1 / 1e-2 - 1) / 2
    g = gen(7)
    error = {n: abs(flow.discrete_time_loss(x, pred, _stratified_times(x.numel(), n), n, g).mean().item()
                    - continuous) / continuous for n in (3, 100)}
    assert error[3] > 0.1  # few steps cost noticeably more ...
    assert error[100] < 0.05  # ... and many steps approach L^inf


# -------------------------------------------------------------------------- discrete data
@pytest.mark.parametrize("k", [2, 5, 27])
def test_discrete_n_updates_land_on_the_flow_distribution_at_t1(k):
    flow = DiscreteFlow(n_classes=k, max_sqrt_beta=1.0)
    n = 20
    assert sum(flow.step_alpha(i, n) for i in range(1, n + 1)) == pytest.approx(flow.beta_1)
    x = torch.randint(0, k, (40_000,), generator=gen(8))
    theta = flow.prior(x.shape)
    g = gen(9)
    for i in range(1, n + 1):
        theta = flow.update(theta, flow.sender_sample(x, flow.step_alpha(i, n), g))
    ref = flow.flow_sample(x, torch.ones(x.shape), gen(10))
    p_true = theta.gather(-1, x.unsqueeze(-1)).squeeze(-1)
    p_true_ref = ref.gather(-1, x.unsqueeze(-1)).squeeze(-1)
    assert p_true.mean().item() == pytest.approx(p_true_ref.mean().item(), abs=0.01)
    assert p_true.std().item() == pytest.approx(p_true_ref.std().item(), abs=0.01)


def test_discrete_update_stays_on_the_simplex():
    flow = DiscreteFlow(n_classes=27, max_sqrt_beta=0.75)
    theta = flow.prior((8, 32))
    x = torch.randint(0, 27, (8, 32))
    for i in range(1, 11):
        theta = flow.update(theta, flow.sender_sample(x, flow.step_alpha(i, 10)))
        torch.testing.assert_close(theta.sum(-1), torch.ones(8, 32))
        assert torch.all(theta >= 0)


def test_discrete_flow_guards():
    flow = DiscreteFlow(n_classes=4, max_sqrt_beta=2.0)
    x = torch.randint(0, 4, (10,))
    theta = flow.flow_sample(x, torch.zeros(10))
    assert torch.all(theta == 0.25)
    assert torch.isfinite(flow.flow_sample(x, torch.ones(10))).all()


def test_k2_network_input_is_the_official_encoding():
    flow = DiscreteFlow(n_classes=2, max_sqrt_beta=3.0)
    theta = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    torch.testing.assert_close(flow.net_input(theta), torch.tensor([-0.5, 1.0]))


def test_discrete_losses_vanish_for_an_exact_prediction():
    flow = DiscreteFlow(n_classes=5, max_sqrt_beta=1.0)
    x = torch.randint(0, 5, (100,))
    exact = Categorical(torch.where(F.one_hot(x, 5).bool(), 0.0, -1e4))
    t = torch.rand(100)
    assert flow.continuous_time_loss(x, exact, t).abs().max() < 1e-6
    ti = torch.randint(0, 10, (100,)) / 10
    assert flow.discrete_time_loss(x, exact, ti, 10).abs().max() < 1e-3
    assert flow.reconstruction_loss(x, exact).abs().max() < 1e-6


def _official_discrete_kl(flow, x, probs, t, n, seed):
    """The released code's receiver, written with torch.distributions: a brute-force reference.

    Returns the official estimate, and the zero-mean control variate bfn adds to it from the same
    draws: sum_a w_a sign_a e_a sqrt(alpha K), w_a = 1 - p_x at the data's class x and p_a elsewhere,
    sign_a = -1 at x and +1 elsewhere, e the sender's standard normal noise."""
    torch.manual_seed(seed)
    k = flow.n_classes
    alpha = flow.step_alpha(t * n + 1, n).unsqueeze(-1)
    sender = D.Normal(alpha * (k * F.one_hot(x, k) - 1), (k * alpha).sqrt())
    classes = torch.arange(k).unsqueeze(0)
    components = D.Normal(alpha.unsqueeze(-1) * (k * F.one_hot(classes, k) - 1), (k * alpha.unsqueeze(-1)).sqrt())
    receiver = D.MixtureSameFamily(D.Categorical(probs=probs.unsqueeze(-2)), components)
    is_x = F.one_hot(x, k).bool()
    weights = torch.where(is_x, 1 - probs.gather(-1, x.unsqueeze(-1)), probs)
    sign = torch.where(is_x, -1.0, 1.0)
    total, control = 0, 0
    for _ in range(flow.kl_samples):
        y = sender.sample()
        total = total + (sender.log_prob(y) - receiver.log_prob(y)).sum(-1)
        control = control + (weights * sign * (y - sender.mean)).sum(-1)
    return n * total / flow.kl_samples, n * control / flow.kl_samples


@pytest.mark.parametrize("k", [2, 5, 27])
def test_discrete_time_loss_matches_the_official_formula(k):
    flow = DiscreteFlow(n_classes=k, max_sqrt_beta=1.0, kl_samples=4)
    x = torch.randint(0, k, (300,), generator=gen(11))
    logits = torch.randn(300, k, generator=gen(12)) * 2
    dist = Categorical(logits) if k > 2 else Bernoulli(logits[:, 1] - logits[:, 0])
    t = torch.randint(0, 10, (300,), generator=gen(13)) / 10
    # Same noise: our sampler draws y = mean + std * randn, as torch's Normal.sample does.
    torch.manual_seed(14)
    ours = flow.discrete_time_loss(x, dist, t, 10)
    ref, control = _official_discrete_kl(flow, x, dist.probs, t, 10, 14)
    # Draw for draw, ours is the official estimate plus a term of mean zero (it has less variance).
    torch.testing.assert_close(ours, ref + control, rtol=1e-4, atol=1e-4)
    assert (ours - ref).abs().max() > 1e-2  # the control variate is really there


def test_exact_mixture_kl_option_differs_slightly_and_is_never_larger_in_expectation():
    # The paper's receiver is a K-dimensional mixture; the official one a product of 1-D mixtures.
    x = torch.randint(0, 5, (20_000,), generator=gen(15))
    dist = Categorical(torch.randn(20_000, 5, generator=gen(16)))
    t = torch.full((20_000,), 0.5)
    official = DiscreteFlow(5, 1.0, kl_samples=4).discrete_time_loss(x, dist, t, 10, gen(17)).mean().item()
    exact = DiscreteFlow(5, 1.0, kl_samples=4, discrete_time_kl="exact").discrete_time_loss(x, dist, t, 10, gen(17))
    exact = exact.mean().item()
    assert exact != pytest.approx(official, rel=1e-3)
    assert abs(exact - official) / official < 0.1


def test_discrete_discrete_time_loss_approaches_continuous_time_loss():
    flow = DiscreteFlow(n_classes=5, max_sqrt_beta=1.0, kl_samples=4)
    x = torch.randint(0, 5, (100_000,), generator=gen(18))
    dist = Categorical(torch.randn(100_000, 5, generator=gen(19)))
    continuous = flow.continuous_time_loss(x, dist, torch.full(x.shape, 0.5)).mean().item()  # E_t: t -> 1/2
    g = gen(20)
    error = {n: abs(flow.discrete_time_loss(x, dist, _stratified_times(x.numel(), n), n, g).mean().item()
                    - continuous) / continuous for n in (3, 100)}
    assert error[3] > 0.1
    assert error[100] < 0.03


# --------------------------------------------------------------------- output distributions
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("bins", [2, 16, 256])
def test_discretized_normal_probabilities_sum_to_one(clip, bins):
    mean = torch.randn(500, generator=gen(21))
    std = torch.rand(500, generator=gen(22)) * 2 + 1e-3
    p = DiscretizedNormal(mean, std, bins, clip=clip).probs
    assert p.shape == (500, bins)
    torch.testing.assert_close(p.sum(-1), torch.ones(500), atol=1e-5, rtol=0)
    assert torch.all(p >= -1e-7)


def test_discretized_normal_matches_the_official_form():
    """Bin masses from CDF differences with open end bins; log p falls back to the density below 1e-5."""
    bins = 16
    mean = torch.randn(400, generator=gen(23)) * 0.7
    std = torch.rand(400, generator=gen(24)) * 0.2
    d = DiscretizedNormal(mean, std, bins)
    normal = D.Normal(mean, std.clamp(1e-3, 10))
    edges = torch.arange(1, bins) * 2 / bins - 1
    cdf = normal.cdf(edges.unsqueeze(-1)).T
    ref = torch.diff(torch.cat([torch.zeros(400, 1), cdf, torch.ones(400, 1)], -1), dim=-1)
    torch.testing.assert_close(d.probs, ref)
    x = dist_mod.bin_centres(bins)[torch.randint(0, bins, (400,), generator=gen(25))]
    idx = dist_mod.bin_index(x, bins)
    p = ref.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    expected = torch.where(p < 1e-5, normal.log_prob(x) + math.log(2 / bins), p.clamp(min=1e-10).log())
    torch.testing.assert_close(d.log_prob(x), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(d.mean, (ref * dist_mod.bin_centres(bins)).sum(-1))


def test_categorical_and_bernoulli_normalise_and_agree():
    logits = torch.randn(100, 7)
    c = Categorical(logits)
    torch.testing.assert_close(c.probs.sum(-1), torch.ones(100))
    torch.testing.assert_close(c.log_probs.exp(), c.probs)
    b = Bernoulli(torch.randn(100))
    torch.testing.assert_close(b.probs.sum(-1), torch.ones(100))
    as_categorical = Categorical(torch.stack([torch.zeros(100), b.logits], -1))
    x = torch.randint(0, 2, (100,))
    torch.testing.assert_close(b.log_prob(x), as_categorical.log_prob(x))


def test_samples_follow_the_distribution():
    b = Bernoulli(torch.full((200_000,), math.log(3)))  # p = 0.75
    assert b.sample(gen(26)).float().mean().item() == pytest.approx(0.75, abs=0.01)
    c = Categorical(torch.log(torch.tensor([0.1, 0.2, 0.7])).expand(100_000, 3))
    counts = torch.bincount(c.sample(gen(27)), minlength=3) / 100_000
    torch.testing.assert_close(counts, torch.tensor([0.1, 0.2, 0.7]), atol=0.01, rtol=0)
    d = DiscretizedNormal(torch.full((100_000,), 0.1), torch.full((100_000,), 0.2), 16)
    s = d.sample(gen(28))
    assert set(torch.unique(s).tolist()) <= set(dist_mod.bin_centres(16).tolist())
    assert s.mean().item() == pytest.approx(d.mean[0].item(), abs=0.005)


# ------------------------------------------------------------------------------ memory
def test_256_bin_quantities_are_computed_in_bounded_chunks(monkeypatch):
    """The (elements x 256) intermediates never exceed the chunk budget, and chunking changes nothing."""
    flow = ContinuousFlow(min_variance=1e-6, output="discretized_normal", num_bins=256, kl_samples=2)
    x = dist_mod.bin_centres(256)[torch.randint(0, 256, (4, 3, 8, 8), generator=gen(29))]
    pred = flow.output_distribution(torch.randn(4, 3, 8, 8, 2, generator=gen(30)), x * 0.9, torch.full((4, 1, 1, 1), 0.7))
    t = torch.full((4, 1, 1, 1), 0.3)
    whole = flow.discrete_time_loss(x, pred, t, 10, gen(31))
    whole_mean = pred.mean

    seen = []
    original = DiscretizedNormal._probs_flat

    def spy(self, loc, scale):
        seen.append(loc.numel() * self.num_bins)
        return original(self, loc, scale)

    monkeypatch.setattr(dist_mod, "CHUNK_ELEMENTS", 256 * 100)
    monkeypatch.setattr(DiscretizedNormal, "_probs_flat", spy)
    chunked = flow.discrete_time_loss(x, pred, t, 10, gen(31))
    assert max(seen) <= 256 * 100 and len(seen) > 2
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(pred.mean, whole_mean)


@pytest.mark.parametrize("a, b", [((2, 3), (3,)), ((2, 1, 4), (5, 1)), ((), (2,)), ((0, 1), (1, 3)), ((1,), (0,)),
                                  ((4, 1, 1), (1,)), ((7, 2), (7, 2))])
def test_broadcast_shape_is_torchs(a, b):
    assert dist_mod.broadcast_shape(a, b) == torch.broadcast_shapes(a, b)


def test_shapes_that_do_not_broadcast_are_refused():
    with pytest.raises(RuntimeError, match="do not broadcast"):
        dist_mod.broadcast_shape((2, 3), (4, 3))
