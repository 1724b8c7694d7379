"""``bfn train --init SPEC``: a new run that starts from a checkpoint's weights (fine-tuning).

The run is new in every other way: step 0, a fresh optimizer, its config from the usual layers
(preset, --config, --set). So the checkpoint must fit the run's network exactly; when it does not,
the error names the mismatch and, where a preset fits, the preset to use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from bfncli.config import BFNConfig
from bfncli.errors import UserError
from bfncli.log import logger


@dataclass
class InitialWeights:
    spec: str  # as given to --init, for the record
    path: Path  # the local bfn checkpoint it resolved to
    tensors: dict[str, Tensor]

    def record(self) -> dict:
        """The line in metrics.jsonl that says where the run started from."""
        return {"step": 0, "init": self.spec, "init_checkpoint": str(self.path)}


def load_initial_weights(spec: str, cfg: BFNConfig, preset: Optional[str], announce: bool) -> InitialWeights:
    from bfncli.checkpoint import check_dtypes, describe_mismatch, load_tensors, read_info
    from bfncli.convert import expected_shapes
    from bfncli.specs import local_checkpoint

    path = local_checkpoint(spec)
    info = read_info(path)  # a bfn checkpoint, or a one-line error saying what it is instead
    tensors = load_tensors(path)
    expected = expected_shapes(cfg)
    problem = describe_mismatch(expected, tensors)
    if problem:
        raise UserError(f"--init {spec} does not fit this run's network ({problem}); {_hint(tensors, info, preset)}")
    check_dtypes(expected, tensors, f"--init {spec}")
    for name, tensor in tensors.items():
        if torch.is_floating_point(tensor) and not torch.isfinite(tensor).all():
            raise UserError(f"--init {spec} has non-finite values in '{name}'; it cannot be trained from")
    if announce:
        logger.info(f"starting from the weights of {spec} ({path}, its step {info.step}): step 0, a fresh "
                    "optimizer")
    return InitialWeights(spec, path, tensors)


def _hint(tensors: dict[str, Tensor], info, preset: Optional[str]) -> str:
    """Which preset the weights fit, if any (looked for only when something is wrong)."""
    from bfncli.checkpoint import describe_mismatch
    from bfncli.config import list_presets, resolve_config
    from bfncli.convert import expected_shapes

    fitting = [name for name in list_presets()
               if describe_mismatch(expected_shapes(resolve_config(name, environ={})), tensors) is None]
    if fitting and preset not in fitting:
        return f"it fits preset {' or '.join(fitting)}: use --preset {fitting[0]}"
    return (f"train with the network it was made with (its config: {info.config.description or 'no description'}), "
            "and data of the same shape")
