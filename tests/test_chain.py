"""The chain check (rationale_loop/judging/chain/): every arithmetic step of a rationale read and checked
exactly, wrong steps found, unreadable ones counted and never failed, and no input able to run code or
hang it."""

from __future__ import annotations

import json
import random
import re
import time
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rationale_loop.judging.chain import MAX_CHARS, MAX_STEPS, check_chain, format_value
from rationale_loop.data.formats import TINYCOT
from rationale_loop.data.public import load_gsm8k
from rationale_loop.data.tiny_arith import ArithSpec, make_problem
from rationale_loop.generate.base import Completion
from rationale_loop.run.records import Problem
from rationale_loop.judging.rollouts import judge
from rationale_loop.judging.stats import SampleStats


@pytest.mark.parametrize("text, checked, wrong, unparsed", [
    ("Natalia sold 48/2 = 24 clips in May.", 1, 0, 0),
    ("48/2 = <<48/2=24>>24 clips", 2, 0, 0),  # the calculator mark is a step of its own
    ("48/2 = <<48/2=25>>24 clips", 2, 1, 0),
    ("3 + 4 = 7 * 2 = 14", 2, 0, 0),  # a chain, read as the writer means it
    ("3 + 4 = 8", 1, 1, 0),
    ("10/3 = 3.33", 1, 0, 0),  # rounded, and written as rounded
    ("10/3 = 3", 1, 1, 0),  # an integer claims exactness
    ("2/3 = 0.66", 1, 1, 0),  # truncated, not rounded
    ("$0.2 x 50 = $10", 1, 0, 0),
    ("1,200 × 3 = 3,600", 1, 0, 0),
    ("5/25*100 = 20%", 1, 0, 0),
    ("20% of 50 = 10", 1, 0, 0),
    ("2 1/2 * 2 = 5", 1, 0, 0),
    ("(3 + 4) * 2 = 14", 1, 0, 0),
    ("5 apples + 3 apples = 8 apples", 1, 0, 0),
    ("\\frac{3}{4} * 8 = 6", 1, 0, 0),
    ("12 ÷ 4 − 1 = 2", 1, 0, 0),
    ("**5 + 3 = 8**", 1, 0, 0),  # markdown bold is not a power
    ("2**3 = 8", 1, 0, 0),
    ("1 hour = 60 minutes", 0, 0, 1),  # a unit conversion, not arithmetic
    ("3 times 4 + 2 = 14", 0, 0, 1),  # "times" carries arithmetic this reader does not read
    ("half of 10 = 5", 0, 0, 1),
    ("2x - 3 = 7", 0, 0, 1),  # a variable
    ("100 = 5A", 0, 0, 1),
    ("50 + 20% = 60", 0, 0, 1),  # 50.2 or 60?
    ("It ends at 3:30 + 1 = 4:30", 0, 0, 1),
    ("17/3 = 5 and 2/3 loads", 0, 0, 1),
    ("x = 5", 0, 0, 1),
    ("Total = 5 + 3 = 8", 1, 0, 1),
])
def test_steps_are_read_and_checked(text, checked, wrong, unparsed):
    report = check_chain(text)
    assert (report.checked, report.wrong, report.unparsed) == (checked, wrong, unparsed), report


def test_a_wrong_step_is_located_in_the_text():
    text = "He has 5 + 3 = 9 apples. Then 8 * 2 = 16."
    report = check_chain(text)
    assert report.wrong == 1
    step = report.wrong_steps[0]
    assert text[step.start:step.end] == "5 + 3 = 9" and (step.left, step.right) == ("8", "9")


# --------------------------------------------------------------------------------------------
# GSM8K's gold solutions
# --------------------------------------------------------------------------------------------

