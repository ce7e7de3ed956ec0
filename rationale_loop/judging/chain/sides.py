"""One side of an `=` evaluated exactly (fractions.Fraction, never eval), or refused as unparsed when the
text leaves more than one reading; and whether a side's value matches another's as written."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from rationale_loop.judging.chain.limits import MAX_BITS, MAX_DEPTH, MAX_EXPONENT, MAX_SIDE_ATOMS
from rationale_loop.judging.chain.tokens import Atom


class Unparsed(Exception):
    """A side that cannot be read as one number: the step is counted, not failed."""


RUN_KINDS = frozenset({"num", "op", "lp", "rp", "pct", "eq", "cur", "unit", "bad"})


@dataclass
class Side:
    atoms: list[Atom]
    value: Fraction | None = None
    literal: Atom | None = None  # the side is this one number (with its sign and unit)
    percent: bool = False  # ... and it is written as a percentage
    negative: bool = False
    leading: Fraction | None = None  # the first number, for the middle of a chain
    units: tuple[str, ...] = ()


def check_size(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise Unparsed
    return value


class _Expression:
    """Recursive descent over a side's atoms: + - below * / below unary minus below ^ below %.
    A value carries whether it is a percentage, so that "50 + 20%" (ambiguous) is refused."""

    def __init__(self, atoms: list[Atom]):
        self.atoms = [a for a in atoms if a.kind not in ("cur", "unit")]
        self.i = 0
        self.depth = 0

    def peek(self) -> Atom | None:
        return self.atoms[self.i] if self.i < len(self.atoms) else None

    def parse(self) -> Fraction:
        if not self.atoms or len(self.atoms) > MAX_SIDE_ATOMS:
            raise Unparsed
        value, _ = self.sum()
        if self.peek() is not None:
            raise Unparsed
        return value

    def sum(self) -> tuple[Fraction, bool]:
        value, percent = self.product()
        while (atom := self.peek()) is not None and atom.kind == "op" and atom.op in "+-":
            self.i += 1
            right, right_percent = self.product()
            if percent != right_percent:
                raise Unparsed  # "50 + 20%": 50.2 or 60? not a claim to fail on
            value = check_size(value + right if atom.op == "+" else value - right)
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
                    raise Unparsed
                value = value / right
            else:
                value = value * right
            value, percent = check_size(value), percent and right_percent

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
                raise Unparsed
            return check_size(base ** int(exponent)), False
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
            raise Unparsed
        if atom.kind == "num":
            self.i += 1
            return atom.value
        if atom.kind == "lp":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise Unparsed
            self.i += 1
            value, _ = self.sum()
            closing = self.peek()
            if closing is None or closing.kind != "rp":
                raise Unparsed
            self.i += 1
            self.depth -= 1
            return value
        raise Unparsed


def read_side(atoms: list[Atom], first: bool, last: bool) -> Side:
    """A side's value (None when unreadable), and what the comparison rules need to know about it."""
    # A chain's outer sides may carry the parenthesis of the prose around them: "(3 + 4 = 7)".
    if first and sum(a.kind == "lp" for a in atoms) > sum(a.kind == "rp" for a in atoms):
        while atoms and atoms[0].kind == "lp" and _unbalanced(atoms):
            atoms = atoms[1:]
    if last:
        while atoms and atoms[-1].kind == "rp" and _unbalanced(atoms):
            atoms = atoms[:-1]
    side = Side(atoms)
    try:
        side.value = _Expression(atoms).parse()
    except (Unparsed, RecursionError, ZeroDivisionError):
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


def _unbalanced(atoms: list[Atom]) -> bool:
    depth = 0
    for atom in atoms:
        depth += (atom.kind == "lp") - (atom.kind == "rp")
        if depth < 0:
            return True
    return depth != 0


def side_matches(value: Fraction, side: Side, whole: Fraction) -> bool:
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
