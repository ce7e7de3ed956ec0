"""One training loop, shared by SFT and the rounds' finetuning.

What it owns: item order (seeded), the effective batch reached by gradient accumulation, the
token-weighted loss of an accumulated batch, the optimizer and its cosine schedule, frozen embeddings,
NEFTune, and a per-step loss log. What a loss *is* belongs to the objective.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import nullcontext
import random
import time
from dataclasses import dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, broadcast_object_list, gather_object
from omegaconf import OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rationale_loop.config.schema import TrainConfig
from rationale_loop.data.encode import Encoder
from rationale_loop.config.errors import CheckpointError, NonFiniteError
from rationale_loop.run.faults import crash_point
from rationale_loop.models.model import autocasts_bf16, freeze_embeddings, neftune, refuse_non_finite_weights
from rationale_loop.training.objectives import Objective, SupervisedObjective
from rationale_loop.training.optim import build_optimizer, cosine_with_warmup
from rationale_loop.training.attention import training_attention
from rationale_loop.training.packing import collate_packed, pack_indices
from rationale_loop.training.token_loss import chunk_for, head_rows
from rationale_loop.run.records import atomic_writer
from rationale_loop.views.terminal import progress_bar

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    items: int
    dropped_too_long: int
    steps: int
    seconds: float
    mean_loss: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    tokens: int = 0  # non-padding tokens trained on over the whole phase, by all processes together
    processes: int = 1  # how many processes shared the work
    # Each process's machine (the launcher's GROUP_RANK), the items the whole phase dealt it and the
    # parameter entries it held: how the work and the weights were split.
    shares: list[dict[str, int]] = field(default_factory=list)
    padding_fraction: float = 0.0  # of the token positions forwarded, the share that was padding


def optimizer_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The TrainConfig keys that belong to the chosen optimizer, as its constructor names them."""
    per_optimizer = {
        "adamw": {"weight_decay": cfg.weight_decay},
        "adalite": {"lambda_": cfg.adalite_lambda, "variant": cfg.adalite_variant},
    }
    return per_optimizer.get(cfg.optimizer.lower(), {})


def _on_cpu() -> bool:
    return not torch.cuda.is_available()


def is_main_process() -> bool:
    """Whether this process writes what the phase's processes trained. Built as the training's Accelerator
    is (cpu= when no GPU is visible): a bare PartialState() on a CPU ignores the launcher's WORLD_SIZE and
    calls every process the main one, so a phase with nothing to train (no Accelerator made) had every
    process write the same checkpoint at once."""
    return PartialState(cpu=_on_cpu()).is_main_process


def _with_loss_chunk(cfg: TrainConfig, model: torch.nn.Module, accelerator: Accelerator, desc: str) -> TrainConfig:
    """cfg with loss_chunk_tokens as this stage trains with it (-1 decided for this model: token_loss.chunk_for)."""
    kind = accelerator.distributed_type
    sharded = kind == DistributedType.FSDP or (kind == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3)
    chunk = chunk_for(cfg.loss_chunk_tokens, model, sharded)
    if chunk == cfg.loss_chunk_tokens:
        return cfg
    if chunk:
        log.info("%s: the loss in chunks of %d tokens (loss_chunk_tokens=-1, a vocabulary of %d)", desc, chunk, head_rows(model))
    return _replaced(cfg, loss_chunk_tokens=chunk)


def _with_mixed_precision(cfg: TrainConfig, accelerator: Accelerator, desc: str) -> TrainConfig:
    """cfg with mixed_precision "auto" decided for this device: "bf16" or "no" (models.model.autocasts_bf16)."""
    if cfg.mixed_precision != "auto":
        return cfg
    device = accelerator.device.type
    setting = "bf16" if autocasts_bf16("auto", device) else "no"
    log.info("%s: mixed_precision=auto: %s", desc, f"bf16 autocast ({device} with native bf16)" if setting == "bf16"
             else f"no autocast (this {device} has no native bf16)")
    return _replaced(cfg, mixed_precision=setting)


