"""Loaders for the public reasoning sets (GSM8K, SVAMP, AQuA-RAT) onto `Problem`.

The files are read as their upstream repositories ship them and never written to. Every loader
returns a list of `Problem` in file order, with ids of the form "<set>/<file stem>/<index>", the
index being the zero-based position of the item in the file (record number for JSON lines, array
index for SVAMP) padded to five digits: "gsm8k/test/00012", "svamp/SVAMP/00999", "aqua/dev/00000".
Ids depend only on the file name and the item's position, so they are stable across runs as long
as the file is unchanged.

Bad input (bytes that are not UTF-8, a line that is not JSON, an item that is not an object, a
missing or mistyped field, an AQuA answer letter with no matching option) raises ValueError naming
the file and the line number (or, for a bad SVAMP item, its array index), so a broken download is
found at load time, not mid-run.

The answer conventions are chosen for the verifiers in `rationale_loop.judging.verify`:

- GSM8K and SVAMP answers are plain number strings (kind "numeric").
- AQuA answers are the full correct option "C) 25 km" (kind "choice"), so that either the letter
  or the option text written by the model can be matched.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from rationale_loop.config.errors import DataError
from rationale_loop.run.records import Problem, _numbered_rows
from rationale_loop.config.registry import Registry

__all__ = ["LOADERS", "PARSERS", "load_aqua", "load_gsm8k", "load_svamp", "load_svamp_worked", "parse_aqua", "parse_gsm8k",
           "parse_svamp"]

PathLike = str | os.PathLike[str]


def _jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; anything else (bytes that are not UTF-8, a
    line that is not JSON or not an object) raises naming file:line."""
    for line_number, item in _numbered_rows(path, strip_bom=True):
        if not isinstance(item, dict):
            kind = type(item).__name__
            raise DataError(f"{path}:{line_number}: expected a JSON object, got {kind}")
        yield line_number, item


def _json_document(path: Path) -> Any:
    """A whole-file JSON document (a leading byte order mark allowed); bytes that are not UTF-8 or
    a JSON syntax error raise naming file:line."""
    # Decoded here from bytes rather than by a text-mode file: its UnicodeDecodeError names only a
    # byte position, neither the file nor the line.
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        line_number = raw.count(b"\n", 0, error.start) + 1
        line_start = raw.rfind(b"\n", 0, error.start) + 1
        column = len(raw[line_start : error.start].decode("utf-8")) + 1
        bad = raw[error.start]
        raise DataError(
            f"{path}:{line_number}: not valid UTF-8 (byte 0x{bad:02x} at column {column})"
        ) from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


