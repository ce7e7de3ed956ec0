import re

from rationale_loop.config.schema import TaskConfig
from rationale_loop.data.tasks import load_task
from rationale_loop.data.tiny_arith import ArithSpec, make_splits


def test_splits_are_seeded_disjoint_and_of_the_requested_sizes():
    sizes = {"sft": 300, "pool": 50, "eval": 50}
    first, second = make_splits(7, sizes), make_splits(7, sizes)
    assert first == second
    assert {k: len(v) for k, v in first.items()} == sizes
    questions = [p.question for split in first.values() for p in split]
    assert len(questions) == len(set(questions))
    assert make_splits(8, sizes) != first


def test_gold_rationales_do_the_arithmetic_they_claim():
    spec = ArithSpec()
    for problem in make_splits(3, {"all": 500}, spec)["all"]:
        steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)\.", problem.rationale)
        assert steps, problem
        value = None
        for left, op, right, result in steps:
            left, right, result = int(left), int(right), int(result)
            assert value is None or left == value, problem  # each step starts from the last result
            assert result == {"+": left + right, "-": left - right, "*": left * right}[op], problem
            assert 0 <= result <= spec.max_value
            value = result
        assert str(value) == problem.answer


def test_load_task_checks_the_splits_are_disjoint():
    splits = load_task(TaskConfig(sft_size=100, pool_size=20, eval_size=20))
    assert len(splits.sft) == 100 and len(splits.pool) == 20 and len(splits.eval) == 20


def test_running_answers_list_the_count_after_every_event():
    for problem in make_splits(5, {"all": 200}, ArithSpec(answer="running"))["all"]:
        results = re.findall(r"= (\d+)\.", problem.rationale)
        assert problem.answer == ", ".join(results), problem
        assert problem.question.endswith("after each event?")
