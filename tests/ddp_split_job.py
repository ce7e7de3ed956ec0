"""A training job run both by plain `python` (one process) and by `accelerate launch` (two), for
tests/test_train.py: 13 distinct SFT items in batches of 4, so the last step's batch has one item and
one of two processes is dealt nothing. Each process writes the item indices it trained on, step by
step, to OUT/shares_<rank>.json; the main process writes the final weights to OUT/final.pt and the
logged loss history to OUT/history.json."""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train import tiny_model
from rationale_loop.config.schema import TrainConfig
from rationale_loop.data.formats import TINYCOT
from rationale_loop.models.model import train_tokenizer
from rationale_loop.training.objectives import SFTItem, SupervisedObjective
from rationale_loop.training.train import train

ITEMS = [SFTItem(TINYCOT.prompt(f"Ann has {k} pens. She finds {k + 2} more."), TINYCOT.response(f"{k} + {k + 2} = {2 * k + 2}.", str(2 * k + 2)))
         for k in range(13)]


class RecordingObjective(SupervisedObjective):
    """Plain SFT that also notes which items each micro-batch holds: the item index rides along."""

    def __init__(self):
        super().__init__()
        self.steps: list[list[int]] = [[]]

    def encode(self, item, encoder):
        return (ITEMS.index(item), super().encode(item, encoder))

    def collate(self, encoded, encoder):
        self.steps[-1].extend(index for index, _ in encoded)
        return super().collate([e for _, e in encoded], encoder)


out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rank = int(os.environ.get("RANK", "0"))
tok = train_tokenizer([i.prompt + i.response for i in ITEMS] * 5, vocab_size=290)
model = tiny_model(tok)
objective = RecordingObjective()
cfg = TrainConfig(lr=1e-2, epochs=1, batch_size=4, micro_batch_size=1, warmup_ratio=0.0, max_length=256, save_every=0, optimizer="adamw")
# One optimizer step per accumulate call: split the record at each step through the log callback.
import rationale_loop.training.train as train_module

original = train_module.accumulate_gradients


def accumulate_and_mark(*args, **kwargs):
    # train() collates a step's micro-batches just before it accumulates them: close the step here.
    weight = args[5] if len(args) > 5 else kwargs.get("weight", 1.0)
    if weight == 0:
        objective.steps[-1] = []  # the stand-in item a process dealt nothing forwards with weight 0
    objective.steps.append([])
    return original(*args, **kwargs)


train_module.accumulate_gradients = accumulate_and_mark
result = train(model, tok, ITEMS, objective, cfg, seed=0, desc="split")
(out / f"shares_{rank}.json").write_text(json.dumps(objective.steps[:-1]))
if rank == 0:
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "final.pt")
    (out / "history.json").write_text(json.dumps(result.history))
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