def _field(item: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in item:
        raise DataError(f"{where}: missing field {name!r}")
    value = item[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: field {name!r} has type {type(value).__name__}")
    return value


def _spaced(text: str) -> str:
    """Strip and collapse runs of whitespace to one space (one-line fields only)."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# GSM8K
# ---------------------------------------------------------------------------------------------

_CALCULATOR_MARK_RE = re.compile(r"<<[^<>]*>>")
_GSM8K_ANSWER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def load_gsm8k(path: PathLike) -> list[Problem]:
    """GSM8K JSON lines (`question`, `answer`) as Problems.

    - rationale: the text before "####" with every calculator mark "<<48/2=24>>" removed; the
      visible result after the mark stays ("48/2 = <<48/2=24>>24 clips" becomes "48/2 = 24 clips").
      The marks are tool-call annotations that the model never sees at test time, so training on
      them would teach it to emit text nobody evaluates.
    - answer: the text after "####" with thousands commas removed ("1,234" becomes "1234"), so
      each answer has one canonical spelling: majority votes and exact joins over answers do not
      split "1,234" from "1234". It must then be a plain number, or the line is rejected.
    """
    path = Path(path)
    return parse_gsm8k(((f"{path}:{line}", item) for line, item in _jsonl_objects(path)), path.stem)


def parse_gsm8k(items: Iterable[tuple[str, dict[str, Any]]], stem: str) -> list[Problem]:
    """GSM8K rows, each with where it came from (for errors), as Problems with ids "gsm8k/<stem>/<index>"."""
    problems = []
    for index, (where, item) in enumerate(items):
        question = _field(item, "question", str, where)
        rationale, answer = split_gsm8k_solution(_field(item, "answer", str, where), where)
        problems.append(Problem(id=f"gsm8k/{stem}/{index:05d}", question=question.strip(), rationale=rationale, answer=answer))
    return problems


def split_gsm8k_solution(solution: str, where: str) -> tuple[str, str]:
    """A GSM8K `answer` field as (rationale, answer), by the rules above."""
    if "####" not in solution:
        raise DataError(f"{where}: field 'answer' has no '####' final-answer marker")
    rationale, _, answer = solution.rpartition("####")
    answer = answer.strip()
    if _THOUSANDS_RE.fullmatch(answer):
        answer = answer.replace(",", "")
    if not _GSM8K_ANSWER_RE.fullmatch(answer):
        raise DataError(f"{where}: final answer after '####' is not a number: {answer!r}")
    return _CALCULATOR_MARK_RE.sub("", rationale).strip(), answer


# ---------------------------------------------------------------------------------------------
# SVAMP
# ---------------------------------------------------------------------------------------------


def _format_number(value: float | int) -> str:
    """51.0 -> "51"; 2.5 -> "2.5" (shortest round-trip form for non-integers)."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def load_svamp(path: PathLike) -> list[Problem]:
    """SVAMP JSON array (`Body`, `Question`, `Answer`; `Equation` unused) as Problems.

    - question: Body + " " + Question, each with its whitespace collapsed. No punctuation is
      invented where the Body ends without a full stop ("... on each pack How much ..."): that is
      how the set is published and how it is usually posed.
    - rationale: "" (SVAMP ships no rationale). The `Equation` field "( 76.0 - 25.0 )" is not a
      worded rationale, and an empty rationale marks the item as never a training target.
    - answer: the float answer as a number string, written as an integer when it is integral
      (51.0 -> "51").
    """
    path = Path(path)
    items = _json_document(path)
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON array, got {type(items).__name__}")
    return parse_svamp(((f"{path}[{index}]", item) for index, item in enumerate(items)), path.stem)


def load_svamp_worked(path: PathLike) -> list[Problem]:
    """SVAMP as load_svamp reads it, each item's published `Equation` written out as its worked rationale:
    "( ( 7.0 + 3.0 ) * 2.0 )" becomes "7 + 3 = 10\n10 * 2 = 20", one line per operation, innermost first.
    The steps are the publisher's; only their wording is the loader's. An equation that is not plain
    arithmetic on numbers raises naming the item; one that is a bare number, whose value is not the item's
    published answer (an upstream slip), or whose steps pass through a repeating decimal gets no rationale
    (never a training target)."""
    path = Path(path)
    items = _json_document(path)
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON array, got {type(items).__name__}")
    return parse_svamp(((f"{path}[{index}]", item) for index, item in enumerate(items)), path.stem, worked=True)


_OPERATORS = {"Add": ("+", lambda a, b: a + b), "Sub": ("-", lambda a, b: a - b),
              "Mult": ("*", lambda a, b: a * b), "Div": ("/", lambda a, b: a / b)}


def _worked_steps(equation: str, where: str) -> tuple[list[str], float]:
    """The operations of an arithmetic expression in the order they are worked, and its value."""
    import ast

    steps: list[str] = []

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op).__name__ in _OPERATORS:
            left, right = value(node.left), value(node.right)
            symbol, apply = _OPERATORS[type(node.op).__name__]
            if symbol == "/" and right == 0:
                raise DataError(f"{where}: field 'Equation' divides by zero: {equation!r}")
            result = apply(left, right)
            steps.append(f"{_format_number(left)} {symbol} {_format_number(right)} = {_format_number(result)}")
            return result
        raise DataError(f"{where}: field 'Equation' is not plain arithmetic: {equation!r}")

    try:
        tree = ast.parse(equation.strip(), mode="eval")
    except SyntaxError:
        raise DataError(f"{where}: field 'Equation' is not plain arithmetic: {equation!r}") from None
    return steps, value(tree.body)


def parse_svamp(items: Iterable[tuple[str, Any]], stem: str, worked: bool = False) -> list[Problem]:
    """SVAMP items, each with where it came from (for errors), as Problems with ids "svamp/<stem>/<index>";
    with `worked`, each rationale its Equation's steps (load_svamp_worked)."""
    problems = []
    for index, (where, item) in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
        body = _field(item, "Body", str, where)
        question = _field(item, "Question", str, where)
        answer = _field(item, "Answer", (int, float), where)
        if not math.isfinite(answer):
            raise DataError(f"{where}: field 'Answer' is not a finite number: {answer!r}")
        rationale = ""
        if worked:
            steps, result = _worked_steps(_field(item, "Equation", str, where), where)
            # "" for an equation that is a bare number (nothing to work), that does not give the published
            # answer (an upstream slip: a worked example must not contradict its own answer), or whose step
            # leaves a repeating decimal ("55 / 15 = 3.6666666666666665": not exact, and not how it is worked)
            exact = all(len(step.rpartition("= ")[2].partition(".")[2]) <= 4 for step in steps)
            rationale = "\n".join(steps) if exact and math.isclose(result, answer, rel_tol=1e-6, abs_tol=1e-6) else ""
        problems.append(
            Problem(
                id=f"svamp/{stem}/{index:05d}",
                question=f"{_spaced(body)} {_spaced(question)}".strip(),
                rationale=rationale,
                answer=_format_number(answer),
            )
        )
    return problems


# ---------------------------------------------------------------------------------------------
# AQuA-RAT
# ---------------------------------------------------------------------------------------------

_OPTION_RE = re.compile(r"^\s*\(?\s*(?P<letter>[A-Za-z])\s*\)\s*(?P<text>.*?)\s*$", re.S)


def load_aqua(path: PathLike) -> list[Problem]:
    """AQuA-RAT JSON lines (`question`, `options`, `rationale`, `correct`) as Problems.

    - question: the question, then one option per line as "A) 21", so the model sees the choices
      it must pick from. Options are rewritten in this one shape ("A)21" -> "A) 21"); their text is
      kept as published, including the few upstream oddities such as "A)A)59".
    - rationale: the `rationale` field, stripped.
    - answer: the full correct option in the same shape, e.g. "C) 25", so the choice verifier can
      match either the letter or the option text.
    """
    path = Path(path)
    return parse_aqua(((f"{path}:{line}", item) for line, item in _jsonl_objects(path)), path.stem)


def parse_aqua(items: Iterable[tuple[str, dict[str, Any]]], stem: str) -> list[Problem]:
    """AQuA-RAT rows, each with where it came from (for errors), as Problems with ids "aqua/<stem>/<index>"."""
    problems = []
    for index, (where, item) in enumerate(items):
        question = _field(item, "question", str, where)
        raw_options = _field(item, "options", list, where)
        rationale = _field(item, "rationale", str, where)
        correct = _field(item, "correct", str, where).strip().upper()
        if not raw_options:
            raise DataError(f"{where}: field 'options' is empty")
        options: dict[str, str] = {}
        for raw in raw_options:
            match = _OPTION_RE.match(raw) if isinstance(raw, str) else None
            if match is None:
                raise DataError(f"{where}: option {raw!r} is not of the form 'A)text'")
            letter = match.group("letter").upper()
            if letter in options:
                raise DataError(f"{where}: option letter {letter} appears twice")
            options[letter] = f"{letter}) {match.group('text')}".rstrip()
        if correct not in options:
            raise DataError(
                f"{where}: correct letter {correct!r} is not one of the options {sorted(options)}"
            )
        problems.append(
            Problem(
                id=f"aqua/{stem}/{index:05d}",
                question="\n".join([question.strip(), *options.values()]),
                rationale=rationale.strip(),
                answer=options[correct],
            )
        )
    return problems


# Keyed by task.files.<split>.loader; a check passes the split's own key.
LOADERS: Registry[Callable[[PathLike], list[Problem]]] = Registry("task.files.<split>.loader", {
    "gsm8k": load_gsm8k,
    "svamp": load_svamp,
    "svamp_worked": load_svamp_worked,
    "aqua": load_aqua,
})
# The same sets as rows from anywhere (a hub dataset read through `datasets`): (where, row) pairs and the
# split's name, which takes the file stem's place in the ids (a hub split named like its file, as GSM8K's train
# and test are, gives the file's ids).
PARSERS: Registry[Callable[[Iterable[tuple[str, Any]], str], list[Problem]]] = Registry("task.files.<split>.loader", {
    "gsm8k": parse_gsm8k,
    "svamp": parse_svamp,
    "svamp_worked": lambda items, stem: parse_svamp(items, stem, worked=True),
    "aqua": parse_aqua,
})
