"""What every computing command shares: device, process group, reproducibility settings, and
finding the checkpoint to use."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from bfncli.errors import InputError, UserError
from bfncli.log import logger


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(deterministic: bool = False) -> Runtime:
    """Pick the device (one process per GPU under ``accelerate launch``) and set precision flags.

    ``deterministic`` applies the official README's strict settings: highest-precision float32
    matmuls, deterministic algorithms, no cuDNN benchmarking.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.set_float32_matmul_precision("highest")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())  # several CPU processes: gloo
        runtime = Runtime(state.device, state.process_index, state.num_processes)
    else:
        runtime = Runtime(default_device())
    _describe(runtime, deterministic)
    return runtime


def default_device() -> torch.device:
    """The GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _describe(runtime: Runtime, deterministic: bool) -> None:
    """-v: the device, the processes and the versions that decide the numbers."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    from importlib import metadata

    from bfncli import __version__

    device = str(runtime.device)
    if runtime.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(runtime.device)})"
    logger.debug(f"device {device}, {runtime.world_size} process(es), {torch.get_num_threads()} CPU threads, "
                 f"{'deterministic' if deterministic else 'fast'} kernels; bfn {__version__}, torch "
                 f"{torch.__version__} (CUDA {torch.version.cuda or 'none'}), accelerate {metadata.version('accelerate')}")


def resolve_checkpoint(checkpoint: Optional[Path], runs_dir: Path, announce: bool = True) -> Path:
    """The checkpoint given (a run folder: its newest intact checkpoint), or the newest one under
    ``runs_dir`` (named on stderr)."""
    from bfncli.checkpoint import RELEASE_NAME
    from bfncli.training_state import MANIFEST, find_latest, find_resumable, verify

    if checkpoint is not None and Path(checkpoint, "checkpoints").is_dir():
        from bfncli.jobs.run_directory import report_skipped

        newest, skipped = find_resumable(Path(checkpoint))
        report_skipped(skipped, announce)
        if newest is None:
            raise InputError(f"run '{checkpoint}' has no intact checkpoint yet; train it further (bfn train --resume "
                            "auto) or give a checkpoint file")
        if announce:
            logger.info(f"using checkpoint {newest / RELEASE_NAME}")
        return newest / RELEASE_NAME
    if checkpoint is not None:
        path = Path(checkpoint)
        # A training checkpoint's release file is also checked against its directory's manifest.
        if path.name == RELEASE_NAME and (path.parent / MANIFEST).is_file():
            problem = verify(path.parent, only=RELEASE_NAME)
            if problem is not None:
                raise InputError(f"checkpoint '{path}' is damaged ({problem}); use another checkpoint of the run")
        return path
    path = find_latest(runs_dir)
    if announce:
        logger.info(f"using checkpoint {path}")
    return path


def free_memory(device: torch.device) -> Optional[int]:
    """Bytes that can still be allocated on ``device`` (the GPU's free memory, or the machine's
    available memory), or None where that cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available  # what can be allocated without swapping, on any system


def require_memory(nbytes: float, what: str, hint: str, device: torch.device) -> None:
    """Refuse, before allocating anything, work whose tensors alone would not fit in memory (a lower
    bound: what the network needs on top of them comes later, and its failure is caught too)."""
    free = free_memory(device)
    if free is not None and nbytes > free:
        raise UserError(f"{what} needs at least {nbytes / 2**30:.1f} GiB but {free / 2**30:.1f} GiB are free on "
                        f"{device.type}; {hint}")
