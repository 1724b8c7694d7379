"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class UserError(Exception):
    """Something the user can fix: a bad flag, config, file or input.

    The CLI prints ``bfn <command>: <message>`` on stderr and exits with ``exit_code``.
    The message should say what is wrong *and* what to do about it.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
