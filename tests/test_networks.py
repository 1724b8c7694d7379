"""The networks against the official implementation: its outputs for given weights (conformance
fixtures) and the exact state-dict layout of the released checkpoints (manifests)."""

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from bfncli.networks import build_network

CONFORMANCE = Path(__file__).parent / "conformance"
FIXTURES = ["mnist", "cifar10_discretized_256bins", "text8"]

NET_KINDS = {"UNetVDM": "unet_vdm", "UNetModel": "unet_improved", "GPT": "transformer"}
ADAPTER_KINDS = {"FourierImageInputAdapter": "fourier_image", "TextInputAdapter": "text", "OutputAdapter": "output"}


def build_from_official(model: dict) -> torch.nn.Module:
    """Our network from an official config's ``model:`` section."""

    def adapter(section):
        return None if section is None else (ADAPTER_KINDS[section["class_name"]], section["parameters"])

    return build_network(NET_KINDS[model["net"]["class_name"]], model["net"]["parameters"],
                         adapter(model["input_adapter"]), adapter(model["output_adapter"]))


def official_model(name: str) -> dict:
    return yaml.safe_load((CONFORMANCE / name / "official_config.yaml").read_text())["model"]


def fixture_network(name: str) -> torch.nn.Module:
    net = build_from_official(official_model(name))
    state = torch.load(CONFORMANCE / name / "official_ema.pt", weights_only=True)
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()}, strict=True)
    return net


# The `model:` sections of the official configs/*.yaml behind the released checkpoints.
def _cifar10(output_height: int) -> dict:
    return {
        "net": {"class_name": "UNetVDM", "parameters": {
            "embedding_dim": 128, "n_blocks": 32, "n_attention_heads": 1, "dropout_prob": 0.1, "norm_groups": 32,
            "input_channels": 3, "use_fourier_features": True, "attention_everywhere": False, "image_size": 32}},
        "input_adapter": {"class_name": "FourierImageInputAdapter", "parameters": {
            "input_channels": 3, "input_shape": [32, 32], "output_height": 3, "add_pos_feats": False,
            "add_mask": False}},
        "output_adapter": {"class_name": "OutputAdapter", "parameters": {
            "input_height": 131, "output_channels": 3, "output_height": output_height}},
    }


FULL_SIZE = {
    "mnist_discrete": {
        "net": {"class_name": "UNetModel", "parameters": {
            "image_size": 28, "in_channels": 2, "model_channels": 128, "out_channels": 128, "num_res_blocks": 2,
            "attention_resolutions": [8, 16], "dropout": 0.5, "channel_mult": [1, 2, 2], "conv_resample": True,
            "dims": 2, "num_heads": 4, "num_heads_upsample": -1, "project_input": True, "skip": True}},
        "input_adapter": {"class_name": "FourierImageInputAdapter", "parameters": {
            "input_channels": 1, "input_shape": [28, 28], "output_height": 2, "add_pos_feats": False}},
        "output_adapter": {"class_name": "OutputAdapter", "parameters": {
            "input_height": 256, "output_channels": 1, "output_height": 1}},
    },
    # Discretized: mean and log-std per channel; continuous: the noise prediction alone.
    "cifar10_discretized_256bins": _cifar10(2),
    "cifar10_discretized_16bins": _cifar10(2),
    "cifar10_continuous_256bins": _cifar10(1),
    "cifar10_continuous_16bins": _cifar10(1),
    "text8_discrete": {
        "net": {"class_name": "GPT", "parameters": {
            "vocab_size": 27, "n_layer": 24, "n_head": 12, "n_embd": 768, "dropout": 0.0, "skip": True,
            "bias": True}},
        "input_adapter": {"class_name": "TextInputAdapter", "parameters": {
            "vocab_size": 27, "seq_len": 256, "output_size": 768, "learn_pos_embedding": False}},
        "output_adapter": None,
    },
}


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_weights_give_the_official_outputs(name):
    net = fixture_network(name).eval()
    tensors = load_file(str(CONFORMANCE / name / "tensors.safetensors"))
    with torch.no_grad():
        out = net(tensors["net_inputs"], tensors["t"])
        again = net(tensors["net_inputs"], tensors["t"])
    expected = tensors["net_outputs"]
    assert torch.equal(out, again)  # eval mode is deterministic
    # Same function in float32 with a different order of operations (fused attention instead of
    # einsum on pre-scaled q and k, nn.SiLU instead of x * sigmoid(x)): measured differences are
    # at most 2e-6 of the output's largest magnitude. Outputs near zero carry the same absolute
    # rounding error (elementwise relative errors reach 4e-4 on entries ~1e-2), so besides rtol
    # the absolute tolerance is 1e-5 of the output's largest magnitude.
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("name", FIXTURES)
def test_fixed_position_codes_are_the_official_ones(name):
    # Loading a checkpoint overwrites these buffers, so the output test cannot see them; a model
    # trained from scratch uses our own. The same float32 angles; their sines and cosines are rounded
    # from float64 (the same bits in every process) where torch's float32 sin is within an ulp of
    # them: equal to the last bit or the one before it.
    net = build_from_official(official_model(name))
    state = torch.load(CONFORMANCE / name / "official_ema.pt", weights_only=True)
    buffers = dict(net.named_buffers())
    assert buffers
    for key, buffer in buffers.items():
        assert torch.allclose(buffer, state[f"net.{key}"], rtol=2.5e-7, atol=1e-7), key
        assert (buffer != state[f"net.{key}"]).float().mean() < 0.05, key  # most of them to the bit


