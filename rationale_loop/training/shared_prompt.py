"""One forward for a ranked group: its prompt once, its responses packed behind it.

A group's chosen, rejected and anchor responses share their prompt. Forwarded as separate rows, the
prompt's tokens are computed once per response; here a row is the prompt followed by every response of
the group, and an attention mask keeps each response from seeing the others:

    tokens    P P P | c c c | r r | r r r r
    position  0 1 2 | 3 4 5 | 3 4 | 3 4 5 6      (each response continues the prompt's positions)
    sees      prompt, and itself causally

so every response's hidden states are those of its own unshared sequence. A response token's
log-probability is read at the position that predicts it: the previous token of the same response, or,
for a response's first token, the prompt's last token (shared by all responses of the row). Sums and
counts per response are then exactly the unshared ones, up to floating-point summation order.

Rows are padded to the batch's longest; a padding token sees only itself (a query that sees nothing
would turn softmax into NaN). One difference remains by design: NEFTune scales its noise by the padded
row length, which a shared row makes longer (smaller noise); the rank stage runs without NEFTune by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from rationale_loop.config.errors import ConfigError
from rationale_loop.training.attention import attention_implementation


@dataclass(frozen=True)
class SharedRow:
    """A prompt and the responses packed behind it (ids only; labels follow from the layout)."""

    prompt_ids: list[int]
    responses: list[list[int]]

    @property
    def input_ids(self) -> list[int]:  # the row's width is what batching by length needs (train.item_length)
        return self.prompt_ids + [token for response in self.responses for token in response]


def collate_rows(rows: Sequence[SharedRow], pad_id: int) -> dict[str, Any]:
    """Tensors for a micro-batch of shared rows. `response_of_token` / `predictor` / `target` list every
    learned token (row-major): which response it belongs to (numbered across the batch, rows in order and
    responses in order within a row), the flat index of the logits that predict it, and its id."""
    width = max(len(row.prompt_ids) + sum(map(len, row.responses)) for row in rows)
    batch = len(rows)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)  # 1 on real tokens: counting, as everywhere
    segment = torch.full((batch, width), -2, dtype=torch.long)  # -1 prompt, r >= 0 the row's r-th response, -2 padding
    response_of_token: list[int] = []
    predictor: list[int] = []
    target: list[int] = []
    response_index = 0
    for b, row in enumerate(rows):
        prompt = len(row.prompt_ids)
        input_ids[b, :prompt] = torch.tensor(row.prompt_ids)
        position_ids[b, :prompt] = torch.arange(prompt)
        segment[b, :prompt] = -1
        start = prompt
        for r, response in enumerate(row.responses):
            length = len(response)
            input_ids[b, start : start + length] = torch.tensor(response)
            position_ids[b, start : start + length] = torch.arange(prompt, prompt + length)
            segment[b, start : start + length] = r
            for offset in range(length):
                response_of_token.append(response_index)
                # The first token is predicted from the prompt's last; the others from their predecessor.
                predictor.append(b * width + (prompt - 1 if offset == 0 else start + offset - 1))
                target.append(response[offset])
            start += length
            response_index += 1
        attention_mask[b, :start] = 1
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    query, key = segment.unsqueeze(2), segment.unsqueeze(1)  # [B, T, 1], [B, 1, T]
    # A real token sees the prompt's past and its own response's past; padding sees itself only.
    sees = causal & (query != -2) & ((key == -1) | (key == query))
    sees |= torch.eye(width, dtype=torch.bool) & (query == -2)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": attention_mask,
        "shared_mask": sees.unsqueeze(1),  # [B, 1, T, T], True where a query may attend
        "response_of_token": torch.tensor(response_of_token, dtype=torch.long),
        "predictor": torch.tensor(predictor, dtype=torch.long),
        "target": torch.tensor(target, dtype=torch.long),
        "responses": response_index,
    }


#: The attention implementations that take forward_logits' 4D mask as given.
SHARED_MASK_ATTENTION = ("sdpa", "eager")


def forward_logits(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The model's logits under the shared mask: transformers takes a 4D mask as given. SDPA reads a
    boolean mask as is (and whatever dtype autocast gives the queries); eager attention adds a float one."""
    sees = batch["shared_mask"].to(batch["input_ids"].device)
    attention = attention_implementation(model)
    if attention == "eager":
        dtype = next(model.parameters()).dtype
        sees = torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill(~sees, torch.finfo(dtype).min)
    elif attention not in SHARED_MASK_ATTENTION:
        raise ConfigError(f"objective.share_prompt needs sdpa or eager attention, and the model uses {attention}; "
                          "set objective.share_prompt=false")
    return model(input_ids=batch["input_ids"], attention_mask=sees, position_ids=batch["position_ids"]).logits


def response_token_logprobs(logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """log p of every learned token, in collate_rows' order: [N]. Through cross_entropy, as
    losses.token_logprobs, so the log-softmax over the vocabulary is not kept for every position."""
    flat = logits.reshape(-1, logits.size(-1))
    predictor = batch["predictor"].to(logits.device)
    return -F.cross_entropy(flat[predictor].float(), batch["target"].to(logits.device), reduction="none")


def response_sums(
    token_logprobs: torch.Tensor, batch: dict[str, Any], counted: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each response and its token count: [R], [R]; with `counted` (a mask over
    the learned tokens), of the counted tokens only."""
    index = batch["response_of_token"].to(token_logprobs.device)
    ones = torch.ones_like(index)
    if counted is not None:
        token_logprobs, ones = token_logprobs * counted, counted.long()
    sums = token_logprobs.new_zeros(batch["responses"]).index_add(0, index, token_logprobs)
    counts = torch.zeros(batch["responses"], dtype=torch.long, device=token_logprobs.device).index_add(0, index, ones)
    return sums, counts
