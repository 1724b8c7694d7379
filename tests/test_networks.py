"""The networks: the released checkpoints' exact layouts, and the official outputs for given weights."""

import json

import pytest
import torch
import yaml
from conftest import CONFORMANCE, FIXTURES
from safetensors.torch import load_file

from bfncli.config import resolve_config
from bfncli.convert import official_to_config
from bfncli.model import make_network

PRESET_OF = {
    "mnist_discrete": "mnist",
    "cifar10_discretized_256bins": "cifar10-256d",
    "cifar10_discretized_16bins": "cifar10-16d",
    "cifar10_continuous_256bins": "cifar10-256c",
    "cifar10_continuous_16bins": "cifar10-16c",
    "text8_discrete": "text8",
}


@pytest.mark.parametrize("manifest_name", list(PRESET_OF))
def test_paper_presets_have_the_released_state_dict_layout(manifest_name):
    manifest = json.loads((CONFORMANCE / "manifests.json").read_text())[manifest_name]
    with torch.device("meta"):
        net = make_network(resolve_config(PRESET_OF[manifest_name], environ={}))
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    theirs = {k.removeprefix("net."): v for k, v in manifest["keys"].items()}
    assert ours == theirs
    assert sum(p.numel() for p in net.parameters()) == manifest["n_params"]


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_weights_give_the_official_outputs(name):
    official = yaml.safe_load((CONFORMANCE / name / "official_config.yaml").read_text())
    net = make_network(official_to_config(official)).eval()
    state = torch.load(CONFORMANCE / name / "official_ema.pt", weights_only=True)
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()}, strict=True)
    fixture = load_file(str(CONFORMANCE / name / "tensors.safetensors"))
    with torch.no_grad():
        out = net(fixture["net_inputs"], fixture["t"])
    expected = fixture["net_outputs"]
    # float32 with a different (but equivalent) order of operations: ~1e-6 of the output's scale.
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_transformer_weight_decay_groups():
    net = make_network(resolve_config("text8-tiny", environ={}))
    decay, no_decay = net.get_optim_groups(0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    n_decay = len(decay["params"])
    # Every linear weight decays (2 adapter linears + 4 per layer + lm_head); biases and norms do not.
    assert n_decay == 2 + 4 * 2 + 1
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))
