"""On a machine with a CUDA device: generation, evaluation and training run on it (marker gpu; `make
test` leaves these out, `pytest -m gpu` runs them)."""

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_round_generates_evaluates_and_trains_on_the_gpu(tmp_path):
    from rationale_loop.generate import generation_device, make_backend
    from rationale_loop.loop import run_loop

    from test_config import compose_config
    from test_run_safety import QUICK

    assert generation_device() == "cuda"
    cfg = compose_config(*QUICK, "rounds=1", f"output_root={tmp_path}/runs", f"model.cache_dir={tmp_path}/models", "run=gpu")
    rows = run_loop(cfg)
    assert [row["round"] for row in rows] == [0, 1]
    backend = make_backend(cfg.generate, tmp_path / "runs/gpu/round_01/checkpoint", cfg.model.dtype, 8)
    assert backend.model.device.type == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_packing_and_the_chunked_loss_match_the_padded_path_on_the_gpu():
    """The same check as tests/test_token_loss.py, with the model on the GPU."""
    from accelerate import Accelerator

    from rationale_loop.config.schema import TrainConfig
    from rationale_loop.data.encode import Encoder
    from rationale_loop.models.model import train_tokenizer
    from rationale_loop.training.objectives import SupervisedObjective
    from rationale_loop.training.train import accumulate_gradients, cut_micro_batches
    from test_train import ITEMS, tiny_model

    tokenizer = train_tokenizer([i.prompt + i.response for i in ITEMS] * 5, vocab_size=290)
    model, objective, encoder = tiny_model(tokenizer).cuda(), SupervisedObjective(), Encoder(tokenizer, 256)
    encoded = [objective.encode(item, encoder) for item in ITEMS]
    results = []
    for settings in ({}, {"packing": True, "micro_batch_tokens": 10_000, "loss_chunk_tokens": 7}):
        cfg = TrainConfig(micro_batch_size=2, max_length=256, **settings)
        model.zero_grad()
        terms = accumulate_gradients(model, objective, cut_micro_batches(objective, encoded, encoder, cfg), cfg, Accelerator())
        results.append((terms["nll"], [p.grad.clone() for p in model.parameters()]))
    (plain, plain_grads), (fast, fast_grads) = results
    assert fast == pytest.approx(plain, rel=1e-5)
    for a, b in zip(plain_grads, fast_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_ddp_puts_each_process_on_the_gpu_of_its_local_rank(tmp_path):
    import subprocess
    import sys

    job = tmp_path / "job.py"
    job.write_text("from accelerate import Accelerator\nimport torch\na = Accelerator()\n"
                   "print('rank', a.local_process_index, 'device', a.device, 'current', torch.cuda.current_device(), flush=True)\n")
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(job)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 device cuda:0 current 0" in done.stdout and "rank 1 device cuda:1 current 1" in done.stdout
