"""The training loop's accounting: token-weighted accumulation and frozen embeddings."""

import pytest
import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from rationale_loop.config.schema import TrainConfig
from rationale_loop.data.formats import TINYCOT
from rationale_loop.data.encode import Encoder
from rationale_loop.models.model import train_tokenizer
from rationale_loop.training.objectives import SFTItem, SupervisedObjective
from rationale_loop.training.train import accumulate_gradients, train

from conftest import cpu_only_env

ITEMS = [
    SFTItem(TINYCOT.prompt("Ann has 3 pens."), TINYCOT.response("3 + 2 = 5.", "5")),
    SFTItem(TINYCOT.prompt("Ben has 12 pens. He finds 7 more. Then it doubles."), TINYCOT.response("12 + 7 = 19. 19 * 2 = 38.", "38")),
    SFTItem(TINYCOT.prompt("Cara has 9 pens."), TINYCOT.response("9 - 1 = 8. 8 * 3 = 24. 24 - 20 = 4.", "4")),
    SFTItem(TINYCOT.prompt("Dev?"), TINYCOT.response("1.", "1")),
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([i.prompt + i.response for i in ITEMS] * 5, vocab_size=290)


def tiny_model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config)


def gradient(tokenizer, micro_batch_size):
    model, objective, encoder = tiny_model(tokenizer), SupervisedObjective(), Encoder(tokenizer, 256)
    encoded = [objective.encode(item, encoder) for item in ITEMS]
    micro = [objective.collate(encoded[i : i + micro_batch_size], encoder) for i in range(0, len(encoded), micro_batch_size)]
    terms = accumulate_gradients(model, objective, micro, TrainConfig(), Accelerator(cpu=True))
    return terms["nll"], {n: p.grad.clone() for n, p in model.named_parameters()}


def test_accumulated_loss_is_weighted_by_tokens_not_by_micro_batch(tokenizer):
    # Examples of very different lengths: averaging per micro-batch would weigh the short one's tokens
    # far more when it sits alone. Token weighting makes 4 x 1, 2 x 2 and 1 x 4 identical.
    whole_loss, whole = gradient(tokenizer, 4)
    for size in (1, 2):
        loss, grads = gradient(tokenizer, size)
        assert loss == pytest.approx(whole_loss, rel=1e-5)
        for name in whole:
            torch.testing.assert_close(grads[name], whole[name], atol=1e-6, rtol=1e-4)


def test_frozen_embeddings_stay_put_while_the_rest_trains(tokenizer):
    model = tiny_model(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(lr=1e-2, batch_size=2, micro_batch_size=1, warmup_ratio=0.0, max_length=256, freeze_embeddings=True)
    result = train(model, tokenizer, ITEMS, SupervisedObjective(), cfg, seed=0, desc="test")
    assert result.steps == 2
    # train() moves the model to its device (a GPU where there is one): compare on the CPU.
    after = {n: p.detach().cpu() for n, p in model.named_parameters()}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])


