"""Property-based tests (hypothesis) for the three pure-Python components every round depends on:
the completion parser (data/formats.py), the answer verifiers (verify.py) and the pair miner
(mine.py). Each property states what the module documents, checked on generated inputs."""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from rationale_loop.data.formats import FORMATS, Parsed, get_format
from rationale_loop.generate.base import Completion
from rationale_loop.judging.mine import mine_pairs, mine_question, unique_sides
from rationale_loop.run.records import Generation, Problem
from rationale_loop.judging.rollouts import judge
from rationale_loop.judging.verify import (
    VERIFIERS,
    check_numeric,
    check_yesno,
    extract_number,
    is_correct,
    normalize_text,
    numbers_close,
)

# No example database: it would write .hypothesis/ into the checkout. No deadline: the machine is
# shared and math_verify's first import is slow.
# derandomize: the same examples every run, so CI never fails on a case no earlier run tried (a property
# that fails there was found here first, and fixed or kept as an @example).
BASE = settings(database=None, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def fast(n: int) -> settings:
    return settings(BASE, max_examples=n)


FORMAT_NAMES = sorted(FORMATS)
KINDS = sorted(VERIFIERS)
PURE_KINDS = [kind for kind in KINDS if kind != "math"]  # math_verify is slow: tested apart

# ================================================================================================
# Completion parser
# ================================================================================================

_MARKER_PIECES = [
    "### Rationale:", "### Answer:", "### User:", "\n### Answer:\n", "\n### Answer:", "\n### User:\n",
    "###", "Answer:", "### Answer", "#### 42", "\n", "\n\n", " ", "\r\n", "\t", "\u2028", "\x85",
]
_WHITESPACE = st.builds(lambda ch, n: ch * n, st.sampled_from([" ", "\n", "\t", "\r\n", "\u3000", "\u2028"]), st.integers(0, 20_000))
# Random text: unicode, markers at random places, empty strings, huge runs of whitespace.
noisy_text = st.lists(
    st.one_of(st.text(max_size=30), st.sampled_from(_MARKER_PIECES), _WHITESPACE), max_size=12
).map("".join)

_SAFE_PIECES = ["###", "Answer:", "### Answer", " ### Answer:", "Rationale", "User", "#### 7", "\n", "\n\n", " ", "\t"]
_loose_text = st.lists(st.one_of(st.text(max_size=30), st.sampled_from(_SAFE_PIECES)), max_size=8).map("".join)


def _is_marker_free(fmt, text: str) -> bool:
    """Text holding none of the format's turn markers or headers, nor its answer marker (header after a newline)."""
    return (not any(m in text for m in fmt.turn_markers) and fmt.rationale_header not in text
            and f"\n{fmt.answer_header}" not in text)


def _answer_line(fmt, text: str) -> str:
    """The documented answer: the first line after the answer marker, up to any turn marker, stripped."""
    line = text.strip().split("\n", 1)[0]
    for marker in fmt.turn_markers:
        line = line.partition(marker)[0]
    return line.strip()


@fast(300)
@given(name=st.sampled_from(FORMAT_NAMES), text=noisy_text)
@example(name="tinycot", text="")
@example(name="tinycot", text=" " * 50_000)
@example(name="tinycot", text="\n### Answer:\n5")
@example(name="tinycot", text="x\n### Answer:\n\n\n5")
@example(name="tinycot", text="### User:\nq\n### Answer:\n5")
def test_parse_never_raises_and_is_valid_or_says_why(name, text):
    fmt = get_format(name)
    parsed = fmt.parse(text)
    assert isinstance(parsed, Parsed)
    marker = f"\n{fmt.answer_header}"
    if parsed.valid:
        assert parsed.reason is None
        # Both parts present, stripped, taken from the completion, the answer on one line.
        assert isinstance(parsed.rationale, str) and parsed.rationale == parsed.rationale.strip() != ""
        assert isinstance(parsed.answer, str) and parsed.answer == parsed.answer.strip() != ""
        assert "\n" not in parsed.answer
        assert marker in text and parsed.rationale in text and parsed.answer in text
        # The rationale is everything before the first answer marker, and holds no other turn.
        assert parsed.rationale == text.split(marker, 1)[0].strip()
        assert marker not in parsed.rationale
        assert not any(m in parsed.rationale for m in fmt.turn_markers) and fmt.rationale_header not in parsed.rationale
        # The answer is the first line after the marker, up to any turn marker.
        assert parsed.answer == _answer_line(fmt, text.split(marker, 1)[1])
        # Rendering the parts again and parsing gives the same parts back.
        assert fmt.parse(fmt.response(parsed.rationale, parsed.answer)) == parsed
    else:
        assert isinstance(parsed.reason, str)
        assert parsed.reason in {"no_answer", "no_rationale", "malformed"}
        assert parsed.answer is None  # an invalid completion never hands out an answer
        if marker not in text:
            assert parsed == Parsed(None, None, "no_answer")
        elif not text.split(marker, 1)[0].strip():
            assert parsed.reason == "no_rationale"


@fast(300)
@given(name=st.sampled_from(FORMAT_NAMES), rationale=_loose_text, answer=st.one_of(_loose_text, noisy_text))
@example(name="tinycot", rationale=" Add 40 and 2.\n", answer="  42  ")
@example(name="tinycot", rationale="It is ### Answer: 3", answer="4\n### Answer:\n5")
def test_response_parses_back_to_its_rationale_and_answer(name, rationale, answer):
    fmt = get_format(name)
    assume(_is_marker_free(fmt, rationale))
    assume(rationale.strip() and _answer_line(fmt, answer))
    parsed = fmt.parse(fmt.response(rationale, answer))
    # Documented: both sides stripped; only the first line of the answer (up to a turn marker) is the answer.
    assert parsed == Parsed(rationale.strip(), _answer_line(fmt, answer))
    if "\n" not in answer.strip() and not any(m in answer for m in fmt.turn_markers):
        assert parsed.answer == answer.strip()


@fast(150)
@given(
    name=st.sampled_from(FORMAT_NAMES),
    which=st.sampled_from(["turn_marker", "rationale_header"]),
    before=_loose_text,
    after=_loose_text,
    answer=st.text(min_size=1).filter(str.strip),
)
def test_a_rationale_that_starts_another_turn_is_malformed(name, which, before, after, answer):
    fmt = get_format(name)
    assume(f"\n{fmt.answer_header}" not in before + after)
    rationale = before + (fmt.turn_markers[0] if which == "turn_marker" else fmt.rationale_header) + after
    assert fmt.parse(fmt.response(rationale, answer)) == Parsed(None, None, "malformed")


@fast(50)
@given(name=st.text())
def test_unknown_format_names_raise_value_error(name):
    assume(name not in FORMATS)
    with pytest.raises(ValueError, match="task.prompt_format=.* is unknown"):
        get_format(name)


# ================================================================================================
# Verifiers
# ================================================================================================

_DIGITS = st.text("0123456789", min_size=1, max_size=6)


@st.composite
def numbers_as_text(draw, currency: bool = True) -> tuple[Fraction, str]:
    """(value, text): a number written in one of the shapes extract_number documents."""
    shape = draw(st.sampled_from(["int", "commas", "decimal", "lead_dot", "fraction", "mixed", "latex"]))
    if shape == "int":
        n = draw(st.integers(0, 10**15))
        value, text = Fraction(n), str(n)
    elif shape == "commas":
        n = draw(st.integers(1000, 10**15))
        value, text = Fraction(n), f"{n:,}"
        if draw(st.booleans()):
            digits = draw(_DIGITS)
            value, text = value + Fraction(int(digits), 10 ** len(digits)), f"{text}.{digits}"
    elif shape == "decimal":
        whole, digits = draw(st.integers(0, 10**9)), draw(_DIGITS)
        value, text = whole + Fraction(int(digits), 10 ** len(digits)), f"{whole}.{digits}"
    elif shape == "lead_dot":
        digits = draw(_DIGITS)
        value, text = Fraction(int(digits), 10 ** len(digits)), f".{digits}"
    elif shape == "fraction":
        p, q = draw(st.integers(0, 10**6)), draw(st.integers(1, 10**6))
        value, text = Fraction(p, q), f"{p}{draw(st.sampled_from(['/', ' / ', '/ ']))}{q}"
    elif shape == "mixed":
        whole, q = draw(st.integers(0, 10**6)), draw(st.integers(2, 1000))
        p = draw(st.integers(1, q - 1))
        value, text = whole + Fraction(p, q), f"{whole} {p}/{q}"
    else:
        p, q = draw(st.integers(0, 10**6)), draw(st.integers(1, 10**6))
        value, text = Fraction(p, q), f"\\{draw(st.sampled_from(['frac', 'dfrac', 'tfrac']))}{{{p}}}{{{q}}}"
    negative = draw(st.booleans())
    dollar = currency and draw(st.booleans())
    if negative and dollar:
        value, text = -value, draw(st.sampled_from([f"-${text}", f"$-{text}"]))
    elif negative:
        value, text = -value, f"-{text}"
    elif dollar:
        text = f"${text}"
    if negative and value == 0:
        value = Fraction(0)
    return value, text


_NUMBER_CONTEXTS = [
    "{}", "{}.", "{},", "{} dollars", "{} dollars.", "{}%", "#### {}", "The answer is {}.", "The answer is {}, so done.",
    "Answer: {}", "answer = {}", "\\boxed{{{}}}", "The final answer is \\boxed{{{}}}.", "So she has {} apples left.",
    "She had 3 and got 4 more, so {}.", "The answer is {} for 3 days.",
]


@fast(400)
@given(number=numbers_as_text(), context=st.sampled_from(_NUMBER_CONTEXTS))
# Regressions: a fraction or mixed number followed by sentence punctuation used to lose its
# denominator ("3/4." read as 3, "2 1/2." and "2 1/2," as 2).
@example(number=(Fraction(3, 4), "3/4"), context="The answer is {}.")
@example(number=(Fraction(5, 2), "2 1/2"), context="The answer is {}.")
@example(number=(Fraction(5, 2), "2 1/2"), context="The answer is {}, so done.")
@example(number=(Fraction(-7, 3), "-7/3"), context="{}.")
def test_extract_number_reads_every_documented_shape_exactly(number, context):
    value, text = number
    written = context.format(text)
    assert extract_number(written) == value, written
    assert is_correct("numeric", written, text)


@fast(200)
@given(noise=noisy_text, number=numbers_as_text(), suffix=st.sampled_from(["", ".", " dollars.", ",", " apples", "!"]))
def test_the_number_after_the_last_marker_wins_whatever_precedes_it(noise, number, suffix):
    value, text = number
    answer = f"{noise}\n#### {text}{suffix}"
    assert extract_number(answer) == value
    assert check_numeric(answer, text)


@fast(300)
@given(a=numbers_as_text(), b=numbers_as_text())
def test_numbers_far_apart_are_not_equal(a, b):
    (x, x_text), (y, y_text) = a, b
    assume(abs(x - y) >= Fraction(1, 1000))
    assert not numbers_close(x, y)
    assert not is_correct("numeric", x_text, y_text)
    assert not is_correct("numeric", f"The answer is {x_text}.", y_text)


@fast(200)
@given(n=st.integers(-(10**12), 10**12), step=st.sampled_from([1, -1, 2, 10]))
def test_an_off_by_one_integer_is_wrong_however_large(n, step):
    assert not is_correct("numeric", f"{n + step:,}", str(n))
    assert is_correct("numeric", f"{n:,}", str(n))


_fractions = st.fractions(max_denominator=10**6).filter(lambda f: abs(f) < 10**12)


@fast(200)
@given(a=_fractions, b=_fractions)
def test_numbers_close_is_reflexive_and_symmetric(a, b):
    assert numbers_close(a, a)
    assert numbers_close(a, b) == numbers_close(b, a)


# Random answers and golds for the verifiers: text with numbers, letters, yes/no words and
# answer markers spliced in.
_VERIFIER_PIECES = [
    "The answer is ", "Answer: ", "####", "\\boxed{", "}", "option is ", "(C)", "C)", "B. ", "[D]", "yes", "No",
    "true", "FALSE", "$", "-", "/", ",", ".", "%", "\n", "**", "`", "\\frac{1}{2}", "x+1", "=", " ", "\u2212", "\u00bd",
]
verifier_text = st.lists(
    st.one_of(st.text(max_size=12), st.sampled_from(_VERIFIER_PIECES), st.integers(-(10**6), 10**6).map(str)),
    max_size=8,
).map("".join)


def outcome(kind: str, answer, gold: str):
    """is_correct's verdict, or "bad gold" when it refuses the gold (its documented ValueError)."""
    try:
        return is_correct(kind, answer, gold)
    except ValueError:
        return "bad gold"


def _check_verdicts(kind, answer, gold):
    verdict = outcome(kind, answer, gold)
    assert verdict is True or verdict is False or verdict == "bad gold"
    # Whether the gold is readable does not depend on the answer.
    if answer.strip():
        assert (outcome(kind, "The answer is (C) yes 42", gold) == "bad gold") == (verdict == "bad gold")
    if kind == "exact":
        assert verdict != "bad gold"  # any text is an exact gold
    if verdict != "bad gold" and answer.strip():
        # The registered checker itself returns a real bool, not something truthy.
        assert type(VERIFIERS[kind](answer, gold)) is bool
    # A missing or blank answer is incorrect, whatever the gold.
    assert is_correct(kind, None, gold) is False
    assert is_correct(kind, " \n\t", gold) is False


@fast(300)
@given(kind=st.sampled_from(PURE_KINDS), answer=verifier_text, gold=verifier_text)
@example(kind="numeric", answer="", gold="")
@example(kind="choice", answer="(C)", gold="")
@example(kind="choice", answer="A", gold="\u00bd")
def test_verifiers_return_a_bool_or_refuse_the_gold(kind, answer, gold):
    _check_verdicts(kind, answer, gold)


@fast(25)
@given(answer=verifier_text, gold=verifier_text)
def test_math_verifier_returns_a_bool_or_refuses_the_gold(answer, gold):
    _check_verdicts("math", answer, gold)


@fast(50)
@given(kind=st.text(max_size=20), answer=verifier_text)
def test_unknown_kinds_raise_value_error(kind, answer):
    assume(kind not in VERIFIERS)
    with pytest.raises(ValueError, match="verify.kind=.* is unknown"):
        is_correct(kind, answer, "1")


@fast(200)
@given(kind=st.sampled_from(["numeric", "yesno"]), gold=st.one_of(verifier_text, noisy_text))
def test_numeric_and_yesno_accept_any_readable_gold_as_its_own_answer(kind, gold):
    # Answer and gold go through the same reader, so a gold that is read at all matches itself.
    assume(gold.strip())
    assert outcome(kind, gold, gold) in (True, "bad gold")


@fast(300)
@given(gold=st.one_of(verifier_text, noisy_text))
def test_exact_accepts_its_gold_exactly_when_something_is_left_after_normalizing(gold):
    assert is_correct("exact", gold, gold) == bool(normalize_text(gold))


@fast(300)
@given(x=verifier_text, y=verifier_text)
def test_numeric_yesno_and_exact_are_symmetric(x, y):
    # numeric and yesno: symmetric whenever both sides are readable as a gold.
    for kind in ("numeric", "yesno", "exact"):
        forward, backward = outcome(kind, x, y), outcome(kind, y, x)
        if "bad gold" not in (forward, backward) and x.strip() and y.strip():
            assert forward == backward, kind


# ---- choice --------------------------------------------------------------------------------------

_letters = st.sampled_from("ABCDE")
# Option text: starts with a digit (so it cannot itself be read as a letter) and holds no marker.
_option_text = st.from_regex(r"\A[0-9][0-9a-z ,%]{0,14}\Z").map(str.strip).filter(
    lambda t: not any(word in t for word in ("answer", "option", "choice"))
    # normalize_text drops articles, so "0 a" is "0" while "0a" stays "0a": not the same text either way.
    and not any(word in ("a", "an", "the") for word in t.split())
)
_LETTER_ONLY_GOLDS = ["{L}", "({L})", "{L})", "{L}.", "{L}:", " {L} ", "( {L} )"]
_OPTION_GOLDS = ["{L}) {T}", "{L}){T}", "({L}) {T}", "({L}){T}", "{L}. {T}", "{L}: {T}"]
_LETTER_ANSWERS = [
    "{L}", "({L})", "{L})", "[{L}]", "{L}.", "{l}", "({l})", "{L}) whatever", "({L}) whatever", "{L}. whatever",
    "The answer is ({L}).", "Answer: {L}", "#### {L}", "\\boxed{{{L}}}", "The correct option is ({L})",
    "**{L}**", "I think B) looks tempting, but the answer is {L}.",
]


@fast(300)
@given(
    letter=_letters, other=_letters, text=_option_text, with_text=st.booleans(),
    gold_shape=st.data(), answer_shape=st.sampled_from(_LETTER_ANSWERS),
)
def test_choice_letters_decide(letter, other, text, with_text, gold_shape, answer_shape):
    shapes = _OPTION_GOLDS if with_text else _LETTER_ONLY_GOLDS
    gold = gold_shape.draw(st.sampled_from(shapes)).format(L=letter, T=text)
    # The gold, written the ways the checker documents, is its own answer.
    assert is_correct("choice", gold, gold), gold
    answer = answer_shape.format(L=letter, l=letter.lower())
    assert is_correct("choice", answer, gold), (answer, gold)
    if other != letter:
        wrong = answer_shape.format(L=other, l=other.lower())
        assert not is_correct("choice", wrong, gold), (wrong, gold)
        # With option text after it, the letter still decides.
        assert not is_correct("choice", f"{other}) {text}", gold)


@fast(200)
@given(letter=_letters, text=_option_text, shape=st.sampled_from(_OPTION_GOLDS), form=st.sampled_from(
    ["{T}", "{T}.", "{U}", "The answer is {T}.", "Answer: {T}", "**{T}**", "{S}"]
))
def test_choice_option_text_alone_matches_a_gold_with_text_only(letter, text, shape, form):
    answer = form.format(T=text, U=text.upper(), S=text.replace(" ", ""))
    assert is_correct("choice", answer, shape.format(L=letter, T=text)), answer
    # A letter-only gold cannot judge option text.
    assert not is_correct("choice", answer, letter)


# ---- yesno ----------------------------------------------------------------------------------------

_YES, _NO = ["yes", "true"], ["no", "false"]


@st.composite
def yesno_text(draw, polarity: bool) -> str:
    word = draw(st.sampled_from(_YES if polarity else _NO))
    word = draw(st.sampled_from([word, word.upper(), word.title()]))
    contrary = draw(st.sampled_from(_NO if polarity else _YES))
    shape = draw(st.sampled_from(
        ["{}", "{}.", "{}!", "**{}**", "({})", "{}, because {}", "{}, it is not {}.", "Answer: {}", "The answer is {}."]
    ))
    # The first decisive word is the verdict: a contrary word after it ("No, it is not true.") is not.
    return shape.format(word, "it is so" if "because" in shape else contrary)


@fast(300)
@given(polarity=st.booleans(), gold=st.data(), answer=st.data(), prose=verifier_text)
def test_yesno_matches_same_polarity_and_rejects_the_opposite(polarity, gold, answer, prose):
    gold_text = gold.draw(yesno_text(polarity))
    same, opposite = answer.draw(yesno_text(polarity)), answer.draw(yesno_text(not polarity))
    assert is_correct("yesno", gold_text, gold_text)
    assert is_correct("yesno", same, gold_text) and check_yesno(gold_text, same)
    assert not is_correct("yesno", opposite, gold_text)
    # Reasoning before an answer marker does not decide.
    assert is_correct("yesno", f"{prose}\nAnswer: {same}", gold_text)
    assert not is_correct("yesno", f"{prose}\nAnswer: {opposite}", gold_text)


# ---- exact ----------------------------------------------------------------------------------------

_words = st.from_regex(r"\A[A-Za-z0-9]+( [A-Za-z0-9]+){0,3}\Z")


@fast(150)
@given(gold=_words, other=_words, shape=st.sampled_from(["{}", "{}.", "({})", "\"{}\"", "The {}", "  {}  !", "{}?"]))
def test_exact_ignores_case_surrounding_punctuation_and_articles(gold, other, shape):
    assume(normalize_text(gold))
    for variant in (gold, gold.upper(), gold.lower()):
        assert is_correct("exact", shape.format(variant), gold)
    if normalize_text(other) != normalize_text(gold):
        assert not is_correct("exact", shape.format(other), gold)


# ---- math -----------------------------------------------------------------------------------------


@fast(60)
@given(a=numbers_as_text(currency=False), b=numbers_as_text(currency=False))
def test_math_compares_plain_numbers_like_numeric(a, b):
    (x, x_text), (y, y_text) = a, b
    assert is_correct("math", x_text, x_text)
    assert is_correct("math", x_text, y_text) == numbers_close(x, y)


@fast(20)
@given(
    n=st.integers(1, 50), m=st.integers(1, 50),
    shape=st.sampled_from(["x+{}", "{}x", "\\sqrt{{{}}}", "x^{{{}}}", "{}\\pi", "\\frac{{x}}{{{}}}"]),
)
def test_math_expressions_match_themselves_and_not_others(n, m, shape):
    gold = shape.format(n)
    assert is_correct("math", gold, gold)
    assert is_correct("math", f"The answer is ${gold}$", gold)
    if n != m:
        assert not is_correct("math", shape.format(m), gold)


# ================================================================================================
# Pair miner
# ================================================================================================

PROBLEMS = {qid: Problem(qid, f"Question {qid}?", f"gold rationale {qid}", f"gold {qid}") for qid in ("q1", "q2", "q3")}
# A small alphabet, with whitespace variants, so duplicates (exact and after stripping) occur.
_COMPLETIONS = ["a", "b", "c", "d", " a", "a\n", "b  ", "\nc", "e"]


def _generation(qid, index, completion, valid, correct) -> Generation:
    return Generation(
        question_id=qid, sample_index=index, prompt=f"prompt {qid} {index}", completion=completion,
        rationale="r" if valid else None, answer="x" if valid else None, gold=PROBLEMS[qid].answer,
        finish_reason="stop" if valid else "length", valid=valid,
        correct=valid and correct, num_tokens=1,
    )


@st.composite
def generations(draw) -> list[Generation]:
    """Samples of up to three questions with random flags, unique sample indices per question
    (not necessarily contiguous), all interleaved in a random order."""
    samples = []
    for qid in draw(st.lists(st.sampled_from(sorted(PROBLEMS)), unique=True, max_size=3)):
        indices = draw(st.lists(st.integers(0, 200), unique=True, max_size=14))
        for index in indices:
            samples.append(_generation(
                qid, index, draw(st.sampled_from(_COMPLETIONS)), draw(st.booleans()), draw(st.booleans())
            ))
    return draw(st.permutations(samples))


def _by_question(pairs):
    grouped = defaultdict(list)
    for pair in pairs:
        grouped[pair.question_id].append(pair)
    return dict(grouped)


def _first_unique(samples, want_correct: bool) -> list[Generation]:
    """Reference: the first sample (by sample index) of each distinct stripped completion on a side."""
    seen, out = set(), []
    for s in sorted(samples, key=lambda s: s.sample_index):
        if s.valid and s.correct == want_correct and s.completion.strip() not in seen:
            seen.add(s.completion.strip())
            out.append(s)
    return out


@fast(200)
@given(samples=generations(), seed=st.randoms(use_true_random=False))
def test_mined_pairs_keep_the_invariants(samples, seed):
    pairs = mine_pairs(samples, PROBLEMS)
    index = {(s.question_id, s.sample_index): s for s in samples}
    by_question = _by_question(pairs)

    for pair in pairs:
        chosen = index[(pair.question_id, pair.chosen_sample_index)]
        rejected = index[(pair.question_id, pair.rejected_sample_index)]
        # Chosen: a valid correct sample of this question; rejected: a valid incorrect one.
        assert chosen.valid and chosen.correct and pair.chosen == chosen.completion
        assert rejected.valid and not rejected.correct and pair.rejected == rejected.completion
        assert pair.prompt == chosen.prompt
        problem = PROBLEMS[pair.question_id]
        assert (pair.gold_rationale, pair.gold_answer) == (problem.rationale, problem.answer)

    for qid, group in by_question.items():
        chosen_idx = [p.chosen_sample_index for p in group]
        rejected_idx = [p.rejected_sample_index for p in group]
        # No sample used twice, on either side or across sides.
        assert len(set(chosen_idx + rejected_idx)) == 2 * len(group)
        # No completion (stripped) twice on one side.
        assert len({p.chosen.strip() for p in group}) == len(group)
        assert len({p.rejected.strip() for p in group}) == len(group)
        # Paired in sample order.
        assert chosen_idx == sorted(chosen_idx) and rejected_idx == sorted(rejected_idx)

    questions = list(dict.fromkeys(s.question_id for s in samples))
    for qid in questions:
        group = by_question.get(qid, [])
        mine = [s for s in samples if s.question_id == qid]
        correct, incorrect = _first_unique(mine, True), _first_unique(mine, False)
        # One pair per unique correct / unique incorrect, whatever is left over discarded: the
        # first k distinct responses of each side, in sample order.
        k = min(len(correct), len(incorrect))
        assert len(group) == k
        assert [p.chosen_sample_index for p in group] == [s.sample_index for s in correct[:k]]
        assert [p.rejected_sample_index for p in group] == [s.sample_index for s in incorrect[:k]]
        assert mine_question(mine, PROBLEMS[qid]) == group

    # Questions come out grouped, in order of first appearance.
    out_order = list(dict.fromkeys(p.question_id for p in pairs))
    assert out_order == [q for q in questions if q in by_question]
    assert [p.question_id for p in pairs] == [q for q in out_order for _ in by_question[q]]

    # Input order does not change any question's pairs.
    shuffled = list(samples)
    seed.shuffle(shuffled)
    assert _by_question(mine_pairs(shuffled, PROBLEMS)) == by_question


@fast(200)
@given(samples=generations())
def test_unique_sides_partition_the_valid_samples(samples):
    for qid in {s.question_id for s in samples}:
        mine = [s for s in samples if s.question_id == qid]
        correct, incorrect = unique_sides(mine)
        for side, want in ((correct, True), (incorrect, False)):
            assert all(s.valid and s.correct == want for s in side)
            assert [s.sample_index for s in side] == sorted(s.sample_index for s in side)
            keys = [s.completion.strip() for s in side]
            assert len(set(keys)) == len(keys)
            # Nothing lost: every distinct valid response of the side is represented.
            assert set(keys) == {s.completion.strip() for s in mine if s.valid and s.correct == want}


# Realistic labels: completions judged exactly as a round judges them (parse, then verify), so that
# one response text always gets one label, as it does in the pipeline.
_RATIONALES = ["Add 2 and 3.", "2 + 3 = 5.", " Add 2 and 3. ", "Subtract.", "", "### User:\nhi"]
_ANSWERS = ["5", "6", " 5 ", "5.", "five", "", "5\nmore text"]
_SEPARATORS = ["\n\n### Answer:\n", "\n### Answer: ", "\n### Answer:\n\n", " ### Answer:\n", "\n"]


@st.composite
def judged_generations(draw) -> list[Generation]:
    fmt = get_format("tinycot")
    problem = Problem("q", "What is 2 + 3?", "2 + 3 = 5.", "5")
    n = draw(st.integers(0, 16))
    samples = []
    for index in draw(st.permutations(range(n))):
        text = draw(st.sampled_from(_RATIONALES)) + draw(st.sampled_from(_SEPARATORS)) + draw(st.sampled_from(_ANSWERS))
        text = draw(st.sampled_from(["", " ", "\n"])) + text + draw(st.sampled_from(["", "\n", "  "]))
        finish = draw(st.sampled_from(["stop", "stop", "length"]))
        samples.append(judge(problem, fmt.prompt(problem.question), index, Completion(text, finish, 3), fmt, "numeric"))
    return samples


@fast(150)
@given(samples=judged_generations())
def test_judged_samples_never_pair_a_response_with_itself(samples):
    problems = {"q": Problem("q", "What is 2 + 3?", "2 + 3 = 5.", "5")}
    pairs = mine_pairs(samples, problems)
    correct, incorrect = unique_sides(samples)
    # One text never gets both labels, so the sides are disjoint and chosen != rejected.
    assert not {s.completion.strip() for s in correct} & {s.completion.strip() for s in incorrect}
    assert len(pairs) == min(len(correct), len(incorrect))
    fmt = get_format("tinycot")
    for pair in pairs:
        assert pair.chosen.strip() != pair.rejected.strip()
        chosen, rejected = fmt.parse(pair.chosen), fmt.parse(pair.rejected)
        assert chosen.valid and rejected.valid
        assert is_correct("numeric", chosen.answer, "5") and not is_correct("numeric", rejected.answer, "5")
    # Truncated samples are on neither side.
    used = {p.chosen_sample_index for p in pairs} | {p.rejected_sample_index for p in pairs}
    assert not used & {s.sample_index for s in samples if s.finish_reason == "length"}
