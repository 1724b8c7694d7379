"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class UserError(Exception):
    """Something the user can fix: a bad flag, config, file or input.

    The CLI prints ``bfn <command>: <message>`` on stderr and exits with ``exit_code``.
    The message should say what is wrong *and* what to do about it.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(BaseException):
    """Ctrl-C outside the training loop (which stops gracefully on its own). A BaseException, like
    KeyboardInterrupt, so that nothing catches it by accident; unlike KeyboardInterrupt, the
    command-line library passes it through to bfn's own handler, which says so in one line."""

    def __init__(self, note: str = ""):
        super().__init__(note)
        self.note = note


def raise_interrupted(signum, frame) -> None:
    raise Interrupted()