@pytest.mark.slow
def test_two_process_ddp_training_killed_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    """accelerate launch --multi_gpu runs 2 processes over gloo on CPU (no GPU visible to them, also on a
    machine that has one: conftest.cpu_only_env). Each keeps its own random state
    (NEFTune noise), saved by the main process for all; both must resume from the same step."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from rationale_loop.run.faults import KILL_AT

    job = Path(__file__).with_name("ddp_train_job.py")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(job)]
    env = cpu_only_env()
    env.pop(KILL_AT, None)

    def run(out, kill_at=None):
        return subprocess.run([*launch, str(out)], capture_output=True, text=True, check=False,
                              env={**env, KILL_AT: kill_at} if kill_at else env)

    straight = run(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run(tmp_path / "killed", kill_at="train_step:5")
    assert killed.returncode != 0 and (tmp_path / "killed" / "state.pt").exists()
    resumed = run(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("resuming from step 4 of 24") == 2, "both processes resume from the saved step"
    a, b = (torch.load(tmp_path / name / "final.pt") for name in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.stdout.split("mean loss")[1] == resumed.stdout.split("mean loss")[1]


def _run_with_one_and_two_processes(job_name: str, out) -> None:
    """Run a job script by plain python into OUT/one and under `accelerate launch` with 2 DDP processes
    over gloo into OUT/two; both must succeed. Both on the CPU (no GPU visible: conftest.cpu_only_env), so
    that the weights they reach compare on one device's arithmetic."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    job = Path(__file__).with_name(job_name)
    env = cpu_only_env()
    one = subprocess.run([sys.executable, str(job), str(out / "one")], capture_output=True, text=True, env=env, check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(job), str(out / "two")],
                         capture_output=True, text=True, env=env, check=False)
    assert two.returncode == 0, two.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_split_every_batch_and_reach_the_one_process_weights(tmp_path):
    """Under DDP each process trains on its own share of every optimizer step's batch (together the
    whole batch, never an item twice), and the all-reduced gradient is the one-process gradient, so
    both runs end with the same weights and log the same losses. The last step's batch has a single
    item: the process dealt nothing still joins the all-reduce, adding nothing."""
    import json

    from rationale_loop.training.train import _schedule_order

    _run_with_one_and_two_processes("ddp_split_job.py", tmp_path)

    batches = _schedule_order(13, 1, 4, seed=0)
    assert [len(b) for b in batches] == [4, 4, 4, 1]
    assert [sorted(step) for step in json.loads((tmp_path / "one" / "shares_0.json").read_text())] == [sorted(b) for b in batches]
    shares = [json.loads((tmp_path / "two" / f"shares_{rank}.json").read_text()) for rank in (0, 1)]
    for step, batch in enumerate(batches):
        first, second = shares[0][step], shares[1][step]
        assert not set(first) & set(second) and sorted(first + second) == sorted(batch), f"step {step + 1}"
        assert abs(len(first) - len(second)) <= 1
    assert shares[1][-1] == [], "the second process is dealt nothing of the one-item batch"

    a, b = (torch.load(tmp_path / name / "final.pt") for name in ("one", "two"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    losses = [[r["loss"] for r in json.loads((tmp_path / name / "history.json").read_text())] for name in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5), "the logged loss is the whole batch's, not one process's share"


@pytest.mark.slow
def test_the_shared_prompt_rank_stage_under_two_processes_reaches_the_one_process_weights(tmp_path):
    """The rank stage's shared-prompt forward under DDP (the objective is handed DDP's wrapper, not the
    model): two processes end with the one-process weights and log the same losses."""
    import json

    _run_with_one_and_two_processes("ddp_rank_job.py", tmp_path)
    a, b = (torch.load(tmp_path / name / "final.pt") for name in ("one", "two"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    losses = [[r["loss"] for r in json.loads((tmp_path / name / "history.json").read_text())] for name in ("one", "two")]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_gradient_checkpointing_gives_the_same_weights_and_bf16_autocast_trains(tokenizer):
    def trained(**settings):
        model = tiny_model(tokenizer)
        cfg = TrainConfig(lr=1e-2, epochs=3, batch_size=2, micro_batch_size=1, max_length=256, save_every=0, **settings)
        result = train(model, tokenizer, ITEMS, SupervisedObjective(), cfg, seed=0, desc="sft")
        return model.state_dict(), result

    plain, _ = trained()
    checkpointed, _ = trained(gradient_checkpointing=True)
    assert max((plain[k] - checkpointed[k]).abs().max().item() for k in plain) < 1e-6
    # Packed rows recompute their segmented attention in the backward pass (packing.py): the same weights.
    packed, _ = trained(gradient_checkpointing=True, packing=True, micro_batch_tokens=10_000)
    assert max((plain[k] - packed[k]).abs().max().item() for k in plain) < 1e-5
    mixed, result = trained(mixed_precision="bf16")
    assert all(t.dtype == torch.float32 for t in mixed.values()), "autocast leaves the weights in model.dtype"
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert max((plain[k] - mixed[k]).abs().max().item() for k in plain) > 0, "bf16 autocast changed the arithmetic"


@pytest.mark.parametrize("native", [True, False])
def test_mixed_precision_auto_autocasts_only_where_the_cpu_has_native_bf16(tokenizer, monkeypatch, caplog, native):
    """auto: bf16 autocast on a CPU with AVX512-BF16 or AMX, none elsewhere (emulated bf16 matmuls are
    hundreds of times slower than fp32); the stage's log says which, and bf16 or no are taken as given."""
    import logging

    from rationale_loop.models import model as model_module

    monkeypatch.setattr(model_module, "cpu_has_fast_bf16", lambda: native)
    assert model_module.autocasts_bf16("auto", "cpu") is native
    assert model_module.autocasts_bf16("bf16", "cpu") and not model_module.autocasts_bf16("no", "cpu")

    def trained(setting):
        model = tiny_model(tokenizer)
        cfg = TrainConfig(lr=1e-2, steps=2, batch_size=2, micro_batch_size=2, max_length=256, save_every=0, mixed_precision=setting)
        train(model, tokenizer, ITEMS, SupervisedObjective(), cfg, seed=0, desc="sft")
        return model.state_dict()

    with caplog.at_level(logging.INFO, logger="rationale_loop.training.train"):
        auto = trained("auto")
    assert ("bf16 autocast" if native else "no autocast") in caplog.text
    same = trained("bf16" if native else "no")
    assert all(torch.equal(auto[k], same[k]) for k in auto), "auto trains exactly as the setting it decided on"
