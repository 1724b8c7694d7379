"""A training run's folder: choosing it (new run or resume), its config, its metrics file.

    runs/<name>/config.yaml      the resolved config of the run
    runs/<name>/metrics.jsonl    one JSON object per logged step or validation
    runs/<name>/checkpoints/     see bfncli.training_state
    runs/<name>/best.safetensors the EMA weights with the best validation loss
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

from bfncli.atomic_files import remove_stale_partials, write_text_atomic
from bfncli.errors import InputError, UserError
from bfncli.log import logger
from bfncli.training_state import PREFIX, find_resumable, verify

# Config fields that may change on resume: they do not alter the trajectory of the run (train.compile only
# in the last bits of floating point, and dropout's random stream; see the README's Speed section).
RESUMABLE_CHANGES = (
    "description", "train.steps", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every",
    "train.val_every", "train.val_repeats", "train.val_batch_size", "train.max_val_batches", "train.trackers",
    "train.max_nonfinite_steps", "train.compile", "data.data_dir", "data.download", "eval", "sample",
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
                   announce: bool, claim: Callable[[Path], None] = lambda run_dir: None) -> tuple[Path, Optional[Path]]:
    """The run directory, and the checkpoint to start from (None: a fresh run). ``claim(run_dir)`` is
    called as soon as the run directory is known, before anything is said about it (the run lock)."""
    if resume not in (None, "auto"):
        path = Path(resume)
        if not path.exists():
            raise InputError(f"--resume {resume}: no such checkpoint; use --resume auto or a checkpoint directory")
        if path.name == "checkpoints" or (path / "checkpoints").is_dir():
            path = path if path.name == "checkpoints" else path / "checkpoints"
            claim(path.parent)
            best, skipped = find_resumable(path.parent)
            report_skipped(skipped, announce)
            if best is None:
                raise InputError(f"--resume {resume}: no intact checkpoint there")
            return path.parent, best
        path = path.resolve()
        if path.parent.name != "checkpoints":
            raise InputError(f"--resume {resume}: not a checkpoint of a run (runs/NAME/checkpoints/step-...); give "
                             "one inside its run folder, or the run's checkpoints folder")
        claim(path.parent.parent)
        problem = verify(path)
        if problem is not None:
            raise InputError(f"--resume {resume}: {problem}")
        return path.parent.parent, path
    if resume == "auto":
        if run_name is None:
            runs = sorted((p for p in runs_dir.glob("*") if (p / "config.yaml").exists()),
                          key=lambda p: p.stat().st_mtime)
            if not runs:
                raise InputError(f"--resume auto: no runs under {runs_dir}; start one without --resume")
            run_dir = runs[-1]
        else:
            check_run_name(run_name)
            run_dir = runs_dir / run_name
        claim(run_dir)
        best, skipped = find_resumable(run_dir)
        report_skipped(skipped, announce)
        if best is None and not never_got_anywhere(run_dir):
            raise InputError(f"run '{run_dir.name}' has no intact checkpoint to resume from (the damaged ones are named "
                             f"above); resume from one of your own with --resume DIR, or start a new run under another "
                             "--run-name")
        if best is None:
            started_from = _initial_weights_of(run_dir)
            if started_from:  # starting afresh would start from random weights instead
                raise UserError(f"run '{run_dir.name}' started from --init {started_from} and stopped before its first "
                                f"checkpoint; start it again with --init {started_from} --run-name {run_dir.name}")
            if announce:
                logger.info(f"no checkpoint in {run_dir} yet: starting it from the beginning")
        return run_dir, best
    name = run_name if run_name is not None else f"{preset or 'default'}-{datetime.now():%Y%m%d-%H%M%S}"
    check_run_name(name)
    run_dir = runs_dir / name
    claim(run_dir)
    if (run_dir / "config.yaml").exists():
        if not never_got_anywhere(run_dir):
            raise UserError(f"run '{run_dir}' already exists; continue it with --resume auto --run-name {name}, "
                            "or choose another --run-name")
        if announce:
            logger.info(f"run '{name}' stopped before its first checkpoint: starting it afresh")
    return run_dir, None


NAME_MAX = 255  # bytes in one file name, on the usual file systems


def check_run_name(name: str) -> None:
    """A run's name is one folder name: not empty, not a path, no control characters, not too long."""
    if not name.strip() or name in (".", "..") or "/" in name or os.sep in name:
        raise UserError(f"--run-name '{name}' must be a plain name (a folder under --runs-dir), not a path")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UserError(f"--run-name {name!r} has control characters; use letters, digits, '-', '_' or '.'")
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > NAME_MAX:
        raise UserError(f"--run-name is {len(name)} characters ({size} bytes) long; a folder name has at most "
                        f"{NAME_MAX} bytes: choose a shorter one")


