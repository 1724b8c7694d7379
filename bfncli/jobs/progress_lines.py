"""Training progress as plain lines, for a log file or a pipe (``bfn train > log 2>&1``), where
tqdm's bar, which redraws one line of a terminal, would say nothing at all.

A line (step, loss, steps/s, ETA) is said at least every tenth of the steps this run makes and at
least every minute, whichever comes first, and at the last step.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from bfncli.log import logger

EVERY_SECONDS = 60.0


class ProgressLines:
    def __init__(self, total: int, start: int, clock: Callable[[], float] = time.monotonic):
        self.total, self.clock = total, clock
        self.every = max(1, math.ceil((total - start) / 10))
        self.last_step, self.last_time = start, clock()

    def update(self, step: int, loss) -> None:
        """``loss``: a float or a 0-d tensor, read (a host synchronisation) only when a line is said."""
        now = self.clock()
        if step < self.total and step - self.last_step < self.every and now - self.last_time < EVERY_SECONDS:
            return
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)  # since the last line: warm-up fades
        eta = (self.total - step) / rate if rate > 0 else math.inf
        logger.info(f"step {step}/{self.total} ({100 * step / self.total:.0f}%)  loss {loss:.4f}  "
                    f"{rate:.2f} steps/s  ETA {_duration(eta)}")
        self.last_step, self.last_time = step, now


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
