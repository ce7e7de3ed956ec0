"""File-backed tasks over the public data: the splits are disjoint and GSM8K test is never trained on; a task
read from a dataset id (here a folder laid out like the hub's openai/gsm8k) gives the files' problems."""

import pytest

from rationale_loop.preflight.config_checks import validate
from rationale_loop.data.tasks import load_task
from rationale_loop.config.errors import DataError

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
    with pytest.raises(ValueError, match="task.files.pool: .*test.jsonl is a test set"):
        load_task(cfg.task)


def _hub_layout(shared_data, root):
    """openai/gsm8k as the hub lays it out: a README whose `configs` name parquet files per split."""
    import datasets

    for split in ("train", "test"):
        rows = datasets.load_dataset("json", data_files=str(shared_data / "gsm8k" / f"{split}.jsonl"), split="train")
        rows.to_parquet(str(root / "main" / f"{split}-00000-of-00001.parquet"))
    (root / "README.md").write_text("---\nconfigs:\n- config_name: main\n  data_files:\n"
                                    "  - split: train\n    path: main/train-*.parquet\n  - split: test\n    path: main/test-*.parquet\n---\n")
    return root


def test_a_task_from_a_dataset_id_gives_the_files_problems(shared_data, tmp_path):
    (tmp_path / "gsm8k" / "main").mkdir(parents=True)
    hub = _hub_layout(shared_data, tmp_path / "gsm8k")
    from_files = load_task(compose_config("task=gsm8k", f"task.data_dir={shared_data}").task)
    cfg = compose_config("task=gsm8k", f"task.source={hub}", "task.data_dir=/nowhere")
    validate(cfg)
    from_hub = load_task(cfg.task)
    for split in ("sft", "pool", "eval"):
        assert getattr(from_hub, split) == getattr(from_files, split), split
    with pytest.raises(DataError, match=r"task.files.pool: .*\[test\] is a test set"):
        load_task(compose_config("task=gsm8k", f"task.source={hub}", "task.files.pool.split=test").task)


def test_missing_file_names_the_key(tmp_path):
    cfg = compose_config("task=gsm8k", f"task.data_dir={tmp_path}")
    with pytest.raises(DataError, match="task.files.sft.path"):
        load_task(cfg.task)
