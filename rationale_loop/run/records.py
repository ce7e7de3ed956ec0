"""Plain record types and JSON/JSONL helpers shared by every stage.

No torch, no vLLM: the verifier, the parser and the pair miner import this module on their own.

Everything read back from a run (metrics.json, stats.json, train.json, rounds.jsonl, fork.json, DONE, the
JSONL files of samples and pairs) goes through read_json / read_jsonl: a file damaged by hand raises one
DataError naming the file and the line (and the column, for JSON), and a FIFO, a socket, a device or a
directory where a file should be is refused by name instead of read (a FIFO would block forever).
Writers never write through a symbolic link at the file's own name, nor, under a run this process
holds, through a link out of the run (paths.py).
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from dataclasses import MISSING, asdict, dataclass, fields
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Sequence

from rationale_loop.config.errors import DataError
from rationale_loop.config.paths import RunPathError, check_no_link_out, file_kind, trusted_root


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
    # verify.chain=count or check: the rationale's arithmetic steps (chain.ChainReport.as_record) and
    # whether the answer alone was right; absent otherwise
    chain: dict[str, Any] | None = None


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


def open_regular(path: str | os.PathLike[str], follow: bool = True) -> IO[bytes]:
    """`path` opened for reading in binary, if it is a regular file; anything else (a FIFO, a socket, a
    device, a directory; a symbolic link too with follow=False) raises DataError naming it, without
    blocking: it is looked at before it is opened, and opened non-blocking."""
    path = Path(path)
    mode = (os.stat(path) if follow else os.lstat(path)).st_mode  # FileNotFoundError passes through
    if not stat.S_ISREG(mode):
        raise DataError(f"{path} is {file_kind(mode)}, not a regular file; move it away (or restore the file)")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode  # replaced between the two looks
        if not stat.S_ISREG(mode):
            raise DataError(f"{path} is {file_kind(mode)}, not a regular file; move it away (or restore the file)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def run_file_hint(path: Path) -> str | None:
    """What to do about a damaged file of a run, by where it lies."""
    if path.name == "rounds.jsonl":
        return "delete it: it is derived from the rounds' metrics.json, and the next round, sft or loop command rebuilds it"
    if path.name == "fork.json":
        return "restore it, or delete the fork (make clean-run)"
    if re.fullmatch(r"round_\d+", path.parent.name):
        return "restore it from a copy, or delete the round"
    return None


def _with_hint(message: str, hint: str | None) -> str:
    return f"{message}; {hint}" if hint else message


def row_error(path: Path, line_number: int, what: str, hint: str | None = None) -> DataError:
    """"<path>:<line>: <what>; <what to do>" about a line of a JSONL file; `hint` as in _numbered_rows."""
    return DataError(_with_hint(f"{path}:{line_number}: {what}", run_file_hint(path) if hint is None else hint or None))


def _numbered_rows(path: Path, strip_bom: bool = False, hint: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number in the file, row) for every non-empty line; a broken line raises naming both.
    `strip_bom` drops a UTF-8 byte order mark at the start of the file, as "utf-8-sig" does. `hint`
    (what to do about a broken line) defaults to one fitting a run's file (run_file_hint); "" for none."""
    hint = run_file_hint(path) if hint is None else hint or None
    # Bytes, decoded one line at a time: a text-mode file raises its UnicodeDecodeError from the
    # iterator, with a position in its read buffer and neither the file nor the line.
    with open_regular(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            if line_number == 1 and strip_bom:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                column = len(raw[: error.start].decode("utf-8")) + 1
                bad = raw[error.start]
                raise DataError(_with_hint(f"{path}:{line_number}: not valid UTF-8 (byte 0x{bad:02x} at column {column})", hint)) from None
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(_with_hint(f"{path}:{line_number}: not valid JSON ({error.msg})", hint)) from None


def read_jsonl(path: str | os.PathLike[str], hint: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-empty line; a broken line raises with the file and line number (and
    `hint`, what to do about it)."""
    for _, row in _numbered_rows(Path(path), hint=hint):
        yield row


def read_json(path: str | os.PathLike[str], kind: type | None = dict, hint: str | None = None) -> Any:
    """A whole JSON file (a run's metrics.json, stats.json, train.json, fork.json, DONE...), by default
    one JSON object. A file that is not one raises DataError naming it, with line and column, e.g.
    "<run>/round_01/metrics.json: not valid JSON (line 3, column 5: Expecting ','); restore it from a
    copy, or delete the round". `hint` defaults to one fitting a run's file (run_file_hint)."""
    path = Path(path)
    hint = run_file_hint(path) if hint is None else hint or None
    with open_regular(path) as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = len(raw[raw.rfind(b"\n", 0, error.start) + 1 : error.start].decode("utf-8", errors="replace")) + 1
        raise DataError(_with_hint(f"{path}: not valid UTF-8 (line {line}, column {column}: byte 0x{raw[error.start]:02x})", hint)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(_with_hint(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})", hint)) from None
    if kind is not None and not isinstance(data, kind):
        expected = {dict: "a JSON object", list: "a JSON array"}.get(kind, kind.__name__)
        raise DataError(_with_hint(f"{path}: not {expected} but {type(data).__name__}", hint))
    return data


def read_fork_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """fork.json: {"from": the source round's directory, "round": k}; anything else raises DataError
    naming the file, so a caller that looks at many runs (compare --forks-of) can skip this one."""
    path = Path(path)
    record = read_json(path)
    if not isinstance(record.get("from"), str) or not record["from"] or type(record.get("round")) is not int:
        raise DataError(_with_hint(f"{path}: not the record of a fork (it needs \"from\", a round directory, and \"round\", "
                                   f"its number)", run_file_hint(path)))
    return record


def _refuse_odd_target(path: Path) -> None:
    """A file is written only at a name that is absent or a regular file: never through a symbolic link
    (the link would be replaced, or elsewhere written), never over a directory, a FIFO or a device; and,
    under a run this process holds, never through a link out of the run."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except NotADirectoryError:
        raise RunPathError(f"refusing to write {path}: {path.parent} is not a directory") from None
    if mode is not None and not stat.S_ISREG(mode):
        where = f" to {os.readlink(path)}" if stat.S_ISLNK(mode) else ""
        raise RunPathError(f"refusing to write {path}: it is {file_kind(mode)}{where}, not a regular file; move it away")
    root = trusted_root(path)
    if root is not None:
        check_no_link_out(path, root, "write")


@contextmanager
def atomic_writer(path: str | os.PathLike[str], binary: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` (same file system) and rename it into place only when the
    block ends without an error: a reader never sees a half-written file. The file gets ordinary 0644
    permissions, not mkstemp's owner-only 0600."""
    path = Path(path)
    _refuse_odd_target(path)
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
    _refuse_odd_target(path)
    # Not followed if a link, and non-blocking: a FIFO in its place is refused instead of waited on.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunPathError(f"refusing to write {path}: it is not a regular file; move it away")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for row in rows:
            if not isinstance(row, dict):
                row = asdict(row)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def sort_jsonl(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], target: str | os.PathLike[str],
               key: Callable[[dict[str, Any]], Any]) -> int:
    """Write the lines of `source` (a file, or several read as one) to `target` ordered by `key`, holding
    only (key, file, offset) entries in memory, never the rows themselves: a pool ten times larger costs ten
    times the disk, not the RAM. Atomic like write_jsonl_atomic; returns the number of rows."""
    sources = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(s) for s in source]
    target = Path(target)
    index = []
    for number, path in enumerate(sources):
        with open_regular(path) as handle:
            offset = 0
            for line_number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except ValueError as error:
                        raise DataError(f"{path}:{line_number}: not valid JSON ({error})") from None
                    index.append((key(row), number, offset, len(line)))
                offset += len(line)
    index.sort(key=lambda entry: entry[0])
    readers = [path.open("rb") for path in sources]
    try:
        with atomic_writer(target, binary=True) as writer:
            for _, number, offset, length in index:
                readers[number].seek(offset)
                line = readers[number].read(length)
                writer.write(line if line.endswith(b"\n") else line + b"\n")
    finally:
        for reader in readers:
            reader.close()
    return len(index)


class JsonlRecords:
    """A JSONL file of one record type, re-read from disk on every iteration (never held in memory)."""

    def __init__(self, path: str | os.PathLike[str], cls: type, hint: str | None = None):
        self.path, self.cls, self.hint = Path(path), cls, hint

    def __iter__(self) -> Iterator[Any]:
        for _, record in self.numbered():
            yield record

    def numbered(self) -> Iterator[tuple[int, Any]]:
        """(line number in the file, record): for an error about what a record says, naming its line."""
        for line_number, row in _numbered_rows(self.path, hint=self.hint):
            if not isinstance(row, dict):
                raise row_error(self.path, line_number, f"not a JSON object but {type(row).__name__}", self.hint)
            yield line_number, from_dict(self.cls, row, where=f"{self.path}:{line_number}")


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
