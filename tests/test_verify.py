"""Answer checkers: hand-built cases per kind, the registry, and every public gold answer written
the ways models write answers."""

from __future__ import annotations

import ast
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from rationale_loop.judging import verify
from rationale_loop.data.public import load_aqua, load_gsm8k, load_svamp
from rationale_loop.run.records import Problem
from rationale_loop.judging.verify import (
    VERIFIERS,
    extract_number,
    get_verifier,
    is_correct,
    normalize_text,
    register_verifier,
)

# ------------------------------------------------------------------------------------------------
# numeric
# ------------------------------------------------------------------------------------------------

NUMERIC_CORRECT = [
    ("#### 1,234", "1234"),
    ("#### 1234", "1,234"),
    ("1,234", "1234"),
    ("The answer is 42.", "42"),
    ("42", "42"),
    ("$1,234.50", "1234.5"),
    ("$18.00", "18"),
    ("18 dollars", "18"),
    ("5 apples.", "5"),
    ("-3", "-3"),
    ("\u22123", "-3"),
    ("The answer is -$5.", "-5"),
    ("0.5", "1/2"),
    (".5", "0.5"),
    ("3/4", "0.75"),
    ("\\frac{3}{4}", "0.75"),
    ("2 1/2 cups", "2.5"),
    ("0.333333", "1/3"),
    ("Answer: 7", "7"),
    ("**Answer:** 7", "7"),
    ("The final answer is \\boxed{12}.", "12"),
    ("She has 3 bags of 4, so 3 * 4 = 12 apples in all.", "12"),  # no marker: last number
    ("The answer is 18 dollars for 3 days.", "18"),  # marker: first number after it
    ("The answer is 5. Wait, I misread. The answer is 6.", "6"),  # last marker wins
    ("x=-3", "-3"),
    ("18", "#### 18"),  # gold may carry a marker, $ or units
    ("18", "$18"),
    ("18", "18 dollars"),
    ("50%", "50"),
]

NUMERIC_INCORRECT = [
    ("-3", "3"),
    ("3", "-3"),
    ("5 - 3 = 2", "-3"),  # subtraction, not a negative number
    ("1,2345", "12345"),  # not a thousands group
    ("1234", "123"),
    ("0.5", "5"),
    ("1450001", "1450000"),  # relative tolerance must not swallow an off-by-one
    ("1450000.5", "1450000"),
    ("0.33", "1/3"),
    ("The answer is 5. Wait, I misread. The answer is 6.", "5"),
    ("no number here", "4"),
    ("4/0", "4"),
]


@pytest.mark.parametrize(("answer", "gold"), NUMERIC_CORRECT)
def test_numeric_correct(answer: str, gold: str) -> None:
    assert is_correct("numeric", answer, gold), (answer, gold)


@pytest.mark.parametrize(("answer", "gold"), NUMERIC_INCORRECT)
def test_numeric_incorrect(answer: str, gold: str) -> None:
    assert not is_correct("numeric", answer, gold), (answer, gold)


def test_extract_number_values() -> None:
    assert extract_number("#### 1,234") == 1234
    assert extract_number("$1,234.50") == Fraction(2469, 2)
    assert extract_number("\u22120.5") == Fraction(-1, 2)
    assert extract_number("pages 3\u20134") == 4
    assert extract_number("nothing") is None


def test_numeric_gold_without_number_raises() -> None:
    with pytest.raises(ValueError, match="no number"):
        is_correct("numeric", "4", "four")


# ------------------------------------------------------------------------------------------------
# choice
# ------------------------------------------------------------------------------------------------

