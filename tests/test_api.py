"""The Python API (bfncli.api) against the commands doing the same thing: the same samples for the
same seed, the same evaluation, the same checkpoint after training, the same pictures; user errors
as BFNError with the command's one line; no torch on import; the README's examples as written."""

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from conftest import IMAGE, ckpt, run_bfn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import bfncli as bfn
from bfncli import BFNError

TINY_SETS = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in IMAGE[1::2])}
README = Path(__file__).parent.parent / "README.md"


def one_line(result) -> str:
    assert result.returncode in (2, 3), result.stderr  # a usage error, or a bad input file
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same tiny class-conditional run, trained by `bfn train` and by bfncli.train."""
    root = tmp_path_factory.mktemp("api-train")
    args = ["--preset", "default-cond", *IMAGE, "--max-steps", 3, "--set", "train.val_every=2",
            "--set", "optim.lr=2e-3"]
    result = run_bfn("train", *args, "--runs-dir", root / "cli", "--run-name", "r", cwd=root)
    assert result.returncode == 0, result.stderr
    run = bfn.train(preset="default-cond", sets={**TINY_SETS, "train.val_every": 2, "optim.lr": 2e-3},
                    max_steps=3, runs_dir=root / "api", run_name="r", progress=False)
    return root, run


# ------------------------------------------------------------------------------- import
def test_importing_bfncli_loads_no_torch_until_a_function_needs_it():
    code = """
import sys
import bfncli as bfn
assert 'torch' not in sys.modules
names = (bfn.load, bfn.train, bfn.render, bfn.Model, bfn.TrainingResult, bfn.BFNError)
assert 'torch' not in sys.modules, 'the API names'
cfg = bfn.config("cifar10-256d", {"train.batch_size": 64})
assert cfg.train.batch_size == 64 and 'torch' not in sys.modules, 'config'
assert bfn.load.__doc__ and 'official:NAME' in bfn.load.__doc__
try:
    bfn.load("nope.safetensors")
except bfn.BFNError as err:
    print(err)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "checkpoint 'nope.safetensors' does not exist"


def test_the_public_surface_is_documented():
    for thing in (bfn.load, bfn.train, bfn.render, bfn.Model.sample, bfn.Model.evaluate, bfn.Model.loss,
                  bfn.Model.save, bfn.Model.to, bfn.TrainingResult):
        assert thing.__doc__ and len(thing.__doc__) > 60, thing
    assert set(bfn.__all__) <= set(dir(bfn))
    assert "bfncli.config" in bfn.config.__doc__ or "callable" in bfn.config.__doc__
    from bfncli.errors import UserError

    assert UserError is BFNError  # what the jobs raise is what the API promises


# ------------------------------------------------------------------------------- sample
@pytest.mark.parametrize("cli,api", [
    (["--shape", "5,8,8,1", "--steps", 4, "--seed", 3], dict(n=5, steps=4, seed=3)),
    (["--shape", "3,8,8,1", "--steps", 6, "--sampler", "ode", "--batch-size", 2], dict(n=3, steps=6, sampler="ode",
                                                                                        batch_size=2)),
])
def test_samples_are_the_commands_samples(runs, tmp_path, call, cli, api):
    out = tmp_path / "cli.safetensors"
    result = call("sample", "--checkpoint", ckpt(runs, "img"), *cli, "-o", out)
    assert result.returncode == 0, result.stderr
    model = bfn.load(ckpt(runs, "img"), device="cpu")
    x = model.sample(**api, progress=False, output=tmp_path / "api.safetensors")
    assert torch.equal(x, load_file(str(out))["samples"])
    with safe_open(str(out), "pt") as a, safe_open(str(tmp_path / "api.safetensors"), "pt") as b:
        assert a.metadata() == b.metadata()  # the file is the command's file too


def test_text_and_class_samples_are_the_commands_samples(runs, trained, tmp_path, call):
    out = tmp_path / "t.safetensors"
    assert call("sample", "--checkpoint", ckpt(runs, "txt"), "--shape", "2,64", "--steps", 5, "--prompt", "def ",
                "-o", out).returncode == 0
    text = bfn.load(ckpt(runs, "txt"), device="cpu").sample(2, steps=5, prompt="def ", progress=False)
    assert torch.equal(text, load_file(str(out))["samples"])
    _, run = trained
    out = tmp_path / "c.safetensors"
    assert call("sample", "--checkpoint", run.checkpoint, "--class", "3,3,7", "--guidance", 2, "--steps", 4,
                "-o", out).returncode == 0
    model = bfn.load(run.run_dir, device="cpu")  # a run folder: its newest checkpoint
    assert model.path == run.checkpoint and model.class_names == [str(i) for i in range(10)]
    for classes in ("3,3,7", [3, 3, 7], ["3", "3", "7"], torch.tensor([3, 3, 7])):
        x = model.sample(classes=classes, guidance=2, steps=4, progress=False)
        assert torch.equal(x, load_file(str(out))["samples"]), classes
    assert model.sample(classes=7, steps=2, progress=False).shape == (16, 8, 8, 1)  # one class for all


