"""STaR's setting in the embedded task: gold rationales for the SFT set only; the pool and the held-out set
carry answers, and nothing the rounds train on or prompt with comes from a pool rationale."""

import re
import shutil

import pytest

from rationale_loop.config.schema import ArithConfig, TaskConfig
from rationale_loop.data.tasks import TaskSplits, load_task
from rationale_loop.run.records import read_jsonl

from test_config import compose_config
from test_end_to_end import SMALL

SENTINEL = "POOL-GOLD-RATIONALE-7Q"


def test_tiny_arith_pool_and_eval_carry_answers_only():
    splits = load_task(TaskConfig(sft_size=50, pool_size=40, eval_size=30))
    assert all(p.rationale and p.answer for p in splits.sft)
    assert all(p.rationale == "" and p.answer for p in splits.pool + splits.eval)


def test_the_pool_can_be_harder_than_the_sft_set():
    cfg = TaskConfig(sft_size=60, pool_size=40, eval_size=40,
                     arith=ArithConfig(min_steps=1, max_steps=1), pool_arith=ArithConfig(min_steps=3, max_steps=3))
    splits = load_task(cfg)
    assert all(len(re.findall(r" = ", p.rationale)) == 1 for p in splits.sft)
    # a story is its opening sentence, one sentence per step, then the question
    assert all(p.question.count(".") == 1 + 3 for p in splits.pool + splits.eval)


def _with_pool_sentinel(real_load_task):
    def load(cfg):
        splits = real_load_task(cfg)
        from dataclasses import replace

        return TaskSplits(splits.sft, [replace(p, rationale=SENTINEL) for p in splits.pool], splits.eval)

    return load


@pytest.mark.parametrize(
    "overrides, reads_it",
    [
        (["objective=memphis", "objective.anchor=chosen"], False),
        (["objective=memphis", "objective.anchor=replay"], False),
        (["objective=star", "objective.rationalize=true"], False),
        (["objective=cpo_simpo"], False),
        (["objective=sft"], False),
        # the control: the first Memphis card's anchor is the pool's gold rationale, so the spy must see it
        (["objective=memphis", "objective.anchor=gold"], True),
    ],
    ids=["memphis-chosen", "memphis-replay", "star-rationalize", "cpo_simpo", "sft", "control-gold-anchor"],
)
@pytest.mark.slow
def test_no_round_trains_on_or_prompts_with_a_pool_rationale(two_round_run, tmp_path, monkeypatch, overrides, reads_it):
    """Pool problems are given a rationale the task would never hand out; a spy on the training phase
    sees every item a round trains on. None holds it, and no prompt sampled in the round does."""
    import rationale_loop.loop as loop
    import rationale_loop.phases.context as context
    import rationale_loop.phases.train as train_phase

    monkeypatch.setattr(context, "load_task", _with_pool_sentinel(context.load_task))
    trained_on = []
    real_train = train_phase.run_training

    def spy(model, tokenizer, items, *args, **kwargs):
        trained_on.extend(repr(item) for item in items)
        return real_train(model, tokenizer, items, *args, **kwargs)

    monkeypatch.setattr(train_phase, "run_training", spy)
    run = tmp_path / "runs" / "spied"
    shutil.copytree(two_round_run / "round_00", run / "round_00")
    cfg = compose_config(*SMALL, "sft.epochs=2", *overrides, "force=true", f"output_root={run.parent}",
                         f"model.cache_dir={two_round_run.parent.parent}/models", "run=spied")
    loop.run_loop(cfg)
    seen = any(SENTINEL in item for item in trained_on)
    assert seen == reads_it, f"{overrides}: a pool rationale {'was not' if reads_it else 'was'} trained on"
    for name in ("generations.jsonl", "rationalizations.jsonl", "sft_generations.jsonl"):
        path = run / "round_01" / name
        if path.exists():
            assert all(SENTINEL not in row["prompt"] for row in read_jsonl(path)), name
