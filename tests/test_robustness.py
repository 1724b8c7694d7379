"""What a hostile user tries: bad configs, damaged and malicious files, full disks, closed pipes,
interrupts. Each case asserts the exit code, one line on stderr with no traceback, and that nothing
was lost or half-written. (The kill -9 / bit-for-bit resume scenarios live in test_train.py.)

Most cases run the command in this process (``call``): the same ``main()`` as the executable, without
paying for a Python start per case. Cases about the process itself (pipes, signals) run it for real.
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import IMAGE, assert_one_line_error, ckpt, run_bfn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bfncli.checkpoint import CHECKSUM, tensors_checksum

TINY = IMAGE  # the tiny image network of the shared runs


def _rewrite(path: Path, tensors=None, **meta_changes):
    """Save the checkpoint at ``path`` again with changed tensors and/or metadata (None deletes a key)."""
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    tensors = tensors if tensors is not None else load_file(str(path))
    for key, value in meta_changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    save_file(tensors, str(path), metadata=meta)


@pytest.fixture
def checkpoint(runs, tmp_path):
    """A copy of the tiny image model's checkpoint (free to damage)."""
    path = tmp_path / "model.safetensors"
    shutil.copy(ckpt(runs, "img"), path)
    return path


# --------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("args,env,needles", [
    (["--set", "optim.lr=.inf"], {}, ["optim.lr", "finite"]),
    (["--set", "train.batch_size=true"], {}, ["train.batch_size", "not true/false"]),
    (["--set", f"train.batch_size={2**70}"], {}, ["train.batch_size", "64-bit"]),
    (["--seed", str(2**70)], {}, ["train.seed"]),
    (["--set", "train.mixed_precision=maybe"], {}, ["train.mixed_precision"]),
    (["--preset", "cifar10-256c", "--set", "data.num_bins=16"], {}, ["output.num_bins (256) must equal data.num_bins (16)"]),
    (["--preset", "cifar10-16c", "--set", "flow.min_variance=1e-6"], {}, ["output.recon_std", "sigma_1"]),
    ([], {"BFN_TRAIN__BATCH_SIZE": "many"}, ["environment variable BFN_TRAIN__BATCH_SIZE"]),
])
def test_bad_configs_are_one_line_errors(call, args, env, needles):
    assert_one_line_error(call("train", *args, "--dry-run", env=env), *needles)


