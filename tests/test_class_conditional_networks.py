"""Class-conditional networks: a learned vector per class plus "no class", in all three
architectures, without changing the unconditional networks' layout or outputs."""

import pytest
import torch
import yaml

from bfncli.config import resolve_config
from bfncli.convert import official_to_config
from bfncli.errors import UserError
from bfncli.model import BFN, make_network
from bfncli.networks import build_network
from conftest import CONFORMANCE

NUM_CLASSES = 3  # so index 3 is "no class"

# Tiny networks: (kind, parameters, input adapter, output adapter, one example's input shape).
TINY = {
    "unet_vdm": (
        {"embedding_dim": 16, "n_blocks": 1, "n_attention_heads": 2, "norm_groups": 8, "input_channels": 1,
         "image_size": 4, "dropout_prob": 0.1},
        ("fourier_image", {"input_channels": 1, "input_shape": [4, 4], "output_height": 1,
                           "add_pos_feats": False, "add_mask": False}),
        ("output", {"input_height": 17, "output_channels": 1, "output_height": 2}),
        (4, 4, 1),
    ),
    "unet_improved": (
        {"image_size": 4, "in_channels": 2, "model_channels": 32, "out_channels": 32, "num_res_blocks": 1,
         "attention_resolutions": [2], "channel_mult": [1, 2], "num_heads": 2, "project_input": True,
         "dropout": 0.5},
        ("fourier_image", {"input_channels": 1, "input_shape": [4, 4], "output_height": 2, "add_pos_feats": False}),
        ("output", {"input_height": 64, "output_channels": 1, "output_height": 1}),
        (4, 4, 1),
    ),
    "transformer": (
        {"vocab_size": 5, "n_layer": 2, "n_head": 2, "n_embd": 16, "skip": True, "dropout": 0.1},
        ("text", {"vocab_size": 5, "seq_len": 6, "output_size": 16}),
        None,
        (6, 5),
    ),
}
KINDS = list(TINY)
# What the class vector is added to, and so its width: the time conditioning or the token features.
EMBEDDING_WIDTH = {"unet_vdm": 4 * 16, "unet_improved": 4 * 32, "transformer": 16}


def tiny(kind, seed=0, **extra):
    params, input_adapter, output_adapter, _ = TINY[kind]
    torch.manual_seed(seed)
    return build_network(kind, {**params, **extra}, input_adapter, output_adapter).eval()


def inputs(kind, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, *TINY[kind][3])
    if kind == "transformer":
        data = torch.softmax(torch.randn(shape, generator=g), -1)
        return data, torch.rand(batch, generator=g)[:, None].expand(shape[:2])
    return torch.rand(shape, generator=g) * 2 - 1, torch.rand(batch, generator=g).view(-1, 1, 1, 1).expand(shape)


