"""The exceptions that reach the user as a one-line message instead of a traceback, and bfn's exit
codes (the README's table of exit codes says the same)."""

FAILED = 1  # the machine failed the command: disk full, folder not writable, network, memory, training diverged
USAGE = 2  # the command line is wrong: unknown flag or command, a bad or contradictory value (click uses 2 too)
BAD_INPUT = 3  # a file or folder it was given is missing, unreadable, damaged or not the kind it needs


class UserError(Exception):
    """Something the user can fix: a bad flag, config, file or input.

    The CLI prints ``bfn <command>: <message>`` on stderr and exits with ``exit_code`` (by default
    USAGE; FAILED where the machine, not the user, is at fault). The message should say what is
    wrong *and* what to do about it.
    """

    def __init__(self, message: str, exit_code: int = USAGE):
        super().__init__(message)
        self.exit_code = exit_code


class InputError(UserError):
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
