"""A rank-stage training job run both by plain `python` (one process) and by `accelerate launch` (two), for
tests/test_train.py: cpo_simpo with its shared-prompt forward (the model the objective sees is DDP's
wrapper under the launcher) on 8 pairs in batches of 4. The main process writes the final weights to
OUT/final.pt and the logged loss history to OUT/history.json."""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train import tiny_model
from rationale_loop.config.schema import ObjectiveConfig, TrainConfig
from rationale_loop.data.formats import TINYCOT
from rationale_loop.models.model import train_tokenizer
from rationale_loop.training.objectives import RankItem, build_objective
from rationale_loop.training.train import train

ITEMS = []
for k in range(8):
    chosen = TINYCOT.response(f"{k} + 2 = {k + 2}.", str(k + 2))
    ITEMS.append(RankItem(TINYCOT.prompt(f"Ann has {k} pens. She finds 2 more."), chosen, (TINYCOT.response(f"{k} + 2 = {k + 3}.", str(k + 3)),), chosen))

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
tok = train_tokenizer([i.prompt + i.chosen for i in ITEMS] * 5, vocab_size=290)
model = tiny_model(tok)
objective = build_objective(ObjectiveConfig(name="cpo_simpo", share_prompt=True))
cfg = TrainConfig(lr=1e-2, epochs=2, batch_size=4, micro_batch_size=1, warmup_ratio=0.0, max_length=256, save_every=0, optimizer="adamw")
result = train(model, tok, ITEMS, objective, cfg, seed=0, desc="rank")
if int(os.environ.get("RANK", "0")) == 0:
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "final.pt")
    (out / "history.json").write_text(json.dumps(result.history))
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
