"""Turning (prompt, response) text into token ids and labels, with no training on inputs.

The prompt and the response are tokenized separately and concatenated, so the boundary between them
is exact and the prompt's ids are the very ids generation starts from. Prompt tokens get the label
-100; the response's tokens and the prompt format's end of a reply (EOS in most formats, chat-ml's
<|im_end|>) are learned.

Special tokens are real only where the prompt format puts them. Text that came from data (a turn's
content, a system text, a response the model wrote) is tokenized with split_special_tokens, so `</s>` or
`<|im_end|>` typed in a row or written by the model is plain text, never the EOS or end-of-turn id. Text
holding no special-token string is tokenized exactly as before (one call, specials parsed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from rationale_loop.data.templates import EOS as EOS_MARK  # the tokenizer's EOS token in a reply's ending
from rationale_loop.data.templates import TEMPLATES

IGNORE_INDEX = -100  # the label of a token that is not learned (a prompt's, padding): the loss skips it


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
            self.end_ids += tokenizer(piece, add_special_tokens=False, split_special_tokens=False)["input_ids"] if piece else []
            if index < len(pieces) - 1:
                self.end_ids.append(tokenizer.eos_token_id)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.special_ids = special_token_ids(tokenizer)
        self._special = (re.compile("|".join(re.escape(t) for t in sorted(self.special_ids, key=len, reverse=True)))
                         if self.special_ids else None)
        # A prompt is a string (records keep it so). It is read back against the prompt formats of this
        # reply_end (prompt_layouts): the markup around the system text and the question is the template's, the
        # rest is data. A prompt no layout fits: the special tokens those formats put in a prompt (chat-ml's
        # <|im_start|> and <|im_end|>; none in the others, whose BOS is an id added in front) are read as
        # special, every other special-token string (</s>, <s>) as text.
        templates = [t for t in TEMPLATES.values() if t.assistant.partition("{content}")[2] == reply_end] or list(TEMPLATES.values())
        self.prompt_layouts = [layout for template in templates for layout in prompt_layouts(template)]
        self.prompt_markup = frozenset(token for layout in self.prompt_layouts for piece in layout for token in self.special_ids
                                       if token in piece)
        self.prompt_ids = lru_cache(maxsize=65536)(self._prompt_ids)

    def _prompt_ids(self, prompt: str) -> tuple[int, ...]:
        # add_special_tokens puts BOS in front exactly as the model's own tokenizer does for generation.
        spans = next((found for layout in self.prompt_layouts if (found := data_spans(prompt, layout)) is not None), None)
        if spans is None:
            return tuple(self.text_ids(prompt, lambda start, end: prompt[start:end] in self.prompt_markup, add_special_tokens=True))
        return tuple(self.text_ids(prompt, lambda start, end: not any(start < e and s < end for s, e in spans), add_special_tokens=True))

    def response_ids(self, response: str) -> list[int]:
        """A response is data (gold, or what the model wrote): special-token strings in it are text; the
        format's end of a reply after it is real."""
        return self.text_ids(response, lambda start, end: False) + self.end_ids

    def text_ids(self, text: str, is_markup: Callable[[int, int], bool], add_special_tokens: bool = False) -> list[int]:
        """`text` tokenized with a special-token string read as its special id only where `is_markup(start,
        end)` says the format put it; elsewhere it is plain text. With no special-token string outside the
        markup, one tokenizer call as always (the ids ordinary text always had)."""
        found = [(m.start(), m.end()) for m in self._special.finditer(text)] if self._special else []
        if all(is_markup(start, end) for start, end in found):
            # split_special_tokens=False whatever the tokenizer was saved with: the format's markup is real.
            return self.tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=False)["input_ids"]
        ids = list(self.tokenizer("", add_special_tokens=True)["input_ids"]) if add_special_tokens else []
        position = 0
        for start, end in found:
            if is_markup(start, end):
                ids += self._split(text[position:start]) + [self.special_ids[text[start:end]]]
                position = end
        return ids + self._split(text[position:])

    def _split(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []

    def segment_ids(self, segment: Any) -> list[int]:
        """A rendered segment's ids: special tokens in its data spans (templates.Segment.data) are text."""
        spans = getattr(segment, "data", ())
        return self.text_ids(segment.text, lambda start, end: not any(start < e and s < end for s, e in spans))

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
        the template wrote as the tokenizer's EOS string becomes its id; the same string in a segment's
        data is text)."""
        ids = list(self.prompt_ids(""))
        labels = [IGNORE_INDEX] * len(ids)
        for segment in segments:
            piece = self.segment_ids(segment)
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


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The tokenizer's special tokens (BOS, EOS, pad, chat markers...) as {text: id}: the strings that only the
    prompt format may turn into these ids."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    out = {token.content: index for index, token in decoder.items() if getattr(token, "special", False) and token.content}
    for token in getattr(tokenizer, "all_special_tokens", []):
        index = tokenizer.convert_tokens_to_ids(token)
        if token and isinstance(index, int) and token not in out:
            out[token] = index
    return out


_SLOT = "\x00"


def prompt_layouts(template: Any) -> list[tuple[str, ...]]:
    """A template's generation prompts (a first user turn, with and without a system text) as their markup
    pieces, the data slots between them: chat-ml's ("<|im_start|>system\\n", "<|im_end|>\\n<|im_start|>user\\n",
    "<|im_end|>\\n<|im_start|>assistant\\n") around the system text and the question."""
    from rationale_loop.run.records import Conversation, Turn

    layouts = []
    for system in (_SLOT, None):
        rendered = template.render(Conversation((Turn("user", _SLOT),), system), "")
        layouts.append(tuple(rendered.split(_SLOT)))
    return list(dict.fromkeys(layouts))


def data_spans(prompt: str, layout: tuple[str, ...]) -> tuple[tuple[int, int], ...] | None:
    """Where the data sits in `prompt` rendered in `layout` (its markup pieces), or None when it is not so
    rendered: the first piece opens the prompt, the last is found last (a question may hold its text, and
    what follows it, a reasoning header, is the format's), a piece between at its first place after the one
    before (only a system text that spells the markup between it and the question can mislead this). What
    follows the last piece is read as data: no format writes a special token there."""
    if not prompt.startswith(layout[0]):
        return None
    position, spans = len(layout[0]), []
    for index, piece in enumerate(layout[1:], start=1):
        found = prompt.rfind(piece, position) if index == len(layout) - 1 else prompt.find(piece, position)
        if found < 0:
            return None
        spans.append((position, found))
        position = found + len(piece)
    return tuple(spans) + ((position, len(prompt)),)
