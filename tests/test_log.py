"""bfn's messages (bfncli/log.py): -q and -v, only the main process speaks, and a training run that
writes to a log file says how it goes."""

import itertools
import logging
from pathlib import Path

import pytest
from conftest import IMAGE, assert_one_line_error, ckpt, run_bfn

from bfncli.jobs.progress_lines import ProgressLines
from bfncli.jobs.run_directory import resume_command
from bfncli.log import logger

UNKNOWN = {"BFN_HOME": "/x"}  # a warning: "bfn: ignoring environment variable BFN_HOME ..."


@pytest.mark.parametrize("argv", [["train", "--dry-run", "-q"], ["-q", "train", "--dry-run"],
                                  ["train", "--quiet", "--dry-run"]])
def test_quiet_leaves_errors_only(call, argv):
    result = call(*argv, env=UNKNOWN)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("description:")  # the data is still there
    assert_one_line_error(call(*argv, "--preset", "nope"), "bfn train: unknown preset 'nope'")


def test_information_and_warnings_by_default(call):
    result = call("train", "--dry-run", env=UNKNOWN)
    assert result.returncode == 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bfn: ignoring environment variable BFN_HOME: no such config key")


@pytest.mark.parametrize("argv", [["train", "--dry-run", "-v"], ["-v", "train", "--dry-run"]])
def test_verbose_adds_the_resolved_config_and_the_time(call, argv):
    result = call(*argv, "--max-steps", 7)
    assert result.returncode == 0, result.stderr
    debug = [line for line in result.stderr.splitlines() if line.startswith("debug: ")]
    assert debug[0] == "debug: resolved config:" and "  steps: 7" in result.stderr
    assert debug[-1].startswith("debug: bfn train: ") and debug[-1].endswith(" s")
    assert not call("train", "--dry-run").stderr  # none of it without -v


def test_quiet_and_verbose_contradict(call):
    assert_one_line_error(call("-q", "train", "-v", "--dry-run"), "-q and -v contradict each other")


def test_a_command_says_what_it_did_unless_quiet(call, runs, tmp_path):
    args = ["sample", "--checkpoint", ckpt(runs, "img"), "--shape", "2,8,8,1", "--steps", 2]
    said = call(*args, "-o", tmp_path / "a.safetensors")
    assert said.returncode == 0, said.stderr
    assert said.stderr.strip().splitlines()[-1] == f"wrote 2 samples to {tmp_path / 'a.safetensors'}"
    quiet = call("-q", *args, "-o", tmp_path / "b.safetensors")
    assert quiet.returncode == 0 and quiet.stderr == "" and (tmp_path / "b.safetensors").exists()
    verbose = call(*args, "-v", "-o", tmp_path / "c.safetensors")
    assert "debug: device cpu, 1 process(es)" in verbose.stderr and "torch " in verbose.stderr
    assert "debug: resolved config:\n" in verbose.stderr and "sampler: auto" in verbose.stderr


def test_only_the_main_process_speaks(call, monkeypatch, capsys):
    assert "ignoring environment variable" in call("train", "--dry-run", env={**UNKNOWN, "RANK": "0"}).stderr
    other = call("train", "--dry-run", env={**UNKNOWN, "RANK": "1"})
    assert other.returncode == 0 and other.stderr == ""
    failed = call("train", "--preset", "nope", env={"RANK": "3"})
    assert failed.returncode == 2 and failed.stderr == ""  # rank 0 says it, once
    monkeypatch.setenv("RANK", "1")
    logger.info("from rank 1")
    logger.error("from every rank", extra={"all_processes": True})
    assert capsys.readouterr().err == "from every rank\n"


def test_progress_lines_every_tenth_of_the_run_or_minute():
    now = [0.0]
    lines = ProgressLines(total=100, start=0, clock=lambda: now[0])
    said = []
    handler = _Collect(said)
    logger.addHandler(handler)
    try:
        for step in range(1, 101):
            now[0] += 0.5  # 2 steps/s
            lines.update(step, loss=1.0 / step)
    finally:
        logger.removeHandler(handler)
    assert [line.split()[1] for line in said] == [f"{s}/100" for s in range(10, 101, 10)]
    assert said[0] == "step 10/100 (10%)  loss 0.1000  2.00 steps/s  ETA 0:45"
    said.clear()
    slow = ProgressLines(total=1000, start=400, clock=lambda: now[0])  # resumed: a tenth of the 600 steps left
    logger.addHandler(handler)
    try:
        for step in itertools.count(401):
            now[0] += 25.0  # a step every 25 s: a line every minute
            slow.update(step, loss=0.5)
            if step == 409:
                break
    finally:
        logger.removeHandler(handler)
    assert [line.split()[1] for line in said] == ["403/1000", "406/1000", "409/1000"]
    assert said[0].endswith("0.04 steps/s  ETA 4:08:45")


def test_a_run_into_a_log_file_says_how_it_goes(tmp_path):
    result = run_bfn("train", *IMAGE, "--max-steps", 3, "--run-name", "logged", cwd=tmp_path)  # stderr: a pipe
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"run folder: {Path('runs') / 'logged'}"
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in progress] == ["1/3", "2/3", "3/3"]
    assert "(100%)  loss " in progress[-1] and " steps/s  ETA 0:00" in progress[-1]
    assert lines[-1].startswith("done: 3 steps")
    assert run_bfn("train", *IMAGE, "--max-steps", 3, "--run-name", "q", "-q", cwd=tmp_path).stderr == ""


def test_the_resume_command_repeats_the_run_s_settings():
    run = Path("runs") / "m1"
    assert resume_command(run, ["train", "--preset", "mnist", "--set", "optim.lr=1e-4", "--run-name", "m1",
                                "--init=official:mnist", "--max-steps", "9"]) == \
        "bfn train --preset mnist --set optim.lr=1e-4 --max-steps 9 --resume auto --run-name m1"
    assert resume_command(Path("/data/my runs/m1"), ["-q", "train", "--resume", "auto", "--runs-dir", "/data/my runs"]) \
        == "bfn -q train --resume auto --run-name m1 --runs-dir '/data/my runs'"
    assert resume_command(run, ["-m", "pytest"]) == \
        "bfn train --resume auto --run-name m1 (with this run's --preset, --config and --set)"


class _Collect(logging.Handler):
    """A logging handler that keeps the messages."""

    def __init__(self, into):
        super().__init__()
        self.into = into

    def emit(self, record):
        self.into.append(record.getMessage())
