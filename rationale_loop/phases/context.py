"""What every phase of a run reads: the config, the run directory, the task's splits and the prompt
format, and what follows from them alone (the base model, the stop strings, each round's sampling).

Building one loads the task and nothing else: no fork, no rounds index, no check of the gold answers
(the orchestrator does those once, loop.py), so a training worker builds its own from the round's
config.yaml at no cost."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from rationale_loop.data.formats import ReasoningFormat, get_format
from rationale_loop.data.model_format import MODEL_FORMAT, model_format
from rationale_loop.data.tasks import TaskSplits, load_task
from rationale_loop.generate import Backend, Sampling, make_backend, resolve_backend
from rationale_loop.run.records import Problem
from rationale_loop.run.rundir import round_dir, run_dir


class RunContext:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.dir = run_dir(cfg)
        self.splits: TaskSplits = load_task(cfg.task)
        self.problems: dict[str, Problem] = {p.id: p for p in self.splits.pool}
        self._fits: dict[tuple[int, int], tuple[list[Problem], int]] = {}
        self._base: Path | str | None = None

    @cached_property
    def fmt(self) -> ReasoningFormat:
        """The prompt format; `model` is read off the base model's own chat template (data/model_format.py),
        so it is the same in every round whatever a round's checkpoint saved as its template."""
        name = self.cfg.task.prompt_format
        if name != MODEL_FORMAT:
            return get_format(name)
        from rationale_loop.models.model import load_tokenizer

        base = self.base_model_path()
        return model_format(load_tokenizer(base, self.cfg.model.trust_remote_code), str(base))

    def round_dir(self, k: int) -> Path:
        return round_dir(self.dir, k)

    def start_checkpoint(self, k: int) -> Path:
        """The weights round k starts from: the checkpoint of round k - 1."""
        return self.round_dir(k - 1) / "checkpoint"

    def base_model_path(self) -> Path | str:
        if self._base is None:
            self._base = self._find_base_model()
        return self._base

    def _find_base_model(self) -> Path | str:
        """The model SFT starts from: a hub id or path, or the tiny model built from the task's SFT text
        (cached by that text's hash, so every call of a run gets the same one)."""
        model_cfg = self.cfg.model
        if model_cfg.source == "pretrained" and model_cfg.gguf_file:
            from rationale_loop.models.gguf import convert_gguf

            return convert_gguf(model_cfg.gguf_file, model_cfg.cache_dir)
        if model_cfg.source == "pretrained":
            return model_cfg.path
        from hashlib import sha256

        from rationale_loop.models.model import build_tiny_model

        corpus = [self.fmt.prompt(p.question) + self.fmt.response(p.rationale, p.answer) for p in self.splits.sft]
        key = sha256("\n".join(corpus).encode()).hexdigest()
        return build_tiny_model(model_cfg, corpus, key)

    def stop(self) -> tuple[str, ...]:
        """Stop strings for every sample and evaluation: the configured ones and the format's end of turn."""
        return tuple(dict.fromkeys([*self.cfg.generate.stop, *self.fmt.stop]))

    def sampling(self, k: int) -> Sampling:
        """How round k samples its pool (and SPIN's and rationalization's questions): seeded by the round."""
        gen = self.cfg.generate
        return Sampling(gen.n, gen.temperature, gen.top_p, gen.max_new_tokens, seed=self.cfg.seed + k, stop=self.stop(),
                        reply_end=self.fmt.reply_end)

    def make_backend(self, checkpoint: Path, batch_size: int) -> Backend:
        return make_backend(self.cfg.generate, checkpoint, self.cfg.model.dtype, batch_size, self.cfg.model.trust_remote_code)

    def fitting(self, problems: list[Problem], max_new_tokens: int, checkpoint: Path, what: str) -> tuple[list[Problem], int]:
        """The problems whose prompt fits the model's context with max_new_tokens to spare, and the
        count of the others (rationale_loop/data/prompt_budget.py). Every round's model has its base's
        tokenizer and context, so the answer is worked out once per split and budget."""
        from rationale_loop.models.model import load_tokenizer
        from rationale_loop.data.prompt_budget import context_length, fitting

        key = (id(problems), max_new_tokens)
        if key not in self._fits:
            engine_limit = self.cfg.generate.max_model_len if resolve_backend(self.cfg.generate) == "vllm" else None
            context = context_length(checkpoint, engine_limit)
            tokenizer = load_tokenizer(checkpoint, self.cfg.model.trust_remote_code) if context else None
            self._fits[key] = fitting(problems, self.fmt, tokenizer, context, max_new_tokens, self.cfg.generate.too_long, what)
        return self._fits[key]


class Engines:
    """The generation backend of a run's calls: made on first use (a resumed round with only training
    left never loads one) and kept while the checkpoint it serves is the one asked for, so a round's
    evaluation and the next round's sampling, SPIN's and rationalization's share one engine. Closed
    before training, whose memory it would otherwise hold."""

    def __init__(self, ctx: RunContext):
        self._ctx = ctx
        self._backend: Any = None
        self._checkpoint: str | None = None

    def get(self, checkpoint: Path, batch_size: int) -> Backend:
        if self._backend is None or self._checkpoint != str(checkpoint):
            self.close()
            self._backend = self._ctx.make_backend(checkpoint, batch_size)
            self._checkpoint = str(checkpoint)
        # The caller's batch size for this use (hf: evaluation and sampling batch differently); a backend's
        # batches depend on it alone, so a reused one batches as a new one would. vLLM has no batch size:
        # its engine batches by itself within each chunk of generate.chunk_size prompts.
        if hasattr(self._backend, "batch_size"):
            self._backend.batch_size = batch_size
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            close = getattr(self._backend, "close", None)
            if close is not None:
                close()
        self._backend, self._checkpoint = None, None
