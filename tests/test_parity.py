"""Parity with the official implementation, through the real CLI: convert the official fixture
checkpoints, reproduce the official network outputs, and reproduce test.py's statistics."""

import json
import math

import pytest
import torch
from conftest import CONFORMANCE, FIXTURES, run_bfn
from safetensors.torch import load_file

from bfncli.checkpoint import load_model, read_info
from bfncli.config import resolve_config

# The official `test.py` draws per repeat one loss and one reconstruction estimate; our estimate of
# the same quantity must agree within a few combined standard errors.
SIGMAS = 4.0


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = {}
    root = tmp_path_factory.mktemp("converted")
    for name in FIXTURES:
        target = root / f"{name}.safetensors"
        result = run_bfn("convert", CONFORMANCE / name / "official_ema.pt", "--official-config",
                         CONFORMANCE / name / "official_config.yaml", "-o", target)
        assert result.returncode == 0, result.stderr
        out[name] = target
    return out


@pytest.mark.parametrize("name", FIXTURES)
def test_converted_checkpoint_reproduces_the_official_network_outputs(converted, name):
    model, info = load_model(converted[name])
    assert info.weights == "ema"
    fixture = load_file(str(CONFORMANCE / name / "tensors.safetensors"))
    with torch.no_grad():
        out = model.net(fixture["net_inputs"], fixture["t"])
    expected = fixture["net_outputs"]
    assert out.shape == expected.shape
    scale = expected.abs().max()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * float(scale))


@pytest.mark.parametrize("name", FIXTURES)
def test_eval_agrees_with_the_official_statistics(converted, name, tmp_path, call):
    expected = json.loads((CONFORMANCE / name / "expected.json").read_text())
    data = CONFORMANCE / name / "tensors.safetensors"
    for row in expected["eval"]:
        result = call("eval", "--checkpoint", converted[name], "--data", data, "--steps", row["n_steps"],
                         "--repeats", row["repeats"], "--batch-size", expected["n_data"], "--seed", 7, "--json")
        assert result.returncode == 0, result.stderr
        ours = json.loads(result.stdout)
        assert ours["n_examples"] == expected["n_data"] and ours["n_steps"] == row["n_steps"]
        for key in ("loss", "recon"):
            diff = abs(ours[f"{key}_mean"] - row[f"{key}_mean"])
            allowed = SIGMAS * math.hypot(ours[f"{key}_stderr"], row[f"{key}_stderr"])
            assert diff <= allowed, (name, row["n_steps"], key, ours[f"{key}_mean"], row[f"{key}_mean"], allowed)


@pytest.mark.parametrize("name", FIXTURES)
def test_the_estimate_does_not_depend_on_the_batch_size(converted, name, tmp_path, call):
    """Every example meets the same draws whatever the batch (blocks of draws cut across batches of
    37, a batch of every example, the default): only floating-point summation may move the figures.
    Drawing per batch, as test.py does, moves them by the estimate's noise (percent here)."""
    from safetensors.torch import save_file

    given = load_file(str(CONFORMANCE / name / "tensors.safetensors"))["data"]
    data = given.repeat(15, *([1] * (given.dim() - 1)))  # 240 examples: three blocks of draws, the last partial
    save_file({"data": data}, str(tmp_path / "data.safetensors"))
    reports = []
    for batch in ("37", "240", None):
        args = ["eval", "--checkpoint", converted[name], "--data", tmp_path / "data.safetensors", "--steps", 10,
                "--repeats", 2, "--seed", 5, "--json"] + (["--batch-size", batch] if batch else [])
        result = call(*args)
        assert result.returncode == 0, result.stderr
        reports.append(json.loads(result.stdout))
    assert [r["batch_size"] for r in reports] == [37, 240, 100]
    for key in ("loss_mean", "recon_mean", "total_mean", "total_stderr"):
        values = [r[key] for r in reports]
        assert max(values) - min(values) <= 1e-6 * abs(values[0]), (key, values)


def test_the_default_gpu_batch_is_whole_blocks_that_fit():
    from bfncli.jobs.evaluate import batch_for_memory

    mib = 2**20
    assert batch_for_memory(1000 * mib, 1 * mib, 10_000) == 1000  # ten blocks of 100
    assert batch_for_memory(1050 * mib, 1 * mib, 10_000) == 1000  # never part of a block
    assert batch_for_memory(10 * mib, 1 * mib, 10_000) == 100  # at least one block: --batch-size goes lower
    assert batch_for_memory(64_000 * mib, 1 * mib, 10_000) == 10_000  # at most every example
    assert batch_for_memory(64_000 * mib, 1 * mib, 37) == 37


def test_round_trip_is_bit_for_bit(converted, tmp_path, call):
    for name in FIXTURES:
        back = tmp_path / f"{name}.pt"
        result = call("convert", converted[name], "-o", back)
        assert result.returncode == 0, result.stderr
        original = torch.load(CONFORMANCE / name / "official_ema.pt", weights_only=True)
        again = torch.load(back, weights_only=True)
        assert list(again) == list(original)
        for key, tensor in original.items():
            assert again[key].dtype == tensor.dtype
            assert torch.equal(again[key], tensor), key


