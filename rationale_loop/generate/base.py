"""The generation backend interface: prompts in, n completions per prompt out, streamed by batch.

Backends yield results as batches finish so the caller can append them to disk: a crash loses at most
the batch in flight, and memory stays flat however large the question pool is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterator, Protocol, Sequence


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    # Text that ends a completion where it first appears (and is not part of it): the start of the next
    # turn, for a model that would otherwise go on writing the conversation.
    stop: tuple[str, ...] = ()
    # The prompt format's reply end (ReasoningFormat.reply_end): with it, a backend that tokenizes the
    # prompts itself reads only the format's own markup as special tokens, so a "</s>" typed in a question
    # is text (encode.Encoder.prompt_ids, as training reads the same prompt); None: the tokenizer's way.
    reply_end: str | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop": the model ended it (EOS); "length": cut off at max_new_tokens
    num_tokens: int  # generated tokens, the EOS included


class Backend(Protocol):
    def generate(
        self, prompts: Sequence[str], sampling: Sampling, skip: Collection[int] = ()
    ) -> Iterator[tuple[int, list[Completion]]]:
        """Yield (prompt index, its n completions) for every prompt not in `skip`, in any order. A
        prompt's completions do not depend on which others are skipped, so a resumed run that skips
        the prompts it already has gets the same samples for the rest."""
        ...

    def close(self) -> None:
        """Free what the backend holds (its model, its engine's process); a no-op where it holds
        nothing. Callers that keep one backend for several generate calls close it when done (or use
        `contextlib.closing`)."""
        ...
