"""Shared test helpers: the conformance fixtures and running the real `bfn` executable."""

import gzip
import io
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CONFORMANCE = Path(__file__).parent / "conformance"
FIXTURES = ["mnist", "cifar10_discretized_256bins", "text8"]


FAULT_INJECTION = Path(__file__).parent / "fault_injection.py"


def run_bfn(*args, env=None, stdin=None, cwd=None, timeout=600, text=True, faults=None):
    """Run `bfn ARGS...` as a subprocess, with no BFN_* variables leaking in from the test runner;
    ``faults`` (see fault_injection.py) runs it with those faults injected."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BFN_") or k == "BFN_CACHE_DIR"}
    full_env.update(env or {})
    command = [str(FAULT_INJECTION), faults] if faults else ["-m", "bfncli"]
    return subprocess.run([sys.executable, *command, *map(str, args)], capture_output=True, text=text,
                          env=full_env, input=stdin, cwd=cwd, timeout=timeout)


def assert_one_line_error(result, *needles, code=2):
    """A user error: the exit code, one line on stderr containing the needles, no traceback."""
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    assert result.returncode == code, (result.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep resumable-evaluation state out of the user's cache."""
    monkeypatch.setenv("BFN_CACHE_DIR", str(tmp_path / "cache"))


# ------------------------------------------------------------- bfn in this process
class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def call(capsys, monkeypatch, tmp_path):
    """Run ``bfn ARGS`` in this process: (exit code, stdout, stderr) as a Result."""
    from bfncli import config
    from bfncli.cli import main

    def run(*args, env=None, cwd=None, stdin=None):
        config._WARNED.clear()  # each call is a fresh `bfn` process: its warnings said once again
        for name in [k for k in os.environ if k.startswith("BFN_") and k != "BFN_CACHE_DIR"]:
            monkeypatch.delenv(name)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(cwd or tmp_path)
        if stdin is not None:
            data = stdin.encode() if isinstance(stdin, str) else stdin
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        capsys.readouterr()
        old = signal.getsignal(signal.SIGINT)
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 0
        finally:
            signal.signal(signal.SIGINT, old)
        out, err = capsys.readouterr()
        if code == 130:  # bfn caught a Ctrl-C meant for pytest: a test never swallows it (no bfn test sends one in-process)
            raise KeyboardInterrupt(err.strip())
        return Result(code, out, err)

    return run


# ------------------------------------------------------------------- tiny trained runs
IMAGE = ["--set", "network.embedding_dim=16", "--set", "network.n_blocks=1", "--set", "network.norm_groups=4",
         "--set", "network.output_adapter.input_height=17", "--set", "train.batch_size=8"]
TEXT = ["--preset", "pyhelp", "--set", "network.n_layer=1", "--set", "network.n_embd=32",
        "--set", "network.input_adapter.output_size=32", "--set", "train.batch_size=4"]
MNIST = ["--preset", "mnist-tiny", "--set", "train.batch_size=4"]


def _idx(images):
    n, h, w = images.shape
    return gzip.compress(struct.pack(">IIII", 0x803, n, h, w) + bytes(images.flatten().tolist()))


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Three tiny trained runs, shared by the test files: embedded digits, Python help text, MNIST
    (synthetic IDX files). Tests must not change them."""
    root = tmp_path_factory.mktemp("pipeline")
    mnist = root / "data" / "mnist"
    mnist.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for name, n in (("train-images-idx3-ubyte.gz", 200), ("t10k-images-idx3-ubyte.gz", 20)):
        (mnist / name).write_bytes(_idx(torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)))
    for name, args in (("img", IMAGE), ("txt", TEXT), ("mnist", MNIST + ["--data-dir", root / "data"])):
        result = run_bfn("train", *args, "--runs-dir", root / name, "--run-name", name, "--max-steps", 3, cwd=root)
        assert result.returncode == 0, result.stderr
    return root


def ckpt(runs, name):
    return next((runs / name / name / "checkpoints").glob("step-*/model.safetensors"))
