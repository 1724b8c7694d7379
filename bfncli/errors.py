"""The exceptions that reach the user as a one-line message instead of a traceback, and bfn's exit
codes (the README's table of exit codes says the same)."""

from __future__ import annotations

from typing import Optional

FAILED = 1  # the machine failed the command: disk full, folder not writable, network, memory, training diverged
USAGE = 2  # the command line is wrong: unknown flag or command, a bad or contradictory value (click uses 2 too)
BAD_INPUT = 3  # a file or folder it was given is missing, unreadable, damaged or not the kind it needs


class BFNError(Exception):
    """Something the user can fix: a bad flag, config, file or input.

    The one exception type bfn raises for such things, from the command line and from the Python
    API alike, with the same message: what is wrong *and* what to do about it. The CLI prints
    ``bfn <command>: <message>`` on stderr and exits with ``exit_code`` (by default USAGE;
    BAD_INPUT for a file it was given, see InputError; FAILED where the machine, not the user, is
    at fault).
    """

    def __init__(self, message: str, exit_code: int = USAGE):
        super().__init__(message)
        self.exit_code = exit_code


UserError = BFNError  # the name the jobs raise it under


class InputError(BFNError):
    """A file or folder the command was given (a checkpoint, samples, data, an image, a config file,
    a run) is missing, unreadable, damaged or not the kind it needs: exit BAD_INPUT, so that a script
    tells it apart from a mistyped flag."""

    def __init__(self, message: str, exit_code: int = BAD_INPUT):
        super().__init__(message, exit_code)


class Interrupted(BaseException):
    """Ctrl-C outside the training loop (which stops gracefully on its own). A BaseException, like
    KeyboardInterrupt, so that nothing catches it by accident; unlike KeyboardInterrupt, the
    command-line library passes it through to bfn's own handler, which says so in one line."""

    def __init__(self, note: str = ""):
        super().__init__(note)
        self.note = note


def raise_interrupted(signum, frame) -> None:
    raise Interrupted()


def out_of_memory_message(err: BaseException) -> Optional[str]:
    """One line for an allocation that failed (CPU or GPU), saying how much was asked for; None if
    ``err`` is not about memory."""
    import re

    text = str(err)
    cpu = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", text)
    gpu = re.search(r"Tried to allocate ([\d.]+ [KMGT]?i?B)", text)
    if cpu:
        needed = f"{int(cpu.group(1)) / 2**30:.1f} GiB"
    elif gpu:
        needed = gpu.group(1)
    elif isinstance(err, MemoryError) or "out of memory" in text.lower():
        needed = None
    else:
        return None
    asked = f" (one allocation asked for {needed})" if needed else ""
    return (f"out of memory{asked}; use a smaller batch (--batch-size, train.batch_size, or more train.accumulate "
            "steps), fewer samples, or smaller images")
