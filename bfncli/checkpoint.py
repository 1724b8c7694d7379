"""Self-describing bfn checkpoints: one ``.safetensors`` file, weights plus the run's config.

The string metadata of the file holds:

    format          "bfn"                  what kind of file this is
    format_version  "1"
    bfn_version     the bfn that wrote it
    config          the full resolved BFNConfig as JSON: the architecture comes from here
    weights         "ema" or "raw"
    step            the training step (or "0" for converted checkpoints)

Loading never unpickles anything. A file whose tensors do not fit its config is refused with the
offending names. Files are written to a temporary name, flushed and renamed, so that a crash never
leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from bfncli import __version__
from bfncli.atomic_files import atomic_path, save_tensors
from bfncli.config import BFNConfig, validate_config
from bfncli.errors import InputError, UserError
from bfncli.log import bar_disabled

FORMAT = "bfn"
FORMAT_VERSION = "1"
RELEASE_NAME = "model.safetensors"  # the EMA weights inside each training checkpoint directory
CHECKSUM = "tensors_sha256"  # metadata key: see tensors_checksum


@dataclass
class CheckpointInfo:
    path: Path
    config: BFNConfig
    weights: str
    step: int
    metadata: dict[str, str]


# ------------------------------------------------------------------------------- writing
def metadata_for(cfg: BFNConfig, weights: str, step: int, extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bfn_version": __version__,
        "config": cfg.to_json(),
        "weights": weights,
        "step": str(int(step)),
    }
    meta.update(extra or {})
    return meta


def tensors_checksum(tensors: dict[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: what a checkpoint's
    ``tensors_sha256`` metadata holds, checked on every load (about 1 GB/s: 0.1 s for CIFAR-10's network)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        digest.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        if t.numel():
            digest.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def progress(items, total: int, label: str, nbytes: int):
    """A progress bar on stderr for big files (on a terminal); silent for small ones."""
    import sys

    from tqdm import tqdm

    return tqdm(items, total=total, desc=label, unit="tensor", file=sys.stderr, leave=False,
                disable=bar_disabled(None if nbytes > 50e6 else True))


def save_checkpoint(
    path: Path,
    state_dict: dict[str, Tensor],
    cfg: BFNConfig,
    weights: str = "ema",
    step: int = 0,
    extra: Optional[dict[str, str]] = None,
) -> Path:
    """Write a self-describing checkpoint atomically. Tensors are saved as they are (dtype kept)."""
    path = Path(path)
    nbytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    tensors = {
        name: t.detach().to("cpu").contiguous().clone()
        for name, t in progress(state_dict.items(), len(state_dict), f"writing {path.name}", nbytes)
    }
    meta = metadata_for(cfg, weights, step, {**(extra or {}), CHECKSUM: tensors_checksum(tensors)})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_tensors(tensors, tmp, meta)
    except OSError as err:
        raise UserError(f"cannot write checkpoint '{path}': {err.strerror or err}; check the directory and free space",
                        exit_code=1) from None
    return path


# ------------------------------------------------------------------------------- reading
def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, with one-line errors for files that are not one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint '{path}' does not exist")
    if path.is_dir():
        raise InputError(f"'{path}' is a directory; give the checkpoint's .safetensors file")
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        raise InputError(
            f"'{path}' is not a bfn checkpoint; convert official .pt files first: bfn convert {path} -o model.safetensors"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"'{path}' is not a readable safetensors file ({_short(err)}); is it truncated?") from None


def read_info(path: Path) -> CheckpointInfo:
    meta = read_metadata(path)
    if meta.get("format") != FORMAT or "config" not in meta:
        raise InputError(
            f"'{path}' is a safetensors file but not a bfn checkpoint (no bfn config in its metadata); "
            "if it holds official weights, convert the official .pt with bfn convert"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"'{path}' has checkpoint format version {meta.get('format_version')!r}; this bfn reads version "
            f"{FORMAT_VERSION}: upgrade bfn"
        )
    try:
        data = json.loads(meta["config"])
    except json.JSONDecodeError:
        raise InputError(f"'{path}' has a corrupted config in its metadata; use another copy of the checkpoint") from None
    if not isinstance(data, dict):
        raise InputError(f"'{path}' has a corrupted config in its metadata (a JSON {type(data).__name__}, not an "
                         "object); use another copy of the checkpoint")
    try:
        cfg = validate_config(data, {})
    except UserError as err:
        raise InputError(f"'{path}' carries a config this bfn cannot use: {err}") from None
    step = meta.get("step", "0") or "0"
    if not step.isdigit():
        raise InputError(f"'{path}' has a corrupted training step in its metadata ({step[:20]!r}); use another copy "
                         "of the checkpoint")
    return CheckpointInfo(Path(path), cfg, meta.get("weights", "?"), int(step), meta)


def load_tensors(path: Path, device: str = "cpu", quiet: bool = False) -> dict[str, Tensor]:
    """Every tensor of a safetensors file, in file order, with a progress bar for big files (unless ``quiet``)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            names = list(f.keys())
            expected = (f.metadata() or {}).get(CHECKSUM)
            tensors = {name: f.get_tensor(name) for name in progress(names, len(names), f"reading {Path(path).name}",
                                                                     0 if quiet else Path(path).stat().st_size)}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise InputError(f"cannot read the tensors of '{path}' ({_short(err)}); is the file truncated?") from None
    # Files written before checksums existed have none: they load as they always did.
    if expected is not None and tensors_checksum(tensors) != expected:
        raise InputError(f"'{path}' is damaged: its tensors do not match the checksum stored in it (changed bytes "
                         "on disk or in transfer); use another copy")
    return tensors


