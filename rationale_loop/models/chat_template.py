"""A Jinja chat_template for a reasoning format (tinycot, and the turn templates used as reasoning
formats: chat-ml, llama-2, ...), so that an exported model's `tokenizer.apply_chat_template` renders a
question exactly as the rounds asked it, and vLLM's chat endpoint does the same.

The format's prompt is cut around its question: what comes before (the turn template's user header) and
after it (the assistant header and the rationale header, so no generation prompt needs adding). An
assistant turn is its text and the format's reply end. The format has no slot for a system message: one
is not rendered. Text is put into the template as Jinja string literals (JSON-escaped), never as template
source, so braces in a format cannot turn into template code.
"""

from __future__ import annotations

import json
from typing import Any

SLOT = "\x00"  # a character no question holds, to find where the question goes


def reasoning_chat_template(fmt: Any, tokenizer: Any) -> str:
    before, found, after = fmt.prompt(SLOT).partition(SLOT)
    if not found:
        raise ValueError(f"prompt format {fmt.name} does not show its question; no chat template can be made from it")
    end_before_eos, has_eos, end_after_eos = fmt.reply_end.partition("{eos}")
    # The BOS the tokenizer puts in front when the rounds encode a prompt (add_special_tokens=True).
    adds_bos = bool(tokenizer("", add_special_tokens=True)["input_ids"]) and tokenizer.bos_token is not None
    reply_end = json.dumps(end_before_eos) + (" + eos_token + " + json.dumps(end_after_eos) if has_eos else "")
    return (
        ("{{ bos_token }}" if adds_bos else "")
        + "{% for message in messages %}"
        + "{% if message['role'] == 'user' %}"
        + "{{ " + json.dumps(before) + " + message['content'] | trim + " + json.dumps(after) + " }}"
        + "{% elif message['role'] == 'assistant' %}"
        + "{{ message['content'] | trim + " + reply_end + " }}"
        + "{% endif %}"
        + "{% endfor %}"
    )
