"""Where a run may write and what it may delete.

A run lives at <output_root>/<run>, and `run` is a relative path that stays inside output_root (a
sweep's job names a subdirectory, "base-r1/rank.lr:1e-07", which is fine; "../x" and "/abs" are not):
otherwise one run could write over another project's files, or be split between two places. Deleting
never follows a symbolic link: a fork's rounds are links into the run it came from, and removing the
fork must never remove what they point at.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

from rationale_loop.errors import UserError


class RunPathError(UserError):
    """A run name or output root that would put a run's files outside where runs live."""


def check_run_name(run: str) -> None:
    text = str(run)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if not text.strip() or not parts or set(parts) <= {"."}:
        raise RunPathError(f"run={text!r}: a run needs a name (a relative path inside output_root)")
    if PurePosixPath(text).is_absolute() or Path(text).is_absolute():
        raise RunPathError(f"run={text!r} is an absolute path; a run is named relative to output_root (set output_root= to move runs)")
    if ".." in parts:
        raise RunPathError(f"run={text!r} leaves output_root through '..'; name the run inside it")


def check_output_root(root: str) -> None:
    text = str(root)
    if not text.strip():
        raise RunPathError("output_root is empty; it names the directory runs are written under (default outputs/runs)")
    resolved = Path(text).expanduser().resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        raise RunPathError(f"output_root={text!r} is the file system root or the home directory ({resolved}); "
                           "give runs a directory of their own (default outputs/runs)")


NAME_BYTES = 200  # a file name may have 255 bytes; leave room for what tools append (".tmp", "~1")


def fitting_name(name: str) -> str:
    """`name` as a file name that fits: unchanged when short, else the overrides that fit whole (cut at a
    "+") and `+sha1:` with a hash of the whole name, so two long names stay apart and the result is still
    a value Hydra's command line takes unquoted. A sweep names each job's run after its overrides (Hydra's
    override_dirname), which with many overrides passes the file system's 255-byte limit."""
    import hashlib

    raw = str(name).encode()
    if len(raw) <= NAME_BYTES:
        return str(name)
    tail = "+sha1:" + hashlib.sha1(raw).hexdigest()[:12]
    head = raw[: NAME_BYTES - len(tail)].decode(errors="ignore")
    return (head.rsplit("+", 1)[0] if "+" in head else head) + tail


def run_directory(output_root: str, run: str) -> str:
    """<output_root>/<run> after both are checked: Hydra's run directory is this, so a bad name is
    refused before Hydra creates any directory."""
    check_output_root(output_root)
    check_run_name(run)
    return f"{output_root}/{run}"


def remove(path: Path, inside: Path) -> None:
    """Delete `path` (a file, a directory tree, or a link) if it lies inside `inside`. A link is removed
    itself, never what it points at; shutil.rmtree likewise unlinks the links it meets in a tree."""
    path = Path(path)
    parent = path.parent.resolve()  # the link itself may point anywhere; where it sits must be inside
    root = Path(inside).resolve()
    if parent != root and root not in parent.parents:
        raise RunPathError(f"refusing to delete {path}: it is not inside {inside}")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
