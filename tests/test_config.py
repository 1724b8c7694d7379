"""Configuration: presets, layering precedence, and one-line errors for every bad input."""

import math

import pytest

from bfncli.config import BFNConfig, list_presets, load_yaml, resolve_config
from bfncli.errors import UserError

PAPER_PRESETS = ["mnist", "cifar10-256d", "cifar10-16d", "cifar10-256c", "cifar10-16c", "text8"]


def resolve(preset=None, **kw):
    kw.setdefault("environ", {})
    return resolve_config(preset, **kw)


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_every_preset_validates(name):
    cfg = resolve(name)
    assert isinstance(cfg, BFNConfig)
    assert cfg.description, f"preset {name} needs a description"


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_a_paper_figure_is_quoted_for_the_steps_the_preset_evaluates(name):
    # The paper reports n-step and continuous-time losses apart: a preset that quotes a figure says
    # which one its eval.steps gives ("at 784 steps (eval.steps)", "in continuous time (eval.steps 0)").
    import re

    cfg = resolve(name)
    if "paper:" not in cfg.description:
        return
    quoted = cfg.description.split("paper:", 1)[1]
    mine = re.search(r"(at (\d+) steps|in continuous time) \(eval\.steps( 0)?\)", quoted)
    assert mine, f"preset {name}: say which figure eval.steps ({cfg.eval.steps}) gives"
    assert cfg.eval.steps == (int(mine.group(2)) if mine.group(2) else 0), (name, cfg.eval.steps, quoted)


def test_readme_labels_each_paper_figure_with_the_steps_of_its_command():
    import re
    from pathlib import Path

    lines = [line for line in (Path(__file__).parent.parent / "README.md").read_text().splitlines()
             if line.startswith("bfn eval") and "# paper:" in line]
    assert len(lines) >= 4
    for line in lines:
        steps = re.search(r"--steps (\d+)", line)
        label = line.split("# paper:", 1)[1]
        if steps and steps.group(1) != "0":
            assert f"({steps.group(1)} steps)" in label, line
        else:
            assert "(continuous time)" in label, line


def test_paper_presets_and_small_presets_exist():
    names = set(list_presets())
    assert set(PAPER_PRESETS) <= names
    assert {"default", "mnist-tiny", "text8-tiny"} <= names


def test_mnist_preset_has_the_paper_hyperparameters():
    c = resolve("mnist")
    assert c.data.dataset == "mnist"
    assert (c.network.kind, c.network.model_channels, c.network.num_res_blocks) == ("unet_improved", 128, 2)
    assert c.network.channel_mult == [1, 2, 2] and c.network.attention_resolutions == [8, 16]
    assert c.network.dropout == 0.5
    assert (c.flow.kind, c.flow.n_classes, c.flow.max_sqrt_beta) == ("discrete", 2, 3.0)
    assert c.output.kind == "bernoulli"
    assert (c.optim.lr, c.optim.betas, c.optim.weight_decay) == (1e-4, (0.9, 0.98), 0.01)
    assert (c.train.batch_size, c.train.steps, c.train.ema_decay, c.train.grad_clip_norm) == (512, 1_000_000, 0.9999, 5.0)
    assert (c.train.val_every, c.train.val_repeats) == (50_000, 1000)


@pytest.mark.parametrize(
    "name,bins,variance,output",
    [
        ("cifar10-256d", 256, 1e-6, "discretized_normal"),
        ("cifar10-16d", 16, 1e-3, "discretized_normal"),
        ("cifar10-256c", 256, 1e-6, "delta"),
        ("cifar10-16c", 16, 1e-3, "delta"),
    ],
)
def test_cifar_presets_have_the_paper_hyperparameters(name, bins, variance, output):
    c = resolve(name)
    assert (c.data.dataset, c.data.num_bins) == ("cifar10", bins)
    assert c.network.kind == "unet_vdm"
    assert (c.network.embedding_dim, c.network.n_blocks, c.network.norm_groups) == (128, 32, 32)
    assert c.network.dropout_prob == 0.1 and c.network.use_fourier_features
    assert c.flow.kind == "continuous" and c.flow.min_variance == variance
    assert c.output.kind == output and c.output.noise_pred
    assert c.network.output_adapter.output_height == (2 if output == "discretized_normal" else 1)
    assert (c.optim.lr, c.optim.betas, c.optim.weight_decay, c.optim.eps) == (2e-4, (0.9, 0.99), 0.01, 1e-8)
    assert (c.train.batch_size, c.train.steps, c.train.ema_decay, c.train.grad_clip_norm) == (32, 1_000_000, 0.9999, 5.0)


