"""Fault injection for bfn's own crash tests; never part of the product.

bfn itself has no hook that kills it: this script runs ``bfn ARGS...`` after patching the training
loop from the outside, so that only the tests can make a run die at a chosen moment:

    python tests/fault_injection.py SPEC ARGS...      (conftest.run_bfn(..., faults=SPEC) does this)

SPEC is one or more of, joined by ';':

    kill:S[:M]    SIGKILL the process in optimizer step S before micro-step M (default 0)
    kill-save:S   SIGKILL it while step S's checkpoint is half-written (its files written, not yet
                  flushed or sealed by a manifest)
    nan:S1,S2     make those steps' losses NaN
    check-sync    after every step, check that all processes hold identical weights and EMA
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def parse(spec: str) -> dict:
    faults = {"kill": None, "kill_save": None, "nan": set(), "check_sync": False}
    for part in filter(None, spec.split(";")):
        kind, _, arg = part.partition(":")
        if kind == "kill":
            step, _, micro = arg.partition(":")
            faults["kill"] = (int(step), int(micro or 0))
        elif kind == "kill-save":
            faults["kill_save"] = int(arg)
        elif kind == "nan":
            faults["nan"] = {int(s) for s in arg.split(",")}
        elif kind == "check-sync":
            faults["check_sync"] = True
        else:
            raise SystemExit(f"fault_injection.py: unknown fault '{part}'")
    return faults


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str) -> None:
    import torch

    from bfncli import training_state
    from bfncli.jobs import train

    faults = parse(spec)
    micro_step, step_once, fsync_file = train.Trainer._micro_step, train.Trainer._step, training_state.fsync_file

    def faulty_micro_step(self, step, micro):
        if faults["kill"] == (step, micro):
            _die()
        loss = micro_step(self, step, micro)
        return loss * float("nan") if step in faults["nan"] else loss

    def checked_step(self, step):
        metrics = step_once(self, step)
        if faults["check_sync"]:
            digest = torch.stack([torch.stack([p.detach().double().sum() for p in params]).sum()
                                  for params in (self.params, self.ema_params)])
            everyone = self.accelerator.gather(digest.to(self.accelerator.device).unsqueeze(0))
            if not torch.equal(everyone.min(0).values, everyone.max(0).values):
                raise RuntimeError(f"processes disagree on the weights after step {step + 1}: {everyone.tolist()}")
        return metrics

    def fsync_or_die(path):
        # The first flush of a checkpoint comes once all its files are written, before its manifest.
        if faults["kill_save"] is not None and Path(path).parent.name.startswith(
                f".tmp-{training_state.PREFIX}{faults['kill_save']:08d}-"):
            _die()
        fsync_file(path)

    train.Trainer._micro_step = faulty_micro_step
    train.Trainer._step = checked_step
    training_state.fsync_file = fsync_or_die


if __name__ == "__main__":
    install(sys.argv[1])
    from bfncli.cli import main

    main(sys.argv[2:])