def test_yaml_booleans_stay_words_and_duplicate_keys_are_refused(call, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  mixed_precision: no\n  batch_size: 16\ndata:\n  download: no\n")
    for args, env in ((["--config", config], {}), (["--set", "train.mixed_precision=no"], {}),
                      ([], {"BFN_TRAIN__MIXED_PRECISION": "no"})):
        result = call("train", *args, "--dry-run", env=env)
        assert result.returncode == 0, result.stderr
        assert "mixed_precision: 'no'" in result.stdout or "mixed_precision: no" in result.stdout
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  batch_size: 16\noptim:\n  lr: 0.001\ntrain:\n  steps: 5\n")
    assert_one_line_error(call("train", "--config", dup, "--dry-run"), "key 'train' appears twice", "line 5", code=3)


def test_yaml_numbers_are_read_as_yaml_1_2():
    # YAML 1.1 (PyYAML's default) reads 010 as octal 8, 1:30 as 90, a date as a date and 1e-3 as a string.
    from bfncli.yaml_loader import load

    text = "a: 010\nb: 1:30\nc: 2024-01-01\nd: 1e-3\ne: 1_000_000\nf: 0x10\ng: .5\nh: 3.14.15\n"
    assert load(text) == {"a": 10, "b": "1:30", "c": "2024-01-01", "d": 0.001, "e": 1000000, "f": 16, "g": 0.5,
                          "h": "3.14.15"}
    from bfncli.config import resolve_config

    cfg = resolve_config("default", sets=["train.seed=010", "data.path=2024-01-01"], environ={})
    assert cfg.train.seed == 10 and str(cfg.data.path) == "2024-01-01"


def test_unknown_environment_variables_are_warned_about_and_ignored(call):
    result = call("train", "--dry-run", env={"BFN_HOME": "/somewhere", "BFN_TRAIN__STEPS": "7"})
    assert result.returncode == 0
    assert "steps: 7" in result.stdout
    assert result.stderr.count("ignoring environment variable BFN_HOME") == 1


# ------------------------------------------------------------------------------ checkpoints
def test_flipped_bytes_in_the_weights_are_caught(call, checkpoint):
    data = bytearray(checkpoint.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    data[8 + header + (len(data) - 8 - header) // 2] ^= 0x40
    checkpoint.write_bytes(bytes(data))
    assert_one_line_error(call("eval", "--checkpoint", checkpoint, "--repeats", 1), "is damaged", "checksum", code=3)


def test_integer_weights_and_non_finite_weights_are_refused(call, checkpoint):
    tensors = load_file(str(checkpoint))
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 1)
    as_ints = dict(tensors, **{name: tensors[name].long()})
    _rewrite(checkpoint, as_ints, **{CHECKSUM: tensors_checksum(as_ints)})
    assert_one_line_error(call("eval", "--checkpoint", checkpoint, "--repeats", 1), name, "int64", "floating-point", code=3)
    nan = dict(tensors, **{name: tensors[name].clone().fill_(float("nan"))})
    _rewrite(checkpoint, nan, **{CHECKSUM: tensors_checksum(nan)})
    assert_one_line_error(call("sample", "--checkpoint", checkpoint, "-o", checkpoint.with_name("s.safetensors")),
                          "non-finite values", code=3)


@pytest.mark.parametrize("meta,needle", [({"config": "[]"}, "corrupted config"), ({"step": "abc"}, "training step"),
                                         ({"config": "{not json"}, "corrupted config")])
def test_damaged_metadata_is_a_one_line_error(call, checkpoint, meta, needle):
    _rewrite(checkpoint, **meta)
    assert_one_line_error(call("eval", "--checkpoint", checkpoint, "--repeats", 1), needle, code=3)


def test_checkpoints_from_before_checksums_still_load(call, checkpoint):
    _rewrite(checkpoint, **{CHECKSUM: None})
    result = call("eval", "--checkpoint", checkpoint, "--repeats", 1, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_a_runs_release_file_is_checked_against_its_manifest(call, runs, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(runs / "img" / "img", run)
    release = next(run.glob("checkpoints/step-*/model.safetensors"))
    _rewrite(release, description="changed after the manifest was written")
    assert_one_line_error(call("eval", "--checkpoint", release, "--repeats", 1), "is damaged", "checksum", code=3)


@pytest.mark.parametrize("content,needle", [(b"", "is empty"), (b"hello, not a checkpoint\n", "not a PyTorch checkpoint")])
def test_convert_of_an_empty_or_text_pt_file(call, tmp_path, content, needle):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    assert_one_line_error(call("convert", bad, "--preset", "mnist", "-o", tmp_path / "out.safetensors"), needle, code=3)
    assert not (tmp_path / "out.safetensors").exists()


# ---------------------------------------------------------------------------------- samples
def test_sample_never_overwrites_without_force_and_never_the_checkpoint(call, checkpoint, tmp_path):
    out = tmp_path / "s.safetensors"
    out.write_bytes(b"precious")
    assert_one_line_error(call("sample", "--checkpoint", checkpoint, "--steps", 2, "-o", out), "already exists", "--force")
    assert out.read_bytes() == b"precious"
    assert call("sample", "--checkpoint", checkpoint, "--steps", 2, "-o", out, "--force").returncode == 0
    assert out.read_bytes()[:8] != b"precious"
    before = checkpoint.read_bytes()
    for extra in ([], ["--force"]):
        assert_one_line_error(call("sample", "--checkpoint", checkpoint, "-o", checkpoint, *extra),
                              "is the checkpoint being sampled from")
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("args,needles", [
    (["--sampler", "odd"], ["unknown sampler 'odd'", "did you mean 'ode'"]),
    (["--steps", "0"], ["--steps must be >= 1"]),
    (["--sampler", "ode", "--steps", "1"], ["too few", "at least 2"]),
    (["--eta", "1.5"], ["sample.eta"]),
    (["--sampler", "paper", "--eta", "0.01"], ["--eta", "paper"]),
    (["--seed", "-3"], ["sample.seed"]),
    (["--guidance", "2"], ["--guidance", "no classes"]),
    (["--class", "3"], ["--class needs a class-conditional model"]),
    (["--shape", "400000000,8,8,1"], ["needs at least", "GiB"]),
])
def test_bad_sampling_options(call, checkpoint, tmp_path, args, needles):
    out = tmp_path / "never.safetensors"
    assert_one_line_error(call("sample", "--checkpoint", checkpoint, *args, "-o", out), *needles)
    assert not out.exists()


def test_samples_to_a_full_or_closed_stdout(runs, tmp_path):
    img = ckpt(runs, "img")
    full = subprocess.run(f"{sys.executable} -m bfncli sample --checkpoint {img} --steps 2 > /dev/full", shell=True,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert_one_line_error(full, "cannot write the samples to standard output", "No space left", code=1)
    closed = subprocess.run(f"{sys.executable} -m bfncli sample --checkpoint {img} --steps 2 >&-", shell=True,
                            capture_output=True, text=True)
    assert_one_line_error(closed, "standard output is closed", "-o FILE")


def test_render_into_a_read_only_folder(call, runs, tmp_path):
    samples = tmp_path / "s.safetensors"
    assert call("sample", "--checkpoint", ckpt(runs, "txt"), "--steps", 2, "-o", samples).returncode == 0
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        # root may write anywhere but in /sys, which no one may create files in
        folder = locked if not os.access(locked, os.W_OK) else Path("/sys")
        assert_one_line_error(call("render", samples, "-o", folder / "out.txt"), "cannot write", code=1)
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------------------------------ data
def test_data_files_that_are_not_real_numbers(call, tmp_path):
    import numpy as np

    np.save(tmp_path / "words.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(tmp_path / "complex.npy", np.zeros((3, 8, 8, 1), dtype=np.complex64))
    assert_one_line_error(call("train", "--data", tmp_path / "words.npy", "--max-steps", 1), "<U1", "not real numbers", code=3)
    assert_one_line_error(call("train", "--data", tmp_path / "complex.npy", "--max-steps", 1), "complex64", code=3)


# ------------------------------------------------------------------------------------ eval
def test_eval_cache_follows_the_data_content_and_survives_damage(call, checkpoint, tmp_path):
    data = tmp_path / "d.safetensors"
    save_file({"data": torch.full((6, 8, 8, 1), -0.9375)}, str(data))
    first = call("eval", "--checkpoint", checkpoint, "--data", data, "--repeats", 2, "--json")
    assert first.returncode == 0, first.stderr
    save_file({"data": torch.full((6, 8, 8, 1), 0.9375)}, str(data))  # same name and shape, other pixels
    second = call("eval", "--checkpoint", checkpoint, "--data", data, "--repeats", 2, "--json")
    assert "resuming" not in second.stderr
    assert json.loads(second.stdout)["total_mean"] != json.loads(first.stdout)["total_mean"]
    for state in (Path(os.environ["BFN_CACHE_DIR"]) / "eval").glob("*.json"):
        state.write_text('["not", "a", "mapping"]')
    again = call("eval", "--checkpoint", checkpoint, "--data", data, "--repeats", 2, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["total_mean"] == json.loads(second.stdout)["total_mean"]


def test_eval_at_a_hundred_thousand_steps_is_not_negative(call, checkpoint):
    result = call("eval", "--checkpoint", checkpoint, "--steps", 100000, "--repeats", 2, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["loss_mean"] > 0


# -------------------------------------------------------------------------------- training
def _train(call, work, *extra, env=None):
    data = work / "tiny.safetensors"
    if not data.exists():
        g = torch.Generator().manual_seed(0)
        save_file({"data": (torch.randint(0, 16, (24, 8, 8, 1), generator=g).float() * 2 + 1) / 16 - 1}, str(data))
    return call("train", *TINY, "--data", data, "--runs-dir", work / "runs", *extra, env=env, cwd=work)


@pytest.mark.parametrize("content,needle", [("", "empty"), ("train: [unclosed", "not valid YAML"), ("- a\n- b\n", "list")])
def test_a_damaged_run_config_is_a_one_line_error_on_resume(call, tmp_path, content, needle):
    assert _train(call, tmp_path, "--run-name", "r", "--max-steps", 2).returncode == 0
    (tmp_path / "runs" / "r" / "config.yaml").write_text(content)
    result = _train(call, tmp_path, "--run-name", "r", "--resume", "auto", "--max-steps", 3)
    assert_one_line_error(result, "config.yaml", needle, "delete it", code=3)


def test_damaged_metrics_lines_are_skipped_on_resume_and_in_render(call, tmp_path):
    assert _train(call, tmp_path, "--run-name", "r", "--max-steps", 2).returncode == 0
    metrics = tmp_path / "runs" / "r" / "metrics.jsonl"
    with open(metrics, "ab") as f:
        f.write(b"[1, 2]\n\xff\xfe not utf-8\n\"a string\"\n")
    assert _train(call, tmp_path, "--run-name", "r", "--resume", "auto", "--max-steps", 3).returncode == 0
    result = call("render", tmp_path / "runs" / "r")
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if "loss" in json.loads(line)]
    assert steps == [1, 2, 3]


def test_restarts_before_the_first_checkpoint_leave_no_duplicate_rows_and_no_locked_name(call, tmp_path):
    _train(call, tmp_path, "--run-name", "warm-up", "--max-steps", 1)  # writes the data file
    base = [*TINY, "--data", tmp_path / "tiny.safetensors", "--runs-dir", tmp_path / "runs", "--max-steps", 6,
            "--checkpoint-every", 4]
    args = [*base, "--run-name", "r"]
    for resume in ([], ["--resume", "auto"], ["--resume", "auto"]):  # killed each time before its first checkpoint
        killed = run_bfn("train", *args, *resume, faults="kill:3:0", cwd=tmp_path)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    (tmp_path / "runs" / "r" / ".best.safetensors.partial-999999").write_bytes(b"left by a killed writer")
    finished = _train(call, tmp_path, "--run-name", "r", "--max-steps", 6, "--checkpoint-every", 4, "--resume", "auto")
    assert finished.returncode == 0, finished.stderr
    rows = [json.loads(line) for line in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert not list((tmp_path / "runs" / "r").glob(".*partial*"))
    # A run that stopped before its first checkpoint does not keep its name from a new run.
    killed = run_bfn("train", *base, "--run-name", "s", faults="kill:2:0", cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL
    again = _train(call, tmp_path, "--run-name", "s", "--max-steps", 2, "--set", "optim.lr=3e-3")
    assert again.returncode == 0, again.stderr
    assert "stopped before its first checkpoint: starting it afresh" in again.stderr


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(call, tmp_path):
    # The later steps of the old history are kept, renamed, out of the way: the resumed run's own
    # checkpoints are never pruned in their favour, and --resume auto continues the new history.
    every = ["--checkpoint-every", 2, "--set", "train.keep_checkpoints=10"]
    assert _train(call, tmp_path, "--run-name", "r", "--max-steps", 10, *every).returncode == 0
    checkpoints = tmp_path / "runs" / "r" / "checkpoints"
    back = _train(call, tmp_path, "--resume", checkpoints / "step-00000004", "--max-steps", 6, *every)
    assert back.returncode == 0, back.stderr
    assert "step-00000010 -> superseded-step-00000010" in back.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "step-00000002", "step-00000004", "step-00000006",
        "superseded-step-00000006", "superseded-step-00000008", "superseded-step-00000010"]
    again = _train(call, tmp_path, "--run-name", "r", "--resume", "auto", "--max-steps", 8, *every)
    assert again.returncode == 0 and "from step 6" in again.stderr, again.stderr


def test_resume_auto_with_only_damaged_checkpoints_starts_nothing_over(call, tmp_path):
    assert _train(call, tmp_path, "--run-name", "r", "--max-steps", 4, "--checkpoint-every", 2).returncode == 0
    run = tmp_path / "runs" / "r"
    for step in run.glob("checkpoints/step-*"):
        (step / "state.safetensors").write_bytes(b"damaged")
    metrics = (run / "metrics.jsonl").read_text()
    result = _train(call, tmp_path, "--run-name", "r", "--resume", "auto", "--max-steps", 6)
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert "has no intact checkpoint to resume from" in result.stderr.strip().splitlines()[-1]
    assert (run / "metrics.jsonl").read_text() == metrics  # the run's history is untouched
    copied = tmp_path / "step-00000004"
    shutil.copytree(run / "checkpoints" / "step-00000004", copied)
    assert_one_line_error(_train(call, tmp_path, "--resume", copied), "not a checkpoint of a run", code=3)


def test_a_full_disk_while_logging_is_one_line(call, tmp_path):
    assert _train(call, tmp_path, "--run-name", "r", "--max-steps", 2).returncode == 0
    metrics = tmp_path / "runs" / "r" / "metrics.jsonl"
    metrics.unlink()
    metrics.symlink_to("/dev/full")
    result = _train(call, tmp_path, "--run-name", "r", "--resume", "auto", "--max-steps", 4)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()  # "resuming r from step 2", "run folder: runs/r", then the error
    assert len(lines) == 3 and "cannot append" in lines[2] and "No space left on device" in lines[2], lines
    assert next((tmp_path / "runs" / "r" / "checkpoints").glob("step-00000002"))  # the last checkpoint is intact


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_the_run_exists(call, tmp_path):
    result = _train(call, tmp_path, "--run-name", "big", "--set", "train.batch_size=400000000", "--max-steps", 1)
    assert_one_line_error(result, "a micro-batch of 400000000 examples needs at least", "GiB", "train.accumulate")
    assert not (tmp_path / "runs").exists()  # nor the --runs-dir it would have made


def test_no_environment_variable_makes_bfn_kill_itself(tmp_path):
    # Crash tests inject faults from outside (tests/fault_injection.py); the product has no such hook.
    result = _train(run_bfn, tmp_path, "--run-name", "r", "--max-steps", 3, "--checkpoint-every", 2,
                    env={"BFN_FAULT": "kill:1:0;kill-save:2;nan:1"})
    assert result.returncode == 0, result.stderr
    assert "ignoring environment variable BFN_FAULT: no such config key" in result.stderr
    assert "non-finite" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "runs" / "r" / "checkpoints").iterdir()) == ["step-00000002",
                                                                                         "step-00000003"]


# ------------------------------------------------------------------------------ interrupts
def _interrupt(args, ready, timeout=120, executable=None):
    """Start bfn (``python -m bfncli``, or the installed ``executable``), wait until ``ready()``, send
    SIGINT; return (code, stderr)."""
    command = [str(executable)] if executable else [sys.executable, "-m", "bfncli"]
    process = subprocess.Popen([*command, *map(str, args)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    return process.returncode if process.poll() is not None else process.wait(timeout), process.communicate()[1]


def test_ctrl_c_in_eval_and_sample_says_so(runs, tmp_path):
    img = ckpt(runs, "img")
    progress = Path(os.environ["BFN_CACHE_DIR"]) / "eval"
    data = tmp_path / "d.safetensors"
    save_file({"data": torch.zeros(4, 8, 8, 1)}, str(data))
    code, err = _interrupt(["eval", "--checkpoint", img, "--data", data, "--repeats", 10**7],
                           lambda: any(progress.glob("*.json")))  # once the first repeat is kept
    assert code == 130 and "Traceback" not in err, err
    assert err.strip().startswith("bfn eval: interrupted; the") and err.strip().endswith("finished repeats are kept: "
                                                                                         "run the same command again to continue")
    started = time.time()
    code, err = _interrupt(["sample", "--checkpoint", img, "--sampler", "paper", "--steps", 1000000,
                            "-o", tmp_path / "s.safetensors"], lambda: time.time() > started + 4)
    assert code == 130 and err.strip() == "bfn sample: interrupted", err
    assert not (tmp_path / "s.safetensors").exists()


def test_ctrl_c_through_the_installed_executable(runs, tmp_path):
    executable = Path(sys.executable).parent / "bfn"
    if not executable.exists():
        pytest.skip("bfn is not installed next to this Python")
    started = time.time()
    code, err = _interrupt(["sample", "--checkpoint", ckpt(runs, "img"), "--sampler", "paper", "--steps", 1000000,
                            "-o", tmp_path / "s.safetensors"], lambda: time.time() > started + 2, executable=executable)
    assert code == 130 and err.strip() in ("bfn sample: interrupted", "bfn: interrupted"), err


# ------------------------------------------------------------- one dataset download per machine
def test_two_processes_needing_one_dataset_file_download_it_once(tmp_path):
    """Issue 16 item 16: the processes of one run (accelerate launch on a fresh machine) used to write
    the same NAME.part at once. The first takes the lock and downloads; the second says it waits,
    then verifies and uses the file; the server sees one transfer."""
    import hashlib
    import http.server
    import threading

    body = os.urandom(300_000)
    release, gets = threading.Event(), []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            gets.append(self.path)
            release.wait(60)  # the first transfer is held until the second process is seen waiting
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = ("import sys; from pathlib import Path; from bfncli.data.download import RemoteFile, ensure; "
              "remote = RemoteFile('data.bin', (sys.argv[1],), md5=sys.argv[2]); "
              "print(ensure(remote, Path(sys.argv[3]), True, []))")
    args = [sys.executable, "-c", script, f"http://127.0.0.1:{server.server_address[1]}/data.bin",
            hashlib.md5(body).hexdigest(), str(tmp_path / "data")]
    try:
        first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not gets and time.monotonic() < deadline:  # the first process holds the lock, mid-transfer
            time.sleep(0.05)
        assert gets, "the first process never asked for the file"
        second = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        note = []
        reader = threading.Thread(target=lambda: note.append(second.stderr.readline()), daemon=True)
        reader.start()
        reader.join(60)
        assert note and "waiting for another process that is downloading data.bin" in note[0], (note, gets)
        assert len(gets) == 1  # the second one waits instead of downloading into the same .part
        release.set()
        outputs = [p.communicate(timeout=60) for p in (first, second)]
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert {out.strip() for out, _ in outputs} == {str(tmp_path / "data" / "data.bin")}
    assert (tmp_path / "data" / "data.bin").read_bytes() == body and len(gets) == 1
    assert not list((tmp_path / "data").glob("*.part"))


# ------------------------------------------------------------------ one writer per run (item 3)
def test_one_run_has_one_writer(call, tmp_path):
    _train(call, tmp_path, "--run-name", "warm-up", "--max-steps", 1)  # writes the data file
    lock = tmp_path / "runs" / "r" / ".lock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bfncli", "train", *map(str, TINY), "--data", str(tmp_path / "tiny.safetensors"),
         "--runs-dir", str(tmp_path / "runs"), "--run-name", "r", "--max-steps", "100000", "--checkpoint-every", "2"],
        stderr=subprocess.DEVNULL, cwd=tmp_path, env={k: v for k, v in os.environ.items() if not k.startswith("BFN_")})
    try:
        metrics = tmp_path / "runs" / "r" / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
            time.sleep(0.2)
        rows = metrics.read_text()
        second = _train(call, tmp_path, "--run-name", "r", "--resume", "auto", "--max-steps", 100000)
        assert_one_line_error(second, "run 'r' is being written by another bfn train", f"(process {proc.pid}, since",
                              "one run has one writer")
        again = _train(call, tmp_path, "--run-name", "r", "--max-steps", 100000)  # a new run of the same name
        assert again.returncode == 2 and "Traceback" not in again.stderr
        assert proc.poll() is None and metrics.read_text().startswith(rows)  # the writer was not disturbed
    finally:
        proc.kill()  # SIGKILL: its lock file stays behind, stale
        proc.wait()
    assert lock.exists()
    resumed = _train(call, tmp_path, "--run-name", "r", "--resume", "auto", "--max-steps", 12)
    assert resumed.returncode == 0, resumed.stderr
    assert not lock.exists()  # released at the end
    lock.write_text(json.dumps({"pid": 4242, "host": "elsewhere.example", "since": "2026-01-01 00:00:00"}))
    other_host = _train(call, tmp_path, "--run-name", "r", "--resume", "auto", "--max-steps", 13)
    assert_one_line_error(other_host, "locked by process 4242 on host elsewhere.example", f"delete {lock}")
    lock.unlink()


# ------------------------------------------------------------------- labels and names (4, 7, 14)
def test_labels_must_fit_the_examples_before_anything_is_allocated(call, tmp_path):
    data = torch.zeros(20, 8, 8, 1)
    save_file({"data": data, "labels": torch.tensor([0, 1] * 9 + [1, 2**62])}, str(tmp_path / "huge.safetensors"))
    result = call("train", "--preset", "default-cond", "--data", tmp_path / "huge.safetensors", "--max-steps", 1)
    assert_one_line_error(result, f"'labels' go up to {2**62} but there are only 20 examples", code=3)
    save_file({"data": data, "labels": torch.tensor([0, 1, 0])}, str(tmp_path / "short.safetensors"))
    result = call("train", "--preset", "default-cond", "--data", tmp_path / "short.safetensors", "--max-steps", 1)
    assert_one_line_error(result, "'labels' has shape (3,) but there are 20 examples", "shape (20,)", code=3)
    assert "{count}" not in result.stderr


def test_run_names_that_cannot_be_folders(call, tmp_path):
    assert_one_line_error(_train(call, tmp_path, "--run-name", "a" * 300, "--max-steps", 1),
                          "--run-name is 300 characters (300 bytes) long", "at most 255")
    assert_one_line_error(_train(call, tmp_path, "--run-name", "a" * 300, "--resume", "auto"), "at most 255")
    assert_one_line_error(_train(call, tmp_path, "--run-name", "", "--max-steps", 1), "must be a plain name")
    assert_one_line_error(_train(call, tmp_path, "--run-name", "a\nb", "--max-steps", 1), "control characters")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ------------------------------------------------------------- samples files (items 5, 7, 8, 9, 14, 15)
@pytest.fixture(scope="module")
def drawn(runs, tmp_path_factory):
    """A samples file of each kind: 4 image samples and 2 texts from the shared tiny runs."""
    root = tmp_path_factory.mktemp("drawn")
    for name, shape in (("img", "4,8,8,1"), ("txt", None)):
        args = ["--shape", shape] if shape else []
        result = run_bfn("sample", "--checkpoint", ckpt(runs, name), "--steps", 2, *args, "-o", root / f"{name}.safetensors")
        assert result.returncode == 0, result.stderr
    return root


def _tampered(source: Path, target: Path, change) -> Path:
    with safe_open(str(source), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(source))
    change(tensors, meta)
    save_file(tensors, str(target), metadata=meta)
    return target


def _set(name, value):
    return lambda tensors, meta: tensors.__setitem__(name, value(tensors[name]))


def _meta(key, value):
    return lambda tensors, meta: meta.__setitem__(key, value)


def _with_classes(ids, names):
    def change(tensors, meta):
        tensors["classes"] = torch.tensor(ids)
        meta["class_names"] = json.dumps(names)
    return change


@pytest.mark.parametrize("kind,change,needle", [
    ("img", _set("samples", lambda x: x.index_fill(0, torch.tensor([1]), float("nan"))), "NaN or infinite"),
    ("img", _set("samples", lambda x: x.index_fill(0, torch.tensor([1]), float("inf"))), "NaN or infinite"),
    ("img", _set("samples", lambda x: x * 1.5), "outside [-1, 1]"),
    ("img", _set("samples", lambda x: x.long()), "int64 discretized image samples"),
    ("img", _set("samples", lambda x: x[:0]), "holds no samples"),
    ("img", _meta("num_bins", "0"), "num_bins is '0'"),
    ("img", _meta("num_bins", "1"), "num_bins is '1'"),
    ("img", _meta("num_bins", "-16"), "num_bins is '-16'"),
    ("img", _meta("num_bins", "nan"), "num_bins is 'nan'"),
    ("img", _meta("num_bins", "1e20"), "num_bins is '1e20'"),
    ("img", _with_classes([0, 1, 2, 99], ["a", "b", "c"]), "class ids from 0 to 99 but names 3 classes"),
    ("img", _with_classes([0, 1, 2, -1], ["a", "b", "c"]), "class ids from -1 to 2"),
    ("img", _with_classes([0.0, 1.0, 2.0, 0.0], ["a", "b", "c"]), "classes are float32"),
    ("txt", _set("samples", lambda x: x.index_fill(0, torch.tensor([1]), -1)), "values from -1 to"),
    ("txt", _set("samples", lambda x: x.index_fill(0, torch.tensor([1]), 27)), "text ids are 0..26"),
    ("txt", _set("samples", lambda x: x.float()), "float32 text samples"),
    ("txt", _set("samples", lambda x: x[:0]), "holds no samples"),
    ("txt", _meta("num_bins", "5"), "text samples have 27 classes"),
])
def test_render_and_eval_agree_on_what_a_valid_samples_file_is(call, runs, drawn, tmp_path, kind, change, needle):
    bad = _tampered(drawn / f"{kind}.safetensors", tmp_path / "bad.safetensors", change)
    rendered = call("render", bad, *(["-o", tmp_path / "grid.png"] if kind == "img" else []))
    assert_one_line_error(rendered, needle, code=3)
    assert not (tmp_path / "grid.png").exists()
    scored = call("eval", "--samples", bad, "--checkpoint", ckpt(runs, kind))
    assert_one_line_error(scored, needle, code=3)
    assert scored.stderr.split(": ", 1)[1] == rendered.stderr.split(": ", 1)[1]  # one validation, one message


def test_huge_or_unrepresentable_sampling_settings(call, checkpoint, tmp_path):
    out = tmp_path / "never.safetensors"
    for sampler in ("paper", "ode", "auto"):
        result = call("sample", "--checkpoint", checkpoint, "--sampler", sampler, "--steps", 10**12, "-o", out)
        assert_one_line_error(result, "--steps 1000000000000 is more than the largest sensible value, 1,000,000")
    flow = call("sample", "--checkpoint", checkpoint, "--steps", 10**6, "--trajectory", "--frames", 10**6,
                "--shape", "100000,8,8,1", "-o", out)
    assert_one_line_error(flow, "the recorded flow (1000000 frames of 100000 samples) needs at least 47683.8 GiB",
                          "record fewer --frames")
    eta = call("sample", "--checkpoint", checkpoint, "--sampler", "ode", "--eta", "1e-300", "-o", out)
    assert_one_line_error(eta, "--eta 1e-300 is too small for the float32", "use --eta 1.2e-38 or more")
    assert not out.exists()


@pytest.mark.parametrize("args,needles", [
    (["--shape", "2,,8,8,1"], ["--shape '2,,8,8,1' has empty entries (at positions 2)"]),
    (["--shape", "4x8x8x1"], ["--shape '4x8x8x1' is not comma-separated integers", "--shape 4,8,8,1"]),
    (["--shape", "4,8,8,1,"], ["has empty entries (at positions 5)"]),
    (["--frames", "5"], ["--frames sets how many steps --trajectory records"]),
])
def test_lenient_sampling_options_are_refused(call, checkpoint, tmp_path, args, needles):
    out = tmp_path / "never.safetensors"
    assert_one_line_error(call("sample", "--checkpoint", checkpoint, *args, "-o", out), *needles)
    assert not out.exists()


def test_empty_class_entries_are_named(call, runs, tmp_path):
    cond = tmp_path / "cond.safetensors"
    save_file({"data": torch.zeros(4, 8, 8, 1), "labels": torch.tensor([0, 1, 0, 1])}, str(tmp_path / "d.safetensors"))
    trained = call("train", "--preset", "default-cond", *IMAGE, "--data", tmp_path / "d.safetensors", "--run-name", "c",
                   "--runs-dir", tmp_path / "runs", "--max-steps", 1, "--set", "train.batch_size=4")
    assert trained.returncode == 0, trained.stderr
    shutil.copy(next((tmp_path / "runs" / "c").glob("checkpoints/step-*/model.safetensors")), cond)
    result = call("sample", "--checkpoint", cond, "--class", ",,,", "-o", tmp_path / "s.safetensors")
    assert_one_line_error(result, "--class ',,,' has empty entries (at positions 1, 2, 3, 4 of 4)")
    result = call("sample", "--checkpoint", cond, "--class", "0,,1", "-o", tmp_path / "s.safetensors")
    assert_one_line_error(result, "(at positions 2 of 3)")


def test_render_to_a_folder_is_a_user_error(call, drawn, tmp_path):
    (tmp_path / "existing_dir.png").mkdir()
    assert_one_line_error(call("render", drawn / "img.safetensors", "-o", tmp_path / "existing_dir.png"),
                          "is a folder", code=2)
    assert_one_line_error(call("render", drawn / "img.safetensors", "-o", tmp_path / "nowhere" / "x.png"),
                          "the output folder", "does not exist", code=2)


def test_render_says_how_many_damaged_metrics_lines_it_skipped(call, tmp_path):
    assert _train(call, tmp_path, "--run-name", "r", "--max-steps", 2).returncode == 0
    with open(tmp_path / "runs" / "r" / "metrics.jsonl", "ab") as f:
        f.write(b"[1, 2]\n\xff\xfe not utf-8\n\"a string\"\n\n")
    result = call("render", tmp_path / "runs" / "r")
    assert result.returncode == 0, result.stderr
    assert "skipped 3 damaged lines of" in result.stderr  # the empty line is no damage


# ------------------------------------------------------------------------- files (items 13, 14)
def test_a_npy_header_that_claims_a_huge_shape_is_a_malformed_file(call, tmp_path):
    import numpy as np

    np.save(tmp_path / "ok.npy", np.zeros((3, 8, 8, 1), dtype=np.float32))
    data = (tmp_path / "ok.npy").read_bytes()
    claimed = "(1000000000000, 8, 8, 1), }"
    header = data[:128].decode("latin1").replace("(3, 8, 8, 1), }" + " " * (len(claimed) - 15), claimed)
    assert len(header) == 128
    (tmp_path / "huge.npy").write_bytes(header.encode("latin1") + data[128:])
    result = call("train", "--data", tmp_path / "huge.npy", "--max-steps", 1)
    assert_one_line_error(result, "is a malformed .npy file", "(1000000000000, 8, 8, 1) values of float32",
                          "holds 768 bytes", code=3)


def _png_header_only(path: Path, width: int, height: int) -> None:
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))


def test_a_picture_too_large_to_be_an_example(call, checkpoint, tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    _png_header_only(folder / "huge.png", 40000, 40000)
    assert_one_line_error(call("train", "--data", folder, "--max-steps", 1),
                          "image", "huge.png' is too large (40000x40000 pixels", "scale it down")
    assert_one_line_error(call("sample", "--checkpoint", checkpoint, "--image", folder / "huge.png", "--mask",
                               "0,0,4,4", "-o", tmp_path / "s.safetensors"), "--image", "is too large")


def test_convert_against_the_file_size_limit_says_so(runs, tmp_path):
    import resource

    limit = 4096
    result = subprocess.run(
        [sys.executable, "-m", "bfncli", "convert", str(ckpt(runs, "mnist")), "-o", str(tmp_path / "x.pt")],
        capture_output=True, text=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert_one_line_error(result, "cannot write", "x.pt", "File too large", code=1)
    assert "enforce" not in result.stderr and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- pictures (item 17)
def test_every_picture_is_read_through_one_helper(tmp_path):
    import numpy as np
    from PIL import Image

    from bfncli.data.pictures import read_picture

    dark = np.ones((8, 8), dtype=np.uint8)  # a JPEG mask whose values are all 1 of 255: black
    Image.fromarray(dark).save(tmp_path / "dark.jpg", quality=100)
    assert read_picture(tmp_path / "dark.jpg", "--mask").max() <= 3
    turned = np.zeros((2, 3, 3), dtype=np.uint8)
    turned[0, 0, 0] = 255  # a red pixel at the top left of a 3-wide, 2-high picture
    picture = Image.fromarray(turned)
    exif = picture.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show"
    picture.save(tmp_path / "phone.png", exif=exif)
    shown = read_picture(tmp_path / "phone.png", "image")
    assert shown.shape == (3, 2, 3) and shown[0, 1].tolist() == [255, 0, 0]
    deep = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369)  # 16-bit grey, 0..65535
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert read_picture(tmp_path / "deep.png", "image")[..., 0].tolist() == (np.arange(16) * 17).reshape(4, 4).tolist()
    palette = Image.new("P", (2, 2))
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.save(tmp_path / "palette.png")
    assert read_picture(tmp_path / "palette.png", "image")[..., 0].tolist() == [[255, 0], [0, 0]]
    Image.fromarray(np.full((2, 2, 4), 200, dtype=np.uint8), "RGBA").save(tmp_path / "alpha.png")
    assert read_picture(tmp_path / "alpha.png", "image").shape == (2, 2, 1)


def test_a_dark_jpeg_mask_means_nothing_is_unknown(call, checkpoint, tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.ones((8, 8), dtype=np.uint8)).save(tmp_path / "mask.jpg", quality=100)
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(tmp_path / "digit.png")
    result = call("sample", "--checkpoint", checkpoint, "--image", tmp_path / "digit.png", "--mask",
                  tmp_path / "mask.jpg", "-o", tmp_path / "s.safetensors")
    assert_one_line_error(result, "--mask leaves nothing to fill in")  # black everywhere: all known
