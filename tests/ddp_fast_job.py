"""A training job run by plain `python` and under `accelerate launch` (tests/test_token_loss.py): SFT on
test_train's items, or the shared-prompt rank stage, with the TrainConfig settings given as JSON (packing,
loss_chunk_tokens). Usage: ddp_fast_job.py OUT sft|rank '{"packing": true}'. The main process writes the
final weights to OUT/final.pt and the logged losses to OUT/history.json."""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train import ITEMS, tiny_model
from rationale_loop.config.schema import ObjectiveConfig, TrainConfig
from rationale_loop.data.formats import TINYCOT
from rationale_loop.models.model import train_tokenizer
from rationale_loop.training.objectives import RankItem, SupervisedObjective, build_objective
from rationale_loop.training.train import train

out, stage, settings = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
tok = train_tokenizer([i.prompt + i.response for i in ITEMS] * 5, vocab_size=290)
model = tiny_model(tok)
if stage == "sft":
    items, objective = ITEMS * 3, SupervisedObjective()
else:
    items = [RankItem(i.prompt, i.response, (TINYCOT.response("2 + 2 = 5.", "5"),), i.response) for i in ITEMS * 2]
    objective = build_objective(ObjectiveConfig(name="cpo_simpo", share_prompt=True))
cfg = TrainConfig(lr=1e-2, epochs=1, batch_size=4, micro_batch_size=1, warmup_ratio=0.0, max_length=256, save_every=0,
                  optimizer="adamw", **settings)
result = train(model, tok, items, objective, cfg, seed=0, desc=stage)
if int(os.environ.get("RANK", "0")) == 0:
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "final.pt")
    (out / "history.json").write_text(json.dumps(result.history))
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
