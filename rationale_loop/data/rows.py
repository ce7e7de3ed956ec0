"""Reading a source's rows: a JSON lines file directly, anything else through the `datasets` library;
the rows selected (split, column renames, excluded rows, max_rows); the held-out questions of a file.

Every row is read through one checker (Row), whatever its schema: a field of the wrong type (a turn that is
a string, null or a list, a conversation that is an object, a list or a number where text belongs) stops the
preparation before any work with one line naming the file, the row and the field. Empty text is not an
error but nothing to learn: empty turns, and exchanges left without a question or a reply, are dropped, and
a row left with nothing; the manifest counts both per source (dropped_empty_turns, dropped_empty_rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from rationale_loop.config.errors import DataError
from rationale_loop.run.records import _numbered_rows, read_jsonl


ROLE_OF = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant"}


def _kind(value: Any) -> str:
    """What a JSON value is, for an error message (never its repr: a row can be long)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


class Row:
    """One row of a source, read field by field with every type checked. The one rule for every schema:
    a value of the wrong type (a list or an object where text belongs, a string where a list of turns
    does, a turn that is not an object) stops the preparation with a one-line DataError naming the file,
    the row and the field, before any work; a text that is null, empty or whitespace is empty, and what is
    empty is dropped and counted by the caller (`Counts`), never learned."""

    def __init__(self, row: Any, where: str):
        if not isinstance(row, dict):
            raise DataError(f"{where}: the row is {_kind(row)}, expected an object")
        self.row, self.where = row, where

    def fail(self, field_name: str, value: Any, expected: str) -> DataError:
        return DataError(f"{self.where}: field {field_name} is {_kind(value)}, expected {expected}")

    def text(self, key: str, value: Any = None, field_name: str | None = None, numbers: bool = False) -> str:
        """A text field, stripped; null is empty. `numbers`: a number is its text (an answer)."""
        value = self.row.get(key) if field_name is None else value
        if value is None:
            return ""
        if isinstance(value, str):
            return value.strip()
        if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise self.fail(field_name or key, value, "a string" + (" or a number" if numbers else ""))

    def messages(self, key: str, role_key: str, text_key: str, value: Any = None, field_name: str | None = None) -> list[tuple[str, str]]:
        """A list of turns, each an object with a string role and a string (or null) text: [(role, text)]."""
        name = field_name or key
        value = self.row.get(key) if field_name is None else value
        if not isinstance(value, (list, tuple)):
            raise self.fail(name, value, f"a list of turns ({{{role_key!r}: ..., {text_key!r}: ...}})")
        out = []
        for index, entry in enumerate(value):
            where = f"{name}[{index}]"
            if not isinstance(entry, dict):
                raise self.fail(where, entry, f"an object with {role_key!r} and {text_key!r}")
            role_name = entry.get(role_key)
            if not isinstance(role_name, str):
                raise self.fail(f"{where}.{role_key}", role_name, "a string")
            role = ROLE_OF.get(role_name.lower())
            if role is None:
                raise DataError(f"{self.where}: field {where}.{role_key} is the unknown role {role_name[:40]!r} "
                                f"(known: {', '.join(sorted(ROLE_OF))})")
            out.append((role, self.text(text_key, entry.get(text_key), f"{where}.{text_key}")))
        return out


@dataclass
class Counts:
    """What a source's rows lost to emptiness: turns with no text, and rows left with nothing to learn."""

    empty_turns: int = 0
    empty_rows: int = 0


@dataclass
class Selected:
    """A source's rows after its column renames and exclusion filters, the first max_rows of them."""

    path: str
    column_names: list[str]
    rows: list[tuple[int, dict[str, Any]]]  # (row number in the file, from 0; the row)
    excluded: int = 0  # rows an exclusion filter dropped
    counts: Counts = field(default_factory=Counts)  # turns and rows dropped as empty when the rows are read

    def where(self, index: int) -> str:
        """How an error names a row: the file and the 1-based row."""
        return f"{self.path}: row {index + 1}"

    def require(self, schema: str, columns: Iterable[str]) -> None:
        missing = [c for c in columns if c not in self.column_names]
        if missing:
            raise DataError(f"{self.path}: schema {schema} needs column(s) {missing}; the file has {self.column_names}")