def _perturbed(solution: str, rng: random.Random) -> str | None:
    """The solution with one digit of one step's visible result changed (the number right after a
    calculator mark), the marks then removed as the loader removes them; None when it has no step."""
    steps = list(re.finditer(r"<<[^<>]*>>\$?(\d[\d,]*(?:\.\d+)?)", solution))
    if not steps:
        return None
    step = rng.choice(steps)
    value = step.group(1)
    k = rng.choice([i for i, c in enumerate(value) if c.isdigit()])
    changed = value[:k] + str((int(value[k]) + rng.randint(1, 9)) % 10) + value[k + 1:]
    if re.fullmatch(r"0[\d,]+(\.\d+)?|[0.,]*", changed):
        return None  # a leading zero ("021") is not a number a solution writes
    text = solution[:step.start(1)] + changed + solution[step.end(1):]
    return re.sub(r"<<[^<>]*>>", "", text)


@pytest.mark.slow
def test_gsm8k_gold_solutions_pass_and_perturbed_ones_fail(shared_data: Path):
    path = shared_data / "gsm8k" / "train.jsonl"
    problems = load_gsm8k(path)
    reports = [check_chain(p.rationale) for p in problems]
    accepted = sum(not r.wrong for r in reports) / len(reports)
    checked, unparsed = sum(r.checked for r in reports), sum(r.unparsed for r in reports)
    print(f"GSM8K train gold: {accepted:.4f} of {len(reports)} accepted; {checked} steps checked, {unparsed} unparsed")
    assert accepted >= 0.99
    assert checked >= 3 * len(reports)  # the check reads most steps, not a few
    # with the calculator marks kept, each mark is checked too
    raw = [json.loads(line)["answer"].split("####")[0] for line in path.read_text().splitlines() if line.strip()]
    raw_reports = [check_chain(text) for text in raw]
    assert sum(not r.wrong for r in raw_reports) / len(raw) >= 0.99
    assert sum(r.checked for r in raw_reports) > checked
    rng = random.Random(0)
    perturbed = [text for text in (_perturbed(solution, rng) for solution in raw) if text is not None]
    rejected = sum(bool(check_chain(text).wrong) for text in perturbed) / len(perturbed)
    print(f"GSM8K train, one step's result changed: {rejected:.4f} of {len(perturbed)} rejected")
    assert len(perturbed) > 0.9 * len(raw) and rejected >= 0.95


# --------------------------------------------------------------------------------------------
# Generated chains
# --------------------------------------------------------------------------------------------

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
_SPELLING = {"+": ["+"], "-": ["-", "\u2212"], "*": ["*", "x", "\u00d7"], "/": ["/", "\u00f7"]}


@st.composite
def expressions(draw, depth=3):
    """(text, exact value) of a random expression with at least one operator, every operation in
    parentheses, spelt in the ways rationales spell them."""
    def build(level):
        if level == 0 or draw(st.booleans()):
            n = draw(st.integers(1, 999))
            return str(n), Fraction(n)
        op = draw(st.sampled_from(sorted(_OPS)))
        (left, a), (right, b) = build(level - 1), build(level - 1)
        if op == "/" and b == 0:
            op = "+"
        space = draw(st.sampled_from(["", " "]))
        return f"({left}{space}{draw(st.sampled_from(_SPELLING[op]))}{space}{right})", _OPS[op](a, b)
    op = draw(st.sampled_from(sorted(_OPS)))
    (left, a), (right, b) = build(depth - 1), build(depth - 1)
    if op == "/" and b == 0:
        op = "+"
    return f"{left} {draw(st.sampled_from(_SPELLING[op]))} {right}", _OPS[op](a, b)


def _written(value: Fraction) -> str:
    text = format_value(value)
    # a repeating decimal, rounded to 6 places exactly (a float would lose digits of a large value)
    if "/" not in text:
        return text
    scaled = round(abs(value) * 10**6)
    return f"{'-' if value < 0 else ''}{scaled // 10**6}.{scaled % 10**6:06d}"


@settings(max_examples=300, deadline=None)
@given(expressions(), st.sampled_from(["", "$"]), st.sampled_from(["", " apples"]))
def test_a_correct_generated_step_passes(expression, currency, unit):
    text, value = expression
    report = check_chain(f"So {text} = {currency}{_written(value)}{unit} in all.")
    assert (report.checked, report.wrong, report.unparsed) == (1, 0, 0), (text, value)


