"""One writer per workdir at a time. Ingest and scoring both rewrite shared tables (manifest,
quarantine, the day's report); a second `panelscan ingest` or `score` on the same workdir waits
for the first and then runs on what it left. An OS file lock (flock): a crashed or killed holder
releases it with its process, so a lock can never be left stale."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from pipeline.errors import UserError

LOCK_NAME = ".panelscan.lock"


@contextmanager
def workdir_lock(root: Path, what: str, wait_s: float = 6 * 3600,
                 on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold root's lock for `what` (e.g. "ingest"); wait while another process holds it, saying so
    once through on_wait, and give up with a clear error after wait_s seconds."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    with open(path, "a+") as handle:
        start = time.monotonic()
        while not _try_lock(handle):
            holder = path.read_text().strip() or "another panelscan process"
            if time.monotonic() - start > wait_s:
                raise UserError(f"{root}: still in use by {holder} after {wait_s:.0f} s; try again when it has finished")
            if on_wait is not None:
                on_wait(f"{root}: in use by {holder}; waiting for it to finish")
                on_wait = None
            time.sleep(0.2)
        handle.truncate(0)  # who holds it, for the message a waiting process shows
        handle.write(f"panelscan {what} (pid {os.getpid()}, since "
                     f"{datetime.now(timezone.utc).isoformat(timespec='seconds')})")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
