"""Turning (prompt, response) text into token ids and labels, with no training on inputs.

The prompt and the response are tokenized separately and concatenated, so the boundary between them
is exact and the prompt's ids are the very ids generation starts from. Prompt tokens get the label
-100; the response's tokens and the prompt format's end of a reply (EOS in most formats, chat-ml's
<|im_end|>) are learned.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from rationale_loop.data.templates import EOS as EOS_MARK  # the tokenizer's EOS token in a reply's ending
from rationale_loop.losses import IGNORE_INDEX


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]


class Encoder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, reply_end: str = EOS_MARK):
        """`reply_end`: how the prompt format closes a reply, learned after every response, with {eos} for the
        tokenizer's EOS: "{eos}" in most formats, chat-ml's "<|im_end|>" (formats.py, ReasoningFormat.reply_end)."""
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; the response's end cannot be learned")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.reply_end = reply_end
        # Tokenized apart from the response: a completion cut at the end-of-turn stop string and the gold
        # response then end in the same tokens.
        pieces = reply_end.split(EOS_MARK)
        self.end_ids: list[int] = []
        for index, piece in enumerate(pieces):
            self.end_ids += tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
            if index < len(pieces) - 1:
                self.end_ids.append(tokenizer.eos_token_id)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.prompt_ids = lru_cache(maxsize=65536)(self._prompt_ids)

    def _prompt_ids(self, prompt: str) -> tuple[int, ...]:
        # add_special_tokens puts BOS in front exactly as the model's own tokenizer does for generation.
        return tuple(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def response_ids(self, response: str) -> list[int]:
        return self.tokenizer(response, add_special_tokens=False)["input_ids"] + self.end_ids

    def encode(self, prompt: str, response: str) -> Encoded | None:
        """Ids and labels for one example, or None when it is longer than max_length (the caller drops
        and counts it: truncating would teach a response without its end)."""
        prompt_ids = list(self.prompt_ids(prompt))
        response_ids = self.response_ids(response)
        if len(prompt_ids) + len(response_ids) > self.max_length:
            return None
        return Encoded(prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids)

    def encode_segments(self, segments: Sequence[Any]) -> Encoded | None:
        """Ids and labels for a rendered conversation: each segment (text, learned) tokenized on its
        own, so the boundary between what is learned and what is not is exact; BOS in front. None when
        it is longer than max_length. End-of-turn markers are inside the learned segments' text (an EOS
        written as the tokenizer's EOS string becomes its id)."""
        ids = list(self.prompt_ids(""))
        labels = [IGNORE_INDEX] * len(ids)
        for segment in segments:
            piece = self.tokenizer(segment.text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if segment.learned else [IGNORE_INDEX] * len(piece)
        if len(ids) > self.max_length:
            return None
        return Encoded(ids, labels)

    def collate(self, examples: list[Encoded]) -> dict[str, torch.Tensor]:
        """Right-pad a list of examples into input_ids, attention_mask and labels tensors."""
        width = max(len(e.input_ids) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example.input_ids)
            input_ids[row, :length] = torch.tensor(example.input_ids)
            labels[row, :length] = torch.tensor(example.labels)
            attention_mask[row, :length] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
