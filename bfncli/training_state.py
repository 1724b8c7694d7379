"""Crash-safe training checkpoints: everything needed to continue a run exactly.

A checkpoint is a directory ``runs/<name>/checkpoints/step-00001234/`` holding

    model.safetensors   the EMA weights as a self-describing bfn checkpoint (what eval/sample use)
    state.safetensors   raw weights, EMA weights and every optimizer tensor
    state.json          step, optimizer hyper-parameters, counters, data position, best validation
    manifest.json       sha256 and size of the three files above; written last

It is written into a temporary directory, flushed, and committed by one atomic rename; a directory
without a valid manifest is never loaded. No pickle anywhere: tensors in safetensors, the rest JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from bfncli.atomic_files import file_sha256, fsync_dir, fsync_file, save_tensors
from bfncli.checkpoint import RELEASE_NAME, metadata_for, save_checkpoint
from bfncli.errors import InputError, UserError
from bfncli.log import logger

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
MANIFEST = "manifest.json"
PREFIX = "step-"


@dataclass
class Saved:
    path: Path
    step: int


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


# ----------------------------------------------------------------------------- optimizer
def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and the rest (for JSON)."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for pid, entries in sd["state"].items():
        plain_state[str(pid)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                plain_state[str(pid)][key] = value
    return tensors, {"state": plain_state, "param_groups": sd["param_groups"]}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], plain: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {int(pid): dict(entries) for pid, entries in plain["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})
    for group in optimizer.param_groups:  # each state tensor in its parameter's memory layout (channels-last)
        for p in group["params"]:
            entries = optimizer.state.get(p, {})
            for key, value in entries.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    entries[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


# ---------------------------------------------------------------------------------- write
def save_training_checkpoint(
    run_dir: Path,
    step: int,
    cfg,
    model_state: dict[str, Tensor],
    ema_state: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
    keep: int,
) -> Saved:
    """Write, flush and atomically commit a checkpoint; then prune old ones (keeping ``keep``)."""
    root = checkpoint_dir(run_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    for name, t in ema_state.items():
        if torch.is_floating_point(t) and not torch.isfinite(t).all():
            raise UserError(f"refusing to save non-finite EMA weights ({name}) at step {step}", exit_code=1)
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_checkpoint(tmp / RELEASE_NAME, ema_state, cfg, weights="ema", step=step)
        opt_tensors, opt_plain = optimizer_tensors(optimizer)
        tensors = {f"model.{k}": v for k, v in model_state.items()}
        tensors.update({f"ema.{k}": v for k, v in ema_state.items()})
        tensors.update(opt_tensors)
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        save_tensors(tensors, tmp / STATE_TENSORS, metadata_for(cfg, "training-state", step))
        (tmp / STATE_JSON).write_text(json.dumps({"step": step, "optimizer": opt_plain, **info}, indent=1))
        for name in (STATE_TENSORS, STATE_JSON):
            fsync_file(tmp / name)
        manifest = {"step": step, "files": {n: {"sha256": file_sha256(tmp / n), "bytes": (tmp / n).stat().st_size}
                                            for n in (RELEASE_NAME, STATE_TENSORS, STATE_JSON)}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        fsync_file(tmp / MANIFEST)
        fsync_dir(tmp)
        if final.exists():  # a re-save of the same step: the old one goes only once the new one is in place
            aside = root / f".replaced-{final.name}-{os.getpid()}"
            os.replace(final, aside)
            os.replace(tmp, final)
            fsync_dir(root)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, final)
            fsync_dir(root)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"cannot write checkpoint in '{root}': {err.strerror or err}; free disk space or fix permissions "
            "(earlier checkpoints are intact)", exit_code=1
        ) from None
    except UserError as err:  # the release file could not be written
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{err} (earlier checkpoints are intact)", exit_code=1) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(root, keep, final)
    return Saved(final, step)


def prune(root: Path, keep: int, newest: Path) -> None:
    """Delete all but the newest ``keep`` committed checkpoints up to ``newest`` (the one just written,
    never deleted), and stale temporary directories of other processes."""
    committed = sorted(p for p in root.glob(f"{PREFIX}*") if (p / MANIFEST).exists() and p.name <= newest.name)
    for old in committed[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f".tmp-{PREFIX}*"):
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def set_aside_newer(root: Path, step: int) -> list[str]:
    """Checkpoints newer than the one a run resumes from belong to a history that will not happen now
    (damaged ones that resuming skipped, or the later steps of an explicit --resume of an older one).
    They are renamed superseded-step-..., kept for the user but out of the way of pruning and resuming.
    Returns what was renamed, as 'old -> new' notes."""
    moved = []
    for path in sorted(Path(root).glob(f"{PREFIX}*")):
        number = path.name[len(PREFIX):]
        if not number.isdigit() or int(number) <= step:
            continue
        target, n = path.with_name(f"superseded-{path.name}"), 1
        while target.exists():
            n += 1
            target = path.with_name(f"superseded-{path.name}-{n}")
        os.replace(path, target)
        moved.append(f"{path.name} -> {target.name}")
    if moved:
        fsync_dir(Path(root))
    return moved


# ----------------------------------------------------------------------------------- read
def verify(path: Path, only: Optional[str] = None) -> Optional[str]:
    """None if the checkpoint directory is committed and intact (or, given ``only``, that one file
    of it is), else what is wrong with it."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.exists():
        return "no manifest (the write never finished)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = {str(name): (int(expect["bytes"]), str(expect["sha256"])) for name, expect in manifest["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "unreadable manifest"
    if only is not None and only not in files:
        return f"the manifest does not list {only}"
    for name, (size, sha256) in files.items():
        if only is not None and name != only:
            continue
        file = Path(path) / name
        if not file.exists():
            return f"{name} is missing"
        if file.stat().st_size != size or file_sha256(file) != sha256:
            return f"{name} does not match its checksum"
    return None


