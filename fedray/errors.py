"""User-facing errors.

A :class:`UserError` is a mistake in the user's input (config, file, argument). The CLI prints its
message on one line and exits with code 2, without a traceback; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input from the user. The message names the problem and the fix.

    The message is one line by construction: a line break that a user's value brings in (a key,
    a file name or a field with a newline) is shown escaped, as ``repr`` would."""

    exit_code = 2

    def __init__(self, message: object = "", *args):
        super().__init__(_escape_line_breaks(str(message)), *args)


def _escape_line_breaks(text: str) -> str:
    # str.splitlines() breaks at each of these; the CLI prints the message on one line
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(err: BaseException, limit: int = 200) -> str:
    """A library's error message folded onto one line (pandas and pyarrow messages span several)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConfigError(UserError):
    """An invalid config file, key, type or value."""


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped a run after it wrote a checkpoint; ``exit_code`` is 128 + the
    signal number (130, 143), as a shell reports it."""

    def __init__(self, signum: int, round_: int, path):
        self.signum, self.round, self.path = signum, round_, path
        self.exit_code = 128 + signum
        super().__init__(
            f"stopped after round {round_} (checkpoint written); resume with: "
            f"fedray run --resume {path}"
        )
