"""Which parts of the loop pull their weight: arms of the embedded default at equal compute.

Every arm starts from the same SFT checkpoint (the embedded default's round 0, trained once here) and
runs the same number of rounds with the same number of optimizer steps per round (`--steps`, the embedded
default's rank.steps), each step forwarding the same number of sequences (`--sequences`, the embedded
default's rank.batch_size): a STaR or SFT example is 1 sequence, a ranked pair or a SPIN pair 2 (the CE
anchor on the chosen response is read off the chosen row, not forwarded again), so their batches hold
2x as many single examples as pairs. Training tokens actually forwarded are recorded per round
(`train_tokens`) so the equality can be checked. (Sequences, not tokens: a pair arm forwards each pair's
prompt once when objective.share_prompt is on, its default; the scores are the same either way.)

Arms (overrides of the embedded default, whose objective is memphis_detached: memphis with detach_rejected):
  memphis           rank + CE anchor (the recipe's objective)
  anchor_only       w = 0: the anchor alone
  rank_only         the rank term alone (anchor weight 0)
  star              CE on the model's own correct responses
  star_sft_replay   star, with the SFT set's worked examples beside them
  star_rationalize  star, plus unsolved questions retried with the answer as a hint
  cpo_simpo         TRL's CPO-SimPO
  spin              SPIN against the round's starting model, on the SFT set
  sft_continued     no self-training: SFT continued on the SFT set
  adalite, mixce_0.75, neftune_10   the recipe's own pieces on the memphis objective
  memphis_w1, memphis_w0.2, memphis_lr1e-4   memphis with a lighter rank term or a lower rank LR (only when named)
  memphis_divergent, memphis_step, memphis_detach, memphis_floor   memphis at w = 5 with one remedy for the
                    rank term lowering the chosen responses: rank_scope=divergent or step, detach_rejected,
                    chosen_floor=50 (DPOP's lambda); memphis_remedies: divergent + detach + floor together
  rpo               Iterative RPO: DPO on the mined pairs against the round's start + the chosen NLL per token
  final_answer, final_chain   star on tiny_arith answering the final count only (task.arith.answer=final,
                    verifier numeric): the answer alone decides, or a wrong arithmetic step makes a sample
                    incorrect (verify.chain=check). Both count the steps (the final_answer arm with
                    verify.chain=count), so each reports how many right-answer-wrong-chain samples it
                    judged; compare them with --metric answer_accuracy (held-out accuracy by the answer
                    alone, the same rule in both arms) or chain_accuracy (answer and steps right).
                    Only when named; their SFT is their own (the final-count task's SFT set), trained once.

Round 1 samples the same pool from the same checkpoint with the same seed in every arm, so it is
sampled once per seed and shared (found on disk, so separate processes, one per seed, share it too). Held-out accuracy is over the same eval questions for every arm;
the standard error of an arm's mean combines the spread over seeds and the binomial error of the
question sample: sqrt(var_seeds / k + p (1 - p) / n).

    .venv/bin/python bench/learning.py [--seeds 0 1 2] [--rounds 3] [--steps 60] [--sequences 32] [--threads 2] [--arms memphis star ...]
    .venv/bin/python bench/learning.py --collect [--merge] --work DIR    # gather runs made by several processes (--merge: and the recorded ones)

Writes bench/results/learning.json and bench/results/learning.png, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from rationale_loop.cli import CONFIG_DIR  # noqa: E402
from rationale_loop.config.schema import register_configs  # noqa: E402
from rationale_loop.preflight.config_checks import pair_objectives  # noqa: E402
from rationale_loop.loop import run_loop  # noqa: E402
from rationale_loop.run.rundir import read_rounds, round_dir  # noqa: E402

MEMPHIS = ["objective=memphis"]  # with the embedded default's anchor on the chosen completion
ARMS: dict[str, list[str]] = {
    "memphis": MEMPHIS,
    "anchor_only": [*MEMPHIS, "objective.rank_weight=0"],
    "rank_only": [*MEMPHIS, "objective.anchor_weight=0"],
    "star": ["objective=star"],  # the embedded default
    "star_sft_replay": ["objective=star", "objective.sft_replay=true"],
    "star_rationalize": ["objective=star", "objective.rationalize=true"],
    "cpo_simpo": ["objective=cpo_simpo"],
    "spin": ["objective=spin"],
    "sft_continued": ["objective=sft"],
    "adalite": [*MEMPHIS, "rank.optimizer=adalite"],
    "mixce_0.75": [*MEMPHIS, "rank.mixce_eta=0.75"],
    "neftune_10": [*MEMPHIS, "rank.neftune_alpha=10"],
    # Where the rank term starts to hurt (not run by default): memphis with a lighter rank term, or at a
    # rank LR as far below the SFT LR as the recipe's (5e-7 against 1e-5, i.e. 2e-3 / 20 = 1e-4).
    "memphis_w1": [*MEMPHIS, "objective.rank_weight=1"],
    "memphis_w0.2": [*MEMPHIS, "objective.rank_weight=0.2"],
    "memphis_lr1e-4": [*MEMPHIS, "rank.lr=1e-4"],
    # Remedies for the rank term lowering the chosen responses (docs/learning.md), each alone on memphis at
    # w = 5, all three together, and Iterative RPO. The floor's lambda is DPOP's published 50.
    "memphis_divergent": [*MEMPHIS, "objective.rank_scope=divergent"],
    "memphis_step": [*MEMPHIS, "objective.rank_scope=step"],
    "memphis_detach": [*MEMPHIS, "objective.detach_rejected=true"],
    "memphis_floor": [*MEMPHIS, "objective.chosen_floor=50"],
    "memphis_remedies": [*MEMPHIS, "objective.rank_scope=divergent", "objective.detach_rejected=true", "objective.chosen_floor=50"],
    "rpo": ["objective=rpo"],
}
# The final-count task: the embedded default's task answering the count at the end only, checked as a
# number. A different task, so a different SFT (FINAL_COUNT_SFT); the arms differ only in verify.chain.
FINAL_COUNT = ["task.arith.answer=final", "task.pool_arith.answer=final", "verify=numeric"]
ARMS["final_answer"] = ["objective=star", *FINAL_COUNT, "verify.chain=count"]
ARMS["final_chain"] = ["objective=star", *FINAL_COUNT, "verify.chain=check"]
FINAL_COUNT_SFT = "sft-final"
FINAL_COUNT_ARMS = ("final_answer", "final_chain")
SWEEP = ("memphis_w1", "memphis_w0.2", "memphis_lr1e-4", *FINAL_COUNT_ARMS)
SEQUENCES_PER_ITEM = {"star": 1, "star_sft_replay": 1, "star_rationalize": 1, "sft_continued": 1,  # the pair arms: 2
                      "final_answer": 1, "final_chain": 1}
PHASE_SECONDS = ("generate_seconds", "mine_seconds", "train_phase_seconds", "evaluate_seconds")  # a round's phases, in metrics.json
# arms whose round 1 samples the pool the same way, so that one sample of it serves them all (the
# final-count arms judge theirs differently, so each samples its own)
SAMPLES_ROUND_ONE = {arm for arm in ARMS if arm != "sft_continued" and arm not in FINAL_COUNT_ARMS}


def compose_config(*overrides: str) -> Any:
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose("config", overrides=list(overrides))


def arm_overrides(arm: str, steps: int, sequences_per_step: int) -> list[str]:
    """The arm's own overrides, plus a batch that forwards `sequences_per_step` sequences per step."""
    batch = sequences_per_step // SEQUENCES_PER_ITEM.get(arm, 2)
    return [*ARMS[arm], f"rank.steps={steps}", f"rank.batch_size={batch}", f"rank.micro_batch_size={batch}"]