# --------------------------------------------------------------------------------- eval
@pytest.mark.parametrize("cli,api", [
    (["--steps", 0, "--repeats", 2], dict(steps=0, repeats=2)),
    (["--steps", 10, "--repeats", 2, "--batch-size", 7, "--seed", 5, "--data", "few.safetensors"],
     dict(steps=10, repeats=2, batch_size=7, seed=5, data="few.safetensors")),
])
def test_evaluation_is_the_commands_report(runs, tmp_path, call, monkeypatch, cli, api):
    g = torch.Generator().manual_seed(0)
    few = (torch.randint(0, 16, (10, 8, 8, 1), generator=g).float() * 2 + 1) / 16 - 1  # 16 bins, as the model's
    save_file({"data": few}, str(tmp_path / "few.safetensors"))
    monkeypatch.chdir(tmp_path)
    # separate resume caches, or the second would read the first one's repeats
    result = call("eval", "--checkpoint", ckpt(runs, "img"), *cli, "--json", env={"BFN_CACHE_DIR": str(tmp_path / "a")})
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("BFN_CACHE_DIR", str(tmp_path / "b"))
    report = bfn.load(ckpt(runs, "img"), device="cpu").evaluate(**api, progress=False)
    assert report == json.loads(result.stdout)


def test_conditional_evaluation_and_changed_weights(trained, tmp_path, call, monkeypatch):
    _, run = trained
    result = call("eval", "--checkpoint", run.checkpoint, "--class", "none", "--repeats", 1, "--json",
                  env={"BFN_CACHE_DIR": str(tmp_path / "a")})
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("BFN_CACHE_DIR", str(tmp_path / "b"))
    model = bfn.load(run.checkpoint, device="cpu")
    assert model.evaluate(classes="none", repeats=1, progress=False) == json.loads(result.stdout)
    # The resume cache is keyed by the weights as they are now, not as they were loaded.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    changed = model.evaluate(classes="none", repeats=1, progress=False)
    assert changed["loss_mean"] != json.loads(result.stdout)["loss_mean"]


