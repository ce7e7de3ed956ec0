"""Generation through transformers `generate`: prompts batched by length, left padding, KV cache,
n samples per prompt expanded inside one call, stopping at EOS or at a stop string."""

from __future__ import annotations

from typing import Collection, Iterator, Sequence

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from rationale_loop.generate.base import Completion, Sampling


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

    def _generation_config(self, sampling: Sampling) -> GenerationConfig:
        # Built from scratch so a checkpoint's own generation defaults (top_k=50, say) never leak in.
        sample = sampling.temperature > 0
        return GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None,
            top_k=0 if sample else None,
            num_return_sequences=sampling.n,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            stop_strings=list(sampling.stop) or None,
            use_cache=True,
        )

    def generate(
        self, prompts: Sequence[str], sampling: Sampling, skip: Collection[int] = ()
    ) -> Iterator[tuple[int, list[Completion]]]:
        if self.model is None:
            raise RuntimeError("this HFBackend is closed")
        if sampling.reply_end is None:
            encoded = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        else:
            from rationale_loop.encode import Encoder

            encoder = Encoder(self.tokenizer, max_length=1 << 30, reply_end=sampling.reply_end)
            encoded = [list(encoder.prompt_ids(p)) for p in prompts]
        # Longest first: batches of similar length waste little on padding, and an out-of-memory
        # error, if any, comes at once rather than at the end.
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        config = self._generation_config(sampling)
        was_training = self.model.training
        self.model.eval()
        try:
            for batch_number, start in enumerate(range(0, len(order), self.batch_size)):
                indices = order[start : start + self.batch_size]
                # Batches are cut from every prompt, skipped ones included, and each is seeded by its
                # number: a resumed run samples the batches it still needs exactly as the first run did.
                if all(i in skip for i in indices):
                    continue
                torch.manual_seed(sampling.seed * 1_000_003 + batch_number)
                completions = self._generate_batch([encoded[i] for i in indices], config, sampling)
                for offset, index in enumerate(indices):
                    if index not in skip:
                        yield index, completions[offset * sampling.n : (offset + 1) * sampling.n]
        finally:
            self.model.train(was_training)

    @torch.inference_mode()
    def _generate_batch(self, batch: list[list[int]], config: GenerationConfig, sampling: Sampling) -> list[Completion]:
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        device = self.model.device
        # Stop strings are matched on decoded text, so generate needs the tokenizer for them.
        extra = {"tokenizer": self.tokenizer} if sampling.stop else {}
        output = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config, **extra
        )
        new_tokens = output[:, width:].tolist()
        return [self._completion(tokens, sampling.max_new_tokens, sampling.stop) for tokens in new_tokens]

    def _completion(self, tokens: list[int], max_new_tokens: int, stop: Sequence[str] = ()) -> Completion:
        if self.eos_id in tokens:
            end = tokens.index(self.eos_id)
            text = self.tokenizer.decode(tokens[:end], skip_special_tokens=True)
            return cut_at_stop(Completion(text, "stop", end + 1), stop)
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return cut_at_stop(Completion(text, "length", min(len(tokens), max_new_tokens)), stop)


def cut_at_stop(completion: Completion, stop: Sequence[str]) -> Completion:
    """The completion up to its first stop string, which ended it ("stop"); transformers keeps the
    string in its output, vLLM does not: both backends return what vLLM returns."""
    cuts = [completion.text.find(s) for s in stop if s and s in completion.text]
    if not cuts:
        return completion
    return Completion(completion.text[: min(cuts)], "stop", completion.num_tokens)