def check_state_dict(expected: dict[str, Tensor], got: dict[str, Tensor], what: str) -> None:
    """Refuse tensors that do not fit the architecture, naming the offenders."""
    problem = describe_mismatch(expected, got)
    if problem:
        raise InputError(f"{what} does not fit its config ({problem})")


def describe_mismatch(expected: dict[str, Tensor], got: dict[str, Tensor]) -> Optional[str]:
    """None if the tensors fit the architecture exactly, else the missing, unexpected and misshapen names."""
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    wrong = [
        f"{k} {tuple(got[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in got and tuple(got[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            problems.append(f"{label}: {shown}")
    return "; ".join(problems) or None


def check_dtypes(expected: dict[str, Tensor], got: dict[str, Tensor], what: str) -> None:
    """Weights must be floating point where the network's are (any precision: it is cast on load),
    and of the very type elsewhere: integers or booleans would be cast silently into nonsense."""
    for name, want in expected.items():
        have = got[name].dtype
        fits = torch.is_floating_point(got[name]) if want.is_floating_point() else have == want.dtype
        if not fits:
            raise InputError(f"{what} holds '{name}' as {str(have).removeprefix('torch.')}, but the network needs "
                             f"{'floating-point numbers' if want.is_floating_point() else want.dtype}; it is not a "
                             "valid checkpoint")


def load_model(path: Path, device: str = "cpu", cfg: Optional[BFNConfig] = None, quiet: bool = False):
    """Build the BFN a checkpoint describes and load its weights. Returns (model, info).

    The network is built on the meta device (shapes, no memory, no random initialisation: on the
    CPU that was half the time of loading the CIFAR-10 network) and takes the file's tensors as its own."""
    from bfncli.model import BFN, make_network

    info = read_info(path)
    cfg = cfg or info.config
    with torch.device("meta"):
        net = make_network(cfg)
    model = BFN(cfg, net)
    tensors = load_tensors(path, quiet=quiet)
    expected = model.net.state_dict()
    check_state_dict(expected, tensors, f"checkpoint '{path}'")
    check_dtypes(expected, tensors, f"checkpoint '{path}'")
    for name, tensor in tensors.items():
        if not torch.is_floating_point(tensor) or torch.isfinite(tensor).all():
            continue
        raise InputError(f"checkpoint '{path}' has non-finite values in '{name}'; it cannot be used")
    model.net.load_state_dict(tensors, strict=True, assign=True)
    left = [name for name, t in [*model.net.named_parameters(), *model.net.named_buffers()] if t.is_meta]
    if left:  # a tensor the file does not hold (none today): build that network the slow way
        model = BFN(cfg)
        model.net.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), info


def _short(err: Exception) -> str:
    return str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
