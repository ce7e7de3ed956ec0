"""File-backed tasks over the public data: the splits are disjoint and GSM8K test is never trained on."""

import pytest

from rationale_loop.data.tasks import load_task
from rationale_loop.errors import DataError

from test_config import compose_config


@pytest.mark.parametrize("task", ["gsm8k", "svamp", "aqua"])
def test_public_tasks_load_disjoint_splits(task, shared_data):
    cfg = compose_config(f"task={task}", f"task.data_dir={shared_data}")
    splits = load_task(cfg.task)
    assert splits.sft and splits.pool and splits.eval
    assert all(p.rationale for p in splits.sft), "SFT needs gold rationales"
    sft_ids, pool_ids = {p.id for p in splits.sft}, {p.id for p in splits.pool}
    assert not sft_ids & pool_ids and not {p.id for p in splits.eval} & (sft_ids | pool_ids)


def test_gsm8k_splits_follow_the_files(shared_data):
    splits = load_task(compose_config("task=gsm8k", f"task.data_dir={shared_data}").task)
    assert len(splits.sft) == 5000 and len(splits.pool) == 7473 - 5000 and len(splits.eval) == 1319
    assert all(p.id.startswith("gsm8k/train/") for p in splits.sft + splits.pool)
    assert all(p.id.startswith("gsm8k/test/") for p in splits.eval)


def test_a_test_file_never_feeds_a_training_split(shared_data):
    cfg = compose_config("task=gsm8k", f"task.data_dir={shared_data}", "task.files.pool.path=gsm8k/test.jsonl")
    with pytest.raises(ValueError, match="task.files.pool.path"):
        load_task(cfg.task)


def test_missing_file_names_the_key(tmp_path):
    cfg = compose_config("task=gsm8k", f"task.data_dir={tmp_path}")
    with pytest.raises(DataError, match="task.files.sft.path"):
        load_task(cfg.task)
