"""Check the arithmetic a rationale claims, one `=` at a time.

A verifier that reads only the final answer counts a right answer reached by a wrong chain as correct,
and self-training then learns the wrong chain. Arithmetic claims can be checked exactly for free: this
module reads every `left = right` in a rationale ("48/2 = 24 clips", "$0.2 x 50 = $10", "20% of 50 =
10", GSM8K's calculator marks "<<48/2=24>>"), evaluates both sides with `fractions.Fraction` and says
which claims are wrong.

A *step* is one `=` sign (`==` too) or one calculator mark. Each is either checked (both sides read
as numbers: right or wrong) or unparsed (a side is prose, a variable, a unit conversion such as
"1 hour = 60 minutes", or cut off ambiguously). Unparsed steps are counted, never failed: the check
only says "wrong" when the text leaves one reading. The rules that keep gold solutions passing:

- A chain "3 + 4 = 7 * 2 = 14" is read as the writer means it: a middle side may be compared by its
  leading number (7) when its whole value (14) does not match.
- A side written as a decimal with k places is accepted when the other side's exact value rounds to
  it ("10/3 = 3.33"); an integer result is a claim of exactness ("10/3 = 3" is wrong).
- A percentage may be compared as a fraction or as its number of percent ("5/25*100 = 20%").
- Words after a number are units ("5 apples + 3 apples = 8 apples") unless they carry arithmetic
  ("3 times 4", "half of 10"): a side that such a word would change is unparsed.

Safety and bounds: model text is parsed, never evaluated (no eval, no sympy). Literals longer than
MAX_DIGITS digits, exponents above MAX_EXPONENT, parentheses deeper than MAX_DEPTH, sides longer than
MAX_SIDE_ATOMS, and values that grow past MAX_BITS make a step unparsed; only the first MAX_CHARS
characters are read and at most MAX_STEPS steps are checked (the rest are counted unparsed), so a
pathological sample costs milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterator

__all__ = ["ChainReport", "WrongStep", "check_chain", "format_value"]

MAX_CHARS = 100_000
MAX_STEPS = 256
MAX_DIGITS = 30
MAX_EXPONENT = 30
MAX_DEPTH = 16
MAX_SIDE_ATOMS = 64
MAX_BITS = 4096


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


class _Unparsed(Exception):
    """A side that cannot be read as one number: the step is counted, not failed."""


# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------

# One character for one character, so that positions found here are positions in the sample's text.
_SAME_LENGTH = str.maketrans({
    **{chr(0xFF10 + d): str(d) for d in range(10)},  # full-width digits
    "\u2212": "-", "\u2013": "-", "\uff0d": "-", "\uff0b": "+", "\uff1d": "=", "\uff05": "%",
    "\u00d7": "*", "\u2217": "*", "\u22c5": "*", "\u00b7": "*", "\u2715": "*", "\uff0a": "*",
    "\u00f7": "/", "\u2215": "/", "\u2044": "/", "\uff0f": "/", "\uff08": "(", "\uff09": ")",
})

_TOKEN_RE = re.compile(
    r"""
      (?P<space>[ \t\u00a0]+)
    | (?P<frac>\\[dt]?frac\s*\{\s*(?P<fn>[0-9]+)\s*\}\s*\{\s*(?P<fd>[0-9]+)\s*\})
    | (?P<num>(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+)(?P<exp>[eE][-+]?[0-9]+)?
    | (?P<rule>={3,})
    | (?P<rel>=>|<=|>=|!=|~=|[<>\u2260\u2248\u2264\u2265~])
    | (?P<eq>==?)
    | (?P<stars>\*\*+)
    | (?P<op>[-+*/^]|\\times|\\cdot|\\div)
    | (?P<lp>\() | (?P<rp>\))
    | (?P<pct>%)
    | (?P<cur>[$\u20ac\u00a3\u00a5\u20b9\u00a2]|\\\$)
    | (?P<root>\u221a)
    | (?P<word>[^\W\d_]+(?:-[^\W\d_]{2,})*)
    | (?P<other>.|\n)
    """,
    re.VERBOSE,
)
_OPS = {"\\times": "*", "\\cdot": "*", "\\div": "/"}

# Words that carry arithmetic: a number next to one is part of an expression this reader does not
# read ("3 times 4", "half of 10", "10 more than"), so a side they touch is unparsed, not misread.
MATH_WORDS = frozenset("""
    times of by plus minus twice thrice half double triple quarter third thirds fourth fifth per each every
    multiplied divided less more than fewer minus over
    product sum difference quotient squared cubed sqrt root power percent
""".split())


@dataclass
class _Atom:
    kind: str  # num op lp rp pct eq cur unit word break bad
    start: int
    end: int
    value: Fraction | None = None
    places: int = 0  # decimal places written ("3.33": 2), for the rounding rule
    op: str = ""
    text: str = ""
    fraction: bool = False  # "3/4" read as one number: a quotient, not a number restated


def _number(match: re.Match[str]) -> _Atom:
    start, end = match.span()
    if match.group("frac") is not None:
        num, den = match.group("fn"), match.group("fd")
        if len(num) > MAX_DIGITS or len(den) > MAX_DIGITS or int(den) == 0:
            return _Atom("bad", start, end)
        return _Atom("num", start, end, Fraction(int(num), int(den)))
    digits = match.group("num").replace(",", "")
    exponent = match.group("exp")
    if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
        return _Atom("bad", start, end)  # "0730": a time or a code, not a quantity
    if len(digits) > MAX_DIGITS + 1 or (exponent and len(exponent) > 4):
        return _Atom("bad", start, end)  # never hand a huge literal to int() or Fraction()
    value = Fraction(digits)
    places = len(digits.partition(".")[2])
    if exponent:
        power = int(exponent[1:])
        if abs(power) > MAX_EXPONENT:
            return _Atom("bad", start, end)
        value *= Fraction(10) ** power
        places = max(0, places - power)
    return _Atom("num", start, end, value, places)


def _tokens(text: str) -> list[_Atom]:
    """Every token but spaces; a newline, punctuation and relations other than `=` are breaks."""
    atoms: list[_Atom] = []
    for match in _TOKEN_RE.finditer(text):
        kind = match.lastgroup
        start, end = match.span()
        if kind == "space":
            continue
        if kind in ("num", "frac"):
            atoms.append(_number(match))
        elif kind == "op":
            atoms.append(_Atom("op", start, end, op=_OPS.get(match.group(), match.group())))
        elif kind == "stars":
            # "2**3" is a power; "**bold**" is markdown, a break like any other punctuation
            glued = 0 < start and end < len(text) and (text[start - 1].isdigit() or text[start - 1] == ")") \
                and (text[end].isdigit() or text[end] == "(") and end - start == 2
            atoms.append(_Atom("op", start, end, op="^") if glued else _Atom("break", start, end))
        elif kind in ("lp", "rp", "pct", "eq", "cur"):
            atoms.append(_Atom(kind, start, end))
        elif kind == "root":
            atoms.append(_Atom("word", start, end, text="sqrt"))
        elif kind == "word":
            atoms.append(_Atom("word", start, end, text=match.group().casefold()))
        else:  # rule, rel, other
            atoms.append(_Atom("break", start, end))
    return atoms


def _resolve_words(atoms: list[_Atom]) -> None:
    """Give words their arithmetic role in place: "x" between numbers is times, "percent" after a
    number is %, "of" after a percentage or a fraction is times, and up to two plain words after a
    number that an operator or `=` follows are its unit."""
    ends = ("num", "pct", "rp")
    starts = ("num", "lp", "cur")
    for i, atom in enumerate(atoms):
        if atom.kind != "word":
            continue
        before = atoms[i - 1] if i else None
        after = atoms[i + 1] if i + 1 < len(atoms) else None
        unit_before = before is not None and before.kind in ("word", "unit") and len(before.text) > 1 and i >= 2 and atoms[i - 2].kind in ends + ("unit",)
        if atom.text == "x" and before and (before.kind in ends or unit_before) and after and after.kind in starts:
            atom.kind, atom.op = "op", "*"
        elif atom.text == "percent" and before and before.kind == "num":
            atom.kind = "pct"
        elif atom.text == "of" and before and after and after.kind in starts and (
                before.kind == "pct" or (before.kind == "num" and i >= 3 and atoms[i - 2].op == "/" and atoms[i - 3].kind == "num")):
            atom.kind, atom.op = "op", "*"
    for i, atom in enumerate(atoms[:-1]):
        # "$6/day", "3 ml/liter", "$3 per brownie": a rate's unit, when an operator or `=` follows it
        slash = atoms[i + 1].op == "/" and atoms[i + 1].start == atom.end and atom.kind in ("num", "word")
        unit = atoms[i + 1:i + 3] if slash else [atom, atoms[i + 1]] if atom.text == "per" else []
        if len(unit) < 2 or unit[1].kind != "word" or unit[1].text in MATH_WORDS or (slash and unit[1].start != unit[0].end) \
                or (len(unit[1].text) < 2 and atom.kind != "word"):
            continue
        after = i + 3 if slash else i + 2
        follower = atoms[after] if after < len(atoms) else None
        # "minutes/week" names a unit wherever it stands; "6/day" and "per day" only before an operator
        if (slash and (atom.kind == "word" or len(unit[1].text) > 1)) or (follower is not None and follower.kind in ("op", "eq", "rp")):
            for a in unit:
                a.kind = "unit"
    for i, atom in enumerate(atoms):
        if atom.kind != "word" or not i or atoms[i - 1].kind not in ends + ("unit",):
            continue
        # up to four words, "of" and "per" inside one ("cups of food", "people per tube")
        stretch = [atom]
        while len(stretch) < 4 and i + len(stretch) < len(atoms) and atoms[i + len(stretch)].kind == "word":
            stretch.append(atoms[i + len(stretch)])
        while stretch and stretch[-1].text in ("of", "per"):
            stretch.pop()
        if not stretch or any(len(a.text) < 2 or (a.text in MATH_WORDS and (a is atom or a.text not in ("of", "per")))
                              for a in stretch):
            continue
        after = atoms[i + len(stretch)] if i + len(stretch) < len(atoms) else None
        if after is not None and after.kind in ("op", "eq", "rp", "unit"):
            for a in stretch:
                a.kind = "unit"


def _literals(atoms: list[_Atom], text: str) -> list[_Atom]:
    """Numbers as written: a number with one letter glued on is a variable ("5A", "3x+2"), a fraction
    written tight is one number ("25 / 1/3" is 25 / (1/3)), and "2 1/2" is 5/2."""
    for i, atom in enumerate(atoms[:-1]):
        after = atoms[i + 1]
        if atom.kind == "num" and after.kind == "word" and len(after.text) == 1 and after.start == atom.end:
            x_times = after.text == "x" and i + 2 < len(atoms) and atoms[i + 2].kind in ("num", "lp", "cur")
            if not x_times:
                atom.kind = "bad"
    return _tight_fractions(_mixed_numbers(atoms, text))


def _tight_fractions(atoms: list[_Atom]) -> list[_Atom]:
    out: list[_Atom] = []
    i = 0
    while i < len(atoms):
        num, slash, den = (atoms[i:i + 3] + [None] * 3)[:3]
        if (den is not None and num.kind == den.kind == "num" and slash.op == "/" and num.end == slash.start
                and slash.end == den.start and not num.places and not den.places and den.value != 0
                and num.value.denominator == den.value.denominator == 1 and not (out and out[-1].end == num.start)
                and not (i + 3 < len(atoms) and atoms[i + 3].start == den.end and atoms[i + 3].kind in ("op", "num"))):
            out.append(_Atom("num", num.start, den.end, num.value / den.value, fraction=True, text=str(num.value)))
            i += 3
            continue
        out.append(atoms[i])
        i += 1
    return out


def _mixed_numbers(atoms: list[_Atom], text: str) -> list[_Atom]:
    """"2 1/2" as one number (5/2): a whole number, one space, a proper fraction written tight."""
    out: list[_Atom] = []
    i = 0
    while i < len(atoms):
        whole, num, slash, den = (atoms[i:i + 4] + [None] * 4)[:4]
        if (den is not None and whole.kind == num.kind == den.kind == "num" and slash.op == "/"
                and text[whole.end:num.start] == " " and num.end == slash.start and slash.end == den.start
                and all(a.value.denominator == 1 and not a.places for a in (whole, num, den))
                and 0 < num.value < den.value and not (out and out[-1].op == "/")):
            out.append(_Atom("num", whole.start, den.end, whole.value + num.value / den.value))
            i += 4
            continue
        out.append(atoms[i])
        i += 1
    return out


# --------------------------------------------------------------------------------------------
# Sides
# --------------------------------------------------------------------------------------------

_RUN_KINDS = frozenset({"num", "op", "lp", "rp", "pct", "eq", "cur", "unit", "bad"})


@dataclass
class _Side:
    atoms: list[_Atom]
    value: Fraction | None = None
    literal: _Atom | None = None  # the side is this one number (with its sign and unit)
    percent: bool = False  # ... and it is written as a percentage
    negative: bool = False
    leading: Fraction | None = None  # the first number, for the middle of a chain
    units: tuple[str, ...] = ()


def _check_size(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise _Unparsed
    return value


class _Expression:
    """Recursive descent over a side's atoms: + - below * / below unary minus below ^ below %.
    A value carries whether it is a percentage, so that "50 + 20%" (ambiguous) is refused."""

    def __init__(self, atoms: list[_Atom]):
        self.atoms = [a for a in atoms if a.kind not in ("cur", "unit")]
        self.i = 0
        self.depth = 0

    def peek(self) -> _Atom | None:
        return self.atoms[self.i] if self.i < len(self.atoms) else None

    def parse(self) -> Fraction:
        if not self.atoms or len(self.atoms) > MAX_SIDE_ATOMS:
            raise _Unparsed
        value, _ = self.sum()
        if self.peek() is not None:
            raise _Unparsed
        return value

    def sum(self) -> tuple[Fraction, bool]:
        value, percent = self.product()
        while (atom := self.peek()) is not None and atom.kind == "op" and atom.op in "+-":
            self.i += 1
            right, right_percent = self.product()
            if percent != right_percent:
                raise _Unparsed  # "50 + 20%": 50.2 or 60? not a claim to fail on
            value = _check_size(value + right if atom.op == "+" else value - right)
        return value, percent

    def product(self) -> tuple[Fraction, bool]:
        value, percent = self.unary()
        while True:
            atom = self.peek()
            previous = self.atoms[self.i - 1] if self.i else None
            # "2(3 + 4)" written tight; "5 (2^2 + 1)" is more often a remark in brackets
            implicit = atom is not None and atom.kind == "lp" and previous is not None and previous.end == atom.start
            if not implicit and (atom is None or atom.kind != "op" or atom.op not in "*/"):
                return value, percent
            if not implicit:
                self.i += 1
            right, right_percent = self.unary()
            if atom.kind == "op" and atom.op == "/":
                if right == 0:
                    raise _Unparsed
                value = value / right
            else:
                value = value * right
            value, percent = _check_size(value), percent and right_percent

    def unary(self) -> tuple[Fraction, bool]:
        atom = self.peek()
        if atom is not None and atom.kind == "op" and atom.op == "-":
            self.i += 1
            value, percent = self.unary()
            return -value, percent
        return self.power()

    def power(self) -> tuple[Fraction, bool]:
        base, percent = self.postfix()
        atom = self.peek()
        if atom is not None and atom.kind == "op" and atom.op == "^":
            self.i += 1
            exponent, _ = self.unary()
            if exponent.denominator != 1 or abs(exponent) > MAX_EXPONENT or (base == 0 and exponent < 0):
                raise _Unparsed
            return _check_size(base ** int(exponent)), False
        return base, percent

    def postfix(self) -> tuple[Fraction, bool]:
        value = self.primary()
        atom = self.peek()
        if atom is not None and atom.kind == "pct":
            self.i += 1
            return value / 100, True
        return value, False

    def primary(self) -> Fraction:
        atom = self.peek()
        if atom is None:
            raise _Unparsed
        if atom.kind == "num":
            self.i += 1
            return atom.value
        if atom.kind == "lp":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Unparsed
            self.i += 1
            value, _ = self.sum()
            closing = self.peek()
            if closing is None or closing.kind != "rp":
                raise _Unparsed
            self.i += 1
            self.depth -= 1
            return value
        raise _Unparsed


def _side(atoms: list[_Atom], first: bool, last: bool) -> _Side:
    """A side's value (None when unreadable), and what the comparison rules need to know about it."""
    # A chain's outer sides may carry the parenthesis of the prose around them: "(3 + 4 = 7)".
    if first and sum(a.kind == "lp" for a in atoms) > sum(a.kind == "rp" for a in atoms):
        while atoms and atoms[0].kind == "lp" and _unbalanced(atoms):
            atoms = atoms[1:]
    if last:
        while atoms and atoms[-1].kind == "rp" and _unbalanced(atoms):
            atoms = atoms[:-1]
    side = _Side(atoms)
    try:
        side.value = _Expression(atoms).parse()
    except (_Unparsed, RecursionError, ZeroDivisionError):
        side.value = None
    plain = [a for a in atoms if a.kind not in ("cur", "unit")]
    side.units = tuple(a.text for a in atoms if a.kind == "unit")
    negative = bool(plain) and plain[0].kind == "op" and plain[0].op == "-"
    core = plain[1:] if negative else plain
    if core and core[0].kind == "num":
        side.leading = -core[0].value if negative else core[0].value
        if len(core) > 1 and core[1].kind == "pct":
            side.leading /= 100
    if core and core[0].fraction:
        # "147+29 = 176/8 = 22": a chain's middle may lead with the fraction's numerator
        side.leading = core[0].text and Fraction(core[0].text)
        return side
    if len(core) == 1 and core[0].kind == "num":
        side.literal, side.negative = core[0], negative
    elif len(core) == 2 and core[0].kind == "num" and core[1].kind == "pct":
        side.literal, side.negative, side.percent = core[0], negative, True
    return side


def _unbalanced(atoms: list[_Atom]) -> bool:
    depth = 0
    for atom in atoms:
        depth += (atom.kind == "lp") - (atom.kind == "rp")
        if depth < 0:
            return True
    return depth != 0


def _matches(value: Fraction, side: _Side, whole: Fraction) -> bool:
    """Whether `value` equals what `side` says (`whole`, its value), by the rounding and percent rules."""
    if value == whole:
        return True
    literal = side.literal
    if literal is None:
        return False
    candidates = [(whole, Fraction(1, 100) if side.percent else Fraction(1))]
    if side.percent:  # "5/25*100 = 20%": the number of percent
        candidates.append((literal.value * (-1 if side.negative else 1), Fraction(1)))
    for candidate, scale in candidates:
        if value == candidate:
            return True
        # a decimal written with k places is a rounded value: accept what rounds to it
        if literal.places and abs(value - candidate) <= Fraction(1, 2 * 10**literal.places) * scale:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


def _runs(atoms: list[_Atom]) -> Iterator[tuple[int, int]]:
    """[i, j) of every maximal stretch of expression atoms that holds an `=`."""
    i = 0
    while i < len(atoms):
        if atoms[i].kind not in _RUN_KINDS:
            i += 1
            continue
        j = i
        while j < len(atoms) and atoms[j].kind in _RUN_KINDS:
            j += 1
        if any(a.kind == "eq" for a in atoms[i:j]):
            yield i, j
        i = j


def _glued_digit(text: str, position: int, step: int) -> bool:
    """Whether the character at `position` is ':', '.', ',' or '/' with a digit beyond it ("4:30")."""
    beyond = position + step
    return 0 <= position < len(text) and 0 <= beyond < len(text) and text[position] in ":.,/" and text[beyond].isdigit()


def _ambiguous_start(atoms: list[_Atom], i: int, text: str) -> bool:
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


def _ambiguous_end(atoms: list[_Atom], j: int, text: str, last: _Side) -> bool:
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


def _check_run(atoms: list[_Atom], i: int, j: int, text: str, offset: int, report: ChainReport) -> None:
    """Check the steps of one chain atoms[i:j] ("a = b = c" is two steps)."""
    cuts = [k for k in range(i, j) if atoms[k].kind == "eq"]
    bounds = [i, *[k + 1 for k in cuts]]
    ends = [*cuts, j]
    sides = [_side(atoms[b:e], first=(n == 0), last=(n == len(cuts))) for n, (b, e) in enumerate(zip(bounds, ends))]
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
        good = _matches(left.value, right, whole) or (middle and right.leading is not None and left.value == right.leading)
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


def _conversion(left: _Side, right: _Side) -> bool:
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
    head = head.translate(_SAME_LENGTH)
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
    atoms = _literals(_tokens(text), text)
    _resolve_words(atoms)
    for i, j in _runs(atoms):
        _check_run(atoms, i, j, text, offset, report)
