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
