"""Shell completion of option values (``bfn --install-completion``): presets, samplers, class names,
checkpoints and runs.

Each function is a Typer ``autocompletion`` callback: it gets the word being typed (and the values
parsed so far) and returns the matching ``(value, help)`` pairs. They run at every Tab, so they read
only what is cheap: preset files, the sampler registry, a checkpoint's header and folder listings;
never torch. Where nothing matches they return nothing, and the shell falls back to file names.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator, Optional

import typer

RELEASE = "model.safetensors"  # a training checkpoint's release file (bfncli.checkpoint.RELEASE_NAME)


def presets(incomplete: str) -> list[tuple[str, str]]:
    from bfncli.config import list_presets

    return [(name, text) for name, text in list_presets().items() if name.startswith(incomplete)]


def samplers(incomplete: str) -> list[tuple[str, str]]:
    from bfncli.samplers import SAMPLERS

    choices = [("auto", "the sampler measured best at the budget (the default)")]
    choices += [(s.name, s.summary) for s in SAMPLERS.values()]
    return [(name, text) for name, text in choices if name.startswith(incomplete)]


def checkpoints(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """The released weights (official:NAME), checkpoints in the current folder and the runs'
    checkpoints; file names beyond those come from the shell."""
    from bfncli.hub import OFFICIAL_FILES

    choices = [(f"official:{name}", f"the released {file}") for name, file in OFFICIAL_FILES.items()]
    choices += [(str(p), "") for p in sorted(Path(".").glob("*.safetensors"))]
    choices += [(str(p), "best validation loss") for p in sorted(_runs_dir(ctx).glob("*/best.safetensors"))]
    choices += [(str(p / RELEASE), "") for p in _step_dirs(ctx)]
    return [(value, text) for value, text in choices if value.startswith(incomplete)]


def resume(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    choices = [("auto", "the newest intact checkpoint of the run (--run-name, or the newest run)")]
    choices += [(str(p), "") for p in _step_dirs(ctx)]
    return [(value, text) for value, text in choices if value.startswith(incomplete)]


def run_names(ctx: typer.Context, incomplete: str) -> list[str]:
    return [p.parent.name for p in sorted(_runs_dir(ctx).glob("*/config.yaml")) if p.parent.name.startswith(incomplete)]


def classes(ctx: typer.Context, incomplete: str) -> list[str]:
    """The class names of the checkpoint given by --checkpoint (a local file), and 'none'; after a
    comma, the next class of a list."""
    done, _, word = incomplete.rpartition(",")
    prefix = done + "," if done else ""
    names = ["none"] + _class_names(ctx.params.get("checkpoint"))
    return [prefix + name for name in names if name.startswith(word)]


def no_class(incomplete: str) -> list[str]:
    """bfn eval --class: only 'none' (the unconditional likelihood)."""
    return ["none"] if "none".startswith(incomplete) else []


def _class_names(spec: Optional[str]) -> list[str]:
    """data.class_names from a local checkpoint's safetensors header, without reading its tensors."""
    if not spec or ":" in spec:
        return []
    try:
        with open(spec, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                return []
            header = json.loads(f.read(size))
        config = json.loads(header.get("__metadata__", {}).get("config", "{}"))
        return [str(name) for name in config.get("data", {}).get("class_names", [])]
    except (OSError, ValueError, struct.error, AttributeError):
        return []


def _runs_dir(ctx: typer.Context) -> Path:
    return Path(ctx.params.get("runs_dir") or "runs")


def _step_dirs(ctx: typer.Context) -> Iterator[Path]:
    """The runs' checkpoint folders, newest step first within each run."""
    for run in sorted(_runs_dir(ctx).glob("*/checkpoints")):
        yield from sorted((p for p in run.glob("step-*") if (p / RELEASE).is_file()), reverse=True)
