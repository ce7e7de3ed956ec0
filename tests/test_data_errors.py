"""Every reader of a data file names the file and the 1-based line of what it cannot read, bytes that
are not UTF-8 included, and raises instead of returning the rows read before the bad line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

from rationale_loop.data.public import LOADERS
from rationale_loop.run.records import JsonlRecords, Problem, read_jsonl

GSM8K = {"question": "How many?", "answer": "2 + 2 = 4\n#### 4"}
AQUA = {"question": "Which?", "options": ["A)1", "B)2"], "rationale": "It is 2.", "correct": "B"}
SVAMP = {"Body": "Ann has 2 apples.", "Question": "How many?", "Equation": "2", "Answer": 2.0}
PROBLEM = {"id": "p", "question": "q", "rationale": "r", "answer": "1"}

# One reader per entry: how to read the file, and a valid JSON-lines row for it.
JSONL_READERS: dict[str, tuple[Callable[[Path], Any], dict[str, Any]]] = {
    "read_jsonl": (lambda path: list(read_jsonl(path)), PROBLEM),
    "JsonlRecords": (lambda path: list(JsonlRecords(path, Problem)), PROBLEM),
    "gsm8k": (LOADERS["gsm8k"], GSM8K),
    "aqua": (LOADERS["aqua"], AQUA),
}


def _line(row: dict[str, Any]) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n"


def _bad_line(row: dict[str, Any]) -> bytes:
    """`row` with "é" then the byte 0xff put at the start of its first string value."""
    text = json.dumps(row, ensure_ascii=False)
    cut = text.index(': "') + 3
    return text[:cut].encode("utf-8") + "é".encode("utf-8") + b"\xff" + text[cut:].encode("utf-8") + b"\n"


def _error(read: Callable[[Path], Any], path: Path) -> str:
    with pytest.raises(ValueError) as caught:
        read(path)
    return str(caught.value)


def test_every_public_loader_is_covered() -> None:
    assert set(LOADERS) == {"gsm8k", "aqua", "svamp", "svamp_worked"}


@pytest.mark.parametrize("reader", sorted(JSONL_READERS))
def test_jsonl_bad_bytes_name_file_line_and_column(tmp_path: Path, reader: str) -> None:
    read, row = JSONL_READERS[reader]
    # Line 2 is blank (it still counts), line 4 is the bad one, line 5 is valid again.
    bad = _bad_line(row)
    path = tmp_path / "data.jsonl"
    path.write_bytes(_line(row) + b"\n" + _line(row) + bad + _line(row))
    column = len(bad[: bad.index(b"\xff")].decode("utf-8")) + 1  # in characters, "é" is one
    assert _error(read, path) == f"{path}:4: not valid UTF-8 (byte 0xff at column {column})"


@pytest.mark.parametrize("reader", sorted(JSONL_READERS))
def test_jsonl_bad_bytes_on_the_first_line(tmp_path: Path, reader: str) -> None:
    read, row = JSONL_READERS[reader]
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xc3\n" + _line(row))  # a multi-byte sequence cut short by the line end
    assert _error(read, path) == f"{path}:1: not valid UTF-8 (byte 0xc3 at column 1)"


@pytest.mark.parametrize("reader", sorted(JSONL_READERS))
def test_jsonl_valid_file_still_reads(tmp_path: Path, reader: str) -> None:
    read, row = JSONL_READERS[reader]
    path = tmp_path / "data.jsonl"
    path.write_bytes(_line(row) + b"\n" + _line(row).replace(b"\n", b"\r\n"))
    assert len(read(path)) == 2


@pytest.mark.parametrize("loader", ["gsm8k", "aqua"])
def test_public_jsonl_keeps_accepting_a_byte_order_mark(tmp_path: Path, loader: str) -> None:
    read, row = JSONL_READERS[loader]
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _line(row) + _line(row))
    assert len(read(path)) == 2
    # The mark is not counted in the column of a bad byte after it.
    path.write_bytes(b"\xef\xbb\xbf" + b"{\xff\n")
    assert _error(read, path) == f"{path}:1: not valid UTF-8 (byte 0xff at column 2)"


def _svamp_bytes(bad_item: bytes | None = None) -> bytes:
    """A SVAMP array, one item per line from line 2; `bad_item` replaces the item on line 4."""
    items = [json.dumps(SVAMP).encode("utf-8") for _ in range(4)]
    if bad_item is not None:
        items[2] = bad_item
    return b"[\n" + b",\n".join(items) + b"\n]\n"


def test_svamp_bad_bytes_name_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "SVAMP.json"
    path.write_bytes(_svamp_bytes(_bad_line(SVAMP).rstrip(b"\n")))
    column = len('{"Body": "') + len("é") + 1
    assert _error(LOADERS["svamp"], path) == f"{path}:4: not valid UTF-8 (byte 0xff at column {column})"
    assert _error(LOADERS["svamp_worked"], path) == f"{path}:4: not valid UTF-8 (byte 0xff at column {column})"


def test_svamp_bad_bytes_after_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "SVAMP.json"
    path.write_bytes(b"\xef\xbb\xbf" + _svamp_bytes())
    assert len(LOADERS["svamp"](path)) == 4
    path.write_bytes(b"\xef\xbb\xbf" + _svamp_bytes(b'{"Body": \xe9}'))
    assert _error(LOADERS["svamp"], path) == f"{path}:4: not valid UTF-8 (byte 0xe9 at column 10)"


def test_svamp_json_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "SVAMP.json"
    path.write_bytes(_svamp_bytes(b'{"Body": "b" "Question": "q", "Answer": 1}'))
    assert _error(LOADERS["svamp"], path) == f"{path}:4: not valid JSON (Expecting ',' delimiter)"
    # A file cut short: the error is on the last line, not at a byte offset.
    path.write_bytes(_svamp_bytes()[:-4])
    assert _error(LOADERS["svamp"], path).startswith(f"{path}:5: not valid JSON")