@pytest.mark.parametrize("name", list(FULL_SIZE))
def test_full_size_networks_have_the_released_state_dict_layout(name):
    manifest = json.loads((CONFORMANCE / "manifests.json").read_text())[name]
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        net = build_from_official(FULL_SIZE[name])
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    theirs = {k.removeprefix("net."): list(v) for k, v in manifest["keys"].items()}
    assert ours.keys() == theirs.keys(), (ours.keys() - theirs.keys(), theirs.keys() - ours.keys())
    assert ours == theirs
    assert sum(p.numel() for p in net.parameters()) == manifest["n_params"]


def test_full_size_mnist_unet_handles_28_pixel_images():
    # 28 -> 14 -> 7 and back: the odd 7x7 level. Narrow channels keep it fast.
    model = copy.deepcopy(FULL_SIZE["mnist_discrete"])
    model["net"]["parameters"].update(model_channels=32, out_channels=32)
    model["output_adapter"]["parameters"]["input_height"] = 64
    net = build_from_official(model).eval()
    out = net(torch.rand(2, 28, 28, 1), torch.full((2, 28, 28, 1), 0.3))
    assert out.shape == (2, 784, 1, 1) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["mnist", "cifar10_discretized_256bins"])
def test_dropout_acts_in_training_mode_only(name):
    net = fixture_network(name)
    tensors = load_file(str(CONFORMANCE / name / "tensors.safetensors"))
    x, t = tensors["net_inputs"][:4], tensors["t"][:4]
    with torch.no_grad():
        evaluated = net.eval()(x, t)
        net.train()
        torch.manual_seed(0)
        first = net(x, t)
        torch.manual_seed(0)
        repeated = net(x, t)
        other = net(x, t)
    assert torch.equal(first, repeated)  # seeded runs reproduce
    assert not torch.allclose(first, other)  # fresh masks
    assert not torch.allclose(first, evaluated)


def test_transformer_weight_decay_groups_follow_nanogpt():
    net = fixture_network("text8")
    decay, no_decay = net.get_optim_groups(0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = [names[id(p)] for p in decay["params"]]
    kept = [names[id(p)] for p in no_decay["params"]]
    linear_weights = {f"{m}.weight" for m, mod in net.named_modules() if isinstance(mod, torch.nn.Linear)}
    assert decayed == sorted(linear_weights)  # every linear weight, in name order
    assert kept == sorted(set(names.values()) - linear_weights)  # biases and layer-norm weights
    assert all(n.endswith(".bias") or ".ln_" in n for n in kept)

    model = official_model("text8")
    model["input_adapter"]["parameters"]["learn_pos_embedding"] = True
    _, no_decay = build_from_official(model).get_optim_groups(0.1)
    assert len(no_decay["params"]) == len(kept) + 1  # a learned position embedding does not decay


@pytest.mark.parametrize("change", [
    lambda m: m["net"]["parameters"].update(dims=3),
    lambda m: m["net"]["parameters"].update(num_classes=-1),  # 10 builds a class-conditional U-Net
    lambda m: m["net"]["parameters"].update(conv_resample=False),
    lambda m: m["net"]["parameters"].update(bogus=1),
    lambda m: m["input_adapter"]["parameters"].update(bogus=1),
    lambda m: m.update(output_adapter=None),
])
def test_unsupported_options_are_refused(change):
    model = official_model("mnist")
    change(model)
    with pytest.raises(ValueError):
        build_from_official(model)


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError):
        build_network("nope", {}, ("text", {"vocab_size": 2, "seq_len": 4}), None)
    with pytest.raises(ValueError):
        build_network("transformer", {"vocab_size": 2}, ("nope", {}), None)


def test_a_causal_transformer_cannot_skip():
    model = official_model("text8")
    model["net"]["parameters"]["is_causal"] = True
    with pytest.raises(ValueError):
        build_from_official(model)


