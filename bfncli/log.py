"""bfn's messages: one logger (``bfn``), one handler on stderr, one place that decides how they look,
how many are said, and which process says them.

Every message bfn writes for a person goes through :data:`logger` (standard :mod:`logging`):
``logger.info`` for what a command did ("wrote 4 samples to s.safetensors"), ``logger.warning`` for
what it works around, ``logger.error`` for the one line a failed command ends with, ``logger.debug``
for what ``-v`` adds (the resolved config, the device and versions, timings). Messages keep their
plain text; only debug lines are marked (``debug: ...``). Progress bars stay tqdm's, on stderr.

How much is said: ``-q``/``--quiet`` leaves errors only (no progress bars either), the default adds
information and warnings, ``-v``/``--verbose`` adds debug lines (:func:`set_verbosity`).

Which process speaks: under ``torchrun``/``accelerate launch`` only the main process (``RANK`` 0),
as accelerate's ``get_logger(name, main_process_only=True)`` does; a message every process must
say passes ``extra={"all_processes": True}``. The rank is read from the environment, so that no
message needs torch or accelerate imported.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

logger = logging.getLogger("bfn")

QUIET, NORMAL, VERBOSE = logging.ERROR, logging.INFO, logging.DEBUG


def is_main_process() -> bool:
    """Rank 0 of a distributed launch, or a single process."""
    return os.environ.get("RANK", "0") == "0"


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a message is said (a redirected or
    captured stream), as logging's own last-resort handler does."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it; the property always follows sys.stderr
        pass

    def emit(self, record: logging.LogRecord) -> None:
        tqdm_module = sys.modules.get("tqdm")  # never imported just for this
        bars = getattr(getattr(tqdm_module, "tqdm", None), "_instances", None)
        if bars:  # a bar is on screen: clear it, say the message on its own line, draw the bar again
            with tqdm_module.tqdm.external_write_mode(file=sys.stderr):
                super().emit(record)
        else:
            super().emit(record)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return f"debug: {message}" if record.levelno < logging.INFO else message


class _MainProcessOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "all_processes", False) or is_main_process()


def _install() -> None:
    if any(isinstance(h, _Stderr) for h in logger.handlers):
        return
    handler = _Stderr()
    handler.setFormatter(_Format())
    handler.addFilter(_MainProcessOnly())
    logger.addHandler(handler)
    logger.setLevel(NORMAL)
    logger.propagate = False  # bfn's handler says each message once, whatever the root logger does


_install()


def set_verbosity(level: int) -> None:
    """QUIET, NORMAL or VERBOSE."""
    logger.setLevel(level)


def resolved_config(cfg) -> None:
    """-v: the configuration a command runs with, as YAML (a BFNConfig; only built when asked for)."""
    if verbose():
        logger.debug("resolved config:\n" + cfg.to_yaml().rstrip())


def quiet() -> bool:
    return not logger.isEnabledFor(logging.INFO)


def verbose() -> bool:
    return logger.isEnabledFor(logging.DEBUG)


def bar_disabled(default: Optional[bool] = None) -> Optional[bool]:
    """tqdm's ``disable`` for a progress bar: off under ``-q`` and on other processes than the
    main one; otherwise ``default`` (None: shown on a terminal only)."""
    if quiet() or not is_main_process():
        return True
    return default


def plain_progress() -> bool:
    """Whether progress is said in plain lines instead of a bar: stderr is not a terminal (a log
    file, a pipe) and information is being said."""
    try:
        terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return not terminal and not quiet() and is_main_process()