def _initial_weights_of(run_dir: Path) -> Optional[str]:
    """The --init spec a run started from (its first metrics record says so), if any."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    try:
        first = next(iter(read_metrics(path)), {})
    except OSError:
        return None
    return first.get("init") if isinstance(first.get("init"), str) else None


def never_got_anywhere(run_dir: Path) -> bool:
    """A run that stopped before its first checkpoint and validation: nothing of it is worth keeping,
    so its name is free again (its config and metrics are replaced)."""
    checkpoints = Path(run_dir) / "checkpoints"
    has_checkpoint = checkpoints.is_dir() and any(p.name.startswith(PREFIX) for p in checkpoints.iterdir())
    return not has_checkpoint and not (Path(run_dir) / "best.safetensors").exists()


def start_run_dir(run_dir: Path, config_yaml: str) -> None:
    """Set up the folder of a run that starts at step 0: its config, no metrics from an earlier
    attempt that never reached a checkpoint, no temporary files left by killed writers."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", config_yaml)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    except OSError as err:  # a full disk is the machine's problem (1); a file in the way or no permission, the user's (2)
        full = err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO)
        raise UserError(f"cannot create the run directory '{run_dir}': {err.strerror or err}; "
                        "choose another --runs-dir, free disk space or fix its permissions",
                        exit_code=1 if full else 2) from None
    remove_stale_partials(run_dir)


def check_resumed_config(run_dir: Path, checkpoint_config: dict, new_config: dict) -> None:
    """Refuse to resume with a config that changes the run, compared with the run's config.yaml (or,
    where that is missing, the config inside the checkpoint); then record the config resumed with."""
    from bfncli.config import validate_config

    path = Path(run_dir) / "config.yaml"
    old = read_run_config(path) if path.exists() else checkpoint_config
    try:  # written by an older bfn, it may lack fields added since: compare with their defaults filled in
        old = validate_config(old).to_dict()
    except UserError as err:
        raise InputError(f"the run's config '{path}' no longer validates ({err}); delete it to resume with the config "
                         "stored in the checkpoint") from None
    changes = config_changes(old, new_config)
    if changes:
        raise UserError("cannot resume with a config that changes the run: " + "; ".join(changes[:6])
                        + (f" and {len(changes) - 6} more" if len(changes) > 6 else "")
                        + " (start a new --run-name instead)")


def read_run_config(path: Path) -> dict:
    import yaml

    from bfncli import yaml_loader

    hint = "delete it to resume with the config stored in the checkpoint"
    try:
        data = yaml_loader.load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the run's config '{path}' ({getattr(err, 'strerror', None) or err}); {hint}") from None
    except yaml.YAMLError as err:
        raise InputError(f"the run's config '{path}' is damaged (not valid YAML{yaml_loader.describe_error(err)}); "
                         f"{hint}") from None
    if not isinstance(data, dict) or not data:
        what = "empty" if not data else f"a {type(data).__name__}, not a mapping of sections"
        raise InputError(f"the run's config '{path}' is damaged ({what}); {hint}")
    return data


def report_skipped(skipped: list[str], announce: bool) -> None:
    if announce:
        for note in skipped:
            logger.warning(f"skipping damaged checkpoint {note}")


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
    except OSError as err:
        raise UserError(f"cannot append to '{path}': {err.strerror or err}; free disk space and resume with "
                        "--resume auto (the last checkpoint is intact)", exit_code=1) from None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; lines that are not JSON objects (cut short by a crash, damaged,
    not UTF-8) are skipped."""
    return read_metrics_counted(path)[0]


def read_metrics_counted(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of a metrics file, and how many non-empty lines were skipped as damaged."""
    records, skipped = [], 0
    if not Path(path).is_file():  # a device or a pipe (which may never end) holds no records to read
        return records, skipped
    with open(path, "rb") as f:
        for raw in f:
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                record = None
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
            elif raw.strip():
                skipped += 1
    return records, skipped


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines the interrupted run wrote after the checkpoint it resumes from."""
    if not path.is_file():
        return
    keep = [json.dumps(r) + "\n" for r in read_metrics(path) if r["step"] <= step]
    try:
        write_text_atomic(path, "".join(keep))
    except OSError as err:
        raise UserError(f"cannot rewrite '{path}': {err.strerror or err}; free disk space or fix its permissions",
                        exit_code=1) from None


def resume_command(run_dir: Path, argv: Optional[list[str]] = None) -> str:
    """The command that continues a run: the one that started it (same preset, config and settings,
    which a resumed run must keep), with ``--resume auto --run-name NAME`` in place of any
    --resume/--run-name/--init. ``argv``: the arguments bfn was given (default: this process's)."""
    args = list(sys.argv[1:] if argv is None else argv)
    root = 0
    while root < len(args) and args[root] in ("-q", "--quiet", "-v", "--verbose"):
        root += 1
    tail = ["--resume", "auto", "--run-name", run_dir.name]
    if Path(run_dir).parent != Path("runs"):
        tail += ["--runs-dir", str(Path(run_dir).parent)]
    if root >= len(args) or args[root] != "train":  # not known: say what to keep
        return f"bfn train {shlex.join(tail)} (with this run's --preset, --config and --set)"
    kept, skip = args[:root + 1], False
    for arg in args[root + 1:]:
        if skip:
            skip = False
        elif arg in ("--resume", "--run-name", "--init", "--runs-dir"):
            skip = True
        elif not arg.startswith(("--resume=", "--run-name=", "--init=", "--runs-dir=")):
            kept.append(arg)
    return "bfn " + shlex.join(kept + tail)
