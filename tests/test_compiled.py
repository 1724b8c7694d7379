"""torch.compile (bfncli.compiled): the compiled loss, gradients and samples are the eager ones (float32,
relative 1e-5) for every network family and both kinds of flow; when `auto` compiles; where
inductor keeps its kernels. Inductor compiles on the CPU too (with the system's C++ compiler)."""

import copy
import math

import pytest
import torch
from safetensors.torch import save_file

from bfncli import compiled
from bfncli.config import resolve_config
from bfncli.model import BFN
from bfncli.samplers import SAMPLERS, SampleNoise

# Tiny networks of the three families, on both kinds of flow (dropout off: inductor draws its own).
CASES = {
    "unet_vdm-continuous": ("default", ["network.embedding_dim=16", "network.n_blocks=1", "network.norm_groups=4",
                                        "network.output_adapter.input_height=17"]),
    "unet_improved-binary": ("mnist-tiny", []),  # 32 channels: the least GroupNorm allows
    "transformer-text": ("text8-tiny", ["network.n_layer=1", "network.n_embd=16", "network.n_head=2",
                                        "network.input_adapter.output_size=16", "network.dropout=0.0"]),
}


def _model(case):
    preset, sets = CASES[case]
    cfg = resolve_config(preset, sets=sets, environ={})
    torch.manual_seed(0)
    return BFN(cfg).train()


def _data(model, batch=3):
    g = torch.Generator().manual_seed(1)
    shape = (batch, *model.data_shape)
    if model.discrete:
        return torch.randint(0, model.flow.n_classes, shape, generator=g)
    bins = model.cfg.output.num_bins
    return (torch.randint(0, bins, shape, generator=g).float() + 0.5) * 2 / bins - 1


def _close(a, b, rel=1e-5):
    return (a - b).norm().item() <= rel * b.norm().item() + 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("n_steps", [0, 10])
def test_compiled_loss_and_gradients_are_the_eager_ones(case, n_steps):
    eager = _model(case)
    fast = copy.deepcopy(eager)
    compiled.compile_loss(fast, torch.device("cpu"))
    x = _data(eager)
    losses, grads = [], []
    for model in (eager, fast):
        loss = model.loss(x, n_steps, torch.Generator().manual_seed(2))
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in model.parameters()])
    assert _close(losses[1], losses[0]), (losses[1].item(), losses[0].item())
    for g_fast, g_eager in zip(*grads):
        assert _close(g_fast, g_eager)
    recon = [m.reconstruction_loss(x, torch.Generator().manual_seed(3)).detach() for m in (eager, fast)]
    assert _close(recon[1], recon[0])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_sampling_draws_the_eager_samples(case):
    eager = _model(case).eval()
    fast = copy.deepcopy(eager)
    compiled.compile_network(fast, torch.device("cpu"))
    with torch.inference_mode():
        for name, sampler in SAMPLERS.items():
            a, b = (sampler.run(m, SampleNoise(5, 0, 2), sampler.steps_for(6)) for m in (eager, fast))
            if eager.discrete:  # tokens: the same; pixels: the same up to float rounding
                assert torch.equal(a, b), name
            else:
                assert _close(b.float(), a.float()), name


@pytest.mark.parametrize("case", list(CASES))
def test_what_is_compiled_is_one_graph(case):
    """The loss given its draws (training, evaluation), the reconstruction and the network (sampling)
    each trace into one graph: a graph break would run the code between graphs eagerly, in Python."""
    model = _model(case)
    x = _data(model)
    draws = model.draw(x, 10, torch.Generator().manual_seed(4))
    t = torch.full((len(x),), 0.5)
    theta = model.flow.flow_sample(x, model._per_example(t, x), torch.Generator().manual_seed(0))
    t_net = t.reshape(len(x), *([1] * len(model.data_shape))).expand(len(x), *model.data_shape)
    pieces = {"loss": (model.loss_of_draws, (x, *draws, 10)),
              "reconstruction": (model.reconstruction_of_draws, (x, draws[1])),
              "network": (model.net, (model.flow.net_input(theta), t_net))}
    for name, (fn, args) in pieces.items():
        explained = torch._dynamo.explain(fn)(*args)
        assert explained.graph_break_count == 0, (name, [str(b.reason) for b in explained.break_reasons])
    torch._dynamo.reset()


