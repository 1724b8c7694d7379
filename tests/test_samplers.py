"""The paper's sampler, checked against the paper's equations with networks whose answer we know."""


import pytest
import torch
from torch import nn

from bfncli.config import resolve_config
from bfncli.flows.distributions import bin_centres
from bfncli.model import BFN
from bfncli.samplers import Condition, SampleNoise, ancestral
from bfncli.samplers.known_data import text_condition


class ImageOracle(nn.Module):
    """A network that always predicts the image ``target`` (noise parameterisation, sharp std)."""

    def __init__(self, flow, target, params_per_dim=2):
        super().__init__()
        self.flow, self.target, self.p = flow, target, params_per_dim

    def forward(self, mu, t):
        t = t.clamp(min=1e-6)
        gamma = self.flow.gamma(t)
        eps = (mu - gamma * self.target) / (gamma * (1 - gamma)).sqrt()
        log_std = torch.full_like(eps, -10.0)
        out = torch.stack([eps, log_std][: self.p], -1)
        return out.reshape(mu.shape[0], -1, mu.shape[-1], self.p)


class ClassOracle(nn.Module):
    """A network that always predicts the classes ``target`` with high confidence."""

    def __init__(self, target, k):
        super().__init__()
        self.target, self.k = target, k

    def forward(self, inputs, t):
        logits = 20.0 * torch.nn.functional.one_hot(self.target, self.k).float() - 10.0
        logits = logits.expand(inputs.shape[0], *logits.shape)
        if self.k == 2:  # one logit per dimension: class 1 vs class 0
            return (logits[..., 1] - logits[..., 0]).reshape(inputs.shape[0], -1, 1, 1)
        return logits


def test_samples_converge_to_what_the_network_predicts_discretized():
    cfg = resolve_config("default", environ={})
    target = bin_centres(16)[torch.randint(0, 16, (8, 8, 1), generator=torch.Generator().manual_seed(0))]
    model = BFN(cfg, net=ImageOracle(None, target))
    model.net.flow = model.flow
    samples = ancestral(model, SampleNoise(0, 0, 5), steps=50)
    assert samples.shape == (5, 8, 8, 1)
    torch.testing.assert_close(samples, target.expand(5, 8, 8, 1))


def test_samples_converge_to_what_the_network_predicts_delta():
    cfg = resolve_config("default", sets=["output.kind=delta", "network.output_adapter.output_height=1"], environ={})
    target = torch.rand(8, 8, 1, generator=torch.Generator().manual_seed(1)) * 2 - 1
    model = BFN(cfg, net=ImageOracle(None, target, params_per_dim=1))
    model.net.flow = model.flow
    samples = ancestral(model, SampleNoise(0, 0, 3), steps=20)
    torch.testing.assert_close(samples, target.expand(3, 8, 8, 1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("preset,k", [("text8-tiny", 27), ("mnist-tiny", 2)])
def test_samples_converge_to_what_the_network_predicts_discrete(preset, k):
    cfg = resolve_config(preset, environ={})
    shape = (32,) if k == 27 else (28, 28, 1)
    target = torch.randint(0, k, shape, generator=torch.Generator().manual_seed(2))
    model = BFN(cfg, net=ClassOracle(target, k))
    samples = ancestral(model, SampleNoise(0, 0, 4), steps=30)
    assert torch.equal(samples, target.expand(4, *shape))


def test_input_distribution_after_n_steps_is_the_flow_at_t1():
    """With a network that knows x, n sampler steps give mu ~ N(gamma(1) x, gamma(1)(1 - gamma(1)))."""
    cfg = resolve_config("default", sets=["output.kind=delta", "network.output_adapter.output_height=1"], environ={})
    x = torch.full((8, 8, 1), 0.3)
    model = BFN(cfg, net=ImageOracle(None, x, params_per_dim=1))
    model.net.flow = model.flow
    final = {}

    def record(i, t, params, dist):
        final["mu"] = params

    ancestral(model, SampleNoise(5, 0, 400), steps=25, callback=record)
    gamma = 1 - cfg.flow.min_variance
    mu = final["mu"]
    assert mu.mean().item() == pytest.approx(gamma * 0.3, abs=2e-3)
    assert mu.var().item() == pytest.approx(gamma * (1 - gamma), rel=0.05)


def test_chunking_does_not_change_the_samples():
    torch.manual_seed(0)
    cfg = resolve_config("text8-tiny", environ={})
    model = BFN(cfg).eval()  # the real (random) transformer: examples do not interact
    whole = ancestral(model, SampleNoise(3, 0, 6), steps=5)
    parts = torch.cat([ancestral(model, SampleNoise(3, first, n), steps=5) for first, n in ((0, 4), (4, 2))])
    assert torch.equal(whole, parts)
    other_seed = ancestral(model, SampleNoise(4, 0, 6), steps=5)
    assert not torch.equal(whole, other_seed)


def test_prompt_and_template_are_kept_exactly():
    torch.manual_seed(0)
    cfg = resolve_config("text8-tiny", environ={})
    model = BFN(cfg).eval()
    condition = text_condition("in the beginning", None, 32)
    samples = ancestral(model, SampleNoise(0, 0, 3), steps=5, condition=condition)
    alphabet = "_abcdefghijklmnopqrstuvwxyz"
    for row in samples:
        assert "".join(alphabet[i] for i in row[:16]) == "in_the_beginning"
    template = text_condition(None, "the ??? sat", 32)
    samples = ancestral(model, SampleNoise(0, 0, 2), steps=5, condition=template)
    for row in samples:
        text = "".join(alphabet[i] for i in row[:11])
        assert text[:4] == "the_" and text[7:] == "_sat"


def test_known_pixels_are_kept_and_the_rest_is_generated():
    cfg = resolve_config("default", environ={})
    target = bin_centres(16)[torch.randint(0, 16, (8, 8, 1), generator=torch.Generator().manual_seed(0))]
    model = BFN(cfg, net=ImageOracle(None, target))
    model.net.flow = model.flow
    known = torch.zeros(8, 8, 1, dtype=torch.bool)
    known[:4] = True
    values = torch.full((8, 8, 1), -1 + 1 / 16)  # the darkest bin where known
    samples = ancestral(model, SampleNoise(0, 0, 2), steps=40, condition=Condition(values, known))
    assert torch.equal(samples[:, :4], values[:4].expand(2, 4, 8, 1))
    torch.testing.assert_close(samples[:, 4:], target[4:].expand(2, 4, 8, 1))


def test_bad_prompts_are_refused():
    from bfncli.errors import UserError

    with pytest.raises(UserError, match="outside the model's alphabet"):
        text_condition("Hello!", None, 32)
    with pytest.raises(UserError, match="has 40 characters but the model's sequences have 32"):
        text_condition("a" * 40, None, 32)
    with pytest.raises(UserError, match="not both"):
        text_condition("a", "b", 32)


@pytest.mark.parametrize("steps,frames", [(100, 20), (19, 20), (1000, 20), (5, 3), (100, 2)])
def test_trajectory_records_exactly_the_frames_asked_for(steps, frames):
    """--frames 20 records 20 frames (rounding used to merge early ones), first step and final prediction included."""
    from bfncli.jobs.sample import _frame_steps

    chosen = _frame_steps(steps, frames)
    assert len(chosen) == min(frames, steps + 1)
    assert min(chosen) == 1 and max(chosen) == steps + 1