CHOICE_CORRECT = [
    ("C", "C"),
    ("(C)", "C"),
    ("C)", "C"),
    ("c.", "C"),
    ("[C]", "C"),
    ("Answer: C", "C"),
    ("The answer is (C)", "C) 25 km"),
    ("The answer is C) 25 km", "C)25 km"),
    ("The correct option is C.", "C"),
    ("The answer is option C", "C"),
    ("C) 25 km", "C) 25 km"),
    ("C. 25 km", "C) 25 km"),
    ("25 km", "C) 25 km"),
    ("25km.", "C)25 km"),
    ("The answer is 25 km.", "C) 25 km"),
    ("**Answer:** (C)", "C"),
    ("\\boxed{C}", "C) 7"),
    ("4000", "B)4,000"),
    ("K", "C)K"),  # option text that is itself a letter
    ("None of these", "E)None of these"),
    ("The answer is A. Hmm, no: the answer is C.", "C"),
    ("(C)", "(C) 25 km"),
]

CHOICE_INCORRECT = [
    ("A train travels 25 km in an hour.", "A) 25 km"),  # prose, not a choice of A
    ("A train travels 25 km in an hour.", "A"),
    ("The answer is a 25% rise", "A) 25%"),
    ("A", "C"),
    ("(B)", "C) 25 km"),
    ("The answer is D) 25 km", "C) 25 km"),  # the letter decides, text after it is not read
    ("30 km", "C) 25 km"),
    ("25 km", "C"),  # letter-only gold: option text cannot be judged
    ("I think C", "C"),  # bare letter after a word is never read
    ("Answer: C 25 km", "C"),
    ("", "C"),
    ("The answer is A. Hmm, no: the answer is C.", "A"),
]


@pytest.mark.parametrize(("answer", "gold"), CHOICE_CORRECT)
def test_choice_correct(answer: str, gold: str) -> None:
    assert is_correct("choice", answer, gold), (answer, gold)


@pytest.mark.parametrize(("answer", "gold"), CHOICE_INCORRECT)
def test_choice_incorrect(answer: str, gold: str) -> None:
    assert not is_correct("choice", answer, gold), (answer, gold)


def test_choice_bad_gold_raises() -> None:
    with pytest.raises(ValueError, match="choice gold"):
        is_correct("choice", "C", "twenty-five")


# ------------------------------------------------------------------------------------------------
# yesno, exact
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("Yes.", "yes", True),
        ("YES!", "Yes", True),
        ("true", "yes", True),
        ("No, because the train is late.", "no", True),
        ("No, because the answer would otherwise be yes.", "no", True),  # first decisive word
        ("False", "no", True),
        ("(yes)", "True", True),
        ("I thought no at first. Answer: yes", "yes", True),  # the marker decides
        ("Yes", "no", False),
        ("no", "True", False),
        ("maybe", "yes", False),
        ("yesterday", "yes", False),  # whole words only
        ("I thought no at first. Answer: yes", "no", False),
    ],
)
def test_yesno(answer: str, gold: str, expected: bool) -> None:
    assert is_correct("yesno", answer, gold) is expected, (answer, gold)


def test_yesno_bad_gold_raises() -> None:
    with pytest.raises(ValueError, match="yesno gold"):
        is_correct("yesno", "yes", "perhaps")


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("Paris", "paris", True),
        ("  Paris.  ", "Paris", True),
        ("The Beatles", "beatles", True),
        ('"an apple"', "Apple", True),
        ("New   York", "new york", True),
        ("PARIS", "Paris!", True),
        ("Rome", "Paris", False),
        ("Paris, France", "Paris", False),
        ("...", "...", False),  # nothing left after normalization is never a match
    ],
)
def test_exact(answer: str, gold: str, expected: bool) -> None:
    assert is_correct("exact", answer, gold) is expected, (answer, gold)


def test_normalize_text() -> None:
    assert normalize_text("  The  Quick, brown fox!  ") == "quick, brown fox"


# ------------------------------------------------------------------------------------------------
# math
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [("0.5", "1/2", True), ("1,234", "1234", True), ("-3", "3", False), ("$18.00", "18", True)],
)
def test_math_plain_numbers_need_no_math_verify(
    monkeypatch: pytest.MonkeyPatch, answer: str, gold: str, expected: bool
) -> None:
    monkeypatch.setitem(sys.modules, "math_verify", None)  # any import of it now fails
    assert is_correct("math", answer, gold) is expected


