"""A training job for `accelerate launch` (tests/test_train.py): trains the tiny model of test_train with
NEFTune on, a resumable state every 2 steps in OUT/state.pt, and saves the final weights to OUT/final.pt."""
import logging
import os
import sys
from pathlib import Path

import torch

logging.basicConfig(level=logging.INFO)
sys.path.insert(0, str(Path(__file__).parent))
from test_train import ITEMS, tiny_model
from rationale_loop.config.schema import TrainConfig
from rationale_loop.models.model import train_tokenizer
from rationale_loop.training.objectives import SupervisedObjective
from rationale_loop.training.train import train

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
tok = train_tokenizer([i.prompt + i.response for i in ITEMS] * 5, vocab_size=290)
model = tiny_model(tok)
cfg = TrainConfig(lr=1e-2, epochs=12, batch_size=4, micro_batch_size=2, warmup_ratio=0.1, max_length=256, save_every=2, neftune_alpha=5.0, optimizer="adamw")
result = train(model, tok, ITEMS * 2, SupervisedObjective(), cfg, seed=0, desc="ddp", state_path=out / "state.pt")
if int(os.environ.get("RANK", "0")) == 0:
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "final.pt")
    print("steps", result.steps, "mean loss", result.mean_loss)
# Tear the gloo process group down before the interpreter does: left to exit, its threads are destroyed
# while still joinable and the process can abort ("terminate called without an active exception").
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
