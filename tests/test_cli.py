"""The `bfn` executable: help, presets, dry runs and one-line errors (run as a real subprocess)."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import assert_one_line_error, run_bfn

PAPER_PRESETS = ["mnist", "cifar10-256d", "cifar10-16d", "cifar10-256c", "cifar10-16c", "text8"]


def bfn(*args, env=None):
    return run_bfn(*args, env=env)


def test_help_lists_the_five_commands_quickly():
    start = time.perf_counter()
    result = bfn("--help")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    for command in ("train", "eval", "sample", "render", "convert"):
        assert command in result.stdout
    assert elapsed < 3.0  # generous for a loaded CI machine; ~0.3 s here
    assert "torch" not in bfn("--help").stderr


def test_help_does_not_import_torch():
    code = "import sys; from bfncli.cli import app; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("name", ["img", "txt"])
def test_sampling_does_not_load_the_symbolic_shapes_machinery(runs, name, tmp_path):
    """Start-up: torch.broadcast_shapes imports torch's symbolic shapes and sympy (half a second of
    every bfn sample); nothing on the sampling path may."""
    from conftest import ckpt

    code = (
        "import sys\n"
        f"sys.argv = ['bfn', 'sample', '--checkpoint', {str(ckpt(runs, name))!r}, '--steps', '3', '-o', "
        f"{str(tmp_path / 's.safetensors')!r}]\n"
        "from bfncli.__main__ import run\n"
        "try:\n    run()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' in sys.modules\n"
        "assert 'sympy' not in sys.modules and 'torch.fx.experimental.symbolic_shapes' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "s.safetensors").exists()


@pytest.mark.parametrize("command", ["train", "eval", "sample", "render", "convert"])
def test_each_command_has_examples(command):
    result = bfn(command, "--help")
    assert result.returncode == 0
    assert "Examples" in result.stdout and "bfn " + command in result.stdout.replace("  ", " ")


def test_version():
    result = bfn("--version")
    assert result.returncode == 0 and result.stdout.startswith("bfn ")


def test_list_presets():
    result = bfn("train", "--list-presets")
    assert result.returncode == 0
    for name in PAPER_PRESETS + ["default", "mnist-tiny", "text8-tiny"]:
        assert name in result.stdout


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_dry_run_prints_the_resolved_config(preset):
    result = bfn("train", "--preset", preset, "--dry-run")
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert set(cfg) >= {"data", "network", "flow", "output", "optim", "train", "eval", "sample"}
    assert cfg["train"]["ema_decay"] == 0.9999
    assert cfg["train"]["grad_clip_norm"] == 5.0


def test_dry_run_applies_flags_sets_and_env():
    result = bfn(
        "train", "--preset", "mnist", "--dry-run", "--max-steps", "7", "--set", "optim.lr=3e-4",
        env={"BFN_TRAIN__SEED": "42"},
    )
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert (cfg["train"]["steps"], cfg["optim"]["lr"], cfg["train"]["seed"]) == (7, 3e-4, 42)


def test_bad_input_unknown_preset():
    assert_one_line_error(bfn("train", "--preset", "nope", "--dry-run"), "unknown preset 'nope'", "available presets")


def test_bad_input_unknown_flag():
    assert_one_line_error(bfn("train", "--bogus"), "No such option: --bogus", "bfn train --help")


def test_bad_input_unknown_command():
    assert_one_line_error(bfn("trian"), "No such command", "train")


def test_bad_input_unknown_key():
    assert_one_line_error(bfn("train", "--set", "train.foo=1", "--dry-run"), "unknown config key 'train.foo'")


def test_bad_input_wrong_type():
    assert_one_line_error(bfn("train", "--set", "train.batch_size=many", "--dry-run"), "train.batch_size", "integer")


def test_bad_input_out_of_range():
    assert_one_line_error(bfn("train", "--set", "optim.lr=0", "--dry-run"), "optim.lr", "greater than 0")
    assert_one_line_error(bfn("train", "--max-steps", "0", "--dry-run"), "--max-steps")


def test_bad_input_yaml_files(tmp_path):
    assert_one_line_error(bfn("train", "--config", str(tmp_path / "nope.yaml"), "--dry-run"), "does not exist", code=3)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- a\n- b\n")
    assert_one_line_error(bfn("train", "--config", str(not_mapping), "--dry-run"), "must be a YAML mapping", code=3)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: {seed: 1\n")
    assert_one_line_error(bfn("train", "--config", str(broken), "--dry-run"), "not valid YAML", code=3)
    unreadable = tmp_path / "dir.yaml"
    unreadable.mkdir()
    assert_one_line_error(bfn("train", "--config", str(unreadable), "--dry-run"), "cannot read config file", code=3)


def test_bad_input_env_variable():
    assert_one_line_error(bfn("train", "--dry-run", env={"BFN_TRAIN__BATCH_SIZE": "-4"}), "BFN_TRAIN__BATCH_SIZE")


@pytest.mark.parametrize("argv", [["--version"], ["train", "--preset", "no-such-preset"]])
def test_process_group_is_shut_down_when_a_command_ends(tmp_path, argv):
    # left to interpreter exit, gloo's threads can abort the process under torchrun
    import torch.distributed as dist

    from bfncli.cli import main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit):
            main(argv)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_missing_data_path_and_home_in_data_dir(tmp_path):
    assert_one_line_error(run_bfn("train", "--data", tmp_path / "nope", "--dry-run"), "does not exist",
                          "an image folder, a text file", code=3)
    result = run_bfn("train", "--preset", "mnist", "--dry-run", env={"BFN_DATA__DATA_DIR": "~/datasets"})
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["data"]["data_dir"] == str(Path.home() / "datasets")


def test_every_package_folder_is_installed():
    # A sub-package missing from pyproject's list works from a checkout but not from `pip install .`.
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    root = Path(__file__).parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "bfncli").rglob("__init__.py")}
    assert found - listed == set(), f"add these to [tool.setuptools] packages: {sorted(found - listed)}"


def test_a_ctrl_c_during_an_in_process_call_stops_pytest(call, monkeypatch):
    """The `call` fixture runs bfn in pytest's process: the user's Ctrl-C must reach pytest, not turn into a
    failed test that the run goes on from."""
    import pytest

    from bfncli import cli

    class Interrupted:  # a command that the user interrupts: bfn says so and exits 130
        commands = {}

        def main(self, **kwargs):
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.typer.main, "get_command", lambda app: Interrupted())
    with pytest.raises(KeyboardInterrupt):
        call("sample")
