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

The steps of the check, each a module here: tokens.py reads the text into atoms (numbers, operators,
words), sides.py evaluates a side of an `=` exactly, steps.py finds the steps and checks each.
"""

from rationale_loop.judging.chain.limits import MAX_BITS, MAX_CHARS, MAX_DEPTH, MAX_DIGITS, MAX_EXPONENT, MAX_SIDE_ATOMS, MAX_STEPS
from rationale_loop.judging.chain.steps import ChainReport, WrongStep, check_chain, format_value

__all__ = ["ChainReport", "WrongStep", "check_chain", "format_value", "MAX_BITS", "MAX_CHARS", "MAX_DEPTH", "MAX_DIGITS",
           "MAX_EXPONENT", "MAX_SIDE_ATOMS", "MAX_STEPS"]
