"""Plain record types and JSONL helpers shared by every stage.

No torch, no vLLM: the verifier, the parser and the pair miner import this module on their own.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import MISSING, asdict, dataclass, fields
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

from rationale_loop.errors import DataError


@dataclass(frozen=True)
class Problem:
    """One task item: a question with its gold rationale and gold answer.

    `rationale` may be empty for sources that carry only an answer (it is then never used as a
    training target). `id` is stable across runs so that generations can be joined back to it.
    """

    id: str
    question: str
    rationale: str
    answer: str


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation. `learned` overrides the default (assistant turns are learned, the
    rest are not); None keeps it."""

    role: str  # "user" or "assistant" (the system text is the conversation's)
    content: str
    learned: bool | None = None


@dataclass(frozen=True)
class Conversation:
    """What the SFT stage learns from when it is not a reasoning problem: chat and instruction data,
    rendered by a turn template (rationale_loop/data/templates.py)."""

    turns: tuple[Turn, ...]
    system: str | None = None
    id: str = ""


@dataclass
class Generation:
    """One sampled completion for one question, as written to generations.jsonl."""

    question_id: str
    sample_index: int
    prompt: str
    completion: str
    rationale: str | None
    answer: str | None
    gold: str
    finish_reason: str  # "stop" (the model ended it) or "length" (cut off by max_new_tokens)
    valid: bool
    correct: bool
    num_tokens: int
    invalid_reason: str | None = None


@dataclass
class Pair:
    """One mined preference pair, as written to pairs.jsonl."""

    question_id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_sample_index: int
    rejected_sample_index: int
    gold_rationale: str = ""
    gold_answer: str = ""


def from_dict(cls: type, data: dict[str, Any], *, where: str = "") -> Any:
    """Build a dataclass from a dict, naming the missing field and where it came from."""
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(n for n in required if n not in data)
    if missing:
        raise DataError(f"{where}: missing field(s) {missing} for {cls.__name__}")
    return cls(**{k: v for k, v in data.items() if k in names})


def _numbered_rows(path: Path, strip_bom: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number in the file, row) for every non-empty line; a broken line raises naming both.
    `strip_bom` drops a UTF-8 byte order mark at the start of the file, as "utf-8-sig" does."""
    # Bytes, decoded one line at a time: a text-mode file raises its UnicodeDecodeError from the
    # iterator, with a position in its read buffer and neither the file nor the line.
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1 and strip_bom:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                column = len(raw[: error.start].decode("utf-8")) + 1
                bad = raw[error.start]
                raise DataError(f"{path}:{line_number}: not valid UTF-8 (byte 0x{bad:02x} at column {column})") from None
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-empty line; a broken line raises with the file and line number."""
    for _, row in _numbered_rows(Path(path)):
        yield row


@contextmanager
def atomic_writer(path: str | os.PathLike[str], binary: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` (same file system) and rename it into place only when the
    block ends without an error: a reader never sees a half-written file. The file gets ordinary 0644
    permissions, not mkstemp's owner-only 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            yield handle
            # On disk before the rename, and the rename on disk after it: otherwise a power cut (unlike
            # a killed process) could leave an empty file under the final name.
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename (or a file created) in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[Any]) -> int:
    """Write rows (dicts or dataclasses) atomically; returns the number of rows written."""
    count = 0
    with atomic_writer(path) as handle:
        for row in rows:
            if not isinstance(row, dict):
                row = asdict(row)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Strict JSON: a NaN or an infinity is refused (naming the file) rather than written as the bare
    `NaN` that no JSON reader but Python's accepts."""
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError as error:
        raise ValueError(f"not writing {path}: {error}") from None
    with atomic_writer(path) as handle:
        handle.write(text + "\n")


def append_jsonl(path: str | os.PathLike[str], rows: Iterable[Any]) -> None:
    """Append rows and fsync, so a crash loses at most the rows of the call in flight."""
    path = Path(path)
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            if not isinstance(row, dict):
                row = asdict(row)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def sort_jsonl(source: str | os.PathLike[str], target: str | os.PathLike[str], key: Callable[[dict[str, Any]], Any]) -> int:
    """Write the lines of `source` to `target` ordered by `key`, holding only (key, offset) pairs in
    memory, never the rows themselves: a pool ten times larger costs ten times the disk, not the RAM.
    Atomic like write_jsonl_atomic; returns the number of rows."""
    source, target = Path(source), Path(target)
    index = []
    with source.open("rb") as handle:
        offset = 0
        for line in handle:
            if line.strip():
                index.append((key(json.loads(line)), offset, len(line)))
            offset += len(line)
    index.sort(key=lambda entry: entry[0])
    with source.open("rb") as reader, atomic_writer(target, binary=True) as writer:
        for _, offset, length in index:
            reader.seek(offset)
            line = reader.read(length)
            writer.write(line if line.endswith(b"\n") else line + b"\n")
    return len(index)


class JsonlRecords:
    """A JSONL file of one record type, re-read from disk on every iteration (never held in memory)."""

    def __init__(self, path: str | os.PathLike[str], cls: type):
        self.path, self.cls = Path(path), cls

    def __iter__(self) -> Iterator[Any]:
        for line_number, row in _numbered_rows(self.path):
            yield from_dict(self.cls, row, where=f"{self.path}:{line_number}")


def group_by(records: Iterable[Any], attribute: str) -> Iterator[list[Any]]:
    """Consecutive records sharing `attribute` (the input must be sorted by it), one list at a time."""
    group: list[Any] = []
    for record in records:
        if group and getattr(record, attribute) != getattr(group[0], attribute):
            yield group
            group = []
        group.append(record)
    if group:
        yield group
