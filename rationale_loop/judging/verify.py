"""Answer checkers: decide whether a model's final answer matches the gold answer.

Every stage that labels a sample correct or incorrect (filtering rationales for STaR, mining
chosen/rejected pairs for SPIN-style training, evaluation) goes through `is_correct`, so the rules
below decide what the model is rewarded for. They are deliberately conservative: a checker that
accepts a wrong answer teaches the model the wrong thing, while one that rejects an odd but right
answer only wastes a sample.

Safety: a verifier never executes model output. There is no `eval`/`exec` and no sympy parsing of
model text here; numbers are read with regular expressions into `fractions.Fraction`. The only
exception is the "math" kind, which hands the text to the `math_verify` package's own parser.

Pure standard library; `math_verify` is imported lazily and only by the "math" checker.

Adding a checker is one function::

    @register_verifier("my_kind")
    def check_my_kind(answer: str, gold: str) -> bool:
        ...
"""

from __future__ import annotations

import re
import threading
import unicodedata
from fractions import Fraction
from typing import Callable

from rationale_loop.config.registry import Registry

__all__ = [
    "VERIFIERS",
    "Verifier",
    "extract_number",
    "get_verifier",
    "is_correct",
    "normalize_text",
    "numbers_close",
    "register_verifier",
]

Verifier = Callable[[str, str], bool]

#: kind -> checker(answer, gold). Filled by `register_verifier`, read through `get_verifier`.
VERIFIERS: Registry[Verifier] = Registry("verify.kind")


def register_verifier(kind: str, *, replace: bool = False) -> Callable[[Verifier], Verifier]:
    """Decorator that registers `func(answer, gold) -> bool` under `kind`.

    Registering a kind twice is an error unless `replace=True`: two modules silently fighting over
    one kind would change which answers count as correct depending on import order.
    """

    return VERIFIERS.register(kind, replace=replace)


def get_verifier(kind: str) -> Verifier:
    """The checker for `kind`; an unknown kind raises ConfigError (a ValueError) listing the known ones."""
    return VERIFIERS.get(kind)


def is_correct(kind: str, answer: str | None, gold: str) -> bool:
    """True when the model's `answer` matches `gold` under the rules of `kind`.

    `answer` is the model's answer text (ideally the part after its answer marker, but free text
    works for the numeric, choice and yesno kinds). A missing answer (None or blank) is incorrect.
    A gold that the kind cannot read at all (no number for "numeric", no letter for "choice", ...)
    raises ValueError: that is a data bug and should stop the run, not quietly score zero.
    """
    verifier = get_verifier(kind)
    if answer is None or not str(answer).strip():
        return False
    return bool(verifier(str(answer), str(gold)))


# --------------------------------------------------------------------------------------------
# Shared text helpers
# --------------------------------------------------------------------------------------------

# An explicit answer marker. "answer" must be followed by "is", ":" or "=" so that prose such as
# "the answer choices are" or "to answer this" is not a marker. "option is" / "choice is" cover
# "The correct option is (C)". "####" is the GSM8K convention.
_MARKER_RE = re.compile(
    r"####|\banswer\b\s*(?:is\b\s*:?|:|=)|\b(?:option|choice)\s+is\b\s*:?",
    re.IGNORECASE,
)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _clean(text: str) -> str:
    """Unicode-normalize and drop markdown emphasis that models wrap answers in (**C**, `42`)."""
    text = unicodedata.normalize("NFKC", text)
    return text.replace("**", "").replace("__", "").replace("`", "")


def _boxed_contents(text: str) -> list[tuple[int, str]]:
    """(start, content) of every \\boxed{...}, with nested braces matched."""
    found = []
    for match in _BOXED_RE.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            found.append((match.start(), text[match.end() : i - 1]))
    return found


