"""What a finished round was when it finished: DONE holds the size and SHA-256 of every file of the
round, and the next round (or an export) checks the round against that record before loading its
checkpoint. A checkpoint cut short by a full disk or a bad copy, or edited since, is then named file by
file instead of failing deep inside safetensors.

The record itself is checked too: an empty DONE (written by an older version, or emptied since), one
that is not JSON, one that lists no checkpoint weights, one that leaves out a checkpoint file that is on
disk, or one that lists a file that is not there, is a damaged round and is named, never trusted. A
temporary file (the atomic writers' ".<name>.<random>.tmp", a save's ".<name>.<random>/" staging
directory) is never recorded, and one found in a record written before that was so is not looked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from rationale_loop.config.errors import CheckpointError, DataError
from rationale_loop.run.records import atomic_writer, open_regular

DONE = "DONE"
CHECKPOINT = "checkpoint/"
WEIGHTS = (".safetensors", ".bin")
SHA256 = re.compile(r"[0-9a-f]{64}")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_temporary(name: str) -> bool:
    """Whether a round-relative name is a leftover of an atomic write: a hidden file or a file in a
    hidden (staging) directory. A round's own files are never hidden."""
    return any(part.startswith(".") for part in PurePosixPath(name).parts)


def describe_files(round_dir: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every regular file under the round directory, DONE and temporary files left
    out (links are neither followed nor recorded; nor is anything but a regular file)."""
    round_dir = Path(round_dir)
    files = {}
    for directory, subdirectories, names in os.walk(round_dir):  # does not follow links to directories
        subdirectories.sort()
        for name in sorted(names):
            path = Path(directory) / name
            relative = path.relative_to(round_dir).as_posix()
            if relative == DONE or is_temporary(relative) or path.is_symlink() or not path.is_file():
                continue
            files[relative] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
    return dict(sorted(files.items()))


def mark_done(round_dir: Path) -> None:
    """DONE, written last and atomically: its presence says the round is finished, its content what
    the round's files were then. The files are described before DONE's temporary file exists, so it
    is not among them."""
    round_dir = Path(round_dir)
    files = describe_files(round_dir)
    if not any(_is_weights(name) for name in files):
        raise CheckpointError(f"{round_dir}: no checkpoint weights ({CHECKPOINT}*.safetensors) to record; the round is not finished")
    with atomic_writer(round_dir / DONE) as handle:
        json.dump({"files": files}, handle, indent=1)
        handle.write("\n")


def _is_weights(name: str) -> bool:
    return name.startswith(CHECKPOINT) and name.endswith(WEIGHTS)


def read_record(round_dir: Path, what: str) -> dict[str, dict[str, Any]]:
    """DONE's record of the round's files, checked for shape: raises CheckpointError, one line naming
    DONE and what is wrong with it, for an empty, unreadable or partial record."""
    done = Path(round_dir) / DONE

    def damaged(problem: str) -> CheckpointError:
        return CheckpointError(f"{done} ({what}): {problem}, so the round's files cannot be checked; restore DONE from a copy, "
                               "or start a new run from an earlier round (init_from=...)")

    try:
        with open_regular(done, follow=False) as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise damaged("missing: the round is not finished") from None
    except DataError as error:
        raise damaged(str(error).split(";")[0].removeprefix(f"{done} ")) from None
    if not raw.strip():
        raise damaged("the record is empty (a DONE of an older version, or emptied since)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise damaged("the record is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise damaged(f"the record is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise damaged('the record has no "files" (an object of file name -> bytes and sha256)')
    if not files:
        raise damaged("the record lists no file")
    for name, entry in files.items():
        parts = PurePosixPath(name).parts
        if (not name or PurePosixPath(name).is_absolute() or ".." in parts or not isinstance(entry, dict)
                or type(entry.get("bytes")) is not int or entry["bytes"] < 0
                or not isinstance(entry.get("sha256"), str) or not SHA256.fullmatch(entry["sha256"])):
            raise damaged(f"the entry for {name!r} is not a file name with its bytes and sha256")
    if not any(_is_weights(name) for name in files):
        raise damaged(f"the record lists no checkpoint weights ({CHECKPOINT}*.safetensors): it is partial")
    return files


def check_checkpoint(round_dir: Path, what: str) -> None:
    """Raise CheckpointError (one line) when DONE's record is damaged (read_record), when it leaves out a
    checkpoint file that is on disk or lists a file that is not there, or naming every checkpoint file
    that differs from the record."""
    round_dir = Path(round_dir)
    recorded = {name: entry for name, entry in read_record(round_dir, what).items() if not is_temporary(name)}
    missing = sorted(name for name in recorded if not name.startswith(CHECKPOINT) and not (round_dir / name).is_file())
    on_disk = {name for name in describe_names(round_dir / "checkpoint")}
    unrecorded = sorted(on_disk - {name for name in recorded if name.startswith(CHECKPOINT)})
    if missing or unrecorded:
        problems = [f"{name} is in DONE's record but not in the round" for name in missing]
        problems += [f"{name} is in the round but not in DONE's record" for name in unrecorded]
        raise CheckpointError(f"{round_dir} ({what}) does not match its DONE record: " + "; ".join(problems)
                              + ". Restore the round from a copy, or start a new run from an earlier round (init_from=...)")
    problems = []
    for name, expected in recorded.items():
        if not name.startswith(CHECKPOINT):
            continue
        path = round_dir / name
        if path.is_symlink() or not path.is_file():
            problems.append(f"{name} is missing" if not (path.exists() or path.is_symlink()) else f"{name} is not a regular file")
        elif path.stat().st_size != expected["bytes"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, {expected['bytes']} when the round finished (truncated or replaced)")
        elif file_digest(path) != expected["sha256"]:
            problems.append(f"{name} has changed since the round finished (SHA-256 differs)")
    if problems:
        raise CheckpointError(f"{round_dir / 'checkpoint'} ({what}) is not the checkpoint the round saved: " + "; ".join(problems)
                              + ". Restore it from a copy, or start a new run from an earlier round (init_from=...)")


def describe_names(checkpoint: Path) -> list[str]:
    """The round-relative names of the files (anything but directories; links included) under a
    checkpoint directory, temporary ones left out."""
    names = []
    if not checkpoint.is_dir():
        return names
    for directory, subdirectories, files in os.walk(checkpoint):
        for name in files:
            relative = (Path(directory) / name).relative_to(checkpoint.parent).as_posix()
            if not is_temporary(relative):
                names.append(relative)
    return sorted(names)
