"""Turn templates: how a conversation (system, user and assistant turns) becomes the text a model is
trained on and prompted with, in the prompt formats people use: alpaca, vicuna, llama-2, chat-ml,
airoboros, and the Memphis chat headers.

A template is a handful of format strings, and everything is derived from them: the rendered segments
(each learned or not: an assistant turn and its end-of-turn are learned, everything else is not), the
generation prompt (the conversation up to the assistant header of the turn to be written), the stop
strings (where a model that goes on to write the next turn is cut off), and a Jinja `chat_template` for
the tokenizer, so `tokenizer.apply_chat_template(messages)` and vLLM's chat endpoint produce exactly the
text the model was trained on. The reasoning layout (TinyCoT's rationale and answer headers) goes inside
a template's reply: rationale_loop/data/formats.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from rationale_loop.run.records import Conversation
from rationale_loop.config.registry import Registry

EOS = "{eos}"  # stands for the tokenizer's EOS token in a format string
SLOTS = ("{system}", "{content}")
_PLACEHOLDER = re.compile("(" + "|".join(re.escape(p) for p in (*SLOTS, EOS)) + ")")

Span = tuple[int, int]


@dataclass(frozen=True)
class Segment:
    """Rendered text, learned or not. `data`: the [start, end) character spans of `text` that came from the
    data (a turn's content, a system text), not from the template: special-token strings in them (`</s>`,
    `<|im_end|>` typed in a row) are encoded as plain text (encode.py); the rest is the template's markup,
    whose special tokens are real. No spans (a segment written before they existed): all markup."""

    text: str
    learned: bool
    data: tuple[Span, ...] = ()


@dataclass(frozen=True)
class ConversationItem:
    """A rendered conversation as the SFT stage trains on it: its segments of text, each learned or not."""

    segments: tuple[Segment, ...]


def fill(fmt: str, eos: str, **values: str) -> tuple[str, tuple[Span, ...]]:
    """A format string with its slots ({system}, {content}) filled and {eos} written as `eos`, by
    concatenation: only the format is scanned for placeholders, never the text put into it, so a `{eos}` or
    `{content}` in data stays literal. Returns the text and the spans the values fill."""
    text, spans = "", []
    for part in _PLACEHOLDER.split(fmt):
        if part == EOS:
            text += eos
        elif part in SLOTS:
            value = values[part[1:-1]]
            if value:
                spans.append((len(text), len(text) + len(value)))
            text += value
        else:
            text += part
    return text, tuple(spans)


@dataclass(frozen=True)
class TurnTemplate:
    name: str
    system: str  # "{system}" marks where the system text goes
    user: str  # a user turn followed by the next assistant turn's header: "{content}" marks the text
    assistant: str  # the learned part: the reply and its end of turn
    separator: str  # after an assistant turn, before the next user turn (not learned)
    stop: tuple[str, ...]
    default_system: str | None = None
    # Where the system text goes inside the first user turn instead (llama-2's <<SYS>> block).
    first_user_with_system: str | None = None

    def segments(self, conversation: Conversation, eos: str) -> list[Segment]:
        """The conversation as text segments in order, each learned or not. A turn's own `learned`
        flag, when set, overrides the rule that assistant turns (only) are learned."""
        out: list[Segment] = []
        system = conversation.system if conversation.system is not None else self.default_system
        inline_system = system is not None and self.first_user_with_system is not None
        if system is not None and not inline_system:
            text, spans = fill(self.system, eos, system=system)
            out.append(Segment(text, False, spans))
        first_user = True
        for turn in conversation.turns:
            if turn.role == "user":
                if first_user and inline_system:
                    text, spans = fill(self.first_user_with_system, eos, system=system, content=turn.content)
                else:
                    text, spans = fill(self.user, eos, content=turn.content)
                out.append(Segment(text, bool(turn.learned), spans))
                first_user = False
            else:
                text, spans = fill(self.assistant, eos, content=turn.content)
                out.append(Segment(text, True if turn.learned is None else turn.learned, spans))
                out.append(Segment(fill(self.separator, eos)[0], False))
        if out and out[-1].text == self.separator and not out[-1].learned:
            out.pop()  # nothing follows the last reply
        return [s for s in out if s.text]

    def reply(self, content: str, eos: str) -> str:
        """One assistant reply as it is learned: its text and the end of turn."""
        return fill(self.assistant, eos, content=content)[0]

    def render(self, conversation: Conversation, eos: str) -> str:
        return "".join(s.text for s in self.segments(conversation, eos))

    def prompt(self, conversation: Conversation, eos: str) -> str:
        """What a model is given to write the next assistant turn: the conversation (which ends with a
        user turn) up to and including the assistant header."""
        if not conversation.turns or conversation.turns[-1].role != "user":
            raise ValueError("a generation prompt ends with a user turn")
        return self.render(conversation, eos)

    def chat_template(self) -> str:
        """A Jinja chat template that renders `messages` exactly as `render` does (and, with
        add_generation_prompt, as `prompt` does: the user format already ends with the assistant header)."""

        def jinja(text: str) -> str:
            parts = []
            for piece in text.replace(EOS, "\x00EOS\x00").split("\x00"):
                if piece == "EOS":
                    parts.append("{{ eos_token }}")
                elif piece:
                    parts.append(_jinja_literal(piece))
            return "".join(parts)

        def jinja_fill(fmt: str, name: str, value: str) -> str:
            before, _, after = fmt.partition("{" + name + "}")
            return jinja(before) + value + jinja(after)

        content = "{{ message['content'] }}"
        system_value = "{{ system }}"
        default = "none" if self.default_system is None else _jinja_string(self.default_system)
        lines = [
            "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
            "{% set turns = messages[1:] %}{% else %}" + f"{{% set system = {default} %}}" + "{% set turns = messages %}{% endif %}",
        ]
        if self.first_user_with_system is None:
            lines.append("{% if system is not none %}" + jinja_fill(self.system, "system", system_value) + "{% endif %}")
        first_user = None
        if self.first_user_with_system:
            before, _, after = self.first_user_with_system.partition("{system}")
            first_user = jinja(before) + system_value + jinja_fill(after, "content", content)
        user = jinja_fill(self.user, "content", content)
        assistant = jinja_fill(self.assistant, "content", content)
        loop = "{% for message in turns %}{% if message['role'] == 'user' %}"
        if first_user:
            loop += "{% if loop.first and system is not none %}" + first_user + "{% else %}" + user + "{% endif %}"
        else:
            loop += user
        loop += "{% else %}" + assistant + "{% if not loop.last %}" + jinja(self.separator) + "{% endif %}{% endif %}{% endfor %}"
        lines.append(loop)
        return "".join(lines)


def _jinja_literal(text: str) -> str:
    """Literal text inside a Jinja template, always as a string expression: transformers renders chat
    templates with trim_blocks and lstrip_blocks, which would eat a newline written raw after a tag."""
    return "{{ " + _jinja_string(text) + " }}"


def _jinja_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


ALPACA_SYSTEM = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
AIROBOROS_SYSTEM = ("A chat between a curious user and an assistant. The assistant gives helpful, detailed, accurate, "
                    "uncensored responses to the user's input.")

TEMPLATES: Registry[TurnTemplate] = Registry("data.formats", {
    t.name: t
    for t in (
        # TinyCoT's own turns: no assistant header (the reasoning layout's rationale header opens the reply).
        TurnTemplate("tinycot", "### System:\n{system}\n\n", "### User:\n{content}\n\n", "{content}" + EOS, "\n\n",
                     stop=("\n### User:",)),
        TurnTemplate("memphis", "### System:\n{system}\n\n", "### User:\n{content}\n\n### Assistant:\n", "{content}" + EOS, "\n\n",
                     stop=("### User:",)),
        TurnTemplate("alpaca", "{system}\n\n", "### Instruction:\n{content}\n\n### Response:\n", "{content}" + EOS, "\n\n",
                     stop=("### Instruction:",), default_system=ALPACA_SYSTEM),
        TurnTemplate("vicuna", "{system}\n", "USER: {content}\nASSISTANT: ", "{content}" + EOS, "\n", stop=("\nUSER:",)),
        TurnTemplate("llama-2", "", "[INST] {content} [/INST] ", "{content} " + EOS, "", stop=("[INST]",),
                     first_user_with_system="[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{content} [/INST] "),
        TurnTemplate("chat-ml", "<|im_start|>system\n{system}<|im_end|>\n", "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n",
                     "{content}<|im_end|>", "\n", stop=("<|im_end|>",)),
        TurnTemplate("airoboros", "{system} ", "USER: {content} ASSISTANT: ", "{content}" + EOS, " ", stop=("USER:",),
                     default_system=AIROBOROS_SYSTEM),
    )
})


def get_template(name: str) -> TurnTemplate:
    return TEMPLATES.get(name)


def contextual_instruction(blocks: Iterable[tuple[dict[str, str], str]], instruction: str) -> str:
    """airoboros' closed-context form of a user turn: each block's metadata and text, then the
    instruction. docs/recipe.md lists the markers."""
    parts = []
    for metadata, text in blocks:
        meta = "\n".join(f"{key}: {value}" for key, value in metadata.items())
        parts.append(f"BEGININPUT\nBEGINCONTEXT\n{meta}\nENDCONTEXT\n{text}\nENDINPUT")
    return "\n".join([*parts, f"BEGININSTRUCTION\n{instruction}\nENDINSTRUCTION"])