def test_sample_quality_is_the_commands_report(runs, tmp_path, call):
    text = tmp_path / "t.safetensors"
    model = bfn.load(ckpt(runs, "txt"), device="cpu")
    x = model.sample(3, steps=4, output=text, progress=False)
    result = call("eval", "--checkpoint", ckpt(runs, "txt"), "--samples", text, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert model.evaluate(samples=text) == report
    from_tensor = model.evaluate(samples=x)
    assert from_tensor == {**report, "samples": None, "sample_steps": None, "sample_seed": None}


# --------------------------------------------------------------------------------- train
def test_training_gives_the_commands_checkpoint(trained):
    root, run = trained
    cli_run = root / "cli" / "r"
    assert run.run_dir == root / "api" / "r" and run.step == 3
    assert run.checkpoint == run.run_dir / "checkpoints" / "step-00000003" / "model.safetensors"
    assert (cli_run / "config.yaml").read_text() == (run.run_dir / "config.yaml").read_text()
    for name in ("checkpoints/step-00000003/model.safetensors", "best.safetensors"):
        a, b = load_file(str(cli_run / name)), load_file(str(run.run_dir / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    records = [json.loads(line) for line in (cli_run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "loss" in r][-1]
    validation = [r for r in records if "val_loss" in r][-1]
    assert run.metrics["loss"] == last["loss"] and run.metrics["val_loss"] == validation["val_loss"]
    assert run.metrics["step"] == 3 and run.metrics["val_step"] == 2


def test_a_config_object_trains_as_it_says_also_in_a_thread(tmp_path):
    cfg = bfn.config("default", {**TINY_SETS, "train.steps": 1})
    assert cfg == bfn.config(sets=[f"{k}={v}" for k, v in TINY_SETS.items()] + ["train.steps=1"])
    runs = []  # a thread cannot set signal handlers: training there goes without them
    thread = threading.Thread(target=lambda: runs.append(bfn.train(config=cfg, runs_dir=tmp_path, run_name="obj",
                                                                   progress=False)))
    thread.start()
    thread.join()
    assert runs and runs[0].step == 1 and (runs[0].run_dir / "config.yaml").read_text() == cfg.to_yaml()


def test_ctrl_c_in_training_is_a_keyboard_interrupt_and_the_handlers_come_back(tmp_path, monkeypatch):
    from bfncli.jobs.train import Trainer

    classes = Trainer._classes  # called in every micro-step: Ctrl-C arrives during step 1 (the second)
    monkeypatch.setattr(Trainer, "_classes", lambda self, index, step, slot: (
        step == 1 and signal.raise_signal(signal.SIGINT), classes(self, index, step, slot))[1])
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="resume='auto'"):
        bfn.train(sets=TINY_SETS, max_steps=5, runs_dir=tmp_path, run_name="stop", progress=False)
    assert signal.getsignal(signal.SIGINT) is before
    assert sorted(p.name for p in (tmp_path / "stop" / "checkpoints").iterdir()) == ["step-00000002"]


# ------------------------------------------------------------------------- loss and save
def test_loss_is_differentiable_and_is_the_models_loss(runs, tmp_path):
    model = bfn.load(ckpt(runs, "img"), device="cpu")
    x = model.sample(4, steps=3, progress=False)
    for steps in (0, 10):
        loss = model.loss(x, steps=steps, generator=torch.Generator().manual_seed(1))
        same = model.module.loss(x, steps, torch.Generator().manual_seed(1))
        assert torch.equal(loss, same)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    path = model.save(tmp_path / "copy.safetensors")
    again = bfn.load(path, device="cpu")
    assert torch.equal(again.sample(2, steps=3, seed=4, progress=False), model.sample(2, steps=3, seed=4, progress=False))
    with pytest.raises(BFNError, match="already exists; pass force=True"):
        model.save(path)
    model.save(path, force=True)
    binary = bfn.load(ckpt(runs, "mnist"), device="cpu")
    with pytest.raises(BFNError, match=r"integers 0\.\.1"):
        binary.loss(torch.rand(2, 28, 28, 1))
    with pytest.raises(BFNError, match=r"takes \(B, 8, 8, 1\)"):
        model.loss(torch.zeros(2, 28, 28, 1))


# ------------------------------------------------------------------------------- render
def test_pictures_and_text_are_the_commands(runs, tmp_path, call):
    samples = tmp_path / "s.safetensors"
    x = bfn.load(ckpt(runs, "img"), device="cpu").sample(6, steps=3, output=samples, progress=False)
    assert call("render", samples, "-o", tmp_path / "cli.png", "--cols", 3).returncode == 0
    assert bfn.render(x, tmp_path / "api.png", cols=3) == tmp_path / "api.png"
    assert (tmp_path / "api.png").read_bytes() == (tmp_path / "cli.png").read_bytes()
    assert bfn.render(samples, tmp_path / "file.png", cols=3) == tmp_path / "file.png"
    assert (tmp_path / "file.png").read_bytes() == (tmp_path / "cli.png").read_bytes()
    text = tmp_path / "t.safetensors"
    t = bfn.load(ckpt(runs, "txt"), device="cpu").sample(2, steps=3, output=text, progress=False)
    assert bfn.render(t) == call("render", text).stdout
    assert bfn.render(runs / "img" / "img", tmp_path / "loss.png") == tmp_path / "loss.png"  # a run's curves


def test_class_rows_are_the_commands(trained, tmp_path, call):
    _, run = trained
    model = bfn.load(run.checkpoint, device="cpu")
    samples = tmp_path / "s.safetensors"
    x = model.sample(12, steps=2, output=samples, progress=False)
    assert call("render", samples, "-o", tmp_path / "cli.png").returncode == 0
    bfn.render(x, tmp_path / "api.png", classes=torch.arange(12) % 10, class_names=model.class_names)
    assert (tmp_path / "api.png").read_bytes() == (tmp_path / "cli.png").read_bytes()


# ------------------------------------------------------------------------------- errors
def test_user_errors_are_bfn_errors_with_the_commands_message(runs, tmp_path, call):
    img = ckpt(runs, "img")
    model = bfn.load(img, device="cpu")
    (tmp_path / "taken.safetensors").write_bytes(b"")
    cases = [
        (["sample", "--checkpoint", img, "--steps", 0, "-o", tmp_path / "o.safetensors"],
         lambda: model.sample(steps=0)),
        (["sample", "--checkpoint", img, "--class", 3, "-o", tmp_path / "o.safetensors"],
         lambda: model.sample(classes=3)),
        (["sample", "--checkpoint", img, "--sampler", "paper", "--eta", 0.1, "-o", tmp_path / "o.safetensors"],
         lambda: model.sample(sampler="paper", eta=0.1)),
        (["sample", "--checkpoint", img, "-o", tmp_path / "taken.safetensors"],
         lambda: model.sample(output=tmp_path / "taken.safetensors")),
        (["sample", "--checkpoint", img, "-o", tmp_path / "o.png"], lambda: model.sample(output=tmp_path / "o.png")),
        (["sample", "--checkpoint", img, "--set", "sample.sampler=fast", "-o", tmp_path / "o.safetensors"],
         lambda: model.sample(sets={"sample.sampler": "fast"})),
        (["eval", "--checkpoint", img, "--repeats", 0], lambda: model.evaluate(repeats=0)),
        (["eval", "--checkpoint", img, "--class", "none"], lambda: model.evaluate(classes="none")),
        (["eval", "--checkpoint", img, "--class", "3"], lambda: model.evaluate(classes="3")),
        (["eval", "--checkpoint", img, "--samples", tmp_path / "taken.safetensors", "--repeats", 2],
         lambda: model.evaluate(samples=tmp_path / "taken.safetensors", repeats=2)),
        (["eval", "--checkpoint", img, "--data", tmp_path / "missing"], lambda: model.evaluate(data=tmp_path / "missing")),
        (["eval", "--checkpoint", tmp_path / "nope.safetensors"], lambda: bfn.load(tmp_path / "nope.safetensors")),
        (["eval", "--checkpoint", "hf://only-two/parts"], lambda: bfn.load("hf://only-two/parts")),
        (["eval", "--runs-dir", tmp_path / "empty"], lambda: bfn.load(runs_dir=tmp_path / "empty")),
        (["train", "--preset", "nope", "--dry-run"], lambda: bfn.config("nope")),
        (["train", "--set", "train.batch_sise=3", "--dry-run"], lambda: bfn.config(sets={"train.batch_sise": 3})),
        (["train", "--set", "optim.lr=-1", "--dry-run"], lambda: bfn.config(sets=["optim.lr=-1"])),
        (["train", "--init", img, "--resume", "auto", "--runs-dir", tmp_path],
         lambda: bfn.train(init=img, resume="auto", runs_dir=tmp_path)),
        (["render", tmp_path / "taken.safetensors"], lambda: bfn.render(tmp_path / "taken.safetensors")),
    ]
    for args, api in cases:
        result = call(*args)
        expected = one_line(result)
        with pytest.raises(BFNError) as err:
            api()
        assert f"bfn {args[0]}: {err.value}" == expected
        assert err.value.exit_code == result.returncode


def test_api_only_errors(runs, tmp_path):
    model = bfn.load(ckpt(runs, "img"), device="cpu")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(BFNError, match="number of samples"):
            model.sample(bad)
    with pytest.raises(BFNError, match="give output="):
        model.sample(trajectory=True)
    with pytest.raises(BFNError, match="--frames sets how many steps --trajectory records"):
        model.sample(frames=5)  # as bfn sample --frames without --trajectory
    with pytest.raises(BFNError, match="render takes samples"):
        bfn.render([1, 2, 3])
    with pytest.raises(BFNError, match="either preset= or a config object"):
        bfn.train("default", config=bfn.config())


# ------------------------------------------------------------------------------- README
def test_the_readme_examples_run_as_written(runs, tmp_path, monkeypatch, capsys):
    """The README's "Python API" section, with local tiny checkpoints instead of the released
    weights and a few training steps of a tiny network instead of hundreds of a real one."""
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    code = "\n".join(blocks)
    tiny = "**" + repr(TINY_SETS)
    for old, new in (('"official:mnist"', repr(str(ckpt(runs, "img")))),  # 8x8 digits: faster than MNIST
                     ('"official:text8"', repr(str(ckpt(runs, "txt")))),
                     ('max_steps=500, sets={"optim.lr": 2e-4}', 'max_steps=2, sets={"optim.lr": 2e-4, ' + tiny + "}"),
                     ("max_steps=2000)", "max_steps=2, sets={" + tiny + "})"),
                     ("steps=784, repeats=10)", "steps=784, repeats=1)")):
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["x"].shape == (16, 8, 8, 1) and namespace["report"]["n_steps"] == 784
    assert namespace["loss"].requires_grad and namespace["run"].step == 2
    assert namespace["cfg"].train.batch_size == 64
    assert (tmp_path / "grid.png").exists() and (tmp_path / "sevens.png").exists()
    assert bfn.load("finetuned.safetensors", device="cpu").class_names == [str(i) for i in range(10)]
    printed = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(printed) == 4 and all(line.startswith("in the beginning") for line in printed)
