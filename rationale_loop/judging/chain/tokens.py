"""A rationale's text read into atoms: numbers (with their decimals, percent signs and currency),
operators, parentheses, `=` signs and words, the words that carry arithmetic ("times", "half of")
told from units ("apples")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from rationale_loop.judging.chain.limits import MAX_DIGITS, MAX_EXPONENT


# One character for one character, so that positions found here are positions in the sample's text.
SAME_LENGTH = str.maketrans({
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
class Atom:
    kind: str  # num op lp rp pct eq cur unit word break bad
    start: int
    end: int
    value: Fraction | None = None
    places: int = 0  # decimal places written ("3.33": 2), for the rounding rule
    op: str = ""
    text: str = ""
    fraction: bool = False  # "3/4" read as one number: a quotient, not a number restated


def read_number(match: re.Match[str]) -> Atom:
    start, end = match.span()
    if match.group("frac") is not None:
        num, den = match.group("fn"), match.group("fd")
        if len(num) > MAX_DIGITS or len(den) > MAX_DIGITS or int(den) == 0:
            return Atom("bad", start, end)
        return Atom("num", start, end, Fraction(int(num), int(den)))
    digits = match.group("num").replace(",", "")
    exponent = match.group("exp")
    if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
        return Atom("bad", start, end)  # "0730": a time or a code, not a quantity
    if len(digits) > MAX_DIGITS + 1 or (exponent and len(exponent) > 4):
        return Atom("bad", start, end)  # never hand a huge literal to int() or Fraction()
    value = Fraction(digits)
    places = len(digits.partition(".")[2])
    if exponent:
        power = int(exponent[1:])
        if abs(power) > MAX_EXPONENT:
            return Atom("bad", start, end)
        value *= Fraction(10) ** power
        places = max(0, places - power)
    return Atom("num", start, end, value, places)


def tokenize(text: str) -> list[Atom]:
    """Every token but spaces; a newline, punctuation and relations other than `=` are breaks."""
    atoms: list[Atom] = []
    for match in _TOKEN_RE.finditer(text):
        kind = match.lastgroup
        start, end = match.span()
        if kind == "space":
            continue
        if kind in ("num", "frac"):
            atoms.append(read_number(match))
        elif kind == "op":
            atoms.append(Atom("op", start, end, op=_OPS.get(match.group(), match.group())))
        elif kind == "stars":
            # "2**3" is a power; "**bold**" is markdown, a break like any other punctuation
            glued = 0 < start and end < len(text) and (text[start - 1].isdigit() or text[start - 1] == ")") \
                and (text[end].isdigit() or text[end] == "(") and end - start == 2
            atoms.append(Atom("op", start, end, op="^") if glued else Atom("break", start, end))
        elif kind in ("lp", "rp", "pct", "eq", "cur"):
            atoms.append(Atom(kind, start, end))
        elif kind == "root":
            atoms.append(Atom("word", start, end, text="sqrt"))
        elif kind == "word":
            atoms.append(Atom("word", start, end, text=match.group().casefold()))
        else:  # rule, rel, other
            atoms.append(Atom("break", start, end))
    return atoms


def resolve_words(atoms: list[Atom]) -> None:
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


def literals(atoms: list[Atom], text: str) -> list[Atom]:
    """Numbers as written: a number with one letter glued on is a variable ("5A", "3x+2"), a fraction
    written tight is one number ("25 / 1/3" is 25 / (1/3)), and "2 1/2" is 5/2."""
    for i, atom in enumerate(atoms[:-1]):
        after = atoms[i + 1]
        if atom.kind == "num" and after.kind == "word" and len(after.text) == 1 and after.start == atom.end:
            x_times = after.text == "x" and i + 2 < len(atoms) and atoms[i + 2].kind in ("num", "lp", "cur")
            if not x_times:
                atom.kind = "bad"
    return _tight_fractions(_mixed_numbers(atoms, text))


def _tight_fractions(atoms: list[Atom]) -> list[Atom]:
    out: list[Atom] = []
    i = 0
    while i < len(atoms):
        num, slash, den = (atoms[i:i + 3] + [None] * 3)[:3]
        if (den is not None and num.kind == den.kind == "num" and slash.op == "/" and num.end == slash.start
                and slash.end == den.start and not num.places and not den.places and den.value != 0
                and num.value.denominator == den.value.denominator == 1 and not (out and out[-1].end == num.start)
                and not (i + 3 < len(atoms) and atoms[i + 3].start == den.end and atoms[i + 3].kind in ("op", "num"))):
            out.append(Atom("num", num.start, den.end, num.value / den.value, fraction=True, text=str(num.value)))
            i += 3
            continue
        out.append(atoms[i])
        i += 1
    return out


def _mixed_numbers(atoms: list[Atom], text: str) -> list[Atom]:
    """"2 1/2" as one number (5/2): a whole number, one space, a proper fraction written tight."""
    out: list[Atom] = []
    i = 0
    while i < len(atoms):
        whole, num, slash, den = (atoms[i:i + 4] + [None] * 4)[:4]
        if (den is not None and whole.kind == num.kind == den.kind == "num" and slash.op == "/"
                and text[whole.end:num.start] == " " and num.end == slash.start and slash.end == den.start
                and all(a.value.denominator == 1 and not a.places for a in (whole, num, den))
                and 0 < num.value < den.value and not (out and out[-1].op == "/")):
            out.append(Atom("num", whole.start, den.end, whole.value + num.value / den.value))
            i += 4
            continue
        out.append(atoms[i])
        i += 1
    return out