def _marked_segments(text: str) -> list[str]:
    """What follows each explicit answer marker, the last marker first.

    Models often restate or correct themselves ("The answer is 5. Wait... the answer is 6."), so
    the last marker wins; earlier ones are only tried when a later one is followed by nothing
    readable. For \\boxed{...} the segment is the box content; for the others it is the rest of the
    text after the marker.
    """
    spots = [(start, content) for start, content in _boxed_contents(text)]
    spots += [(m.start(), text[m.end() :]) for m in _MARKER_RE.finditer(text)]
    spots.sort(key=lambda spot: spot[0], reverse=True)
    return [content for _, content in spots]


# Stripped from both ends by `normalize_text`. Sentence punctuation, brackets and quotes only:
# "%", "$" and "#" can carry meaning, so they stay.
_SURROUNDING = " \t\r\n.,;:!?'\"()[]{}*_`\u2018\u2019\u201c\u201d\u00ab\u00bb\u3002"
_ARTICLES_RE = re.compile(r"\b(?:a|an|the)\b")


def normalize_text(text: str) -> str:
    """Normalization for the "exact" kind (and for matching choice option text).

    NFKC-normalize and casefold (so "Paris", "PARIS" and full-width letters agree), strip
    surrounding whitespace, sentence punctuation, brackets and quotes (so "Paris." and "(Paris)"
    agree), drop the articles a/an/the wherever they stand as words (so "the Beatles" and
    "Beatles" agree, as in SQuAD-style scoring), and collapse runs of whitespace to one space.
    """
    text = unicodedata.normalize("NFKC", text).casefold().strip(_SURROUNDING)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split()).strip(_SURROUNDING)


# --------------------------------------------------------------------------------------------
# numeric
# --------------------------------------------------------------------------------------------

# A minus sign counts only when glued to the digits and not preceded by a word character or a
# closing bracket: "-3", "x=-3" and "($-3)" are negative, but "5-3" and "5 - 3" are subtraction.
# Thousands groups must be exactly three digits and may not run on ("1,2345" is not 12345), so
# lists like "1,2,3" are read as separate numbers. A fraction may be followed by sentence punctuation
# ("3/4." and "2 1/2," are 3/4 and 5/2) but not run on into a decimal ("3/4.5" is not 3/4).
_NUMBER_RE = re.compile(
    r"""
    (?P<sign>(?<![\w)\]}])-(?=\.?\d))?
    (?:
        (?P<whole>\d+)\ (?P<mnum>\d+)/(?P<mden>\d+)(?![\d/]|[.,]\d)  # mixed number 2 1/2
      | (?P<num>\d{1,3}(?:,\d{3})+(?![\d])(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
        (?:\s*/\s*(?P<den>\d+)(?!\.?\d))?                            # simple fraction 3/4
    )
    """,
    re.VERBOSE,
)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*([\d.,]+)\s*\}")
_CURRENCY_RE = re.compile(r"[$\u20ac\u00a3\u00a5\u20b9]|\\\$")


def _numeric_text(text: str) -> str:
    """Prepare text for number reading: unify minus signs and slashes, drop currency symbols.

    Currency symbols are deleted rather than matched so that "$-5", "-$5" and "$1,234.50" all
    reduce to plain numbers. LaTeX "\\frac{3}{4}" becomes "3/4" and "1{,}234" becomes "1,234".
    """
    text = _clean(text)
    text = text.replace("\u2212", "-").replace("\u2013", "-").replace("\u2044", "/")
    text = text.replace("{,}", ",").replace("\\,", "").replace("\\!", "")
    text = _LATEX_FRAC_RE.sub(r"\1/\2", text)
    return _CURRENCY_RE.sub("", text)


def _to_fraction(match: re.Match[str]) -> Fraction | None:
    negative = bool(match.group("sign"))
    if match.group("whole") is not None:
        numerator, denominator = int(match.group("mnum")), int(match.group("mden"))
        if denominator == 0 or numerator >= denominator:
            return None  # "3 5/4" is not a mixed number; let the caller read the pieces instead
        value = int(match.group("whole")) + Fraction(numerator, denominator)
    else:
        value = Fraction(match.group("num").replace(",", ""))
        if match.group("den") is not None:
            denominator = int(match.group("den"))
            if denominator == 0:
                return None
            value /= denominator
    return -value if negative else value