def test_delta_16_bin_preset_reconstructs_like_the_official_code():
    # The official code measures the 16-bin delta model's reconstruction with std 0.7 sigma_1.
    c = resolve("cifar10-16c")
    assert math.isclose(c.output.recon_std, 0.7 * math.sqrt(1e-3), rel_tol=1e-6)
    assert c.output.num_bins == 16


def test_text8_preset_has_the_paper_hyperparameters():
    c = resolve("text8")
    assert (c.data.dataset, c.data.seq_len) == ("text8", 256)
    n = c.network
    assert (n.kind, n.n_layer, n.n_embd, n.n_head, n.vocab_size) == ("transformer", 24, 768, 12, 27)
    assert (c.flow.n_classes, c.flow.max_sqrt_beta) == (27, 0.75)
    assert c.output.kind == "categorical"
    assert c.optim.decay_groups and c.optim.betas == (0.9, 0.98)
    assert (c.train.batch_size, c.train.steps) == (3328, 10_000_000)


def test_no_preset_means_the_embedded_default():
    assert resolve(None).data.dataset == "digits"


def test_precedence_flag_over_set_over_env_over_file_over_preset(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 1e-3\n  eps: 1e-7\ntrain:\n  seed: 5\n  batch_size: 9\n")
    env = {"BFN_OPTIM__LR": "3e-4", "BFN_TRAIN__SEED": "6"}
    c = resolve("mnist", config_file=f, environ=env, sets=["optim.lr=5e-4"], flags={"train": {"batch_size": 11}})
    assert c.optim.lr == 5e-4  # --set beats env
    assert c.train.seed == 6  # env beats file
    assert c.optim.eps == 1e-7  # file beats preset (and `1e-7` is a float, not a string)
    assert c.train.batch_size == 11  # flags beat everything
    assert c.network.model_channels == 128  # the preset fills the rest


def test_env_beats_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {seed: 5}\n")
    assert resolve("mnist", config_file=f, environ={"BFN_TRAIN__SEED": "7"}).train.seed == 7


def test_yaml_scientific_notation_and_underscores_are_numbers(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim: {lr: 2e-4}\ntrain: {steps: 10_000}\n")
    c = resolve("mnist", config_file=f)
    assert c.optim.lr == 2e-4 and c.train.steps == 10_000


def test_switching_network_kind_starts_from_that_kinds_defaults():
    c = resolve("text8", sets=["network.n_layer=3"])
    assert c.network.n_layer == 3


@pytest.mark.parametrize(
    "sets,expected",
    [
        (["train.batchsize=3"], "unknown config key 'train.batchsize' (from --set); did you mean 'train.batch_size'?"),
        (["network.n_blockz=3"], "unknown config key 'network.n_blockz'"),
        (["optim.lr=abc"], "optim.lr: Input should be a valid number"),
        (["optim.lr=-1"], "optim.lr: Input should be greater than 0"),
        (["train.mixed_precision=fp8"], "train.mixed_precision: Input should be 'no', 'bf16' or 'fp16'"),
        (["output.kind=delta"], "output.kind 'delta' does not fit a discrete flow"),
        (["flow.n_classes=3"], "output.kind must be 'categorical'"),
        (["train.batch_size"], "--set expects key.path=value"),
    ],
)
def test_bad_values_name_the_field(sets, expected):
    with pytest.raises(UserError) as err:
        resolve("mnist", sets=sets)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_env_variable_is_a_warning_said_once_with_the_nearest_key(capsys):
    from bfncli import config

    config._WARNED.clear()
    for _ in range(2):
        cfg = resolve("mnist", environ={"BFN_TRAIN__BATCH": "3", "BFN_HOME": "/x", "BFN_TRAIN__STEPS": "7"})
    assert cfg.train.steps == 7 and cfg.train.batch_size == 512
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines  # once each, not once per resolution
    assert "BFN_TRAIN__BATCH" in lines[1] and "did you mean BFN_TRAIN__BATCH_SIZE" in lines[1]
    assert "BFN_HOME" in lines[0]


def test_known_env_key_with_a_bad_value_is_still_an_error():
    with pytest.raises(UserError, match="from environment variable BFN_TRAIN__BATCH_SIZE"):
        resolve("mnist", environ={"BFN_TRAIN__BATCH_SIZE": "many"})


def test_unknown_preset_suggests_and_lists():
    with pytest.raises(UserError, match=r"unknown preset 'mnistt' \(did you mean 'mnist'\?\); available presets: .*text8"):
        resolve("mnistt")


def test_yaml_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML at line"):
        load_yaml(bad)
    seq = tmp_path / "seq.yaml"
    seq.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        load_yaml(seq)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="cannot read config file"):
        load_yaml(binary)
    assert load_yaml(_empty(tmp_path)) == {}


def _empty(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    return p


def test_dump_round_trips():
    c = resolve("cifar10-16c")
    again = resolve_config(base=c.to_dict(), environ={})
    assert again == c


@pytest.mark.parametrize("preset,sets,expected", [
    ("mnist", ["network.model_channels=48"], "network.model_channels (48) must be a multiple of 32"),
    ("mnist", ["network.conv_resample=false"], "network.conv_resample"),
    ("cifar10-256d", ["network.norm_groups=7"], "must be a multiple of norm_groups (7)"),
    ("cifar10-256d", ["network.output_adapter.input_height=99"], "network.output_adapter.input_height must be 131"),
    ("text8", ["network.n_head=7"], "n_embd (768) must be a multiple of n_head (7)"),
])
def test_networks_that_cannot_be_built_are_refused_up_front(preset, sets, expected):
    with pytest.raises(UserError) as err:
        resolve(preset, sets=sets)
    assert expected in str(err.value)


def test_environment_through_pydantic_settings_any_case_nested_and_read_as_yaml():
    """BFN_* variables are read by pydantic-settings' env source (prefix, any case, __ between keys),
    their values as YAML like every other layer."""
    env = {"bfn_train__seed": "8", "BFN_DATA__MIRRORS": "[http://host/path/]", "BFN_OPTIM__BETAS": "[0.8, 0.9]",
           "BFN_NETWORK__DROPOUT": "0.25", "BFN_DATA__DOWNLOAD": "false"}
    c = resolve("mnist", environ=env)
    assert (c.train.seed, c.data.mirrors, c.optim.betas, c.network.dropout, c.data.download) == (
        8, ["http://host/path/"], (0.8, 0.9), 0.25, False)
    with pytest.raises(UserError, match=r"train.seed: expects a number or a word, not true/false "
                                        r"\(from environment variable BFN_TRAIN__SEED\)"):
        resolve("mnist", environ={"BFN_TRAIN__SEED": "true"})
    with pytest.raises(UserError, match=r"network.dropout: .* \(from config file"):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as folder:
            f = Path(folder) / "c.yaml"
            f.write_text("network: {dropout: 2}\n")
            resolve("mnist", config_file=f, environ={"BFN_TRAIN__SEED": "3"})


def test_a_config_given_whole_ignores_the_environment(monkeypatch):
    """A checkpoint's or a run's config is validated as it is: no BFN_* variable creeps into it."""
    from bfncli.config import validate_config

    monkeypatch.setenv("BFN_TRAIN__SEED", "9")
    stored = resolve("default").to_dict()
    assert validate_config(stored).train.seed == stored["train"]["seed"] != 9
    assert resolve_config("default").train.seed == 9  # where the environment does count
