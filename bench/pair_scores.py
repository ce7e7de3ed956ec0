"""The round's pair diagnostics (training/diagnostics.py: every mined pair scored before and after the round's
training), timed on a real round's pairs, against scoring each pair as two padded rows with the head on
every position (how they were scored before 2026-12-07), side by side, and the scores compared.

    .venv/bin/python bench/pair_scores.py --round-dir outputs/runs/RUN/round_01 [--repeats 3]
    # the round's pairs.jsonl, scored with its starting checkpoint (round_00's) under the run's config
    # writes bench/results/pair_scores.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from omegaconf import OmegaConf  # noqa: E402
from training_stages import machine_description  # noqa: E402

from rationale_loop.data.encode import Encoder  # noqa: E402
from rationale_loop.models.model import autocasts_bf16, load_model, load_tokenizer  # noqa: E402
from rationale_loop.phases.context import RunContext  # noqa: E402
from rationale_loop.run.records import JsonlRecords, Pair  # noqa: E402
from rationale_loop.training.diagnostics import pair_scores  # noqa: E402
from rationale_loop.training.losses import sequence_logprobs  # noqa: E402


@torch.no_grad()
def per_pair_scores(model, tokenizer, pairs, max_length, batch_size, reply_end):
    """The former way: each pair's chosen and rejected sequences as two right-padded rows (the prompt read
    twice a pair), the head and log-softmax over every position, batch_size pairs a batch in mined order."""
    encoder = Encoder(tokenizer, max_length, reply_end)
    encoded = [(c, r) for c, r in ((encoder.encode(p.prompt, p.chosen), encoder.encode(p.prompt, p.rejected)) for p in pairs)
               if c is not None and r is not None]
    scored = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        batch = encoder.collate([c for c, _ in chunk] + [r for _, r in chunk])
        sums, counts = sequence_logprobs(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
        scores = (sums / counts.clamp(min=1)).double().tolist()
        scored.extend(zip(scores[: len(chunk)], scores[len(chunk) :]))
    return scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-dir", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fp32", action="store_true", help="without the round's bf16 autocast: the two ways' scores then agree to fp32 rounding")
    parser.add_argument("--out", default=str(ROOT / "bench/results/pair_scores.json"))
    args = parser.parse_args()

    round_dir = Path(args.round_dir)
    cfg = OmegaConf.load(round_dir / "config.yaml")  # the config the round ran with
    checkpoint = round_dir.parent / f"round_{int(round_dir.name.split('_')[1]) - 1:02d}" / "checkpoint"
    pairs = list(JsonlRecords(round_dir / "pairs.jsonl", Pair))
    model, tokenizer = load_model(checkpoint, cfg.model.dtype).eval(), load_tokenizer(checkpoint)
    settings = (cfg.rank.max_length, cfg.rank.micro_batch_size, RunContext(cfg).fmt.reply_end)
    autocast = autocasts_bf16(cfg.rank.mixed_precision, "cpu") and not args.fp32
    ways = {"shared_prompt_head_on_responses": pair_scores, "per_pair_rows_head_everywhere": per_pair_scores}
    runs, scores = {name: [] for name in ways}, {}
    for _ in range(args.repeats):  # interleaved: this machine is shared, and drifts
        for name, way in ways.items():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                start = time.perf_counter()
                scores[name] = way(model, tokenizer, pairs, *settings)
                runs[name].append(time.perf_counter() - start)
    new, old = (scores[name] for name in ways)
    difference = max((abs(a - b) for both in zip(new, old) for a, b in zip(*both)), default=0.0)
    rows = {name: {"seconds": statistics.median(times), "runs": times} for name, times in runs.items()}
    result = {"machine": machine_description(torch.get_num_threads()),
              "settings": {"round": "/".join(round_dir.parts[-2:]), "pairs": len(pairs), "scored": len(new),
                           "max_length": settings[0], "batch_size": settings[1], "bf16_autocast": autocast, "repeats": args.repeats},
              "rows": rows, "speedup": rows["per_pair_rows_head_everywhere"]["seconds"] / rows["shared_prompt_head_on_responses"]["seconds"],
              "largest_score_difference": difference}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, row in rows.items():
        print(f"{name:<34}{row['seconds']:>8.2f} s")
    print(f"{len(pairs)} pairs; speedup {result['speedup']:.2f}x; largest score difference {difference:.2e}; wrote {args.out}")


if __name__ == "__main__":
    main()