def _numbers(text: str) -> list[Fraction]:
    values = []
    for match in _NUMBER_RE.finditer(text):
        value = _to_fraction(match)
        if value is None and match.group("whole") is not None:
            # Not a proper mixed number: read "3 5/4" as 3 and 5/4.
            values.append(Fraction(int(match.group("whole"))))
            inner = Fraction(int(match.group("mnum")))
            den = int(match.group("mden"))
            if den:
                values.append(inner / den)
            continue
        if value is not None:
            values.append(value)
    return values


def extract_number(text: str) -> Fraction | None:
    """The final number a piece of free text commits to, as an exact Fraction (None if none).

    Rule: if the text has an explicit answer marker ("####", "answer is", "Answer:", "answer =",
    "\\boxed{...}"), take the first number after the last such marker: the number right after
    "The answer is" is the answer, whatever follows it ("18 dollars for 3 days"). Without a
    marker, take the last number in the text, because rationales end with their result.

    Read as numbers: integers, thousands commas ("1,234"), decimals ("0.5", ".5", "18.00"),
    simple and mixed fractions ("3/4", "2 1/2", "\\frac{3}{4}"), negatives with "-" or the
    Unicode minus "\u2212", and currency-prefixed amounts ("$1,234.50"). A trailing unit or word
    ("18 dollars", "5 apples.") is ignored, and so is "%" ("50%" reads as 50, not 0.5). Not read:
    number words ("twelve"), scientific notation, space-separated thousands.
    """
    text = _numeric_text(text)
    for segment in _marked_segments(text):
        values = _numbers(segment)
        if values:
            return values[0]
    values = _numbers(text)
    return values[-1] if values else None


#: Two numbers are equal when they differ by at most this fraction of the larger magnitude...
REL_TOL = Fraction(1, 10**6)
#: ...and never by more than this. The cap keeps a relative tolerance from accepting an answer
#: that is off by one on a large integer (1,450,001 for 1,450,000) while still absorbing rounding
#: of repeating decimals ("0.333333" for 1/3).
ABS_CAP = Fraction(1, 10**4)


def numbers_close(a: Fraction, b: Fraction) -> bool:
    """Exact comparison with a small tolerance for rounded decimals (see REL_TOL, ABS_CAP)."""
    if a == b:
        return True
    return abs(a - b) <= min(REL_TOL * max(abs(a), abs(b)), ABS_CAP)


@register_verifier("numeric")
def check_numeric(answer: str, gold: str) -> bool:
    """The model's final number (see `extract_number`) equals the gold number.

    The gold goes through the same reader, so "1,234", "$18.00", "#### 18" and "18 dollars" are
    all fine as gold. A gold with no number raises ValueError.
    """
    gold_value = extract_number(gold)
    if gold_value is None:
        raise ValueError(f"numeric gold has no number: {gold!r}")
    value = extract_number(answer)
    return value is not None and numbers_close(value, gold_value)


# --------------------------------------------------------------------------------------------
# choice
# --------------------------------------------------------------------------------------------

# A letter counts as a chosen option only in one of these shapes, at the start of the segment
# being read (the whole answer, or what follows an answer marker):
#   "(C)", "[C]", "C)"                          anything may follow ("C) 25 km")
#   "C" "C." "C:" "C," alone                     nothing but punctuation may follow
#   "C." "C:" "C," followed by a space and text  ("C. 25 km")
# A bare letter followed by a space and a word is never a choice, which is what keeps
# "A train travels 25 km" or "The answer is a 25% rise" from being read as option A.
_LETTER_RE = re.compile(
    r"""^\s*(?:
        \(\s*(?P<paren>[A-Za-z])\s*\)
      | \[\s*(?P<bracket>[A-Za-z])\s*\]
      | (?P<close>[A-Za-z])\)
      | (?P<bare>[A-Za-z])(?:[.:,;!]*\s*$|[.:,;]\s)
    )""",
    re.VERBOSE,
)
_LEAD_RE = re.compile(r"^[\s:=]*(?:(?:option|choice)\b\s*)?", re.IGNORECASE)
_GOLD_LETTER_RE = re.compile(r"^\s*\(?\s*(?P<letter>[A-Za-z])\s*\)?[.:]?\s*$")
_GOLD_OPTION_RE = re.compile(
    r"^\s*(?:\(\s*(?P<p>[A-Za-z])\s*\)|(?P<c>[A-Za-z])[).:])\s*(?P<text>.*\S)\s*$", re.S
)


def _parse_choice_gold(gold: str) -> tuple[str, str]:
    """(LETTER, option text or "") from a gold "C", "(C)", "C) 25 km" or "C)25 km"."""
    gold = _clean(gold)
    match = _GOLD_LETTER_RE.match(gold)
    if match:
        return match.group("letter").upper(), ""
    match = _GOLD_OPTION_RE.match(gold)
    if match:
        return (match.group("p") or match.group("c")).upper(), match.group("text")
    raise ValueError(f"choice gold must be a letter or 'X) option text', got {gold!r}")


def _read_letter(segment: str) -> tuple[str, bool] | None:
    """(LETTER, alone) for a segment that starts with a choice letter; `alone` when nothing but
    punctuation follows the letter ("C", "(C)", "c.")."""
    match = _LETTER_RE.match(segment)
    if not match:
        return None
    letter = next(group for group in match.group("paren", "bracket", "close", "bare") if group)
    alone = not segment[match.end() :].strip(_SURROUNDING)
    return letter.upper(), alone


def _plain_number(text: str) -> Fraction | None:
    """The value of `text` when the whole of it is one number (with $, commas, units excluded)."""
    text = _numeric_text(text).strip().rstrip(".").strip()
    match = _NUMBER_RE.fullmatch(text)
    return _to_fraction(match) if match else None


def _same_option_text(candidate: str, option_text: str) -> bool:
    """Option text equality: `normalize_text`, then ignoring spaces ("25km" == "25 km"), then, when
    both sides are a single plain number, numeric equality ("4,000" == "4000")."""
    a, b = normalize_text(candidate), normalize_text(option_text)
    if not a or not b:
        return False
    if a == b or a.replace(" ", "") == b.replace(" ", ""):
        return True
    x, y = _plain_number(a), _plain_number(b)
    return x is not None and y is not None and numbers_close(x, y)


@register_verifier("choice")
def check_choice(answer: str, gold: str) -> bool:
    """Multiple choice. Gold is a letter ("C") or a full option ("C) 25 km", "C)25 km").

    The answer is read in segments: what follows each answer marker ("Answer:", "The answer is",
    "The correct option is", "####", "\\boxed{}"), last marker first; only when there is no marker
    at all, the whole answer. Within a segment (its first line), a leading "option"/"choice" word
    dropped:

    1. if the segment starts with a choice letter in one of the shapes of `_LETTER_RE` followed
       by more text ("C) 25 km", "(C) 25 km", "C. 25 km"), the letter decides: the gold letter is
       correct, any other letter is incorrect, and the text after the letter is not checked (the
       letter is the unambiguous choice; the text may be paraphrased);
    2. else, if the gold carries option text and the whole segment is that text ("25 km",
       "25km.", "The answer is 25 km"), it is correct;
    3. else, if the segment is a letter alone ("C", "(C)", "C)", "c.", "[C]"), that letter
       decides as in 1;
    4. otherwise the next segment is tried. Nothing readable means incorrect.

    Option text is tried before a lone letter so that an option whose text is itself a letter
    ("C)K") can be answered by its text ("K"). A letter inside prose is never read ("A train
    travels..."), nor is a letter followed by a bare space ("Answer: C 25 km"), so the model must
    commit in a clear shape. With a letter-only gold, option text alone cannot be judged and is
    incorrect.
    """
    gold_letter, gold_text = _parse_choice_gold(gold)
    text = _clean(answer)
    for segment in _marked_segments(text) or [text]:
        segment = _LEAD_RE.sub("", segment, count=1).lstrip()
        first_line = segment.split("\n", 1)[0]
        read = _read_letter(first_line)
        if read is not None and not read[1]:
            return read[0] == gold_letter
        if gold_text and _same_option_text(first_line, gold_text):
            return True
        if read is not None:
            return read[0] == gold_letter
    return False


