"""A training run's folder: choosing it (new run or resume), its config, its metrics file.

    runs/<name>/config.yaml      the resolved config of the run
    runs/<name>/metrics.jsonl    one JSON object per logged step or validation
    runs/<name>/checkpoints/     see bfncli.training_state
    runs/<name>/best.safetensors the EMA weights with the best validation loss
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from bfncli.errors import UserError
from bfncli.training_state import find_resumable, verify

# Config fields that may change on resume: they do not alter the trajectory of the run.
RESUMABLE_CHANGES = (
    "description", "train.steps", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
    "train.val_every", "train.val_repeats", "train.val_batch_size", "train.max_val_batches", "train.trackers",
    "train.max_nonfinite_steps", "data.data_dir", "data.download", "eval", "sample",
)


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted paths whose values differ between two config dicts (ignoring RESUMABLE_CHANGES)."""
    out = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        if path in RESUMABLE_CHANGES:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_changes(a, b, path + "."))
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")
    return out


def choose_run_dir(runs_dir: Path, run_name: Optional[str], preset: Optional[str], resume: Optional[str],
             announce: bool) -> tuple[Path, Optional[Path]]:
    """The run directory, and the checkpoint to start from (None: a fresh run)."""
    if resume not in (None, "auto"):
        path = Path(resume)
        if not path.exists():
            raise UserError(f"--resume {resume}: no such checkpoint; use --resume auto or a checkpoint directory")
        if path.name == "checkpoints" or (path / "checkpoints").is_dir():
            path = path if path.name == "checkpoints" else path / "checkpoints"
            best, skipped = find_resumable(path.parent)
            report_skipped(skipped, announce)
            if best is None:
                raise UserError(f"--resume {resume}: no intact checkpoint there")
            return path.parent, best
        problem = verify(path)
        if problem is not None:
            raise UserError(f"--resume {resume}: {problem}")
        return path.parent.parent, path
    if resume == "auto":
        if run_name is None:
            runs = sorted((p for p in runs_dir.glob("*") if (p / "config.yaml").exists()),
                          key=lambda p: p.stat().st_mtime)
            if not runs:
                raise UserError(f"--resume auto: no runs under {runs_dir}; start one without --resume")
            run_dir = runs[-1]
        else:
            run_dir = runs_dir / run_name
        best, skipped = find_resumable(run_dir)
        report_skipped(skipped, announce)
        if best is None and announce:
            sys.stderr.write(f"no checkpoint in {run_dir} yet: starting it from the beginning\n")
        return run_dir, best
    name = run_name or f"{preset or 'default'}-{datetime.now():%Y%m%d-%H%M%S}"
    if name in (".", "..") or "/" in name or os.sep in name:
        raise UserError(f"--run-name '{name}' must be a plain name (a folder under --runs-dir), not a path")
    run_dir = runs_dir / name
    if (run_dir / "config.yaml").exists():
        raise UserError(f"run '{run_dir}' already exists; continue it with --resume auto --run-name {name}, "
                        "or choose another --run-name")
    return run_dir, None


def report_skipped(skipped: list[str], announce: bool) -> None:
    if announce:
        for note in skipped:
            sys.stderr.write(f"skipping damaged checkpoint {note}\n")


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def write_config(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines the interrupted run wrote after the checkpoint it resumes from."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue  # a line cut short by the interruption
    write_config(path, "".join(line + "\n" for line in keep))