def test_math_without_math_verify_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "math_verify", None)
    with pytest.raises(ImportError, match=r"rationale_loop\[math\]"):
        is_correct("math", "x+1", "1+x")


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("x+1", "1+x", True),
        ("\\frac{1}{2}", "0.5", True),
        ("$\\frac{2}{4}$", "\\frac{1}{2}", True),
        ("The answer is $\\pi$", "\\pi", True),
        ("x+2", "1+x", False),
        ("\\sqrt{3}", "\\sqrt{2}", False),
    ],
)
def test_math_with_math_verify(answer: str, gold: str, expected: bool) -> None:
    pytest.importorskip("math_verify")
    assert is_correct("math", answer, gold) is expected


# ------------------------------------------------------------------------------------------------
# registry and safety
# ------------------------------------------------------------------------------------------------


def test_registry_has_the_builtin_kinds() -> None:
    assert {"numeric", "choice", "yesno", "exact", "math"} <= set(VERIFIERS)
    assert get_verifier("numeric") is VERIFIERS["numeric"]


def test_unknown_kind_lists_known_kinds() -> None:
    with pytest.raises(ValueError) as info:
        is_correct("nonsense", "1", "1")
    message = str(info.value)
    assert "nonsense" in message
    for kind in ("numeric", "choice", "yesno", "exact", "math"):
        assert kind in message
    with pytest.raises(ValueError, match="verify.kind=also-nonsense is unknown.*; known: "):
        get_verifier("also-nonsense")


def test_register_verifier_adds_one_function() -> None:
    @register_verifier("test-even")
    def check_even(answer: str, gold: str) -> bool:
        return int(answer) % 2 == int(gold) % 2

    try:
        assert get_verifier("test-even") is check_even
        assert is_correct("test-even", "4", "2")
        assert not is_correct("test-even", "3", "2")
        with pytest.raises(ValueError, match="already registered"):
            register_verifier("test-even")(check_even)
        register_verifier("test-even", replace=True)(check_even)
    finally:
        VERIFIERS.unregister("test-even")


def test_missing_answer_is_incorrect() -> None:
    golds = {"numeric": "1", "math": "1", "choice": "C", "yesno": "yes", "exact": "Paris"}
    for kind, gold in golds.items():
        assert not is_correct(kind, None, gold), kind
        assert not is_correct(kind, "   ", gold), kind


def test_verifier_never_executes_model_output() -> None:
    """No eval/exec/compile/sympify calls in the module (checked on its syntax tree); math_verify's
    own parser is the one exception, reached through `parse` and `verify`."""
    tree = ast.parse(Path(verify.__file__).read_text(encoding="utf-8"))
    banned_names = {"eval", "exec", "compile", "__import__", "sympify", "parse_expr"}
    banned_attributes = {"eval", "exec", "sympify", "parse_expr"}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in banned_names:
                found.add(node.func.id)
            if isinstance(node.func, ast.Attribute) and node.func.attr in banned_attributes:
                found.add(node.func.attr)
    assert not found, found
    # Code-looking answers are only read as text: the number in it is 3, nothing runs.
    assert is_correct("numeric", "__import__('os').system('exit 3')", "3")
    assert not is_correct("exact", "__import__('os')", "os")


