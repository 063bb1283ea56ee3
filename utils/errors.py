"""What a "one-line error" is: exception types whose message is one complete line naming the file and the problem.

Library code raises :class:`InputError` (a ``ValueError``) for a bad flag value or bad file contents,
``FileNotFoundError`` and the other ``OSError`` s for files that are missing or cannot be read or written, and a
:class:`OneLineError` for a failure of the run itself (a checkpoint that cannot be written, an interruption).
The scripts print any of ``ONE_LINE_ERRORS`` as ``error: <message>`` and exit non-zero (``utils/cli.py``).

Everything else keeps its traceback: a plain ``ValueError``, ``TypeError``, ``KeyError`` ... raised deep inside
is a bug in our code (or a library's), and its file and line are what a report needs. ``OSError`` stays one line:
it comes from the machine (a missing or unreadable file, a full disk, an unreachable host), not from our logic.
The fuzz tests hold every reader to this contract.
"""


class OneLineError(Exception):
    """A failure of the run (not of its input) whose message is complete in one line; ``exit_code`` for the CLI."""

    exit_code = 1


class InputError(ValueError):
    """Bad input from the user: a flag value, a file's contents, a missing or malformed file. The message is one
    complete line naming the flag or file and the problem. A ``ValueError``, so callers that catch those still do."""


class WriteFailed(OneLineError):
    """A file could not be written (disk full, read-only folder); the previous version of it is left intact."""


ONE_LINE_ERRORS = (InputError, OSError, OneLineError)  # a plain ValueError is a bug: traceback


def one_line(exc):
    """The message of ``exc`` as one line (an OSError without text still says what it is)."""
    text = ' '.join(str(exc).split())
    return text or type(exc).__name__


class Interrupted(OneLineError):
    """Training stopped on a signal after saving a resumable ``last.pt``; the message says how to resume.
    The CLI exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell would report it."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum
