"""``bfn --version``: the versions a bug report needs (bfn, Python, torch and its CUDA, the GPUs seen,
accelerate). Only this imports torch, so that ``bfn --help`` stays instant."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any, Optional

from bfncli import __version__


def versions() -> dict[str, Any]:
    info: dict[str, Any] = {"bfn": __version__, "python": platform.python_version(), "platform": platform.platform()}
    info["torch"] = _installed("torch")
    info["cuda"], info["gpus"], info["cuda_error"] = _cuda()
    info["accelerate"] = _installed("accelerate")
    return info


def describe(info: dict[str, Any]) -> str:
    """One line per package: what ``bfn --version`` prints."""
    if info["gpus"]:
        gpus = f"{len(info['gpus'])} GPU{'s' if len(info['gpus']) > 1 else ''}: {', '.join(info['gpus'])}"
    else:
        gpus = "no GPU" + (f" ({info['cuda_error']})" if info["cuda_error"] else "")
    cuda = f"CUDA {info['cuda']}, {gpus}" if info["cuda"] else "CPU build, no CUDA"
    return "\n".join([
        f"bfn {info['bfn']}",
        f"python {info['python']} ({info['platform']})",
        f"torch {info['torch'] or 'not installed'} ({cuda})",
        f"accelerate {info['accelerate'] or 'not installed'}",
    ])


def _installed(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cuda() -> tuple[Optional[str], list[str], Optional[str]]:
    """torch's CUDA version, the names of the GPUs it sees, and why it sees none where it should."""
    try:
        import torch
    except ImportError:
        return None, [], None
    cuda = torch.version.cuda
    if cuda is None:
        return None, [], None
    try:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as err:  # a driver that does not fit the build: the very thing a bug report needs
        return cuda, [], str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return cuda, names, None