def test_the_eager_loss_is_its_draws_then_a_function_of_them():
    """The split that compiling relies on draws the numbers the loss always drew (exact resume across
    versions, conformance): the draws come first from the same generator, in the same order."""
    model = _model("unet_vdm-continuous")
    x = _data(model)
    g = torch.Generator().manual_seed(4)
    t, flow_noise, mc = model.draw(x, 10, g)
    g2 = torch.Generator().manual_seed(4)
    assert torch.equal(t, torch.randint(0, 10, (3,), generator=g2) / 10)
    assert torch.equal(flow_noise, torch.randn(x.shape, generator=g2))
    assert len(mc) == model.flow.kl_samples and torch.equal(mc[0], torch.randn(3, x[0].numel(), generator=g2))
    assert torch.equal(model.loss(x, 10, torch.Generator().manual_seed(4)), model.loss_of_draws(x, t, flow_noise, mc, 10))


def test_auto_compiles_gpu_jobs_of_many_calls():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compiled.wanted("on", cpu, 1) and not compiled.wanted("off", cuda, 10**6)
    for job in ("train", "eval", "sample"):
        assert compiled.wanted("auto", cuda, compiled.AUTO_MIN_CALLS_CUDA, job)
        assert not compiled.wanted("auto", cuda, compiled.AUTO_MIN_CALLS_CUDA - 1, job)
        assert not compiled.wanted("auto", cuda, None, job)


def test_auto_on_the_cpu_compiles_evaluations_and_samplings_estimated_long(monkeypatch):
    cpu = torch.device("cpu")
    model = _model("unet_vdm-continuous")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    per_call = compiled.eager_seconds(model, 1, 10)
    assert per_call == pytest.approx(compiled.flops_bound(model) * 10 / (2 * compiled.CPU_FLOPS_PER_THREAD))
    for job in ("eval", "sample"):
        least = compiled.AUTO_MIN_CPU_SECONDS[job]
        enough = math.ceil(least / per_call * (1 + 1e-9))
        assert compiled.wanted("auto", cpu, enough, job, model, 10)
        assert not compiled.wanted("auto", cpu, enough - 1, job, model, 10)
        assert not compiled.wanted("auto", cpu, 10**12, job)  # no model, no estimate: eager
        assert not compiled.wanted("off", cpu, 10**12, job, model, 10)
    # The backward pass adds twice the forward's work (three times in all); twice the threads, half the time.
    assert compiled.eager_seconds(model, 1, 10, backward=True) == pytest.approx(3 * per_call)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert compiled.eager_seconds(model, 1, 10) == pytest.approx(per_call / 2)
    # A network past the small ones (the paper's gain under 10% on the CPU) stays eager however long the job.
    assert compiled.flops_bound(model) <= compiled.CPU_MAX_FLOPS_PER_EXAMPLE
    monkeypatch.setattr(compiled, "CPU_MAX_FLOPS_PER_EXAMPLE", compiled.flops_bound(model) * (1 - 1e-9))
    assert not compiled.wanted("auto", cpu, 10**12, "eval", model, 10)
    assert not compiled.wanted("auto", cpu, 10**12, "sample", model, 10)
    # Compiled training measured no faster on the CPU: auto never compiles it there.
    assert compiled.AUTO_MIN_CPU_SECONDS["train"] is None
    assert not compiled.wanted("auto", cpu, 10**12, "train", model, 10**6)


@pytest.mark.parametrize("preset, small", [("default", True), ("mnist-tiny", True), ("text8-tiny", True),
                                           ("mnist", False), ("cifar10-256d", False), ("text8", False)])
def test_auto_on_the_cpu_tells_the_small_networks_from_the_papers(preset, small):
    """Compile measured 1.2-1.45x faster on the CPU for the small presets and under 1.1x for the paper's."""
    with torch.device("meta"):
        model = BFN(resolve_config(preset, environ={}))
    assert (compiled.flops_bound(model) <= compiled.CPU_MAX_FLOPS_PER_EXAMPLE) == small


