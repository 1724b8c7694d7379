"""Training through the real CLI on tiny configurations: exact resume after SIGKILL at awkward
moments, signals, non-finite steps, two processes, and bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import FAULT_INJECTION, assert_one_line_error, run_bfn
from safetensors.torch import load_file, save_file

# A very small network on 20 examples in batches of 8: epochs end mid-step and on step boundaries.
TINY = ["--set", "network.embedding_dim=16", "--set", "network.n_blocks=1", "--set", "network.norm_groups=4",
        "--set", "network.output_adapter.input_height=17", "--set", "train.batch_size=8",
        "--set", "train.checkpoint_every=4", "--set", "train.val_every=1000", "--set", "network.dropout_prob=0.1"]


@pytest.fixture
def work(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = (torch.randint(0, 16, (20, 8, 8, 1), generator=g).float() * 2 + 1) / 16 - 1
    save_file({"data": data}, str(tmp_path / "tiny.safetensors"))
    return tmp_path


def train(work, name, *extra, env=None, steps=10, runner=run_bfn, faults=None):
    more = {"faults": faults} if faults else {}
    return runner("train", *TINY, "--data", work / "tiny.safetensors", "--runs-dir", work / "runs",
                  "--run-name", name, "--max-steps", steps, *extra, env=env, cwd=work, **more)


def losses(work, name):
    lines = (work / "runs" / name / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


def assert_same_run(work, a, b, step=10):
    """Every tensor of the two runs' last checkpoints (raw weights, EMA weights and buffers, optimizer
    state, the release file), every logged loss and the counters are equal, bit for bit."""
    for name in ("model.safetensors", "state.safetensors"):
        sa, sb = (load_file(str(work / "runs" / run / "checkpoints" / f"step-{step:08d}" / name)) for run in (a, b))
        assert sa.keys() == sb.keys()
        differ = {key: float((sa[key].double() - sb[key].double()).abs().max()) for key in sa
                  if not torch.equal(sa[key], sb[key])}
        assert not differ, f"{name}: {differ}"
    assert any(k.startswith("optim.") for k in sa) and "ema.input_adapter.pos_feats" in sa  # buffers too
    info = [json.loads((work / "runs" / run / "checkpoints" / f"step-{step:08d}" / "state.json").read_text())
            for run in (a, b)]
    assert info[0] == info[1]
    assert losses(work, a) == losses(work, b)


@pytest.fixture
def reference(work):
    result = train(work, "ref")
    assert result.returncode == 0, result.stderr
    return work


@pytest.mark.parametrize("fault,extra", [
    ("kill:6:0", []),  # mid-epoch (epochs are 2.5 steps long), after the step-4 checkpoint
    pytest.param("kill:5:0", [], marks=pytest.mark.slow),  # right at an epoch boundary (step 5 starts at example 40)
    ("kill-save:8", []),  # while the step-8 checkpoint is half-written
])
def test_resume_after_sigkill_is_bit_for_bit(reference, fault, extra):
    work = reference
    killed = train(work, "cut", *extra, faults=fault)
    assert killed.returncode == -signal.SIGKILL
    resumed = train(work, "cut", "--resume", "auto", *extra)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming cut from step" in resumed.stderr
    assert_same_run(work, "ref", "cut")


@pytest.mark.slow
def test_resume_is_bit_for_bit_every_time(reference):
    # Each kill/resume case, again and again: a fault that shows one time in a few (as the EMA buffer
    # drift once did) fails here, where the fast test above would pass most of the time.
    work = reference
    for attempt in range(4):
        for fault in ("kill:6:0", "kill:5:0", "kill-save:8", "kill:9:0"):
            name = f"cut-{attempt}-{fault.replace(':', '-')}"
            assert train(work, name, faults=fault).returncode == -signal.SIGKILL
            resumed = train(work, name, "--resume", "auto")
            assert resumed.returncode == 0, resumed.stderr
            assert_same_run(work, "ref", name)


@pytest.mark.slow
def test_resume_with_compile_on_is_bit_for_bit(work):
    """train.compile=on (inductor on the CPU): a killed and resumed run is the uninterrupted one."""
    on = ["--set", "train.compile=on"]
    first = train(work, "cref", *on)
    assert first.returncode == 0, first.stderr
    assert "compiled: the first training step took" in first.stderr
    assert train(work, "ccut", *on, faults="kill:6:0").returncode == -signal.SIGKILL
    assert train(work, "ccut", *on, "--resume", "auto").returncode == 0
    assert_same_run(work, "cref", "ccut")


def test_resume_mid_accumulation_is_bit_for_bit(work):
    acc = ["--set", "train.accumulate=2"]
    assert train(work, "ref2", *acc).returncode == 0
    assert train(work, "cut2", *acc, faults="kill:6:1").returncode == -signal.SIGKILL
    assert train(work, "cut2", *acc, "--resume", "auto").returncode == 0
    assert_same_run(work, "ref2", "cut2")


def test_damaged_newest_checkpoint_is_skipped_by_name(reference):
    work = reference
    newest = work / "runs" / "ref" / "checkpoints" / "step-00000010" / "state.safetensors"
    newest.write_bytes(newest.read_bytes()[:-10])
    result = train(work, "ref", "--resume", "auto", steps=12)
    assert result.returncode == 0, result.stderr
    assert "skipping damaged checkpoint step-00000010: state.safetensors does not match its checksum" in result.stderr
    assert "from step 8" in result.stderr


def start_long_run(work, name, logged=3):
    """A run that would go on for ages, once it has logged ``logged`` steps."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bfncli", "train", *TINY, "--data", str(work / "tiny.safetensors"),
         "--runs-dir", str(work / "runs"), "--run-name", name, "--max-steps", "100000"],
        stderr=subprocess.PIPE, text=True, cwd=work, env={k: v for k, v in os.environ.items() if not k.startswith("BFN_")})
    metrics = work / "runs" / name / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < logged):
        time.sleep(0.2)
    return proc


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_the_current_step_and_exits(work, sig, code):
    proc = start_long_run(work, "stop")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    saved = sorted((work / "runs" / "stop" / "checkpoints").glob("step-*"))
    last_logged = json.loads((work / "runs" / "stop" / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert saved and saved[-1].name == f"step-{last_logged:08d}"
    assert (saved[-1] / "manifest.json").exists()
    assert stderr.startswith(f"run folder: {work / 'runs' / 'stop'}\n")  # where the run goes, then where it stopped
    said = stderr.strip().splitlines()[-1]
    assert said.startswith(f"stopped at step {last_logged}; checkpoint in {saved[-1]}; resume with: bfn train ")
    assert said.endswith(f"--max-steps 100000 --resume auto --run-name stop --runs-dir {work / 'runs'}")


def test_a_second_signal_exits_at_once_and_the_last_checkpoint_survives(work):
    proc = start_long_run(work, "twice", logged=5)  # past the step-4 checkpoint
    proc.send_signal(signal.SIGINT)
    time.sleep(0.02)  # wherever the second one lands (step, checkpoint write, exit), it must not hurt
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    # 130, or killed by SIGINT if it landed while Python was already shutting down (a shell says 130 for both)
    assert proc.returncode in (130, -signal.SIGINT), stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    committed = [p for p in (work / "runs" / "twice" / "checkpoints").glob("step-*") if (p / "manifest.json").exists()]
    newest = max(int(p.name.split("-")[1]) for p in committed)
    resumed = train(work, "twice", "--resume", "auto", steps=newest + 2)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming twice from step {newest}" in resumed.stderr and "skipping" not in resumed.stderr


def test_non_finite_steps_are_skipped_then_stop(work):
    result = train(work, "nan", faults="nan:2")
    assert result.returncode == 0, result.stderr
    assert "step 3: non-finite loss or gradients; step skipped" in result.stderr
    info = json.loads((work / "runs" / "nan" / "checkpoints" / "step-00000010" / "state.json").read_text())
    assert info["skipped_steps"] == 1
    weights = load_file(str(work / "runs" / "nan" / "checkpoints" / "step-00000010" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    stop = train(work, "nan2", "--set", "train.max_nonfinite_steps=3", faults="nan:3,4,5,6")
    assert stop.returncode == 1 and "Traceback" not in stop.stderr
    assert stop.stderr.strip().splitlines()[-1].startswith("bfn train: stopping: 3 non-finite steps in a row at step 6")


def test_non_finite_steps_counted_on_the_device(call, work, monkeypatch):
    """The GPU's path (fused AdamW skipping through found_inf, the EMA weighted by finiteness, flags
    read back only when a metrics line is written), run on the CPU: the same skips, the same stop."""
    from bfncli.jobs import train as job

    monkeypatch.setattr(job, "_device_checks", lambda device, precision: True)
    micro_step = job.Trainer._micro_step

    def nan_at(steps):
        def faulty(self, step, micro):
            loss = micro_step(self, step, micro)
            return loss * float("nan") if step in steps else loss
        return faulty

    monkeypatch.setattr(job.Trainer, "_micro_step", nan_at({2}))
    base = ["train", *TINY, "--data", str(work / "tiny.safetensors"), "--runs-dir", str(work / "runs"),
            "--set", "train.log_every=4"]
    result = call(*base, "--run-name", "dev", "--max-steps", "10", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "step 3: non-finite loss or gradients; step skipped" in result.stderr
    info = json.loads((work / "runs" / "dev" / "checkpoints" / "step-00000010" / "state.json").read_text())
    assert info["skipped_steps"] == 1
    state = load_file(str(work / "runs" / "dev" / "checkpoints" / "step-00000010" / "state.safetensors"))
    assert all(torch.isfinite(t).all() for t in state.values())
    monkeypatch.setattr(job.Trainer, "_micro_step", nan_at({3, 4, 5, 6}))
    stop = call(*base, "--run-name", "dev2", "--max-steps", "10", "--set", "train.max_nonfinite_steps=3", cwd=work)
    assert stop.returncode == 1
    assert "stopping: 3 non-finite steps in a row at step 6" in stop.stderr


@pytest.mark.parametrize("compile_", ["off", pytest.param("on", marks=pytest.mark.slow)])
def test_two_processes_train_in_step(work, compile_):
    """Two processes (DDP through accelerate) keep their weights in step, eager and compiled."""
    run = f"ddp-{compile_}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(FAULT_INJECTION), "check-sync", "train", *TINY, "--data", str(work / "tiny.safetensors"), "--runs-dir",
           str(work / "runs"), "--run-name", run, "--max-steps", "6", "--set", "train.val_every=3",
           "--set", f"train.compile={compile_}"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BFN_")}, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[:3000]  # the first lines say why
    assert ("compiled: the first training step took" in result.stderr) == (compile_ == "on")
    records = [json.loads(line) for line in (work / "runs" / run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 7))  # one writer, not two
    assert sum("val_total" in r for r in records) == 2
    assert sorted(p.name for p in (work / "runs" / run / "checkpoints").iterdir()) == ["step-00000004",
                                                                                     "step-00000006"]


def test_trained_checkpoint_evaluates_and_samples_without_flags(reference):
    work = reference
    result = run_bfn("eval", "--repeats", 2, "--data", work / "tiny.safetensors", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "using checkpoint runs/ref/checkpoints/step-00000010/model.safetensors" in result.stderr
    assert "total" in result.stdout
    plot = run_bfn("render", work / "runs" / "ref", cwd=work)
    assert plot.returncode == 0, plot.stderr
    assert (work / "runs" / "ref" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    newest = work / "runs" / "ref" / "checkpoints" / "step-00000010" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF  # same size, one weight changed
    newest.write_bytes(bytes(data))
    damaged = run_bfn("eval", "--repeats", 1, "--data", work / "tiny.safetensors", cwd=work)
    assert damaged.returncode == 0, damaged.stderr
    assert "skipping damaged checkpoint runs/ref/checkpoints/step-00000010: model.safetensors does not match" \
        in damaged.stderr
    assert "using checkpoint runs/ref/checkpoints/step-00000008/model.safetensors" in damaged.stderr


def test_bad_training_input(reference, call):
    work = reference
    assert_one_line_error(train(work, "x", "--resume", str(work / "nope"), runner=call), "--resume", "no such checkpoint", code=3)
    assert_one_line_error(train(work, "ref", runner=call), "already exists", "--resume auto")
    changed = train(work, "ref", "--resume", "auto", "--set", "optim.lr=0.5", steps=12, runner=call)
    assert_one_line_error(changed, "cannot resume with a config that changes the run", "optim.lr: 0.001 -> 0.5")
    odd = train(work, "odd", "--set", "train.batch_size=7", "--set", "train.accumulate=2", runner=call)
    assert_one_line_error(odd, "train.batch_size (7) must be divisible")
    assert_one_line_error(train(work, "../escape", runner=call), "must be a plain name")
    (work / "afile").write_text("")
    not_a_dir = call("train", *TINY, "--data", work / "tiny.safetensors", "--runs-dir", work / "afile",
                     "--max-steps", 2, cwd=work)
    assert_one_line_error(not_a_dir, "cannot create the run directory", "Not a directory")


def test_network_shape_follows_your_own_images(tmp_path):
    import numpy as np
    from matplotlib import pyplot as plt

    folder = tmp_path / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        plt.imsave(str(folder / f"{i}.png"), rng.random((16, 16, 3)))
    result = run_bfn("train", "--data", folder, "--max-steps", 2, "--run-name", "rgb", "--runs-dir", tmp_path / "runs",
                     "--set", "train.batch_size=4", "--set", "network.n_blocks=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from bfncli.checkpoint import read_info

    info = read_info(next((tmp_path / "runs" / "rgb" / "checkpoints").glob("*/model.safetensors")))
    assert info.config.network.input_adapter.input_shape == (16, 16)
    assert info.config.network.input_channels == 3 and info.config.data.dataset == "images"
    evaluated = run_bfn("eval", "--data", folder, "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert '"n_examples": 12' in evaluated.stdout  # all the pictures given


def test_validation_uses_the_continuous_time_loss_and_random_text_windows(tmp_path, monkeypatch):
    # The best checkpoint follows the continuous-time validation loss (as the official code validates),
    # whatever loss the run trains with, and not the total (loss + reconstruction); text validates on
    # random windows of the split, the same ones every time, not on its first overlapping windows.
    from types import SimpleNamespace

    from bfncli.checkpoint import read_info
    from bfncli.config import resolve_config
    from bfncli.data import load_split
    from bfncli.jobs import evaluate
    from bfncli.jobs.train import Trainer

    cfg = resolve_config("pyhelp", sets=["train.loss_steps=20"], environ={})
    val = load_split(cfg.data, "val")
    calls = []
    # (loss, reconstruction) per validation: the second has a better loss but a worse total.
    results = iter([(2.0, 0.1), (1.9, 0.5), (1.95, 0.0)])

    def fake_estimate(model, examples, n_steps, repeats, batch_size, seed, runtime, **kwargs):
        calls.append((n_steps, examples.indices.clone(), seed))
        loss, recon = next(results)
        return {"loss_mean": loss, "recon_mean": recon, "total_mean": loss + recon}

    monkeypatch.setattr(evaluate, "estimate", fake_estimate)
    trainer = Trainer.__new__(Trainer)
    net = torch.nn.Linear(2, 2)
    trainer.cfg, trainer.val_set, trainer.run_dir = cfg, val, tmp_path
    trainer.runtime, trainer.ema, trainer.model = SimpleNamespace(is_main=True), SimpleNamespace(net=net), net
    state = {"best_val_loss": None}
    metrics = tmp_path / "metrics.jsonl"
    for step in (100, 200, 300):
        trainer._validate(step, state, metrics)
        if step == 200:
            assert read_info(tmp_path / "best.safetensors").step == 200

    assert [c[0] for c in calls] == [0, 0, 0]  # continuous time, although the run trains on 20 steps
    assert [json.loads(line)["val_best"] for line in metrics.read_text().splitlines()] == [True, True, False]
    assert state["best_val_loss"] == 1.9 and read_info(tmp_path / "best.safetensors").step == 200
    windows = calls[0][1]
    n = cfg.train.max_val_batches * cfg.train.val_batch_size
    assert len(windows) == n == len(set(windows.tolist())) and len(val) > 10 * n
    assert all(torch.equal(c[1], windows) for c in calls)  # the same windows at every validation
    assert windows.max() > len(val) // 2 and not torch.equal(windows.sort().values, torch.arange(n))
    assert len({c[2] for c in calls}) == 3  # but fresh flow noise each time


def test_best_exists_from_the_first_checkpoint_and_resuming_a_finished_run_says_so(work, call):
    """best.safetensors is the newest EMA weights until the first validation, so a short run's
    examples work; resuming with fewer steps than the run has says so instead of 'done'."""
    from bfncli.checkpoint import read_info

    assert train(work, "short", steps=6, runner=call).returncode == 0
    best = work / "runs" / "short" / "best.safetensors"
    assert read_info(best).step == 6  # no validation yet (train.val_every=1000): the last checkpoint's weights
    config = (work / "runs" / "short" / "config.yaml").read_text()

    past = train(work, "short", "--resume", "auto", steps=3, runner=call)
    assert_one_line_error(past, "already at step 6", "past the 3 steps")
    same = train(work, "short", "--resume", "auto", steps=6, runner=call)
    assert same.returncode == 0 and "already trained its 6 steps" in same.stderr and "done" not in same.stderr
    assert (work / "runs" / "short" / "config.yaml").read_text() == config  # untouched