@settings(max_examples=300, deadline=None)
@given(expressions(), st.integers(1, 50), st.booleans())
def test_a_perturbed_generated_step_fails(expression, delta, down):
    text, value = expression
    wrong = value + (-delta if down else delta)
    report = check_chain(f"So {text} = {_written(wrong)}.")
    assert (report.checked, report.wrong) == (1, 1), (text, value, wrong)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("+-*"), st.integers(1, 99)), min_size=1, max_size=8),
       st.integers(1, 99), st.data())
def test_a_running_chain_passes_and_one_wrong_step_is_found(operations, start, data):
    steps, value = [], start
    for op, n in operations:
        result = _OPS[op](value, n)
        steps.append([value, op, n, result])
        value = result
    good = " ".join(f"{a} {op} {b} = {c}." for a, op, b, c in steps)
    assert (check_chain(good).checked, check_chain(good).wrong) == (len(steps), 0)
    bad_index = data.draw(st.integers(0, len(steps) - 1))
    steps[bad_index][3] += data.draw(st.sampled_from([-2, -1, 1, 10]))
    bad = " ".join(f"{a} {op} {b} = {c}." for a, op, b, c in steps)
    report = check_chain(bad)
    assert report.wrong == 1 and report.wrong_steps[0].text == "{} {} {} = {}".format(*steps[bad_index])


# --------------------------------------------------------------------------------------------
# Hostile input
# --------------------------------------------------------------------------------------------

