"""Crash-safe checkpoints and the data order, without a training loop."""

import json

import pytest
import torch

from bfncli.config import resolve_config
from bfncli.errors import UserError
from bfncli.jobs.data_order import DataOrder
from bfncli.jobs.run_directory import config_changes
from bfncli.training_state import (
    find_resumable,
    load_training_checkpoint,
    optimizer_tensors,
    restore_optimizer,
    save_training_checkpoint,
    verify,
)


def _tiny_optimizer():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2))]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        (params[0].sum() + params[1].square().sum()).backward()
        opt.step()
    return params, opt


def _save(run_dir, step, keep=2):
    params, opt = _tiny_optimizer()
    cfg = resolve_config("default", environ={})
    state = {"w": params[0].detach(), "b": params[1].detach()}
    return save_training_checkpoint(run_dir, step, cfg, state, state, opt, {"note": step}, keep=keep)


def test_optimizer_state_round_trips_exactly():
    params, opt = _tiny_optimizer()
    tensors, plain = optimizer_tensors(opt)
    tensors = {k: v.clone() for k, v in tensors.items()}  # as if read back from the file
    json_plain = json.loads(json.dumps(plain))
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = torch.optim.AdamW(params2, lr=1e-3)
    restore_optimizer(opt2, tensors, json_plain)
    for p, q in ((params, opt), (params2, opt2)):
        q.zero_grad()
        (p[0].sum() + p[1].square().sum()).backward()
        q.step()
    for a, b in zip(params, params2):
        assert torch.equal(a, b)


def test_checkpoints_are_committed_with_a_manifest_and_pruned(tmp_path):
    for step in (10, 20, 30):
        _save(tmp_path, step, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000020", "step-00000030"]
    path, skipped = find_resumable(tmp_path)
    assert path.name == "step-00000030" and skipped == []
    tensors, info = load_training_checkpoint(path)
    assert info["step"] == 30 and info["note"] == 30
    assert "model.w" in tensors and "ema.b" in tensors and any(k.startswith("optim.") for k in tensors)


def test_damaged_checkpoints_are_detected_and_skipped(tmp_path):
    _save(tmp_path, 10)
    newest = _save(tmp_path, 20).path
    data = (newest / "state.safetensors").read_bytes()
    (newest / "state.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert "checksum" in verify(newest)
    path, skipped = find_resumable(tmp_path)
    assert path.name == "step-00000010"
    assert skipped == ["step-00000020: state.safetensors does not match its checksum"]
    with pytest.raises(UserError, match="not usable"):
        load_training_checkpoint(newest)


def test_an_unfinished_write_is_never_loaded(tmp_path):
    _save(tmp_path, 10)
    half = tmp_path / "checkpoints" / "step-00000020"
    half.mkdir()
    (half / "state.json").write_text("{}")
    assert verify(half) == "no manifest (the write never finished)"
    assert find_resumable(tmp_path)[0].name == "step-00000010"


def test_disk_full_is_a_clear_error_and_keeps_old_checkpoints(tmp_path, monkeypatch):
    _save(tmp_path, 10)
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(UserError, match="No space left on device.*earlier checkpoints are intact"):
        _save(tmp_path, 20)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000010"]
    assert find_resumable(tmp_path)[0].name == "step-00000010"


def test_unwritable_runs_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "run"
    blocker.mkdir()
    (blocker / "checkpoints").write_text("a file where the checkpoints directory should be")
    with pytest.raises(UserError, match="cannot write checkpoint"):
        _save(blocker, 10)


def test_data_order_is_a_pure_function_of_the_step():
    order = DataOrder(n_examples=10, global_batch=4, micro_batch=2, seed=1)
    seen = torch.cat([torch.cat([order.indices(s, 0), order.indices(s, 1)]) for s in range(5)])
    # The first 10 positions are a permutation of the data set (epoch 0), then epoch 1 starts.
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:20].tolist()) == list(range(10))
    fresh = DataOrder(n_examples=10, global_batch=4, micro_batch=2, seed=1)
    assert torch.equal(fresh.indices(3, 1), order.indices(3, 1))  # no hidden state
    assert order.position(5) == {"examples_seen": 20, "epoch": 2, "offset": 0}


def test_config_changes_ignore_what_does_not_alter_the_run():
    a = resolve_config("default", environ={}).to_dict()
    b = resolve_config("default", sets=["train.steps=99", "train.checkpoint_every=7"], environ={}).to_dict()
    assert config_changes(a, b) == []
    c = resolve_config("default", sets=["optim.lr=0.5"], environ={}).to_dict()
    assert config_changes(a, c) == ["optim.lr: 0.001 -> 0.5"]


def test_library_write_failures_become_os_errors(tmp_path):
    # safetensors and torch.save raise their own types for a failed write; callers report OSErrors
    from bfncli.atomic_files import save_tensors, write_errors_as_oserror

    with pytest.raises(OSError, match="No such file or directory"):
        save_tensors({"x": torch.zeros(2)}, tmp_path / "missing" / "x.safetensors")
    with pytest.raises(OSError):
        with write_errors_as_oserror():
            torch.save({"x": torch.zeros(2)}, str(tmp_path / "missing" / "x.pt"))


def test_a_loaded_training_checkpoint_keeps_no_view_of_its_file(tmp_path):
    # The optimizer keeps what it is given: views of the file's memory map would pin a checkpoint that
    # the resumed run prunes later (its disk space stays taken until the run ends).
    import os

    saved = _save(tmp_path, 10)
    tensors, _ = load_training_checkpoint(saved.path)
    state_file = os.path.realpath(saved.path / "state.safetensors")
    mapped = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == state_file:
                low, high = (int(x, 16) for x in fields[0].split("-"))
                mapped.append((low, high))
    assert not [name for name, t in tensors.items() if any(low <= t.data_ptr() < high for low, high in mapped)]
