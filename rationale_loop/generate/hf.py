"""Generation in process with a transformers model: prompts batched by length, left padding, KV cache,
each prompt's n samples sharing its forward pass, finished rows leaving the batch (generate/decode.py),
stopping at EOS or at a stop string."""

from __future__ import annotations

from typing import Callable, Collection, Iterator, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rationale_loop.generate.base import Completion, Sampling
from rationale_loop.generate.decode import Decoded, decode_batch


class HFBackend:
    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id

    def __enter__(self) -> "HFBackend":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the backend's model (its memory is freed unless the caller holds it too); generate
        fails after this."""
        if self.model is None:
            return
        on_gpu = self.model.device.type == "cuda"
        self.model = None
        if on_gpu:
            import gc

            gc.collect()
            torch.cuda.empty_cache()

    def generate(
        self, prompts: Sequence[str], sampling: Sampling, skip: Collection[int] = ()
    ) -> Iterator[tuple[int, list[Completion]]]:
        if self.model is None:
            raise RuntimeError("this HFBackend is closed")
        encoded = encode_prompts(self.tokenizer, prompts, sampling)
        was_training = self.model.training
        self.model.eval()
        try:
            for batch_number, indices in enumerate(prompt_batches(encoded, self.batch_size)):
                if all(i in skip for i in indices):
                    continue
                generator = torch.Generator(self.model.device).manual_seed(sampling.seed * 1_000_003 + batch_number)
                completions = self._generate_batch([encoded[i] for i in indices], sampling, generator)
                for offset, index in enumerate(indices):
                    if index not in skip:
                        yield index, completions[offset * sampling.n : (offset + 1) * sampling.n]
        finally:
            # A generator left unfinished (Ctrl-C) is closed when it is collected, which may be after close().
            if self.model is not None:
                self.model.train(was_training)

    @torch.inference_mode()
    def _generate_batch(self, batch: list[list[int]], sampling: Sampling, generator: torch.Generator) -> list[Completion]:
        decoded = decode_batch(
            self.model, batch, sampling.n, sampling.temperature, sampling.top_p, sampling.max_new_tokens,
            end_id=self.eos_id, pad_id=self.pad_id, generator=generator, stopped=self._stop_check(sampling.stop),
        )
        return [self._completion(row, sampling.stop) for row in decoded]

    def _stop_check(self, stop: Sequence[str]) -> Callable[[list[int]], bool] | None:
        """Whether a row's tokens end in one of the stop strings. Only the last few tokens are decoded: a
        string of L characters lies within the last L tokens plus the few bytes a character may split into."""
        strings = [s for s in stop if s]
        if not strings:
            return None
        window = 4 * max(len(s) for s in strings) + 2
        decode = self.tokenizer.decode

        def stopped(tokens: list[int]) -> bool:
            tail = decode(tokens[-window:], skip_special_tokens=True)
            return any(s in tail for s in strings)

        return stopped

    def _completion(self, row: Decoded, stop: Sequence[str] = ()) -> Completion:
        tokens = row.tokens[:-1] if row.tokens and row.tokens[-1] == self.eos_id else row.tokens
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return cut_at_stop(Completion(text, row.finish_reason, len(row.tokens)), stop)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], sampling: Sampling) -> list[list[int]]:
    """The prompts' token ids, read as training reads them when the format names its reply end."""
    if sampling.reply_end is None:
        return [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    from rationale_loop.data.encode import Encoder

    encoder = Encoder(tokenizer, max_length=1 << 30, reply_end=sampling.reply_end)
    return [list(encoder.prompt_ids(p)) for p in prompts]


def prompt_batches(encoded: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """The prompt indices of each batch, longest prompts first: batches of similar length waste little on
    padding, and an out-of-memory error, if any, comes at once rather than at the end. Batches are cut
    from every prompt, skipped ones included, and batch b is seeded by b: a resumed run, or a generation
    worker given some of the batches (generate.workers), samples each batch exactly as one whole run does."""
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def cut_at_stop(completion: Completion, stop: Sequence[str]) -> Completion:
    """The completion up to its first stop string, which ended it ("stop"); transformers keeps the
    string in its output, vLLM does not: both backends return what vLLM returns."""
    cuts = [completion.text.find(s) for s in stop if s and s in completion.text]
    if not cuts:
        return completion
    return Completion(completion.text[: min(cuts)], "stop", completion.num_tokens)