def trained(net, seed=2):
    """Every weight random: the zero-initialised class vectors and residual branches of a fresh
    network hide the class from the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


# ------------------------------------------------------------------------------ the layout
@pytest.mark.parametrize("kind", KINDS)
def test_unconditional_layout_and_function_are_unchanged(kind):
    before = tiny(kind).state_dict()
    after = tiny(kind, num_classes=0).state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("kind", KINDS)
def test_conditional_network_adds_one_zero_vector_per_class_and_no_class(kind):
    plain, conditional = tiny(kind).state_dict(), tiny(kind, num_classes=NUM_CLASSES).state_dict()
    assert set(conditional) - set(plain) == {"class_embedding.weight"}
    table = conditional["class_embedding.weight"]
    assert table.shape == (NUM_CLASSES + 1, EMBEDDING_WIDTH[kind])
    assert not table.any()
    # The embedding draws no random numbers: every other weight is its unconditional twin's.
    assert all(torch.equal(conditional[k], plain[k]) for k in plain)


@pytest.mark.parametrize("kind", KINDS)
def test_a_fresh_conditional_network_is_its_unconditional_twin(kind):
    plain, conditional = trained(tiny(kind)), tiny(kind, num_classes=NUM_CLASSES)
    conditional.load_state_dict({**plain.state_dict(), "class_embedding.weight": conditional.class_embedding.weight},
                                strict=True)
    x, t = inputs(kind, 4)
    with torch.no_grad():
        expected = plain(x, t)
        for classes in (None, torch.tensor([0, 1, 2, 3])):
            assert torch.equal(conditional(x, t, classes), expected)


# --------------------------------------------------------------------------- the function
@pytest.mark.parametrize("kind", KINDS)
def test_output_depends_on_the_class(kind):
    net = trained(tiny(kind, num_classes=NUM_CLASSES))
    x, t = inputs(kind, 1)
    with torch.no_grad():
        outs = [net(x, t, torch.tensor([c])) for c in range(NUM_CLASSES + 1)]
    for i in range(len(outs)):
        for j in range(i):
            assert (outs[i] - outs[j]).abs().max() > 1e-3, (i, j)


@pytest.mark.parametrize("kind", KINDS)
def test_none_means_no_class(kind):
    net = trained(tiny(kind, num_classes=NUM_CLASSES))
    x, t = inputs(kind, 3)
    with torch.no_grad():
        assert torch.equal(net(x, t), net(x, t, torch.full((3,), NUM_CLASSES)))


@pytest.mark.parametrize("kind", KINDS)
def test_a_mixed_batch_equals_one_example_at_a_time(kind):
    net = trained(tiny(kind, num_classes=NUM_CLASSES))
    x, t = inputs(kind, 4)
    classes = torch.tensor([2, NUM_CLASSES, 0, 2])
    with torch.no_grad():
        together = net(x, t, classes)
        alone = torch.cat([net(x[i:i + 1], t[i:i + 1], classes[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_used_class_vectors(kind):
    net = trained(tiny(kind, num_classes=NUM_CLASSES))
    x, t = inputs(kind, 2)
    net(x, t, torch.tensor([0, 2])).square().sum().backward()
    grad = net.class_embedding.weight.grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0
    assert not grad[1].any() and not grad[NUM_CLASSES].any()


# ----------------------------------------------------------------------- refused classes
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("classes,message", [
    (torch.tensor([0, NUM_CLASSES + 1]), "must be in 0..3"),
    (torch.tensor([-1, 0]), "must be in 0..3"),
    (torch.tensor([0]), "shape"),
    (torch.tensor([[0], [1]]), "shape"),
    (torch.tensor([0.0, 1.0]), "integer"),
])
def test_bad_classes_are_refused(kind, classes, message):
    net = tiny(kind, num_classes=NUM_CLASSES)
    x, t = inputs(kind, 2)
    with pytest.raises(ValueError, match=message):
        net(x, t, classes)


@pytest.mark.parametrize("kind", KINDS)
def test_an_unconditional_network_refuses_classes(kind):
    net = tiny(kind)
    x, t = inputs(kind, 2)
    with pytest.raises(ValueError, match="unconditional"):
        net(x, t, torch.tensor([0, 1]))


@pytest.mark.parametrize("kind", KINDS)
def test_a_negative_number_of_classes_is_refused(kind):
    with pytest.raises(ValueError, match="num_classes"):
        tiny(kind, num_classes=-1)


def test_the_improved_unet_reads_the_originals_none_as_unconditional():
    assert tiny("unet_improved", num_classes=None).state_dict().keys() == tiny("unet_improved").state_dict().keys()


def test_the_class_vectors_do_not_decay_in_the_transformer():
    net = tiny("transformer", num_classes=NUM_CLASSES)
    decay, no_decay = net.get_optim_groups(0.1)
    assert any(p is net.class_embedding.weight for p in no_decay["params"])
    assert not any(p is net.class_embedding.weight for p in decay["params"])


# ------------------------------------------------------------------------- config and model
@pytest.mark.parametrize("preset,width", [("default", 4 * 32), ("mnist-tiny", None), ("text8-tiny", None)])
def test_config_builds_conditional_networks(preset, width):
    plain = resolve_config(preset, environ={})
    cfg = resolve_config(preset, sets=["network.num_classes=10"], environ={})
    assert plain.network.num_classes == 0 and cfg.network.num_classes == 10
    net = make_network(cfg)
    assert net.class_embedding.weight.shape[0] == 11
    if width is not None:
        assert net.class_embedding.weight.shape[1] == width
    assert set(net.state_dict()) - set(make_network(plain).state_dict()) == {"class_embedding.weight"}


@pytest.mark.parametrize("preset", ["default", "mnist-tiny", "text8-tiny"])
def test_a_negative_number_of_classes_is_a_one_line_config_error(preset):
    with pytest.raises(UserError) as err:
        resolve_config(preset, sets=["network.num_classes=-1"], environ={})
    assert "network.num_classes" in str(err.value) and "\n" not in str(err.value)


def test_class_dropout_is_a_fraction():
    assert resolve_config("default", environ={}).train.class_dropout == 0.1
    assert resolve_config("default", sets=["train.class_dropout=0"], environ={}).train.class_dropout == 0
    for bad in ("-0.1", "1.5"):
        with pytest.raises(UserError, match="train.class_dropout"):
            resolve_config("default", sets=[f"train.class_dropout={bad}"], environ={})


def test_bfn_predict_passes_classes_to_the_network():
    model = BFN(resolve_config("default", sets=["network.num_classes=2"], environ={})).eval()
    trained(model.net)
    theta = torch.rand(3, *model.data_shape) * 2 - 1
    t = torch.full((3,), 0.5)
    with torch.no_grad():
        no_class = model.predict(theta, t).mean
        assert torch.equal(model.predict(theta, t, torch.full((3,), 2)).mean, no_class)
        assert not torch.allclose(model.predict(theta, t, torch.tensor([0, 1, 0])).mean, no_class)


def test_official_configs_convert_unconditional_and_their_class_option_stays_refused():
    # The original's class-conditional U-Net has a table without "no class" (another layout),
    # so an official config asking for classes is still refused; null means unconditional.
    official = yaml.safe_load((CONFORMANCE / "mnist" / "official_config.yaml").read_text())
    official["model"]["net"]["parameters"]["num_classes"] = None
    assert official_to_config(official).network.num_classes == 0
    official["model"]["net"]["parameters"]["num_classes"] = 10
    with pytest.raises(UserError, match="num_classes is not supported"):
        official_to_config(official)
