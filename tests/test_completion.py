"""Shell completion (bfncli/completion.py): the script installs, and Tab completes presets, samplers,
class names, checkpoints and runs, without importing torch."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import run_bfn
from safetensors.torch import save_file


def complete(*words, cwd=None):
    """What bash gets for Tab after ``bfn WORDS`` (the last word is the one being typed)."""
    line = " ".join(["bfn", *words])
    env = {"_BFN_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(words))}
    result = run_bfn(env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def in_bash(*args, env=None, cwd=None):
    """``bfn ARGS`` run from bash, as a user does: Typer finds the shell from the process tree."""
    script = '"$0" -m bfncli "$@"; status=$?; exit $status'  # not the last command: bash does not exec it away
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BFN_")}
    full_env.update(env or {})
    return subprocess.run(["bash", "--norc", "-c", script, sys.executable, *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=120)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_completion_script_is_shown_and_installed(tmp_path):
    shown = in_bash("--show-completion")
    assert shown.returncode == 0, shown.stderr
    assert "_BFN_COMPLETE=complete_bash" in shown.stdout and "complete -o default -F _bfn_completion bfn" in shown.stdout
    home = tmp_path / "home"
    home.mkdir()
    installed = in_bash("--install-completion", env={"HOME": str(home)})
    assert installed.returncode == 0, installed.stderr
    script = home / ".bash_completions" / "bfn.sh"
    assert script.read_text().strip() == shown.stdout.strip()
    assert str(script) in (home / ".bashrc").read_text()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_installed_script_completes_in_bash(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bfn").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bfncli "$@"\n')
    (bin_dir / "bfn").chmod(0o755)
    (tmp_path / "bfn.sh").write_text(in_bash("--show-completion").stdout)
    probe = ("source bfn.sh; COMP_WORDS=(bfn train --preset text8); COMP_CWORD=3; _bfn_completion bfn; "
             'printf "%s\\n" "${COMPREPLY[@]}"')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "--norc", "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {"text8", "text8-tiny"}


def test_presets_and_samplers():
    assert set(complete("train", "--preset", "mn")) == {"mnist", "mnist-tiny", "mnist-cond"}
    assert "default" in complete("train", "--preset", "")
    assert "cifar10-256d" in complete("convert", "x.pt", "-p", "cifar")
    assert complete("sample", "--sampler", "od") == ["ode", "ode3"]
    assert "auto" in complete("sample", "--sampler", "")


def test_completion_does_not_import_torch():
    code = ("import sys\nfrom bfncli.cli import main\ntry:\n    main([])\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write('torch imported' if 'torch' in sys.modules else 'no torch')")
    for words, cword in (("bfn train --preset mn", "3"), ("bfn sample --sampler o", "3")):
        env = {**os.environ, "_BFN_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": cword}
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert result.stdout.split(), result.stderr
        assert result.stderr.endswith("no torch"), result.stderr


def test_class_names_come_from_the_checkpoint_header(tmp_path):
    config = {"data": {"class_names": ["cat", "dog", "dodo"]}}
    save_file({"w": torch.zeros(1)}, tmp_path / "cond.safetensors", metadata={"config": json.dumps(config)})
    assert complete("sample", "--checkpoint", "cond.safetensors", "--class", "do", cwd=tmp_path) == ["dog", "dodo"]
    assert complete("sample", "--checkpoint", "cond.safetensors", "--class", "cat,c", cwd=tmp_path) == ["cat,cat"]
    assert complete("sample", "--checkpoint", "cond.safetensors", "--class", "n", cwd=tmp_path) == ["none"]
    (tmp_path / "junk.safetensors").write_bytes(b"not a header")
    assert complete("sample", "--checkpoint", "junk.safetensors", "--class", "", cwd=tmp_path) == ["none"]
    assert complete("eval", "--checkpoint", "cond.safetensors", "--class", "", cwd=tmp_path) == ["none"]


def test_checkpoints_and_runs(tmp_path):
    step = tmp_path / "runs" / "r1" / "checkpoints" / "step-00000004"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"")
    (tmp_path / "runs" / "r1" / "config.yaml").write_text("{}\n")
    (tmp_path / "mine.safetensors").write_bytes(b"")
    assert complete("sample", "--checkpoint", "official:mn", cwd=tmp_path) == ["official:mnist"]
    assert set(complete("eval", "--checkpoint", "", cwd=tmp_path)) >= {
        "official:text8", "mine.safetensors", "runs/r1/checkpoints/step-00000004/model.safetensors"}
    assert complete("train", "--resume", "", cwd=tmp_path) == ["auto", "runs/r1/checkpoints/step-00000004"]
    assert complete("train", "--resume", "auto", "--run-name", "", cwd=tmp_path) == ["r1"]
    assert complete("train", "--runs-dir", "elsewhere", "--run-name", "", cwd=tmp_path) == []
