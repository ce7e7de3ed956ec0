"""The steps of a rationale found (each `=` of a run of arithmetic, each calculator mark) and checked."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator

from rationale_loop.judging.chain.limits import MAX_CHARS, MAX_STEPS
from rationale_loop.judging.chain.sides import RUN_KINDS, Side, read_side, side_matches
from rationale_loop.judging.chain.tokens import MATH_WORDS, SAME_LENGTH, Atom, literals, resolve_words, tokenize


@dataclass(frozen=True)
class WrongStep:
    """A checked step whose sides differ: where it stands in the text, and both sides' values."""

    start: int
    end: int
    text: str
    left: str  # the value the left side computes to
    right: str  # the value written on the right


@dataclass
class ChainReport:
    checked: int = 0
    wrong: int = 0
    unparsed: int = 0
    wrong_steps: list[WrongStep] = field(default_factory=list)

    def as_record(self) -> dict:
        """The form kept in a sample's record (generations.jsonl)."""
        return {"checked": self.checked, "wrong": self.wrong, "unparsed": self.unparsed,
                "wrong_steps": [[s.start, s.end, s.text, s.left, s.right] for s in self.wrong_steps]}


def _runs(atoms: list[Atom]) -> Iterator[tuple[int, int]]:
    """[i, j) of every maximal stretch of expression atoms that holds an `=`."""
    i = 0
    while i < len(atoms):
        if atoms[i].kind not in RUN_KINDS:
            i += 1
            continue
        j = i
        while j < len(atoms) and atoms[j].kind in RUN_KINDS:
            j += 1
        if any(a.kind == "eq" for a in atoms[i:j]):
            yield i, j
        i = j


def _glued_digit(text: str, position: int, step: int) -> bool:
    """Whether the character at `position` is ':', '.', ',' or '/' with a digit beyond it ("4:30")."""
    beyond = position + step
    return 0 <= position < len(text) and 0 <= beyond < len(text) and text[position] in ":.,/" and text[beyond].isdigit()


def _ambiguous_start(atoms: list[Atom], i: int, text: str) -> bool:
    """Whether the chain at atoms[i] may start earlier than it seems: after a word that carries
    arithmetic, a one-letter variable, an operator, or digits glued on ("3:30 + 1")."""
    first = atoms[i]
    before = atoms[i - 1] if i else None
    if _glued_digit(text, first.start - 1, -1):
        return True
    if before is None or before.kind == "break":
        return False
    if before.kind == "word" and before.text == "and" and i >= 2 and atoms[i - 2].kind == "num":
        return True  # "1 and 1/4 cup + ...": a mixed number in words
    if first.kind == "op":
        return True  # "... hour * 2 = 120": the left operand is not a number
    if before.kind != "word":
        return False
    if before.text in ("of", "by", "than"):  # "half of 10", "3 times by": not "a total of 12"
        earlier = atoms[i - 2] if i >= 2 else None
        return earlier is not None and (earlier.kind in ("num", "pct", "rp") or earlier.text in MATH_WORDS)
    # a one-letter word is a variable, unless it is English ("a", "I", the "s" of "it's")
    english = before.text in ("a", "i") or text[before.start - 1:before.start] in ("'", "\u2019")
    return before.text in MATH_WORDS or (len(before.text) == 1 and not english)


def _ambiguous_end(atoms: list[Atom], j: int, text: str, last: Side) -> bool:
    """Whether the chain's last side may go on past atoms[j - 1]: digits glued on ("= 4:30"), or a word
    that carries arithmetic after a side that is more than one number ("= 3 + 4 times 2")."""
    if _glued_digit(text, atoms[j - 1].end, 1) or text.startswith(("..", "\u2026"), atoms[j - 1].end):
        return True  # "= 4:30", "= 16.66...": not the number it seems
    after = atoms[j] if j < len(atoms) else None
    if after is not None and after.kind == "word" and after.text == "and" and j + 1 < len(atoms) \
            and atoms[j + 1].kind in ("num", "lp"):
        return True  # "= 5 and 2/3"
    return after is not None and after.kind == "word" and after.text in MATH_WORDS and last.literal is None