def select_rows(path: str, split: str = "train", max_rows: int = 0, columns: dict[str, str] | None = None,
                exclude: dict[str, str] | None = None, name: str | None = None) -> Selected:
    """Load a source, rename its columns (`columns`: schema column -> the file's column, so any file fits a
    schema), drop every row where a column matches its `exclude` regular expression (the recipe's
    reddit-instruct subset: no brackets in the title), and keep the first max_rows of the rest."""
    import re

    rows = load_rows(path, split, name)
    renames = {theirs: ours for ours, theirs in (columns or {}).items() if theirs != ours}
    absent = [theirs for theirs in renames if theirs not in rows.column_names]
    if absent:
        raise DataError(f"{path}: columns {absent} (named in the source's `columns`) are not in the file; it has {rows.column_names}")
    if renames:
        rows = rows.rename_columns(renames)
    patterns = {column: re.compile(pattern) for column, pattern in (exclude or {}).items()}
    unknown = [c for c in patterns if c not in rows.column_names]
    if unknown:
        raise DataError(f"{path}: `exclude` names columns {unknown} that the file does not have; it has {rows.column_names}")
    kept, excluded = [], 0
    for index, row in enumerate(rows):
        if max_rows and len(kept) >= max_rows:
            break
        if isinstance(row, dict) and any(pattern.search(str(row[column] or "")) for column, pattern in patterns.items()):
            excluded += 1
        else:
            kept.append((index, row))
    return Selected(path, list(rows.column_names), kept, excluded)


class PlainRows:
    """Rows read without `datasets` (json_rows): the little of a Dataset that select_rows uses. A row
    missing a column holds None there, as in a Dataset."""

    def __init__(self, rows: list[Any]):
        self.rows = rows
        self.column_names = list(dict.fromkeys(key for row in rows if isinstance(row, dict) for key in row))

    def rename_columns(self, renames: dict[str, str]) -> "PlainRows":
        return PlainRows([{renames.get(k, k): v for k, v in row.items()} if isinstance(row, dict) else row for row in self.rows])

    def __iter__(self) -> Any:
        for row in self.rows:
            yield {column: row.get(column) for column in self.column_names} if isinstance(row, dict) else row


def json_rows(path: Path) -> PlainRows | None:
    """A local JSON lines file (or a .json file holding one array of rows) read as its JSON says, not through
    `datasets`: where a field's type differs between rows, its JSON reader turns the odd values into JSON
    text (or, through pandas, "5" into 5), and a list would be trained on as its text. Each row's types are
    then checked by its schema's adapter (Row), which names the row and the field. A broken line raises
    naming it; None for a .json file that is neither (left to `datasets`)."""
    import json

    try:
        return PlainRows([row for _, row in _numbered_rows(path, strip_bom=True)])
    except DataError:
        if path.suffix != ".json":
            raise
        try:
            whole = json.loads(path.read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError):
            raise DataError(f"{path}: not JSON lines, nor one JSON array of rows") from None
        return PlainRows(whole) if isinstance(whole, list) else None


def load_rows(path: str, split: str = "train", name: str | None = None) -> Any:
    """A source's rows: a local JSON lines file as its JSON says (json_rows); else a `datasets.Dataset`: a
    JSON, Parquet or CSV file, a folder written by save_to_disk, a folder laid out like a hub dataset (data files named by split, or a README's configs),
    or (with a network) a hub id; `name` is the dataset's config (gsm8k: main)."""
    import datasets

    local = Path(path)
    builders = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
    if local.is_file() and local.suffix in (".json", ".jsonl") and split == "train":
        rows = json_rows(local)
        if rows is not None:
            return rows
    try:
        if local.is_dir() and (local / "dataset_info.json").exists():
            return datasets.load_from_disk(str(local))
        if local.is_file() and local.suffix in builders:
            return datasets.load_dataset(builders[local.suffix], data_files=str(local), split=split)
        if local.is_file():
            raise DataError(f"{path}: not a file datasets can read (.json, .jsonl, .parquet, .csv, or a save_to_disk folder)")
        return datasets.load_dataset(path, name, split=split)
    except DataError:
        raise
    except Exception as error:  # datasets names neither the line nor, often, the file
        if local.is_file() and local.suffix in (".json", ".jsonl"):
            for _ in read_jsonl(local):  # raises naming the first broken line
                pass
        raise DataError(f"{path}: cannot be read ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None


QUESTION_COLUMNS = ("question", "prompt", "instruction", "problem", "input", "text")


def held_out_questions(path: str) -> list[str]:
    """The questions of an evaluation file (data.decontaminate_against: GSM8K's test split, say), from
    its first column named like a question. A hub id is read at its test split, in the config named
    after a colon when it has several (openai/gsm8k:main)."""
    if Path(path).is_file():
        selected = select_rows(path)
    else:  # a hub id, or a folder laid out like a hub dataset (or written by save_to_disk)
        dataset, _, name = path.rpartition(":") if ":" in path and not Path(path).exists() else (path, "", "")
        selected = select_rows(dataset, split="test", name=name or None)
    column = next((c for c in QUESTION_COLUMNS if c in selected.column_names), None)
    if column is None:
        raise DataError(f"data.decontaminate_against: {path} has no question column (looked for {', '.join(QUESTION_COLUMNS)}; "
                        f"it has {', '.join(selected.column_names)})")
    return [str(row[column]) for _, row in selected.rows if str(row[column] or "").strip()]