def _hostile(marker: Path) -> list[str]:
    code = f"__import__('os').system('touch {marker}') = 1 + 1 = 2; eval('1+1') = 2. "
    return [
        code * (100_000 // len(code)),
        "1e999999 = 1e999999 and 1e999999 * 2 = 3. " * 2000,
        "9" * 100_000 + " = 1",
        "(" * 50_000 + "1" + ")" * 49_999 + " = 1",
        "1+" * 50_000 + "1 = 2",
        "2^2^2^2^2^2^2^2 = 4 " * 4000,
        "= " * 50_000,
        "<<" + "1*" * 40_000 + "1=1>>",
        ("9" * 30 + " * ") * 3000 + "1 = 1",
        "1/3 of " * 10_000 + "= 1",
    ]


@pytest.mark.slow
def test_hostile_rationales_are_parsed_never_run_and_bounded(tmp_path):
    marker = tmp_path / "ran"
    for text in _hostile(marker):
        assert len(text) >= 50_000
        began = time.perf_counter()
        report = check_chain(text)
        seconds = time.perf_counter() - began
        # A hang, not a slow or busy machine (about 0.3 s each alone on a 2-core CPU): the bound on the
        # work is MAX_CHARS, checked exactly below.
        assert seconds < 10.0, (text[:40], seconds)
        assert report.checked <= MAX_STEPS and report.checked + report.unparsed >= 1
        longer = text * (MAX_CHARS // len(text) + 2)
        whole, head = check_chain(longer), check_chain(longer[:MAX_CHARS])
        # what lies past MAX_CHARS is never read, only its "=" counted as unparsed steps
        assert (whole.checked, whole.wrong, whole.wrong_steps) == (head.checked, head.wrong, head.wrong_steps)
        assert whole.unparsed == head.unparsed + longer[MAX_CHARS:].count("=")
    assert not marker.exists()
    assert check_chain("1e999999 = 1").unparsed == 1


# --------------------------------------------------------------------------------------------
# tiny_arith with answer=final: the count matches an independent recomputation
# --------------------------------------------------------------------------------------------

_STEP_RE = re.compile(r"(\d+) ([-+*]) (\d+) = (-?\d+)\.")


def _faulty_samples(count: int, seed: int) -> list[tuple[Problem, str, bool, bool]]:
    """(problem, completion, answer right, some step wrong) for gold tiny_arith chains (answer=final),
    some with a fault put in: a result miscopied then the chain going on from the true value, an
    operand miscopied under the true result, the last result wrong under the right answer, a wrong
    answer under a right chain, or a wrong result carried to the end. The truth comes from the
    generator's own chain and from the injected fault, not from the checker."""
    rng = random.Random(seed)
    spec = ArithSpec(answer="final")
    samples = []
    for index in range(count):
        question, rationale, answer = make_problem(rng, spec)
        steps = [list(m.groups()) for m in _STEP_RE.finditer(rationale)]
        assert len(steps) >= 2 and steps[-1][3] == answer
        fault = rng.choice(["none", "miscopied_result", "miscopied_operand", "last_result", "wrong_answer", "carried"])
        k = rng.randrange(len(steps) - 1)
        written_answer = answer
        if fault == "miscopied_result":
            steps[k][3] = str(int(steps[k][3]) + rng.choice([-1, 1, 2]))
        elif fault == "miscopied_operand":
            steps[k][2] = str(int(steps[k][2]) + 1)
        elif fault == "last_result":
            steps[-1][3] = str(int(steps[-1][3]) + 1)
        elif fault == "wrong_answer":
            written_answer = str(int(answer) + 1)
        elif fault == "carried":  # a wrong result, carried to the end: the answer is wrong too
            steps[k][3] = str(int(steps[k][3]) + 1)
            for j in range(k + 1, len(steps)):
                steps[j][0] = steps[j - 1][3]
                a, op, b = int(steps[j][0]), steps[j][1], int(steps[j][2])
                steps[j][3] = str(a + b if op == "+" else a - b if op == "-" else a * b)
            written_answer = steps[-1][3]
        text = " ".join(f"{a} {op} {b} = {c}." for a, op, b, c in steps)
        injected_wrong = fault in ("miscopied_result", "miscopied_operand", "last_result", "carried")
        problem = Problem(f"tiny_arith/test/{index:05d}", question, "", answer)
        samples.append((problem, TINYCOT.response(text, written_answer), written_answer == answer, injected_wrong))
    return samples


def _recomputed_wrong(completion: str) -> int:
    """Wrong steps by plain integer arithmetic on the task's own step format."""
    wrong = 0
    for a, op, b, c in _STEP_RE.findall(completion):
        a, b = int(a), int(b)
        wrong += (a + b if op == "+" else a - b if op == "-" else a * b) != int(c)
    return wrong


@pytest.mark.parametrize("mode", ["count", "check"])
def test_tiny_arith_right_answer_wrong_chain_matches_a_recomputation(mode):
    samples = _faulty_samples(600, seed=7)
    stats = SampleStats(n=1)
    judged = []
    for index, (problem, completion, answer_right, injected_wrong) in enumerate(samples):
        assert (_recomputed_wrong(completion) > 0) == injected_wrong  # the two truths agree
        g = judge(problem, TINYCOT.prompt(problem.question), 0, Completion(completion, "stop", 20), TINYCOT, "numeric", mode)
        judged.append(g)
        stats.add_question([g])
    result = stats.result()
    expected = sum(answer_right and _recomputed_wrong(c) > 0 for _, c, answer_right, _ in samples)
    assert 50 < expected == result["right_answer_wrong_chain"]
    assert result["steps_wrong"] == sum(_recomputed_wrong(c) for _, c, _, _ in samples)
    assert result["steps_checked"] == sum(len(_STEP_RE.findall(c)) for _, c, _, _ in samples)
    assert result["steps_unparsed"] == 0
    answer_only = sum(answer_right for _, _, answer_right, _ in samples)
    if mode == "count":  # counted, not judged: the answer alone decides
        assert result["correct"] == answer_only
    else:
        assert result["correct"] == answer_only - expected


def test_the_default_records_no_steps_and_judges_by_the_answer():
    problem, completion, _, _ = next(s for s in _faulty_samples(50, seed=3) if s[2] and s[3])
    g = judge(problem, "", 0, Completion(completion, "stop", 20), TINYCOT, "numeric")
    assert g.correct and g.chain is None
    stats = SampleStats(n=1)
    stats.add_question([g])
    assert "steps_checked" not in stats.result()


def test_inspect_wrong_chain_lists_right_answers_with_a_wrong_step_marked(tmp_path):
    from rich.console import Console

    from rationale_loop.run.records import write_jsonl_atomic
    from rationale_loop.views.report import InspectFilter, inspect_round

    samples = _faulty_samples(40, seed=11)
    out = tmp_path / "run" / "round_01"
    out.mkdir(parents=True)
    judged = [judge(p, TINYCOT.prompt(p.question), 0, Completion(c, "stop", 20), TINYCOT, "numeric", "count") for p, c, _, _ in samples]
    write_jsonl_atomic(out / "generations.jsonl", judged)
    expected = [g for g, (_, c, right, _) in zip(judged, samples) if right and _recomputed_wrong(c)]
    console = Console(record=True, width=250, force_terminal=False)
    inspect_round(tmp_path / "run", 1, InspectFilter(wrong_chain=True, samples_per_page=100), console=console)
    text = console.export_text()
    assert f"samples with a wrong step 1-{len(expected)} of {len(expected)}" in text
    for g in expected:
        assert g.question_id in text
        for _, _, step, left, _ in g.chain["wrong_steps"]:
            assert f"{step} (left side is {left})" in text
    write_jsonl_atomic(out / "generations.jsonl", [judge(p, "", 0, Completion(c, "stop", 20), TINYCOT, "numeric") for p, c, _, _ in samples])
    with pytest.raises(SystemExit, match="verify.chain=count"):
        inspect_round(tmp_path / "run", 1, InspectFilter(wrong_chain=True), console=console)


@pytest.mark.slow
def test_a_round_with_verify_chain_check_records_the_steps_everywhere(tmp_path):
    """A real (small) round: the samples carry their steps, a wrong step makes a right answer
    incorrect, and the counts reach stats.json, metrics.json, rounds.jsonl and TensorBoard."""
    from rationale_loop.loop import run_loop
    from rationale_loop.run.rundir import read_rounds
    from rationale_loop.run.records import JsonlRecords, Generation, read_json
    from test_config import compose_config
    from test_end_to_end import SMALL

    overrides = [*SMALL, "rounds=1", "sft.epochs=2", "verify.chain=check", "rank.epochs=1",
                 f"output_root={tmp_path}/runs", f"model.cache_dir={tmp_path}/models", "run=chain"]
    run_loop(compose_config(*overrides), overrides=overrides)
    run = tmp_path / "runs" / "chain"
    samples = list(JsonlRecords(run / "round_01" / "generations.jsonl", Generation))
    assert all(g.chain is not None for g in samples if g.valid)
    well_formed = 0
    for g in samples:
        if g.valid:
            assert g.correct == (g.chain["answer_correct"] and not g.chain["wrong"])
            if re.fullmatch(r"(?:\d+ [-+*] \d+ = -?\d+\.\s*)+", g.rationale):  # the task's own step format
                well_formed += 1
                assert g.chain["wrong"] == _recomputed_wrong(g.rationale) and g.chain["unparsed"] == 0
    assert well_formed > 0
    stats = read_json(run / "round_01" / "stats.json")
    assert stats["steps_checked"] == sum(g.chain["checked"] for g in samples if g.chain)
    assert stats["right_answer_wrong_chain"] == sum(bool(g.chain and g.chain["answer_correct"] and g.chain["wrong"]) for g in samples)
    row = read_rounds(run)[1]
    assert row["right_answer_wrong_chain"] == stats["right_answer_wrong_chain"]
    assert row["eval_answer_accuracy"] >= row["eval_chain_accuracy"] == row["eval_accuracy"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard" / "rounds"))
    events.Reload()
    assert "round/right_answer_wrong_chain" in events.Tags()["scalars"]