def test_verify_imports_without_torch() -> None:
    code = (
        "import sys, rationale_loop.judging.verify\n"
        "assert 'torch' not in sys.modules\n"
        "assert 'math_verify' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# ------------------------------------------------------------------------------------------------
# every public gold answer, written the ways models write answers
# ------------------------------------------------------------------------------------------------


def _plain(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return str(float(value))


def _numeric_writings(value: Fraction) -> list[str]:
    """The ways a model writes the number `value` as its final answer."""
    plain = _plain(value)
    written = [plain]
    if value.denominator == 1 and abs(value) >= 1000:
        written.append(f"{value.numerator:,}")
    forms = []
    for n in written:
        sign, magnitude = ("-", n[1:]) if n.startswith("-") else ("", n)
        forms += [
            n,
            f"#### {n}",
            f"The answer is {n}.",
            f"{sign}${magnitude}",
            f"{n} dollars",
            f"Answer: {n}",
            f"The answer is {n} apples, bought over 3 days.",
            f"First 2 + 3 = 5, then 5 * 4 = 20, so the total is {n}.",
            f"\\boxed{{{n}}}",
            f"\u2212{magnitude}" if sign else f"{n}.00",
        ]
    return forms


def _numeric_failures(problems: list[Problem]) -> tuple[int, list[str]]:
    checked, failures = 0, []
    for problem in problems:
        gold, shown = Fraction(problem.answer), repr(problem.answer)
        for answer in _numeric_writings(gold):
            checked += 1
            if not is_correct("numeric", answer, problem.answer):
                failures.append(f"{problem.id}: {answer!r} judged WRONG, gold {shown}")
        wrong_values = {gold + 1, gold * 10, -gold} - {gold}
        for wrong in sorted(wrong_values):
            for answer in _numeric_writings(wrong):
                checked += 1
                if is_correct("numeric", answer, problem.answer):
                    failures.append(f"{problem.id}: {answer!r} judged RIGHT, gold {shown}")
    return checked, failures


def _report(failures: list[str], checked: int) -> str:
    first = "\n".join(failures[:15])
    return f"{len(failures)} of {checked} judgements wrong; first ones:\n{first}"


def test_every_gsm8k_test_answer(shared_data: Path) -> None:
    problems = load_gsm8k(shared_data / "gsm8k" / "test.jsonl")
    assert len(problems) == 1319
    checked, failures = _numeric_failures(problems)
    assert not failures, _report(failures, checked)


def test_every_svamp_answer(shared_data: Path) -> None:
    problems = load_svamp(shared_data / "svamp" / "SVAMP.json")
    assert len(problems) == 1000
    checked, failures = _numeric_failures(problems)
    assert not failures, _report(failures, checked)


def _letter_writings(letter: str) -> list[str]:
    return [
        letter,
        f"({letter})",
        f"{letter})",
        f"{letter.lower()}.",
        f"Answer: {letter}",
        f"The answer is ({letter}).",
        f"The correct option is {letter}",
        f"**Answer:** {letter}",
        f"\\boxed{{{letter}}}",
    ]


def test_every_aqua_dev_answer(shared_data: Path) -> None:
    problems = load_aqua(shared_data / "aqua_rat" / "dev.json")
    assert len(problems) == 254
    checked, failures = 0, []

    def expect(answer: str, gold: str, correct: bool, problem_id: str) -> None:
        nonlocal checked
        checked += 1
        if is_correct("choice", answer, gold) is not correct:
            verdict = "WRONG" if correct else "RIGHT"
            failures.append(f"{problem_id}: {answer!r} judged {verdict} for gold {gold!r}")

    for problem in problems:
        gold = problem.answer  # "C) text"
        letter, text = gold[0], gold[3:]
        option_lines = problem.question.split("\n")[-5:]
        others = {line[0]: line[3:] for line in option_lines if line[0] != letter}
        good = _letter_writings(letter) + [
            f"The answer is {letter}) {text}",
            f"{letter}) {text}",
            text,
            f"Answer: {text}",
            f"The answer is {text}.",
        ]
        for answer in good:
            expect(answer, gold, True, problem.id)
        for answer in _letter_writings(letter):  # a letter-only gold and the raw upstream "C)text"
            expect(answer, letter, True, problem.id)
            expect(answer, f"{letter}){text}", True, problem.id)
        for other, other_text in others.items():
            bad = _letter_writings(other)
            bad += [f"The answer is {other}) {text}", f"{other}) {other_text}"]
            for answer in bad:
                expect(answer, gold, False, problem.id)
                expect(answer, letter, False, problem.id)
            if normalize_text(other_text) != normalize_text(text):
                expect(other_text, gold, False, problem.id)
                expect(f"The answer is {other_text}.", gold, False, problem.id)

    assert not failures, _report(failures, checked)
