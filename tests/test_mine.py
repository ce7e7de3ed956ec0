"""Pair mining on hand-built samples: duplicates, invalid and truncated samples, uneven sides."""

from rationale_loop.judging.mine import mine_pairs
from rationale_loop.run.records import Generation, Problem

PROBLEMS = {
    "q1": Problem("q1", "Q1?", "gold 1", "5"),
    "q2": Problem("q2", "Q2?", "gold 2", "9"),
    "q3": Problem("q3", "Q3?", "gold 3", "1"),
}


def sample(qid, index, completion, *, correct, valid=True, finish="stop"):
    return Generation(
        question_id=qid, sample_index=index, prompt=f"prompt {qid}", completion=completion,
        rationale="r" if valid else None, answer="a" if valid else None, gold=PROBLEMS[qid].answer,
        finish_reason=finish, valid=valid, correct=correct and valid, num_tokens=len(completion.split()),
    )


def test_unique_correct_and_incorrect_are_paired_one_to_one_in_sample_order():
    generations = [
        sample("q1", 0, "right A", correct=True),
        sample("q1", 1, "wrong X", correct=False),
        sample("q1", 2, "right A", correct=True),  # duplicate of sample 0: not a second chosen
        sample("q1", 3, "wrong X", correct=False),  # duplicate of sample 1: not a second rejected
        sample("q1", 4, "right B", correct=True),
        sample("q1", 5, "wrong Y", correct=False),
        sample("q1", 6, "wrong Z", correct=False),  # extra incorrect: discarded
        sample("q1", 7, "cut off", correct=False, valid=False, finish="length"),  # truncated: on no side
    ]
    pairs = mine_pairs(generations, PROBLEMS)
    assert [(p.chosen, p.rejected) for p in pairs] == [("right A", "wrong X"), ("right B", "wrong Y")]
    assert [(p.chosen_sample_index, p.rejected_sample_index) for p in pairs] == [(0, 1), (4, 5)]
    assert all(p.gold_rationale == "gold 1" and p.gold_answer == "5" for p in pairs)


def test_no_response_appears_twice_and_questions_without_both_sides_give_nothing():
    generations = [
        sample("q2", 1, "right", correct=True),
        sample("q2", 0, "wrong", correct=False),  # out of order on purpose: mining sorts by index
        sample("q2", 2, "right too", correct=True),  # extra correct: discarded
        sample("q3", 0, "only right", correct=True),  # no incorrect sample: no pair
        sample("q3", 1, "no answer", correct=False, valid=False),  # invalid is not incorrect
    ]
    pairs = mine_pairs(generations, PROBLEMS)
    assert [(p.question_id, p.chosen, p.rejected) for p in pairs] == [("q2", "right", "wrong")]
    used = [(p.question_id, p.chosen_sample_index) for p in pairs] + [(p.question_id, p.rejected_sample_index) for p in pairs]
    assert len(used) == len(set(used))


def test_truncated_samples_never_become_rejected():
    generations = [
        sample("q1", 0, "right", correct=True),
        sample("q1", 1, "looks wrong but was cut", correct=False, valid=False, finish="length"),
    ]
    assert mine_pairs(generations, PROBLEMS) == []
