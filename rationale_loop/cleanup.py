"""Deleting a run: `make clean-run RUN=name`.

Only a run, by its name under the output root: an empty name, a path out of the root, or a directory
that holds no run is refused, and so is a run a live process holds. Links inside the run (a fork's
rounds point into the run it came from) are removed as links; what they point at stays.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from rationale_loop.errors import RunLockedError, UserError
from rationale_loop.lock import LOCK_FILE, lock_holder
from rationale_loop.paths import check_output_root, check_run_name, remove

# Files and directories of which a run directory holds at least one.
RUN_MARKERS = ("round_00", "rounds.jsonl", "fork.json", ".hydra", LOCK_FILE)


def delete_run(output_root: str, run: str) -> Path:
    check_output_root(output_root)
    check_run_name(run)
    path = Path(output_root) / run
    if not path.exists() and not path.is_symlink():
        raise UserError(f"{path} does not exist: nothing to delete")
    if not path.is_symlink() and not any((path / marker).exists() for marker in RUN_MARKERS):
        raise UserError(f"{path} is not a run directory (it has none of {', '.join(RUN_MARKERS)}); not deleting it")
    if not path.is_symlink():
        _refuse_if_held(path)
    remove(path, inside=Path(output_root))
    return path


def _refuse_if_held(run: Path) -> None:
    lock = run / LOCK_FILE
    if not lock.exists() or lock.is_symlink():
        return
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock_holder(run) or {}
        raise RunLockedError(f"{run} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')}; not deleting it") from None
    finally:
        os.close(fd)
