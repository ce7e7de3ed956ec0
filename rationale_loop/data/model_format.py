"""`task.prompt_format=model`: a question asked in the model's own chat template, the reasoning layout
inside its assistant turn.

A pretrained instruct model was tuned on its own turns (SmolLM2: ChatML with a default system prompt that
names it); asking it in another format wastes what it knows. This format is read off the tokenizer's chat
template by rendering it, in transformers' sandboxed Jinja (apply_chat_template), around marker strings:

- the generation prompt of one user message: the text before and after the question;
- a user message and an assistant reply: what the template puts after a reply (its end of turn).

The prompt is then `<before><question><after>### Rationale:\n`, and the exported tokenizer's chat template
is the model's own with the rationale header added to its generation prompt (export.py), so that
`apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)` is the very string the
rounds sampled and evaluated with.
"""

from __future__ import annotations

import json
from typing import Any

from rationale_loop.data.formats import MODEL_FORMAT, ReasoningFormat
from rationale_loop.data.templates import EOS, SLOTS, TurnTemplate
from rationale_loop.config.errors import UserError

QUESTION, REPLY = "\ue000question\ue000", "\ue000reply\ue000"  # private-use characters: in no template or question


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool, where: str) -> str:
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
    except Exception as error:  # jinja2's TemplateError, SecurityError (the sandbox), or a template's own raise
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"task.prompt_format=model: the chat template of {where} does not render "
                        f"({type(error).__name__}: {first})") from None


def model_format(tokenizer: Any, where: str) -> ReasoningFormat:
    """The reasoning format of a tokenizer's own chat template (`where` names the tokenizer's folder for messages)."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"task.prompt_format=model: the tokenizer of {where} has no chat template; "
                        "name a format instead (task.prompt_format=chat-ml, tinycot, ...)")
    asked = _render(tokenizer, [{"role": "user", "content": QUESTION}], True, where)
    before, found, after = asked.partition(QUESTION)
    replied = _render(tokenizer, [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": REPLY}], False, where)
    head, has_reply, tail = replied.partition(REPLY)
    if not found or QUESTION in after or not has_reply or head != asked:
        raise UserError(f"task.prompt_format=model: the chat template of {where} does not render a reply right after its "
                        "generation prompt, so no one string can be trained on and asked with; name a format instead")
    if any(slot in text for text in (before, after, tail) for slot in (*SLOTS, EOS)):
        raise UserError(f"task.prompt_format=model: the chat template of {where} writes a literal {{content}}, {{system}} or {{eos}}")
    bos = tokenizer.bos_token
    if bos and before.startswith(bos) and _adds_bos(tokenizer):
        before = before[len(bos):]  # the encoder puts the BOS token in front, as apply_chat_template's text has it
    eos = tokenizer.eos_token or ""
    # A reply is learned up to and including the template's end of turn (the EOS where the template writes it);
    # what follows (a newline before the next turn) is not part of the reply.
    reply_end = tail[: tail.index(eos) + len(eos)] if eos and eos in tail else tail.rstrip()
    stop = reply_end.strip() or eos
    template = TurnTemplate(MODEL_FORMAT, system="", user=before + "{content}" + after, assistant="{content}" + reply_end,
                            separator=tail[len(reply_end):], stop=(stop,) if stop else ())
    return ReasoningFormat(template)


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def export_chat_template(original: str, fmt: ReasoningFormat) -> str:
    """The model's own chat template with the format's rationale header after its generation prompt: a
    user's `apply_chat_template(..., add_generation_prompt=True)` then ends exactly where the rounds' prompts did."""
    header = json.dumps(fmt.rationale_header + "\n")
    return original + "{% if add_generation_prompt %}{{ " + header + " }}{% endif %}"