def _replaced(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of cfg with `changes`: train() is called with the dataclass and with a DictConfig."""
    return replace(cfg, **changes) if is_dataclass(cfg) else OmegaConf.merge(cfg, changes)


def _schedule_order(count: int, epochs: float, batch_size: int, seed: int, steps: int = 0) -> list[list[int]]:
    """Item indices per optimizer step: ceil(epochs * count) items (or, with `steps`, exactly
    steps * batch_size) from seeded permutations (one per epoch), cut into batches; the last batch
    may be smaller."""
    wanted = steps * batch_size if steps > 0 else max(1, math.ceil(epochs * count))
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < wanted:
        epoch = list(range(count))
        rng.shuffle(epoch)
        order.extend(epoch)
    order = order[:wanted]
    return [order[i : i + batch_size] for i in range(0, wanted, batch_size)]


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[Any],
    objective: Objective,
    cfg: TrainConfig,
    *,
    seed: int,
    desc: str,
    state_path: Path | None = None,
    log_dir: Path | None = None,
    reply_end: str = "{eos}",
) -> TrainResult:
    """Train `model` in place. With `state_path`, a resumable training state (weights, optimizer,
    schedule, random state, loss log) is saved there every `cfg.save_every` steps, and a state found
    there at the start is resumed from: the run goes on from that step as if it had never stopped.
    With `log_dir`, per-step loss, loss terms, learning rate and gradient norm (before clipping) go to TensorBoard. `reply_end`: the prompt
    format's end of a reply, learned after each response (encode.py)."""
    encoder = Encoder(tokenizer, cfg.max_length, reply_end)
    kept, dropped = _encode(objective, items, encoder, desc, cfg.max_length)
    if not kept:
        log.warning("%s: nothing to train on; the model is left as it was", desc)
        return TrainResult(items=0, dropped_too_long=dropped, steps=0, seconds=0.0, mean_loss=None)

    accelerator = Accelerator(cpu=_on_cpu())
    cfg = _with_mixed_precision(_with_loss_chunk(cfg, model, accelerator, desc), accelerator, desc)
    _ready_model(model, objective, kept, encoder, cfg, accelerator, seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.optimizer, parameters, lr=cfg.lr, **optimizer_settings(cfg))
    batches = _schedule_order(len(kept), cfg.epochs, cfg.batch_size, seed, cfg.steps)
    scheduler = cosine_with_warmup(optimizer, len(batches), cfg.warmup_ratio, cfg.min_lr_ratio)
    lengths = [item_length(e) for e in kept]
    # The loss log, the seconds and tokens of the interrupted calls this one resumes (none for a new phase).
    resumed = _load_state(state_path, accelerator, model, optimizer, scheduler, len(batches), desc) or {}
    history: list[dict[str, float]] = resumed.get("history", [])
    earlier_seconds, tokens, padded = resumed.get("seconds", 0.0), resumed.get("tokens", 0), resumed.get("padded", 0)
    model, optimizer = accelerator.prepare(model, optimizer)
    first_step = len(history) + 1
    writer = _tensorboard(log_dir, first_step, accelerator)

    start = time.perf_counter()
    model.train()
    bar = progress_bar(len(batches), first_step - 1, desc)
    attention = training_attention(accelerator.unwrap_model(model), packed=packs(objective, cfg))
    with neftune(accelerator.unwrap_model(model), cfg.neftune_alpha), attention, bar as progress:
        for step, batch_indices in enumerate(batches[first_step - 1 :], start=first_step):
            share, weight = _my_share(batch_indices, lengths, cfg, accelerator)
            micro_batches = cut_micro_batches(objective, [kept[i] for i in share], encoder, cfg)
            step_terms = accumulate_gradients(model, objective, micro_batches, cfg, accelerator, weight)
            real, padding = _step_tokens(accelerator, micro_batches, weight)
            tokens, padded = tokens + real, padded + padding
            # Clipping at infinity clips nothing and still returns the norm the finiteness check needs.
            grad_norm = accelerator.clip_grad_norm_(parameters, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            _refuse_non_finite(step_terms, grad_norm, desc, step, len(batches), batch_indices, state_path)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_loss = sum(objective.coefficients[n] * v for n, v in step_terms.items())
            record = {"step": step, "lr": scheduler.get_last_lr()[0], "loss": step_loss, **step_terms}
            history.append(record)
            _report_step(record, step_terms, float(grad_norm), len(batches), desc, progress, writer,
                         accelerator.is_main_process and (step % cfg.log_every == 0 or step == len(batches)))
            if state_path is not None and cfg.save_every > 0 and step % cfg.save_every == 0 and step < len(batches):
                elapsed = earlier_seconds + time.perf_counter() - start
                _save_state(state_path, accelerator, model, optimizer, scheduler, history, len(batches), elapsed, tokens, padded)
            crash_point("train_step")
    if writer is not None:
        writer.close()
    model = accelerator.unwrap_model(model)
    model.eval()
    dealt = sum(len(_my_share(b, lengths, cfg, accelerator)[0]) for b in batches)
    return _result(len(kept), dropped, history, earlier_seconds + time.perf_counter() - start, tokens, padded,
                   _process_shares(accelerator, model, dealt))


def _result(items: int, dropped: int, history: list[dict[str, float]], seconds: float, tokens: int, padded: int,
            shares: list[dict[str, int]]) -> TrainResult:
    """What a finished training records: its counts, loss log and time (the calls it resumed included),
    the tokens it learned beside the padding, and each process's share."""
    return TrainResult(
        items=items,
        dropped_too_long=dropped,
        steps=len(history),
        seconds=seconds,
        mean_loss=sum(r["loss"] for r in history) / len(history),
        history=history,
        tokens=tokens,
        processes=len(shares),
        shares=shares,
        padding_fraction=padded / (tokens + padded) if tokens + padded else 0.0,
    )


def _my_share(batch: list[int], lengths: list[int], cfg: TrainConfig, accelerator: Accelerator) -> tuple[list[int], float]:
    """This process's items of one optimizer step's batch, and its weight in the step's mean."""
    ordered = _dealing_order(batch, lengths, cfg, accelerator.num_processes)
    return process_share(ordered, accelerator.process_index, accelerator.num_processes)


def _process_shares(accelerator: Accelerator, model: torch.nn.Module, dealt: int) -> list[dict[str, int]]:
    """Each process's machine, the items the phase dealt it and the parameter entries it holds (all of them
    under DDP; its shard under FSDP, whose parameters stay DTensors once unwrapped)."""
    held = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    mine = {"process": accelerator.process_index, "machine": int(os.environ.get("GROUP_RANK", "0")), "items": dealt, "parameters": held}
    return gather_object([mine]) if accelerator.num_processes > 1 else [mine]


def _encode(objective: Objective, items: Sequence[Any], encoder: Encoder, desc: str, max_length: int) -> tuple[list[Any], int]:
    """The items as the objective encodes them, without those longer than max_length, and how many those were."""
    encoded = [objective.encode(item, encoder) for item in items]
    kept = [e for e in encoded if e is not None]
    dropped = len(encoded) - len(kept)
    if dropped:
        log.warning("%s: dropped %d of %d items longer than max_length=%d", desc, dropped, len(encoded), max_length)
    return kept, dropped


def _ready_model(model: Any, objective: Objective, kept: list[Any], encoder: Encoder, cfg: TrainConfig,
                 accelerator: Accelerator, seed: int) -> None:
    """The model on the training device, with what the config asks of it, before the optimizer sees it."""
    model.to(accelerator.device)
    if cfg.gradient_checkpointing:
        # Non-reentrant: works with frozen embeddings and adapters (no input that requires grad needed).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    prepare = getattr(objective, "prepare", None)
    if prepare is not None:
        # Objectives with a frozen reference (spin) score every item with the starting weights first,
        # on the device that trains, before a resumed state replaces those weights.
        prepare(model, kept, encoder, cfg.micro_batch_size)
    torch.manual_seed(seed)
    if cfg.freeze_embeddings:
        freeze_embeddings(model)


def _dealing_order(batch: list[int], lengths: list[int], cfg: TrainConfig, processes: int) -> list[int]:
    """A step's items sorted by length before they are dealt and cut into micro-batches: rows of like
    length pad little. The step's gradient is a token-weighted sum over the whole batch, so the order does
    not change it. (With one micro-batch on one process there is nothing to gain: the drawn order is kept.)"""
    if cfg.sort_by_length and (processes > 1 or cfg.micro_batch_size < len(batch)):
        return sorted(batch, key=lambda i: lengths[i])
    return batch


def _step_tokens(accelerator: Accelerator, micro_batches: list[dict[str, Any]], weight: float) -> tuple[int, int]:
    """The step's real and padding token positions, summed over every process."""
    real, forwarded = _sum_over_processes(accelerator, [
        weight * sum(int(m["attention_mask"].sum()) for m in micro_batches),
        weight * sum(m["attention_mask"].numel() for m in micro_batches),
    ])
    return int(real), int(forwarded - real)


def _report_step(record: dict[str, float], terms: dict[str, float], grad_norm: float, steps: int, desc: str,
                 progress: Any, writer: Any, to_console: bool) -> None:
    """A step's loss on the progress bar, in TensorBoard and, every log_every steps, in the log."""
    step, loss = record["step"], record["loss"]
    progress.update(1)
    progress.set_postfix(loss=f"{loss:.4f}")
    if writer is not None:
        for name, value in record.items():
            if name != "step":
                writer.add_scalar(f"train/{name}", value, step)
        # Before clipping (what clip_grad_norm_ returns), as TRL and the HF Trainer log it.
        writer.add_scalar("train/grad_norm", grad_norm, step)
    if to_console:
        log.info("%s step %d/%d loss %.4f %s", desc, step, steps, loss, " ".join(f"{n} {v:.4f}" for n, v in terms.items()))


def _refuse_non_finite(
    terms: dict[str, float], grad_norm: Any, desc: str, step: int, steps: int,
    batch: list[int], state_path: Path | None,
) -> None:
    """Stop before the optimizer applies a step whose loss or gradient is not finite: one such step
    turns every weight into NaN, and the run would save, evaluate and go on from them. Every process
    decides alike, so none waits forever for the others: `terms` are already summed over processes
    (accumulate_gradients), and the gradient norm is taken after the all-reduce."""
    norm = float(grad_norm)
    if all(math.isfinite(v) for v in terms.values()) and math.isfinite(norm):
        return
    shown = ", ".join(f"{name} {value:.4g}" for name, value in terms.items())
    kept = f"the last good state, {state_path}, stays" if state_path is not None and state_path.exists() else "no state of this stage was saved"
    raise NonFiniteError(
        f"{desc}: the loss or gradient is not finite at step {step} of {steps} ({shown}; gradient norm {norm:.4g}; "
        f"batch items {batch[:8]}{' ...' if len(batch) > 8 else ''}); nothing of this step was applied and {kept}. "
        "Lower the learning rate (force=true starts the round over with the changed config), or check those items"
    )


def _save_state(
    path: Path,
    accelerator: Accelerator,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    history: list[dict[str, float]],
    total_steps: int,
    seconds: float,
    tokens: int,
    padded: int,
) -> None:
    """Everything the rest of the run depends on, in one file written atomically by the main process:
    a crash while it is written leaves the previous state in place. The random states are every
    process's own (NEFTune draws noise on each), gathered in process order."""
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    every_rng = gather_object([rng]) if accelerator.num_processes > 1 else [rng]
    if accelerator.is_main_process:
        refuse_non_finite_weights(accelerator.unwrap_model(model), path)
        state = {
            # What trains, not what stays put: with an adapter, the adapter alone (megabytes, not the model).
            "model": trainable_state(accelerator.unwrap_model(model)),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": history,
            "total_steps": total_steps,
            "seconds": seconds,
            "tokens": tokens,
            "padded": padded,
            "rng": every_rng,
        }
        with atomic_writer(path, binary=True) as handle:
            torch.save(state, handle)
    accelerator.wait_for_everyone()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a training stage changes, by their state_dict names."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _load_state(
    path: Path | None, accelerator: Accelerator, model: Any, optimizer: Any, scheduler: Any, total_steps: int, desc: str
) -> dict[str, Any] | None:
    if path is None:
        return None
    # The main process decides, so that every process resumes from the same step or none does.
    found = [path.exists()]
    if accelerator.num_processes > 1:
        broadcast_object_list(found)
    if not found[0]:
        return None
    if not path.exists():
        raise RuntimeError(f"{path} is on the main process's disk but not on process {accelerator.process_index}'s: "
                           "the run directory must be on a file system every process shares")
    # Our own file, written by _save_state: plain tensors, dicts, lists and numbers, which is all that
    # weights_only loading accepts. A file holding anything else (a planted pickle) is refused unrun.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path} is not a training state this tool wrote ({type(error).__name__}); "
                              "delete it to start this phase over") from None
    done = len(state["history"])
    if state["total_steps"] != total_steps:
        raise RuntimeError(
            f"{path} is the state of a {state['total_steps']}-step schedule, but this phase has {total_steps} steps: "
            "it belongs to other training data; delete it to start this phase over"
        )
    if len(state["rng"]) != accelerator.num_processes:
        raise RuntimeError(f"{path} was saved by {len(state['rng'])} process(es); resume it with as many, not {accelerator.num_processes}")
    missing = set(trainable_state(model)) - set(state["model"])
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} trained tensor(s) (e.g. {sorted(missing)[0]}): it belongs to "
                              "another model or adapter setting; delete it to start this phase over")
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"][accelerator.process_index]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    log.info("%s: resuming from step %d of %d (%s)", desc, done, total_steps, path)
    return state


