"""Deleting a run: `make clean-run RUN=name`.

Only a run, by its name under the output root: an empty name, a path out of the root, or a directory
that holds no run is refused, and so is a run a live process holds. Links inside the run (a fork's
rounds point into the run it came from) are removed as links; what they point at stays.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from rationale_loop.config.errors import RunLockedError, UserError
from rationale_loop.run.lock import LOCK_FILE, lock_holder
from rationale_loop.config.paths import check_output_root, check_run_name, remove

# Files and directories of which a run directory holds at least one.
RUN_MARKERS = ("round_00", "rounds.jsonl", "fork.json", ".hydra", LOCK_FILE)


def _is_run(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and any(os.path.lexists(path / marker) for marker in RUN_MARKERS)


def delete_run(output_root: str, run: str, force: bool = False) -> tuple[Path, list[Path]]:
    """Delete the run `run` under `output_root`; returns it and the forks that lost their source (only
    with force: without it, a run that others are forked from is refused, naming them)."""
    check_output_root(output_root)
    check_run_name(run)
    root = Path(output_root)
    path = root / run
    if not path.exists() and not path.is_symlink():
        raise UserError(f"{path} does not exist: nothing to delete")
    # A round, or any folder, inside a run: the run is deleted whole or not at all. (check_run_name keeps
    # `run` relative and free of "..", so walking up from it reaches the root.)
    for parent in path.parents:
        if parent == root:
            break
        if _is_run(parent):
            raise UserError(f"{path} is inside the run {parent}; clean-run deletes whole runs only (RUN={parent.relative_to(root)})")
    if not path.is_symlink() and not _is_run(path):
        raise UserError(f"{path} is not a run directory (it has none of {', '.join(RUN_MARKERS)}); not deleting it")
    from rationale_loop.views.compare import forks_of  # the fork records compare reads, read the same way

    forks = [] if path.is_symlink() else forks_of(path, root)
    if forks and not force:
        raise UserError(f"{path} is where these forks start (their first rounds are links into it): "
                        f"{', '.join(map(str, forks))}; delete them first, or pass --force (they then cannot go on)")
    if not path.is_symlink():
        _refuse_if_held(path)
    remove(path, inside=root)
    return path, forks


def _refuse_if_held(run: Path) -> None:
    lock = run / LOCK_FILE
    if not lock.is_file() or lock.is_symlink():  # a FIFO or a link there is nobody's lock: never opened
        return
    fd = os.open(lock, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock_holder(run) or {}
        raise RunLockedError(f"{run} is in use by process {holder.get('pid', '?')} on {holder.get('host', '?')}; not deleting it") from None
    finally:
        os.close(fd)