def test_position_features_are_the_same_bits_in_every_process():
    """Issue 16 item 0: the fixed Fourier table is float64 libm values rounded once, not torch's float32
    sin (which once gave a resumed run another table than the uninterrupted one); checked against an
    independent computation here and in fresh processes with one and two threads."""
    import math
    import subprocess
    import sys

    from bfncli.networks.adapters import fourier_position_features

    h, w, n = 8, 32, 64
    table = fourier_position_features(h, w, n)
    # The official float32 angles, then each sine and cosine rounded once from float64: torch's float32
    # sin differs from these in the last bit here and there, so this fails for the old computation.
    rows, cols = torch.meshgrid(torch.linspace(-1.0, 1.0, h), torch.linspace(-1.0, 1.0, w), indexing="ij")
    coords = torch.stack([rows, cols], -1).reshape(-1, 2)
    bands = torch.stack([torch.linspace(1.0, h / 2, n), torch.linspace(1.0, w / 2, n)])
    angles = (math.pi * (coords.unsqueeze(-1) * bands).reshape(h * w, -1)).double()
    expected = torch.cat([angles.sin().float(), angles.cos().float(), coords], -1)
    assert torch.equal(table, expected)
    code = ("import sys, torch; torch.set_num_threads(int(sys.argv[1])); "
            "from bfncli.networks.adapters import fourier_position_features as f; "
            "sys.stdout.write(f(32, 32, 64).numpy().tobytes().hex())")
    digests = {subprocess.run([sys.executable, "-c", code, str(threads)], capture_output=True, text=True,
                              check=True).stdout for threads in (1, 2, 2)}
    assert digests == {fourier_position_features(32, 32, 64).numpy().tobytes().hex()}


def test_the_text_position_table_is_the_same_bits_in_every_process():
    """The transformer's sinusoid table is made like the Fourier one: float32 angles, float64 sines and
    cosines rounded once, on the CPU even inside a meta-device build."""
    import subprocess
    import sys

    from bfncli.networks.adapters import sinusoid_table

    length, dim = 64, 48
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    expected = torch.zeros(length, dim)
    expected[:, 0::2] = (pos / 1000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)).double().sin().float()
    expected[:, 1::2] = (pos / 1000.0 ** (torch.arange(1, dim, 2, dtype=torch.float32) / dim)).double().cos().float()
    assert torch.equal(sinusoid_table(length, dim), expected)
    with torch.device("meta"):
        assert sinusoid_table(length, dim).device.type == "cpu"
    code = ("import sys, torch; torch.set_num_threads(int(sys.argv[1])); "
            "from bfncli.networks.adapters import sinusoid_table as f; "
            "sys.stdout.write(f(128, 256).numpy().tobytes().hex())")
    digests = {subprocess.run([sys.executable, "-c", code, str(threads)], capture_output=True, text=True,
                              check=True).stdout for threads in (1, 2, 2)}
    assert digests == {sinusoid_table(128, 256).numpy().tobytes().hex()}


def test_dropout_masks_do_not_depend_on_the_memory_layout():
    from bfncli.networks.layout import NCHWDropout

    x = torch.randn(2, 8, 5, 5)
    drop = NCHWDropout(0.5).train()
    torch.manual_seed(0)
    nchw = drop(x)
    torch.manual_seed(0)
    nhwc = drop(x.contiguous(memory_format=torch.channels_last))
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(nchw, nhwc) and not torch.equal(nchw, x)
    torch.manual_seed(0)
    assert torch.equal(torch.nn.Dropout(0.5).train()(x), nchw)  # nn.Dropout's masks, as the official code draws them


@pytest.mark.parametrize("name", ["mnist", "cifar10_discretized_256bins"])
def test_channels_last_unets_compute_the_same_function(name):
    """Where bfn stores a U-Net channels-last (the CPU), it computes what the NCHW network computes, in
    training mode with dropout too (the same masks): equal up to the convolutions' rounding."""
    from bfncli.networks.layout import use_fast_layout

    net = fixture_network(name)
    tensors = load_file(str(CONFORMANCE / name / "tensors.safetensors"))
    x, t = tensors["net_inputs"][:4], tensors["t"][:4]
    with torch.no_grad():
        outputs = []
        for layout in ("nchw", "channels_last"):
            if layout == "channels_last":
                assert use_fast_layout(net, "cpu")
                assert any(p.dim() == 4 and not p.is_contiguous() for p in net.parameters())
            net.eval()
            evaluated = net(x, t)
            net.train()
            torch.manual_seed(0)
            outputs.append((evaluated, net(x, t)))
    for a, b in zip(*outputs):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))
    assert not use_fast_layout(fixture_network("text8"), "cpu")  # no convolutions: left alone
    assert not use_fast_layout(fixture_network(name), "cuda")  # not measured faster there
