"""Which tokens of a ranked response its rank score counts (objective.rank_scope).

With mean-token scores s = (1/|y|) sum_t log p(y_t), a token that the chosen and the rejected response
share enters the margin s_c - s_r with weight 1/|c| - 1/|r|: when the chosen chain is the longer one, the
rank term pushes down its own correct prefix. And after a group's responses part, the rejected chain is
often correct arithmetic from a wrong number, so pushing its tokens down pushes the same kinds of tokens of
the chosen chains down too (docs/recipe.md, "Likelihood displacement"). Two narrower scopes:

- "divergent": a response is scored from its first token that no other response of its group shares at
  that place, i.e. past the longest prefix it has in common with any of them. The common prefix is context:
  it is in the forward pass, but its log-probabilities are in no score.
- "step": only the first step in which the responses part (Step-DPO: the question and the shared steps
  before it are the context). Steps end at the step delimiters (objective.step_delimiters, ". " and a
  newline for chains like "5 + 3 = 8. 8 * 2 = 16."), found in the decoded text of the response.

Windows are (begin, end) token offsets into a response's ids (everything after the prompt, the reply's end
included); "sequence" is (0, len), the recipe's score.
"""

from __future__ import annotations

from typing import Callable, Sequence

from rationale_loop.config.errors import ConfigError
from rationale_loop.config.keys import unknown_choice

SCOPES = ("sequence", "divergent", "step")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def divergence_points(responses: Sequence[Sequence[int]]) -> list[int]:
    """Per response: the offset of its first token past every prefix it shares with another response of
    the group (a response with no other keeps 0)."""
    return [
        max((common_prefix(own, other) for j, other in enumerate(responses) if j != i), default=0)
        for i, own in enumerate(responses)
    ]


def token_offsets(ids: Sequence[int], decode: Callable[[list[list[int]]], list[str]]) -> list[int]:
    """Character offset at which each token's text starts in the decoded response, plus the text's end:
    [len(decode(ids[:k])) for k in 0..n]. Prefixes are decoded whole (not token by token) because a
    SentencePiece token decoded alone drops its leading space."""
    texts = decode([list(ids[:k]) for k in range(len(ids) + 1)])
    return [len(text) for text in texts]


def step_boundaries(text: str, delimiters: Sequence[str]) -> list[int]:
    """Character positions where a step ends: right after each delimiter's visible part (the "." of ". ";
    a delimiter that is all whitespace, a newline, counts whole). The whitespace after a "." goes with the
    next step, as a tokenizer that writes " 8" as one token puts it."""
    ends = set()
    for delimiter in delimiters:
        visible = len(delimiter.rstrip()) or len(delimiter)
        start = text.find(delimiter)
        while start != -1:
            ends.add(start + visible)
            start = text.find(delimiter, start + 1)
    return sorted(ends)


def step_window(offsets: Sequence[int], text: str, divergence: int, delimiters: Sequence[str]) -> tuple[int, int]:
    """The tokens of the step that holds token `divergence`: from the token holding the step's first
    character to the token holding its last."""
    tokens = len(offsets) - 1
    if divergence >= tokens:
        return tokens, tokens
    ends = step_boundaries(text, delimiters)
    at = offsets[divergence]
    step_start = max((end for end in ends if end <= at), default=0)
    step_end = min((end for end in ends if end > at), default=len(text))
    begin = next(k for k in range(tokens) if offsets[k + 1] > step_start)
    end = next((k + 1 for k in range(begin, tokens) if offsets[k + 1] >= step_end), tokens)
    return min(begin, divergence), max(end, divergence + 1)


def scored_windows(
    responses: Sequence[Sequence[int]],
    scope: str,
    decode: Callable[[list[list[int]]], list[str]] | None = None,
    delimiters: Sequence[str] = (),
) -> list[tuple[int, int]]:
    """(begin, end) of the tokens each response's rank score counts, for a group's ranked responses."""
    if scope == "sequence":
        return [(0, len(ids)) for ids in responses]
    points = divergence_points(responses)
    if scope == "divergent":
        return [(min(point, len(ids)), len(ids)) for point, ids in zip(points, responses)]
    if scope == "step":
        if decode is None:
            raise ValueError("rank_scope=step needs the tokenizer's decode")
        windows = []
        for point, ids in zip(points, responses):
            offsets = token_offsets(ids, decode)
            text = decode([list(ids)])[0]
            windows.append(step_window(offsets, text, point, delimiters))
        return windows
    raise ConfigError(unknown_choice("objective.rank_scope", scope, SCOPES))
