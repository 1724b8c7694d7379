"""The README's commands, so that an example that drifts fails CI.

Fast: every ``bfn`` command in the README's bash blocks (also those that need the network or a GPU)
parses: its sub-command, options and values exist. Slow: the blocks that need no network run in
order in one folder, as a reader would run them, on small budgets (``--max-steps``, ``--steps``,
``--repeats`` and sample counts cut down: the same commands, cheaper) and each must succeed.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"

# What a command needs that a test run has not: the network (released weights, the Hub, the paper's
# data sets), a GPU or several processes, files of the reader's own, or the project's own set-up.
NOT_RUN = re.compile(r"official:|hf://|https?://|curl |pip install|pytest|benchmarks/|accelerate launch|torchrun"
                     r"|~/|--preset (mnist|cifar10-\w+|text8)\b(?!-)|mnist\.safetensors|mnist_ema\.pt"
                     r"|cifar\w*\.safetensors|cifar10_16d_ema|text8\.safetensors|mine\.pt|runs/m1")
DRY = ("--dry-run", "--list-presets")  # these need no network, whatever the preset
INSTALL = "pip install . && "  # the first command installs bfn, which the tests have


def commands() -> list[str]:
    """Every line of the README's bash blocks, continuations joined."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def bfn_calls(line: str) -> list[list[str]]:
    """The argument lists of the bfn calls in a shell line (pipes and && split it; comments dropped)."""
    words = shlex.split(line, comments=True)
    calls, current = [], None
    for word in words + ["&&"]:
        if word in ("|", "&&"):
            if current is not None:
                calls.append(current)
            current = None
        elif current is not None:
            current.append(word)
        elif word == "bfn" or (word == "bfncli" and words[words.index(word) - 1] == "-m"):
            current = []
    return calls


def test_every_readme_bfn_command_parses():
    """Each bfn call of the README (network or not) names a sub-command, options and values that exist."""
    import typer

    from bfncli.cli import app

    group = typer.main.get_command(app)
    calls = [(line, args) for line in commands() for args in bfn_calls(line)]
    assert len(calls) > 60
    for line, args in calls:
        assert args and args[0] in group.commands, line
        try:
            group.commands[args[0]].make_context(args[0], list(args[1:]))
        except typer.Exit:
            pass
        except Exception as err:  # a usage error: an option or a value the command does not take
            raise AssertionError(f"README: {line!r}: {err}") from None


def _runnable(line: str) -> bool:
    line = line.replace(INSTALL, "")
    return any(flag in line for flag in DRY) or not NOT_RUN.search(line)


def _small(line: str) -> str:
    """The same command on a small budget."""
    line = line.replace(INSTALL, "")
    line = re.sub(r"--max-steps \d+", "--max-steps 3", line)
    line = re.sub(r"--steps (\d+)", lambda m: f"--steps {min(int(m.group(1)), 5)}", line)
    line = re.sub(r"--repeats \d+", "--repeats 1", line)
    line = re.sub(r"--shape (\d+),", lambda m: f"--shape {min(int(m.group(1)), 12)},", line)
    return line


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path):
    """The commands that need no network, in the README's order, in one folder, each successful."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFN_") or k == "BFN_CACHE_DIR"}
    # bfn train without --max-steps trains the preset's steps: a few here (flags still win over these).
    env.update(BFN_TRAIN__STEPS="3", BFN_EVAL__REPEATS="1", BFN_SAMPLE__STEPS="5", MPLBACKEND="Agg",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    ran = []
    for line in commands():
        if not _runnable(line):
            continue
        small = _small(line)
        result = subprocess.run(["bash", "-o", "pipefail", "-c", small], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, f"README: {line!r} ({small!r}) failed:\n{result.stderr[-2000:]}"
        ran.append(line)
    assert len(ran) > 25, ran
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "flow.gif").is_file()


def test_every_help_example_parses():
    """The worked examples in `bfn COMMAND --help` drift like the README's: each must parse too."""
    import typer

    from bfncli.cli import app

    group = typer.main.get_command(app)
    examples = [(name, line.strip()) for name, command in group.commands.items()
                for line in (command.epilog or "").splitlines() if line.strip().startswith("bfn ")]
    assert len(examples) > 20
    for name, line in examples:
        for args in bfn_calls(line):
            try:
                group.commands[args[0]].make_context(args[0], list(args[1:]))
            except typer.Exit:
                pass
            except Exception as err:
                raise AssertionError(f"bfn {name} --help: {line!r}: {err}") from None
