"""Prompts that do not fit the model's context.

A prompt whose tokens plus the completion's budget (max_new_tokens) exceed the model's context cannot be
answered whole: a model with learned positions fails on it, one with rotary positions reads past what
it was trained on, and a 100,000-character question costs attention memory quadratic in its length
(the process is killed with no message). Such a question is skipped and counted, or refused, by
`generate.too_long`; it is never silently generated from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from rationale_loop.data.formats import ReasoningFormat
from rationale_loop.config.errors import UserError
from rationale_loop.run.records import Problem, read_json

log = logging.getLogger(__name__)
SPECIAL_TOKEN_MARGIN = 8


def context_length(checkpoint: Path, max_model_len: int | None = None) -> int | None:
    """The context the model was built for (config.json), or the engine's smaller limit if one is set."""
    try:
        config = read_json(Path(checkpoint) / "config.json")  # never blocks on a FIFO; DataError is a ValueError
    except (OSError, ValueError):
        return max_model_len
    limits = [v for v in (config.get("max_position_embeddings"), max_model_len) if isinstance(v, int) and v > 0]
    return min(limits) if limits else None


def fitting(
    problems: Sequence[Problem], fmt: ReasoningFormat, tokenizer: Any, context: int | None, max_new_tokens: int,
    policy: str, what: str,
) -> tuple[list[Problem], int]:
    """The problems whose prompt leaves max_new_tokens of room in the context, and how many did not."""
    if context is None:
        return list(problems), 0
    room = context - max_new_tokens
    kept = []
    for problem in problems:
        # Byte-level and byte-fallback tokenizers give at most one token per UTF-8 byte, plus a few
        # special ones: a prompt whose bytes clear the room with that margin fits without tokenizing.
        prompt = fmt.prompt(problem.question)
        short = len(prompt.encode()) + SPECIAL_TOKEN_MARGIN <= room
        length = len(prompt) if short else len(tokenizer(prompt)["input_ids"])
        if length <= room:
            kept.append(problem)
        elif policy == "error":
            raise UserError(f"{what}: question {problem.id} has a {length}-token prompt, and with max_new_tokens={max_new_tokens} "
                            f"it does not fit the model's {context}-token context (generate.too_long=error)")
    skipped = len(problems) - len(kept)
    if skipped:
        log.warning("%s: skipping %d of %d questions whose prompt leaves less than max_new_tokens=%d of the %d-token context",
                    what, skipped, len(problems), max_new_tokens, context)
    return kept, skipped
