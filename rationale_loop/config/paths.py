"""Where a run may write and what it may delete.

A run lives at <output_root>/<run>, and `run` is a relative path that stays inside output_root (a
sweep's job names a subdirectory, "base-r1/rank.lr:1e-07", which is fine; "../x" and "/abs" are not):
otherwise one run could write over another project's files, or be split between two places. Deleting
never follows a symbolic link: a fork's rounds are links into the run it came from, and removing the
fork must never remove what they point at. Nor does it go through one: a link planted in a run
(tensorboard -> elsewhere) is removed as a link, and a path that reaches past such a link is refused.
The run a process holds (lock.run_lock) is where that check starts, so a link to another disk above
the run (output_root on scratch space) is the user's and is followed.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path, PurePosixPath

from rationale_loop.config.errors import UserError


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
    check_run_is_directory(Path(output_root), run)
    return f"{output_root}/{run}"


def file_kind(mode: int) -> str:
    """What a st_mode says a path is, in words."""
    for test, words in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
                        (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return words
    return "not a regular file"


def check_run_is_directory(output_root: Path, run: str) -> None:
    """output_root and every directory down to the run are directories where they exist: a plain file
    in the way would otherwise end in FileExistsError deep inside Hydra."""
    parts = PurePosixPath(str(run)).parts
    path = Path(output_root)
    for index, part in enumerate(("", *parts)):
        path = path / part if part else path
        try:
            mode = os.stat(path).st_mode  # a link to a directory is fine here: the user's own layout
        except FileNotFoundError:
            return
        except OSError as error:
            raise RunPathError(f"{path}: cannot be used as a run directory ({error.strerror})") from None
        if not stat.S_ISDIR(mode):
            what = "the output root" if index == 0 else "the run directory" if index == len(parts) else "on the way to the run"
            raise RunPathError(f"{path} ({what}) is {file_kind(mode)}, not a directory; move it away or name another run (run=NAME)")


# The runs this process holds (lock.run_lock adds and drops them): deleting and writing under one of
# them never passes through a link out of it.
HELD_RUNS: list[Path] = []


def _lexical(path: Path) -> Path:
    """`path` made absolute without following any link."""
    return Path(os.path.abspath(path))


def _is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def shown(path: str | os.PathLike[str]) -> Path:
    """`path` as the tool shows it to a person: relative to the working directory when it lies below it
    (outputs/runs/a), else absolute. A relative path that climbs out (../../../tmp/runs/a) is longer to
    read than the absolute one and changes with where the command was typed."""
    absolute, cwd = Path(path).resolve(), Path.cwd().resolve()
    return absolute.relative_to(cwd) if _is_under(absolute, cwd) else absolute


def trusted_root(path: Path, inside: Path | None = None) -> Path | None:
    """The directory from which `path` must be reached without leaving through a link: the held run
    that holds it, else `inside`."""
    lexical = _lexical(path)
    for run in HELD_RUNS:
        if _is_under(lexical, _lexical(run)):
            return _lexical(run)
    return None if inside is None else _lexical(inside)


def check_no_link_out(path: Path, root: Path, doing: str) -> None:
    """Refuse when a directory between `root` and `path` (both excluded) is a link to somewhere out of
    `root`: a link planted in a run (tensorboard -> elsewhere), or a fork's shared round."""
    path, root = _lexical(path), _lexical(root)
    real_root = root.resolve()
    between = [parent for parent in path.parents if root in parent.parents]  # below root, above path
    for directory in reversed(between):
        if directory.is_symlink():
            target = directory.resolve()
            if not _is_under(target, real_root):
                raise RunPathError(f"refusing to {doing} {path}: {directory} is a symbolic link to {target}, out of {root}; "
                                   "remove the link (a run holds no links but a fork's rounds)")


def remove(path: Path, inside: Path) -> None:
    """Delete `path` (a file, a directory tree, or a link) if it lies inside `inside`. A link is removed
    itself, never what it points at; shutil.rmtree likewise unlinks the links it meets in a tree. A path
    reached through a link out of the run (or out of `inside`) is refused."""
    path = Path(path)
    lexical, root = _lexical(path), _lexical(inside)
    parent = path.parent.resolve()  # the link itself may point anywhere; where it sits must be inside
    if lexical == root or root not in lexical.parents or (parent != root.resolve() and root.resolve() not in parent.parents):
        raise RunPathError(f"refusing to delete {path}: it is not inside {inside}")
    check_no_link_out(path, trusted_root(path, inside), "delete")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():  # a FIFO, a socket or a device: removed like a file, never opened
        path.unlink()
