"""Shared test helpers: the conformance fixtures and running the real `bfn` executable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFORMANCE = Path(__file__).parent / "conformance"
FIXTURES = ["mnist", "cifar10_discretized_256bins", "text8"]


def run_bfn(*args, env=None, stdin=None, cwd=None, timeout=600, text=True):
    """Run `bfn ARGS...` as a subprocess, with no BFN_* variables leaking in from the test runner."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BFN_") or k == "BFN_CACHE_DIR"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "bfncli", *map(str, args)], capture_output=True, text=text,
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
