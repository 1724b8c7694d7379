"""Stopping a training run cleanly on SIGINT/SIGTERM: finish the step, write a checkpoint, exit."""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

from bfncli.log import logger


class StopFlag:
    """First SIGINT/SIGTERM: finish the step, checkpoint, exit 130/143. Second: exit at once."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # (the Python API, run from a thread) signals reach the main thread only
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            logger.warning("second signal: exiting now (the last committed checkpoint is intact)")
            os._exit(128 + signum)
        self.signum = signum
        logger.warning("stopping after this step; writing a checkpoint (signal again to exit at once)")

    def __exit__(self, *exc):
        if self.signum is not None:
            return  # the process is on its way out: a second signal must still exit at once
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)
