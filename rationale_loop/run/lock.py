"""One process at a time on a run.

Two `round` commands on one run would each take the other's live round for an interrupted one and
write it at once. The lock is an flock on <run>/.lock: the kernel drops it when its holder dies, however
it dies (SIGKILL included), so a dead holder's lock is taken over without anyone deleting a file. The
file holds the holder's pid, host and start time, for the message the next process prints. Commands that
only read a run (inspect, report, compare) do not take it.

The lock file must be a regular file of the run: a FIFO, a socket, a directory or a symbolic link in its
place is refused with one line (a FIFO would otherwise block the process forever). While held, the run is
where deleting and writing start their check for links out of it (paths.py), and a link planted at the top
of the run (tensorboard -> elsewhere) is refused before any work.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rationale_loop.config.errors import RunLockedError
from rationale_loop.config.paths import HELD_RUNS, RunPathError, file_kind

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


def lock_holder(run: Path) -> dict | None:
    """What the lock file says about its last holder (alive or not), or None. Never blocks: anything but
    a regular file is not read."""
    from rationale_loop.run.records import open_regular

    try:
        with open_regular(Path(run) / LOCK_FILE, follow=False) as handle:
            holder = json.loads(handle.read(1 << 16) or b"null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _open_lock_file(path: Path) -> int:
    """The lock file, opened read-write (created if absent); anything but a regular file is refused."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as error:
        try:
            kind = file_kind(os.lstat(path).st_mode)
        except OSError:
            kind = None
        if kind is not None and kind != "a regular file":
            raise RunPathError(f"{path} is {kind}, not the run's lock file; remove it (the next command makes a new one)") from None
        raise RunPathError(f"{path}: cannot open the run's lock file ({error.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise RunPathError(f"{path} is {file_kind(mode)}, not the run's lock file; remove it (the next command makes a new one)")
    os.set_blocking(fd, True)
    return fd


def check_run_links(run: Path) -> None:
    """A run holds no symbolic link at its top but a fork's rounds (round_<k>, with fork.json): anything
    written through another (tensorboard -> elsewhere) would land outside the run."""
    real = run.resolve()
    for entry in sorted(run.iterdir()):
        if not entry.is_symlink():
            continue
        target = entry.resolve()
        if target == real or real in target.parents:
            continue
        if re.fullmatch(r"round_\d+", entry.name) and (run / "fork.json").exists():
            continue
        raise RunPathError(f"{entry} is a symbolic link to {target}, out of the run; a run holds no links but a fork's rounds: "
                           "remove the link (what it points at is kept)")


@contextmanager
def run_lock(run: Path) -> Iterator[None]:
    run = Path(run)
    if (run.exists() or run.is_symlink()) and not run.is_dir():
        kind = file_kind(os.lstat(run).st_mode)
        raise RunPathError(f"{run} is {kind}, not a run directory; move it away or name another run (run=NAME)")
    run.mkdir(parents=True, exist_ok=True)
    path = run / LOCK_FILE
    fd = _open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(run) or {}
            raise RunLockedError(
                f"{run} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')} "
                f"(since {holder.get('started', '?')}): wait for it to finish or stop it; one process at a time on a run"
            ) from None
        check_run_links(run)
        previous = lock_holder(run)
        if previous:
            log.info("taking over the lock of %s: its holder, process %s on %s, has ended", run, previous.get("pid"), previous.get("host"))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        HELD_RUNS.append(run)
        try:
            yield
        finally:
            HELD_RUNS.remove(run)
            os.ftruncate(fd, 0)  # an empty file: nobody holds the run
    finally:
        os.close(fd)  # closing releases the flock