def test_checkpoint_carries_its_config(converted):
    info = read_info(converted["text8"])
    assert info.config.network.kind == "transformer" and info.config.network.n_layer == 2
    assert info.config.flow.n_classes == 27 and info.metadata["format"] == "bfn"


# ------------------------------------------------------------------ the released layouts
RELEASED = {  # manifest name -> (preset, released file name)
    "mnist_discrete": ("mnist", "mnist_ema.pt"),
    "cifar10_discretized_256bins": ("cifar10-256d", "cifar10_256d_ema.pt"),
    "cifar10_discretized_16bins": ("cifar10-16d", "cifar10_16d_ema.pt"),
    "cifar10_continuous_256bins": ("cifar10-256c", "cifar10_256c_ema.pt"),
    "cifar10_continuous_16bins": ("cifar10-16c", "cifar10_16c_ema.pt"),
    "text8_discrete": ("text8", "text8_ema.pt"),
}


def _random_official_state(manifest: dict) -> dict:
    g = torch.Generator().manual_seed(0)
    return {key: torch.randn(shape, generator=g) * 0.02 for key, shape in manifest["keys"].items()}


def _few_examples(preset: str, path):
    from bfncli.model import data_shape

    cfg = resolve_config(preset, environ={})
    shape = (2, *data_shape(cfg))
    g = torch.Generator().manual_seed(1)
    if cfg.flow.kind == "discrete":
        data = torch.randint(0, cfg.flow.n_classes, shape, generator=g)
    else:
        bins = cfg.data.num_bins
        data = (torch.randint(0, bins, shape, generator=g).float() * 2 + 1) / bins - 1
    from safetensors.torch import save_file

    save_file({"data": data}, str(path))
    return path


# The default suite converts one layout of each network family; the other three CIFAR-10 ones are slow-marked.
@pytest.mark.parametrize("manifest_name", [
    name if name in ("mnist_discrete", "cifar10_discretized_256bins", "text8_discrete")
    else pytest.param(name, marks=pytest.mark.slow) for name in RELEASED])
def test_released_layouts_convert_with_their_preset_and_evaluate(manifest_name, tmp_path, call):
    manifests = json.loads((CONFORMANCE / "manifests.json").read_text())
    preset, filename = RELEASED[manifest_name]
    official = tmp_path / filename
    torch.save({k: v for k, v in _random_official_state(manifests[manifest_name]).items()}, official)
    target = tmp_path / "model.safetensors"
    # No --preset: bfn recognises the preset from the tensors (and the released file name).
    result = call("convert", official, "-o", target)
    assert result.returncode == 0, result.stderr
    assert f"preset '{preset}'" in result.stderr
    info = read_info(target)
    assert info.config == resolve_config(preset, environ={})
    model, _ = load_model(target)
    assert sum(p.numel() for p in model.parameters()) == manifests[manifest_name]["n_params"]  # buffers excluded
    data = _few_examples(preset, tmp_path / "data.safetensors")
    result = call("eval", "--checkpoint", target, "--data", data, "--repeats", 1, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert math.isfinite(report["total_mean"]) and report["n_examples"] == 2


def test_interrupted_evaluation_resumes_without_losing_repeats(converted, tmp_path, call):
    data = CONFORMANCE / "mnist" / "tensors.safetensors"
    args = ("eval", "--checkpoint", converted["mnist"], "--data", data, "--steps", 10, "--seed", 3, "--json")
    env = {"BFN_CACHE_DIR": str(tmp_path / "cache")}
    first = call(*args, "--repeats", 3, env=env)
    assert first.returncode == 0, first.stderr
    more = call(*args, "--repeats", 6, env=env)
    assert more.returncode == 0 and "resuming: 3 of 6 repeats already done" in more.stderr
    fresh = call(*args, "--repeats", 6, env={"BFN_CACHE_DIR": str(tmp_path / "other")})
    assert json.loads(more.stdout)["loss_mean"] == json.loads(fresh.stdout)["loss_mean"]  # repeat r is seeded by r


def test_two_processes_split_the_repeats_and_agree_with_one(converted, tmp_path, call):
    import os
    import subprocess
    import sys

    data = CONFORMANCE / "text8" / "tensors.safetensors"
    args = ["eval", "--checkpoint", str(converted["text8"]), "--data", str(data), "--repeats", "4", "--json"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BFN_")}, "OMP_NUM_THREADS": "1",
           "BFN_CACHE_DIR": str(tmp_path / "two")}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                          "-m", "bfncli", *args], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[:2000]  # the first lines say why
    one = call(*args, env={"BFN_CACHE_DIR": str(tmp_path / "one")})
    lines = [line for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only the main process reports
    ours, single = json.loads(lines[0]), json.loads(one.stdout)
    assert ours["repeats"] == 4 and abs(ours["loss_mean"] - single["loss_mean"]) < 1e-6 * abs(single["loss_mean"])
