"""What a finished round was when it finished: DONE holds the size and SHA-256 of every file of the
round, and the next round checks the checkpoint it starts from against that record before loading
it. A checkpoint cut short by a full disk or a bad copy, or edited since, is then named file by file
instead of failing deep inside safetensors. DONE written by an older version is empty: nothing to check.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rationale_loop.errors import CheckpointError
from rationale_loop.records import atomic_writer

DONE = "DONE"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(round_dir: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every regular file under the round directory (links are not followed)."""
    files = {}
    for path in sorted(Path(round_dir).rglob("*")):
        if path.is_file() and not path.is_symlink() and path.name != DONE:
            files[path.relative_to(round_dir).as_posix()] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
    return files


def mark_done(round_dir: Path) -> None:
    """DONE, written last and atomically: its presence says the round is finished, its content what
    the round's files were then."""
    with atomic_writer(Path(round_dir) / DONE) as handle:
        json.dump({"files": describe_files(round_dir)}, handle, indent=1)
        handle.write("\n")


def check_checkpoint(round_dir: Path, what: str) -> None:
    """Raise CheckpointError naming every checkpoint file that is missing or differs from the record."""
    round_dir = Path(round_dir)
    text = (round_dir / DONE).read_text()
    if not text.strip():
        return
    try:
        recorded = json.loads(text)["files"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{round_dir / DONE}: not the record of a finished round ({what}); it was changed since") from None
    problems = []
    for name, expected in recorded.items():
        if not name.startswith("checkpoint/"):
            continue
        path = round_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected["bytes"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, {expected['bytes']} when the round finished (truncated or replaced)")
        elif file_digest(path) != expected["sha256"]:
            problems.append(f"{name} has changed since the round finished (SHA-256 differs)")
    if problems:
        raise CheckpointError(f"{round_dir / 'checkpoint'} ({what}) is not the checkpoint the round saved: " + "; ".join(problems)
                              + ". Restore it from a copy, or start a new run from an earlier round (init_from=...)")
