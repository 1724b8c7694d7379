"""Fault injection for bfn's own tests: kill the training process at chosen moments, poison steps.

Driven by the ``BFN_FAULT`` environment variable, which is never set in normal use.
"""

from __future__ import annotations

import os
import signal

from bfncli.errors import UserError


class Faults:
    """Fault injection for bfn's own tests, from the BFN_FAULT variable (never set in normal use):
    ``kill:S:M`` SIGKILLs the process in step S before micro-step M; ``kill-save:S`` while step S's
    checkpoint is half-written; ``nan:S1,S2,...`` makes those steps' losses NaN; ``check-sync``
    verifies after every step that all processes hold identical parameters."""

    def __init__(self, spec: str):
        self.kill, self.kill_save, self.nan = None, None, set()
        self.check_sync = "check-sync" in spec.split(";")
        for part in filter(None, spec.split(";")):
            kind, _, arg = part.partition(":")
            try:
                if kind == "kill":
                    step, _, micro = arg.partition(":")
                    self.kill = (int(step), int(micro or 0))
                elif kind == "kill-save":
                    self.kill_save = int(arg)
                elif kind == "nan":
                    self.nan = {int(s) for s in arg.split(",")}
                elif kind != "check-sync":
                    raise ValueError(kind)
            except ValueError:
                raise UserError(f"BFN_FAULT: cannot read '{part}'; it takes kill:STEP[:MICRO], kill-save:STEP, "
                                "nan:STEP,STEP,... or check-sync, joined by ';' (unset it for normal use)") from None

    def at_micro_step(self, step: int, micro: int) -> None:
        if self.kill == (step, micro):
            os.kill(os.getpid(), signal.SIGKILL)

    def during_save(self, step: int) -> None:
        if self.kill_save == step:
            os.kill(os.getpid(), signal.SIGKILL)