def _tensorboard(log_dir: Path | None, first_step: int, accelerator: Accelerator) -> Any:
    if log_dir is None or not accelerator.is_main_process:
        return None
    from torch.utils.tensorboard import SummaryWriter

    # purge_step: a resumed or restarted phase drops the events an interrupted one logged from this step on.
    return SummaryWriter(log_dir=str(log_dir), purge_step=first_step)


def item_length(encoded: Any) -> int:
    """The padded width an encoded item asks of its micro-batch: its longest row."""
    if hasattr(encoded, "input_ids"):
        return len(encoded.input_ids)
    if isinstance(encoded, (tuple, list)):
        return max((item_length(part) for part in encoded), default=0)
    return 0


def process_share(batch: list[int], rank: int, processes: int) -> tuple[list[int], float]:
    """The items of one optimizer step's batch that process `rank` of `processes` trains on, and their
    weight. Items are dealt round-robin, so the shares differ in size by one at most and together are
    the batch. A process dealt nothing (a last batch smaller than the number of processes) must still
    take part in the gradient all-reduce: it forwards one item with weight 0, which adds nothing."""
    share = batch[rank::processes]
    return (share, 1.0) if share else (batch[:1], 0.0)


def packs(objective: Objective, cfg: TrainConfig) -> bool:
    """Whether the stage trains on packed rows: train.packing asks, and only token-level rows pack."""
    return cfg.packing and isinstance(objective, SupervisedObjective)


