"""What ``bfn train`` (and ``bfncli.train``) hands back: the run's folder, its final checkpoint and
its last metrics. Imports nothing heavy, so that the Python API's names load without torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainingResult:
    """What a finished training run left: its folder, the EMA weights of its last checkpoint (a bfn
    checkpoint, for ``bfn eval``/``sample`` or ``bfncli.load``), its step, and its last metrics:
    the last logged training step (``loss``, ``grad_norm``, ``lr``, ``steps_per_s`` ...) merged with
    the last validation (``val_loss``, ``val_recon``, ``val_total``, ``val_best``, at ``val_step``),
    if there was one."""

    run_dir: Path
    checkpoint: Path
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, run_dir: Path, checkpoint: Path) -> "TrainingResult":
        from bfncli.jobs.run_directory import read_metrics
        from bfncli.training_state import PREFIX

        records = read_metrics(Path(run_dir) / "metrics.jsonl")
        metrics: dict[str, Any] = {}
        for record in records:  # later records win: the last training step and the last validation
            if "val_loss" in record:
                metrics.update(record, val_step=record["step"])
            elif "loss" in record:
                metrics.update(record)
        step = int(Path(checkpoint).parent.name.removeprefix(PREFIX))
        metrics["step"] = step
        return cls(Path(run_dir), Path(checkpoint), step, metrics)