def sft_finished(run: Path) -> bool:
    return (run / "round_00" / "DONE").exists()


def train_sft(work: Path, name: str, extra: list[str], collect: bool = False) -> Path:
    run = work / name
    if not sft_finished(run):
        if collect:
            raise SystemExit(f"--collect: {run} has no finished SFT; run the bench without --collect first")
        cfg = compose_config(f"output_root={work}", f"model.cache_dir={work}/models", f"run={name}", "rounds=0", *extra)
        run_loop(cfg)
    return run


def round_one_donor(work: Path, seed: int, exclude: Path) -> Path | None:
    """A run of this seed, by any arm that samples round 1, whose round 1 samples are complete (the file
    appears only when the whole pool is sampled)."""
    for arm in sorted(SAMPLES_ROUND_ONE):
        run = work / arm / f"seed{seed}"
        if run != exclude and (round_dir(run, 1) / "generations.jsonl").exists():
            return run
    return None


def share_round_one(donor: Path, run: Path, cfg: Any) -> bool:
    """Start `run`'s round 1 from `donor`'s samples: the same start, pool, sampling and seed give the same
    samples. The round is laid out as an interrupted round with this config, which the loop finishes."""
    source = round_dir(donor, 1) / "generations.jsonl"
    target = round_dir(run, 1)
    if target.exists():
        return False
    target.mkdir(parents=True)
    (target / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    shutil.copyfile(source, target / "generations.jsonl")
    return True


def run_arm(work: Path, sft_run: Path, arm: str, seed: int, rounds: int, steps: int, sequences: int, collect: bool = False) -> dict:
    name = f"{arm}/seed{seed}"
    run = work / name
    cfg = compose_config(f"output_root={work}", f"model.cache_dir={work}/models", f"run={name}", f"rounds={rounds}",
                         f"seed={seed}", f"init_from={sft_run / 'round_00'}", *arm_overrides(arm, steps, sequences))
    if not collect:  # collecting reads the finished run as it is, whatever the code has become since
        donor = round_one_donor(work, seed, exclude=run) if arm in SAMPLES_ROUND_ONE else None
        if donor is not None:
            share_round_one(donor, run, cfg)
        run_loop(cfg)
    rows = read_rounds(run)
    metrics = [json.loads((round_dir(run, r["round"]) / "metrics.json").read_text()) for r in rows]
    return {
        "arm": arm,
        "seed": seed,
        # wall seconds of the rounds' phases as they ran (a shared round 1 has no sampling time of its own)
        "seconds": sum(m.get(key, 0.0) for m in metrics[1:] for key in PHASE_SECONDS),
        "accuracy": [r["eval_accuracy"] for r in rows],
        # verify.chain runs: held-out accuracy by the answer alone, and by answer and steps
        "answer_accuracy": [r.get("eval_answer_accuracy") for r in rows],
        "chain_accuracy": [r.get("eval_chain_accuracy") for r in rows],
        "right_answer_wrong_chain": [m.get("right_answer_wrong_chain") for m in metrics[1:]],
        "eval_questions": rows[0]["eval_questions"],
        "train_tokens": [m.get("train_tokens") for m in metrics[1:]],
        "train_items": [m.get("train_items") for m in metrics[1:]],
        "pairs": [m.get("pairs") for m in metrics[1:]],
        "pairs_ranked_right": [[m.get("pairs_ranked_right_before"), m.get("pairs_ranked_right_after")] for m in metrics[1:]],
        # the mined pairs' mean chosen score s_c under the round's starting and final weights: does the
        # round lower the responses it calls right?
        "chosen_score": [[m.get("chosen_score_before"), m.get("chosen_score_after")] for m in metrics[1:]],
    }


def with_recorded(results: list[dict], recorded: dict | None) -> list[dict]:
    """`results`, plus the recorded runs of the arm/seed pairs they do not hold."""
    if recorded is None:
        return results
    done = {(r["arm"], r["seed"]) for r in results}
    return results + [r for r in recorded["runs"] if (r["arm"], r["seed"]) not in done]


def mean_and_error(accuracies: list[float], questions: int) -> tuple[float, float]:
    mean = statistics.fmean(accuracies)
    seeds = statistics.variance(accuracies) / len(accuracies) if len(accuracies) > 1 else 0.0
    return mean, math.sqrt(seeds + mean * (1 - mean) / questions)


def summarize(results: list[dict], arms: list[str], metric: str = "accuracy") -> dict[str, list[dict[str, float]]]:
    summary = {}
    for arm in arms:
        runs = [r for r in results if r["arm"] == arm and all(v is not None for v in r.get(metric) or [None])]
        if not runs:
            continue
        rounds = min(len(r[metric]) for r in runs)
        summary[arm] = []
        for k in range(rounds):
            mean, error = mean_and_error([r[metric][k] for r in runs], runs[0]["eval_questions"])
            summary[arm].append({"round": k, "mean": mean, "se": error, "seeds": len(runs)})
    return summary


def final_count_summary(results: list[dict]) -> dict[str, dict]:
    """The final-count arms by each rule both apply: the answer alone, and the answer and every step (the
    main summary's `accuracy` is each arm's own verifier's, which differ between them)."""
    return {metric: summarize(results, list(FINAL_COUNT_ARMS), metric) for metric in ("answer_accuracy", "chain_accuracy")}


def plot(summary: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab10").colors
    for index, (arm, rows) in enumerate(summary.items()):
        rounds = [row["round"] for row in rows]
        # tab10 has ten colours: past them, the same colours dashed, so that no two arms look alike
        axes.errorbar([r + 0.02 * index for r in rounds], [row["mean"] for row in rows],
                      yerr=[row["se"] for row in rows], marker="o", capsize=3, label=arm,
                      color=colors[index % len(colors)], linestyle="-" if index < len(colors) else "--",
                      linewidth=2.5 if arm in ("memphis", "sft_continued") else 1.2)
    axes.set_xlabel("round (0 = SFT)")
    axes.set_ylabel("held-out accuracy (mean over seeds, ±1 SE)")
    axes.set_xticks(sorted({row["round"] for rows in summary.values() for row in rows}))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def table(summary: dict[str, list[dict[str, float]]]) -> str:
    rounds = max(len(rows) for rows in summary.values())
    lines = ["| arm | seeds | " + " | ".join("SFT" if k == 0 else f"round {k}" for k in range(rounds)) + " |",
             "|---|---|" + "---|" * rounds]
    for arm, rows in summary.items():
        lines.append(f"| {arm} | {rows[0]['seeds']} | " + " | ".join(f"{row['mean']:.3f} ± {row['se']:.3f}" for row in rows) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=[arm for arm in ARMS if arm not in SWEEP], choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    embedded = compose_config()
    default = embedded.rank
    # the embedded default's step in sequences: its objective trains on pairs (2 sequences each) or single examples
    per_item = 2 if embedded.objective.name in pair_objectives() else 1
    parser.add_argument("--steps", type=int, default=default.steps, help="optimizer steps per round, every arm")
    parser.add_argument("--sequences", type=int, default=default.batch_size * per_item, help="sequences forwarded per step, every arm")
    parser.add_argument("--metric", default="accuracy", choices=["accuracy", "answer_accuracy", "chain_accuracy"],
                        help="held-out accuracy as judged by each arm's verifier (accuracy), by the answer alone, or by "
                             "answer and arithmetic steps (the last two: verify.chain runs, e.g. final_answer and final_chain)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (one process per seed can share the cores)")
    parser.add_argument("--work", default=str(ROOT / "outputs/bench/learning"), help="where the arms' runs go")
    parser.add_argument("--out", default=str(ROOT / "bench/results/learning.json"))
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: gather the finished runs in --work (every round done) into the table, JSON and plot; "
                             "for arms and seeds run by several processes")
    parser.add_argument("--merge", action="store_true",
                        help="keep the runs recorded in --out for the arm/seed pairs this invocation does not produce (runs of an "
                             "earlier machine whose --work is gone), and its SFT-convergence record when --work has no 2x SFT; "
                             "refuses when this SFT's held-out accuracy differs from the recorded one (another checkpoint)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = Path(args.work)

    out = Path(args.out)
    if args.merge and not out.exists():  # else a merge would quietly start over, retraining the 2x SFT too
        raise SystemExit(f"--merge: {out} holds no recorded runs to keep (copy the results file there, or name it with --out)")
    recorded = json.loads(out.read_text()) if args.merge else None

    started = time.perf_counter()
    sft_run = train_sft(work, "sft", [], args.collect)
    accuracy = read_rounds(sft_run)[0]["eval_accuracy"]
    if recorded is not None and recorded["sft_convergence"]["accuracy"] != accuracy:
        raise SystemExit(f"--merge: the SFT in {sft_run} scores {accuracy}, the runs recorded in {out} started from one that "
                         f"scored {recorded['sft_convergence']['accuracy']}: not the same checkpoint, so not comparable")
    if recorded is not None and not sft_finished(work / "sft-2x"):
        convergence = recorded["sft_convergence"]
    else:
        # Trained to convergence? The same SFT twice as long (steps, or epochs), from the same base model.
        sft = compose_config().sft
        key, base = ("sft.steps", sft.steps) if sft.steps > 0 else ("sft.epochs", sft.epochs)
        longer = train_sft(work, "sft-2x", [f"{key}={2 * base}"], args.collect)
        convergence = {"length_key": key, "length": base, "accuracy": accuracy,
                       "length_2x": 2 * base, "accuracy_2x": read_rounds(longer)[0]["eval_accuracy"]}
    key, base = convergence["length_key"], convergence["length"]
    print(f"SFT: {convergence['accuracy']:.3f} with {key}={base:g}, {convergence['accuracy_2x']:.3f} with {key}={2 * base:g}")

    sft_runs = {arm: sft_run for arm in ARMS}
    if any(arm in FINAL_COUNT_ARMS for arm in args.arms):
        # the final-count task's own SFT, its round 0 evaluated with the steps counted like its arms' rounds
        final_sft = train_sft(work, FINAL_COUNT_SFT, [*FINAL_COUNT, "verify.chain=count"], args.collect)
        sft_runs.update({arm: final_sft for arm in FINAL_COUNT_ARMS})

    results: list[dict] = []
    arms = list(args.arms)
    if recorded is not None:  # this invocation's runs first; the recorded ones fill the arm/seed pairs it leaves out
        arms += [arm for arm in ARMS if arm not in arms and any(r["arm"] == arm for r in recorded["runs"])]
        arms.sort(key=list(ARMS).index)
    for seed in args.seeds:
        # the arms that sample round 1 first, so that they share one sample of it
        for arm in sorted(args.arms, key=lambda a: a not in SAMPLES_ROUND_ONE):
            if args.collect and len(read_rounds(work / arm / f"seed{seed}")) < args.rounds + 1:
                continue
            result = run_arm(work, sft_runs[arm], arm, seed, args.rounds, args.steps, args.sequences, args.collect)
            results.append(result)
            print(f"{arm:>18} seed {seed}: " + " ".join(f"{a:.3f}" for a in result["accuracy"]) + f"  ({result['seconds']:.0f} s)", flush=True)
            runs = with_recorded(results, recorded)
            _write(out, args, convergence, runs, summarize(runs, arms, args.metric), time.perf_counter() - started, recorded)

    runs = with_recorded(results, recorded)
    summary = summarize(runs, arms, args.metric)
    print(table(summary))
    comparisons = [(summary, first, second, "") for first, second in
                   (("memphis", "sft_continued"), ("star", "sft_continued"), ("memphis", "star"), ("memphis_w1", "sft_continued"),
                    ("memphis_detach", "star"), ("memphis_detach", "sft_continued"))]
    # the final-count arms judge held-out answers by different rules, so they are compared by each rule in turn
    comparisons += [(by_rule, "final_chain", "final_answer", f", by {rule}") for rule, by_rule in final_count_summary(runs).items()]
    for table_, first, second, rule in comparisons:
        if first in table_ and second in table_:
            a, b = table_[first][-1], table_[second][-1]
            gap, error = a["mean"] - b["mean"], math.sqrt(a["se"] ** 2 + b["se"] ** 2)
            in_errors = f" ({gap / error:.1f} SE)" if error > 0 else ""
            print(f"last round: {first} - {second} = {gap:+.3f} ± {error:.3f}{in_errors}{rule}")
    plot(summary, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def _write(out: Path, args: Any, convergence: dict, results: list[dict], summary: dict, seconds: float,
           recorded: dict | None) -> None:
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    data = {
        "machine": {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform()},
        "command": "bench/learning.py " + " ".join(sys.argv[1:]),
        # the invocations whose recorded runs --merge kept
        "earlier_commands": [*recorded.get("earlier_commands", []), recorded["command"]] if recorded else [],
        "compute": {"steps_per_round": args.steps, "sequences_per_step": args.sequences,
                    "rule": "equal optimizer steps per round, each forwarding the same number of sequences"},
        "rounds": args.rounds,
        "metric": args.metric,  # which held-out accuracy the summary holds
        "seeds": sorted({r["seed"] for r in results}),
        "sft_convergence": convergence,
        "summary": summary,
        "final_count_summary": final_count_summary(results),
        "runs": results,
        "seconds": seconds,  # this invocation's wall time
        "arm_seconds": sum(r["seconds"] for r in results),  # the arms' rounds as they ran (several processes may add up)
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    main()
