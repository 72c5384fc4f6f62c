"""Which failures are the user's to fix. Their message names the file (or setting) and the way
out; the command line shows it as one line, no traceback, and flows do not retry them. Anything
else is a bug or an outage and keeps its traceback."""

from __future__ import annotations

import errno

# The machine, not the code: a full disk, a folder the run may not write to.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


class UserError(ValueError):
    """Something the user gave or has not done yet (a labels file, a folder, a setting, a trained
    model) stops this run; the message says which and what to change."""


def is_user_error(exc: BaseException | None) -> bool:
    """A user's mistake or the machine's state: worth one clear line, not a retry or a traceback."""
    return isinstance(exc, UserError) or (isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS)


def one_line(exc: BaseException) -> str:
    """The message a person reads: the first line, or the error's name when it has none."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:  # "cannot write x.csv: No space left on device"
        return f"{exc.filename}: {exc.strerror}"
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
