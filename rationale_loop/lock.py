"""One process at a time on a run.

Two `round` commands on one run would each take the other's live round for an interrupted one and
write it at once. The lock is an flock on <run>/.lock: the kernel drops it when its holder dies, however
it dies (SIGKILL included), so a dead holder's lock is taken over without anyone deleting a file. The
file holds the holder's pid, host and start time, for the message the next process prints. Commands that
only read a run (inspect, report, compare) do not take it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rationale_loop.errors import RunLockedError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


def lock_holder(run: Path) -> dict | None:
    """What the lock file says about its last holder (alive or not), or None."""
    try:
        return json.loads((Path(run) / LOCK_FILE).read_text() or "null")
    except (OSError, ValueError):
        return None


@contextmanager
def run_lock(run: Path) -> Iterator[None]:
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    path = run / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(run) or {}
            raise RunLockedError(
                f"{run} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')} "
                f"(since {holder.get('started', '?')}): wait for it to finish or stop it; one process at a time on a run"
            ) from None
        previous = lock_holder(run)
        if previous:
            log.info("taking over the lock of %s: its holder, process %s on %s, has ended", run, previous.get("pid"), previous.get("host"))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # an empty file: nobody holds the run
    finally:
        os.close(fd)  # closing releases the flock