def cut_micro_batches(objective: Objective, encoded: list[Any], encoder: Encoder, cfg: TrainConfig) -> list[dict[str, Any]]:
    """One process's share of a step, collated: micro_batch_size rows padded to their longest, or, with
    cfg.packing and a token-level objective (`packs`), packed end to end in rows of at most
    micro_batch_tokens tokens (packing.py). The gradient is the same either way (token-weighted over the
    whole batch)."""
    if packs(objective, cfg):
        lengths = [len(e.input_ids) for e in encoded]
        budget = cfg.micro_batch_tokens or cfg.micro_batch_size * cfg.max_length
        return [collate_packed([encoded[i] for i in group]) for group in pack_indices(lengths, budget)]
    return [objective.collate(encoded[j : j + cfg.micro_batch_size], encoder) for j in range(0, len(encoded), cfg.micro_batch_size)]


def _sum_over_processes(accelerator: Accelerator, values: list[float]) -> list[float]:
    if accelerator.num_processes == 1:
        return values
    summed = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), reduction="sum")
    return summed.tolist()


def accumulate_gradients(
    model: torch.nn.Module,
    objective: Objective,
    micro_batches: list[dict[str, Any]],
    cfg: TrainConfig,
    accelerator: Accelerator,
    weight: float = 1.0,
) -> dict[str, float]:
    """Backward every micro-batch of this process's share of one optimizer step so that the gradient,
    once all-reduced, is that of sum_terms coefficient * (term's sum over the whole batch, all processes)
    / (term's units in the whole batch): tokens weigh the same whichever micro-batch or process they fall
    in. Returns each term's mean over the whole batch (the same on every process)."""
    units = _global_units(accelerator, objective, micro_batches, weight)
    terms = {name: 0.0 for name in objective.coefficients}
    for index, micro in enumerate(micro_batches):
        micro = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in micro.items()}
        # Gradients are all-reduced (averaged over processes, hence the num_processes factor) only on
        # the last micro-batch.
        sync = index == len(micro_batches) - 1
        with nullcontext() if sync else accelerator.no_sync(model):
            # Autocast here, not through Accelerator(mixed_precision=...): accelerate fixes that once per
            # process, and SFT and the rank stage may differ.
            with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
                sums = objective.loss_sums(model, micro, cfg)
            loss = sum(
                weight * objective.coefficients[name] * term * accelerator.num_processes / max(units[name], 1)
                for name, term in sums.items()
            )
            accelerator.backward(loss)
        for name, term in sums.items():
            terms[name] += weight * float(term.detach()) / max(units[name], 1)
    return dict(zip(terms, _sum_over_processes(accelerator, list(terms.values()))))


def _global_units(accelerator: Accelerator, objective: Objective, micro_batches: list[dict[str, Any]], weight: float) -> dict[str, int]:
    """Units per loss term over the whole accumulated batch, summed over processes."""
    units = {name: 0 for name in objective.coefficients}
    for micro in micro_batches:
        for name, count in objective.units(micro).items():
            units[name] += int(count * weight)
    return {name: int(count) for name, count in zip(units, _sum_over_processes(accelerator, list(units.values())))}