def find_resumable(run_dir: Path) -> tuple[Optional[Path], list[str]]:
    """The newest intact checkpoint of a run, and a note for each newer one that was skipped."""
    skipped = []
    for path in sorted(checkpoint_dir(run_dir).glob(f"{PREFIX}*"), reverse=True):
        problem = verify(path)
        if problem is None:
            return path, skipped
        skipped.append(f"{path.name}: {problem}")
    return None, skipped


def load_training_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    problem = verify(path)
    if problem is not None:
        raise InputError(f"checkpoint '{path}' is not usable: {problem}")
    # Copies, not views of the file's memory map: the optimizer would keep its state in the mapping of
    # a checkpoint the run prunes later, whose disk space would then stay taken until the run ends.
    tensors = {name: t.clone() for name, t in load_file(str(Path(path) / STATE_TENSORS)).items()}
    info = json.loads((Path(path) / STATE_JSON).read_text())
    return tensors, info


# -------------------------------------------------------------------- the newest of all runs
def find_latest(runs_dir: Path) -> Path:
    """The release file of the newest intact checkpoint of the newest run under ``runs_dir``
    (committed, and matching its manifest's checksum); damaged newer ones are named on stderr."""
    def modified(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # pruned by a training run since the listing
            return 0.0

    runs_dir = Path(runs_dir)
    candidates = sorted(runs_dir.glob(f"*/checkpoints/{PREFIX}*/{RELEASE_NAME}"), key=modified)
    for path in reversed(candidates):
        try:
            problem = verify(path.parent, only=RELEASE_NAME)
        except OSError:  # the same, while it was being read
            continue
        if problem is None:
            return path
        if (path.parent / MANIFEST).exists():  # an unfinished write is not worth a word
            logger.warning(f"skipping damaged checkpoint {path.parent}: {problem}")
    where = runs_dir if runs_dir.exists() else f"{runs_dir} (which does not exist)"
    raise InputError(f"no checkpoint found under {where}; train one with 'bfn train' or pass --checkpoint FILE")