def format_value(value: Fraction) -> str:
    """A value as a person writes it: "24", "0.2", "-1.25", or "10/3" when no decimal is exact."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d != 1:
        return f"{value.numerator}/{value.denominator}"
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
    sign = "-" if value < 0 else ""
    scaled = abs(value.numerator) * 10**places // value.denominator
    whole, frac = divmod(scaled, 10**places)
    return f"{sign}{whole}.{frac:0{places}d}"


def _check_run(atoms: list[Atom], i: int, j: int, text: str, offset: int, report: ChainReport) -> None:
    """Check the steps of one chain atoms[i:j] ("a = b = c" is two steps)."""
    cuts = [k for k in range(i, j) if atoms[k].kind == "eq"]
    bounds = [i, *[k + 1 for k in cuts]]
    ends = [*cuts, j]
    sides = [read_side(atoms[b:e], first=(n == 0), last=(n == len(cuts))) for n, (b, e) in enumerate(zip(bounds, ends))]
    start_unsure = _ambiguous_start(atoms, i, text)
    end_unsure = _ambiguous_end(atoms, j, text, sides[-1])
    for n in range(len(cuts)):
        if report.checked >= MAX_STEPS:
            report.unparsed += 1
            continue
        left, right = sides[n], sides[n + 1]
        middle = n + 1 < len(cuts)
        if (n == 0 and start_unsure) or (not middle and end_unsure) or left.value is None:
            report.unparsed += 1
            continue
        if right.value is None and not (middle and right.leading is not None):
            report.unparsed += 1
            continue
        whole = right.value if right.value is not None else right.leading
        good = side_matches(left.value, right, whole) or (middle and right.leading is not None and left.value == right.leading)
        if not good and (_conversion(left, right) or (n == 0 and left.literal is not None)):
            # "1 hour = 60 minutes" equates units; "100 = 5A", "... an 85 = 318" restate a number or
            # end a sum written in words: neither is arithmetic this reader can fail
            report.unparsed += 1
            continue
        report.checked += 1
        if not good:
            report.wrong += 1
            start, end = left.atoms[0].start if left.atoms else atoms[cuts[n]].start, (right.atoms[-1].end if right.atoms else atoms[cuts[n]].end)
            report.wrong_steps.append(WrongStep(start + offset, end + offset, text[start:end], format_value(left.value), format_value(whole)))


def _conversion(left: Side, right: Side) -> bool:
    """Whether a failed step equates quantities in different units ("$1 / 2 = 50 cents") rather than
    claiming arithmetic: a side names a unit the other side does not."""
    a, b = set(left.units), set(right.units)
    if a and b:
        return not a & b
    return bool((right.literal and b) or (left.literal and a))


# GSM8K's calculator marks: "48/2 = <<48/2=24>>24". The mark is a step of its own; the text around it
# reads as if the mark were not there.
_MARK_RE = re.compile(r"<<([^<>\n]{0,200})>>")


def check_chain(text: str) -> ChainReport:
    """Count and check every arithmetic step of `text` (see the module's docstring for the rules)."""
    report = ChainReport()
    head, tail = text[:MAX_CHARS], text[MAX_CHARS:]
    report.unparsed += tail.count("=")  # not read: counted, as an unparsed step would be
    head = head.translate(SAME_LENGTH)
    marks = list(_MARK_RE.finditer(head))
    for mark in marks:
        inner = mark.group(1)
        if "=" not in inner:
            continue
        _check_text(inner, mark.start(1), report)
    if marks:
        head = _MARK_RE.sub(lambda m: " " * len(m.group()), head)
    _check_text(head, 0, report)
    return report


def _check_text(text: str, offset: int, report: ChainReport) -> None:
    atoms = literals(tokenize(text), text)
    resolve_words(atoms)
    for i, j in _runs(atoms):
        _check_run(atoms, i, j, text, offset, report)