# --------------------------------------------------------------------------------------------
# yesno
# --------------------------------------------------------------------------------------------

_YESNO_RE = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_YESNO_VALUE = {"yes": True, "true": True, "no": False, "false": False}


def _read_yesno(text: str) -> bool | None:
    text = _clean(text)
    for segment in _marked_segments(text) or [text]:
        match = _YESNO_RE.search(segment)
        if match:
            return _YESNO_VALUE[match.group(1).casefold()]
    return None


@register_verifier("yesno")
def check_yesno(answer: str, gold: str) -> bool:
    """Yes/no questions: the first decisive word (yes, no, true, false; any case, any punctuation
    around it) after the last answer marker (earlier markers if none follows it), or in the whole
    answer when there is no marker.

    True counts as yes and false as no, so a gold "True" matches "Yes." The first decisive word is
    used because short answers lead with their verdict ("No, because ..."); the marker preference
    keeps reasoning before "Answer:" from deciding. A gold with no decisive word raises ValueError.
    """
    gold_value = _read_yesno(gold)
    if gold_value is None:
        raise ValueError(f"yesno gold is not yes/no/true/false: {gold!r}")
    value = _read_yesno(answer)
    return value is not None and value == gold_value


# --------------------------------------------------------------------------------------------
# exact
# --------------------------------------------------------------------------------------------


@register_verifier("exact")
def check_exact(answer: str, gold: str) -> bool:
    """`normalize_text(answer) == normalize_text(gold)`, both non-empty.

    No marker extraction: the caller passes the answer itself, so that short free-form answers are
    compared as written, up to case, spacing, surrounding punctuation and articles.
    """
    normalized = normalize_text(answer)
    return bool(normalized) and normalized == normalize_text(gold)


# --------------------------------------------------------------------------------------------
# math
# --------------------------------------------------------------------------------------------

_MATH_INSTALL_HINT = (
    "the 'math' verifier needs the math-verify package; install the extra: "
    "pip install 'rationale_loop[math]'"
)


@register_verifier("math")
def check_math(answer: str, gold: str) -> bool:
    """Symbolic equivalence through `math_verify` (`parse` then `verify(gold, answer)`).

    When both sides are a single plain number ("0.5", "1/2", "-3", "1,234") they are compared
    exactly as in the numeric kind, without importing math_verify: that is the common case and
    needs no parser. Otherwise math_verify is imported here (ImportError naming the
    `rationale_loop[math]` extra when it is missing). Text without math delimiters ($, \\boxed,
    \\( \\[) is read both wrapped in $...$ (bare LaTeX or an expression: "\\frac{1}{2}", "x+1")
    and as given (prose with a number); the gold takes its first reading, and the answer is
    correct when any of its readings verifies against it.

    math_verify guards its parser with SIGALRM, which only works in the main thread; elsewhere the
    timeouts are switched off (results stay correct, but a pathological input is not cut short).
    """
    a, g = _plain_number(answer), _plain_number(gold)
    if a is not None and g is not None:
        return numbers_close(a, g)
    try:
        from math_verify import parse, verify
    except ImportError as error:
        raise ImportError(_MATH_INSTALL_HINT) from error

    main_thread = threading.current_thread() is threading.main_thread()
    timeout = 5 if main_thread else None

    def readings(text: str) -> list[list]:
        # Text with its own math delimiters is parsed as given. Bare text may be bare LaTeX or an
        # expression ("x+1", "\\frac{1}{2}"), which math_verify only reads inside $...$, or
        # prose with a number in it, which it reads as given: try both.
        if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
            candidates = [text]
        else:
            candidates = [f"${text}$", text]
        return [found for found in (parse(c, parsing_timeout=timeout) for c in candidates) if found]

    gold_readings = readings(gold)
    if not gold_readings:
        return False
    return any(
        verify(gold_readings[0], reading, timeout_seconds=timeout) for reading in readings(answer)
    )