@pytest.mark.parametrize("case", list(CASES))
def test_the_work_bound_is_above_the_counted_flops(case):
    """The estimate auto uses on the CPU is an upper bound on the network's FLOPs, and not a loose one."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _model(case).eval()
    x = _data(model, batch=1)
    t = torch.full((1,), 0.5)
    theta = model.flow.flow_sample(x, model._per_example(t, x), torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.predict(theta, t)
    counted, bound = counter.get_total_flops(), compiled.flops_bound(model)
    assert counted <= bound <= 10 * counted, (counted, bound)


def test_jobs_ask_auto_with_their_network_calls_and_batch(runs, call, monkeypatch, tmp_path):
    from conftest import ckpt

    asked = []

    def spy(setting, device, calls=None, job="train", model=None, examples=None):
        asked.append((job, calls, examples, model is not None))
        return False

    monkeypatch.setattr(compiled, "wanted", spy)
    g = torch.Generator().manual_seed(0)
    few = (torch.randint(0, 16, (10, 8, 8, 1), generator=g).float() * 2 + 1) / 16 - 1
    save_file({"data": few}, str(tmp_path / "few.safetensors"))
    assert call("sample", "--checkpoint", ckpt(runs, "img"), "--shape", "5,8,8,1", "--steps", 3, "--batch-size", 2,
                "-o", tmp_path / "s.safetensors").returncode == 0
    assert call("eval", "--checkpoint", ckpt(runs, "img"), "--steps", 10, "--repeats", 3, "--batch-size", 4,
                "--data", tmp_path / "few.safetensors", "--json", env={"BFN_CACHE_DIR": str(tmp_path)}).returncode == 0
    assert asked[0][0] == "sample" and asked[0][2:] == (2, True)
    assert asked[0][1] == 3 * 3  # 3 evaluations for each of 3 chunks of 2
    assert asked[1] == ("eval", 2 * 3 * 3, 4, True)  # the loss and the reconstruction, 3 batches, 3 repeats


def test_inductor_keeps_its_kernels_in_bfns_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BFN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    compiled.use_bfn_cache()
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compiled" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    compiled.use_bfn_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/elsewhere"  # the user's choice wins


def test_compiling_keeps_the_state_dict_and_uncompiles():
    model = _model("unet_vdm-continuous")
    keys = list(model.state_dict())
    compiled.compile_loss(model, torch.device("cpu"))
    compiled.compile_network(model, torch.device("cpu"))
    assert list(model.state_dict()) == keys and "loss_of_draws" in model.__dict__
    compiled.uncompile(model)
    assert not {"loss_of_draws", "reconstruction_of_draws", "network_call"} & set(model.__dict__)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_evaluation_reports_the_eager_figures(case):
    from bfncli.data.examples import DataSpec, TensorExamples
    from bfncli.jobs.evaluate import estimate
    from bfncli.jobs.runtime import Runtime
    from bfncli.samples_file import samples_kind

    eager = _model(case).eval()
    fast = copy.deepcopy(eager)
    compiled.compile_loss(fast, torch.device("cpu"))
    spec = DataSpec(samples_kind(eager).removesuffix("_image"), tuple(eager.data_shape))
    examples = TensorExamples(_data(eager, batch=130), spec)
    runtime = Runtime(device=torch.device("cpu"))
    a, b = (estimate(m, examples, 10, 2, 64, 3, runtime, progress=False) for m in (eager, fast))
    for key in ("loss_mean", "recon_mean"):
        assert abs(a[key] - b[key]) <= 1e-5 * abs(a[key]), (key, a[key], b[key])
    # A standard error is a difference of repeats, each within 1e-5 relative: so it is within 1e-5 of their mean.
    assert abs(a["total_stderr"] - b["total_stderr"]) <= 1e-5 * a["total_mean"]


def _no_compiler(fn, **kwargs):
    """What torch.compile gives on a machine whose compiler cannot build the kernels: a function whose
    first call fails."""
    def fails(*args, **kw):
        raise RuntimeError("InductorError: CppCompileError: C++ compile error\nno such file: g++")
    return fails


def test_a_compiler_that_fails_under_auto_warns_and_runs_eagerly(monkeypatch, caplog):
    model = _model("unet_vdm-continuous").eval()
    x = _data(model)
    t = torch.full((len(x),), 0.5)
    theta = model.flow.flow_sample(x, model._per_example(t, x), torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model.predict(theta, t)
        monkeypatch.setattr(torch, "compile", _no_compiler)
        compiled.compile_network(model, torch.device("cpu"), setting="sample.compile=auto")
        compiled.compile_loss(model, torch.device("cpu"), setting="eval.compile=auto")
        with caplog.at_level("WARNING", logger="bfn"):
            assert torch.equal(model.predict(theta, t).probs, expected.probs)
            assert torch.isfinite(model.loss(x, 10, torch.Generator().manual_seed(1)))
    said = [r.getMessage() for r in caplog.records]
    assert any("torch.compile failed (RuntimeError: InductorError: CppCompileError: C++ compile error); "
               "running eagerly (sample.compile=off skips trying)" in m for m in said), said
    assert any("eval.compile=off" in m for m in said), said


def test_a_compiler_that_fails_under_on_is_one_line(runs, call, monkeypatch, tmp_path):
    from conftest import assert_one_line_error, ckpt

    monkeypatch.setattr(torch, "compile", _no_compiler)
    result = call("sample", "--checkpoint", ckpt(runs, "img"), "--steps", 3, "-o", tmp_path / "s.safetensors",
                  "--set", "sample.compile=on")
    assert_one_line_error(result, "torch.compile failed on this machine (RuntimeError: InductorError",
                          "run with --set sample.compile=off", code=1)
    assert not (tmp_path / "s.safetensors").exists()
