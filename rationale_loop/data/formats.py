"""Prompt formats for reasoning data: how a question becomes a prompt, how a rationale and an answer
become the response the model learns, and how a completion is split back into the two.

A reasoning format is a turn template (templates.py: how a user turn and the assistant's reply are
wrapped, and where a turn ends) with a reasoning layout inside the reply: TinyCoT's rationale and answer
headers. With the `tinycot` template, the recipe's reasoning format:

    ### User:
    {question}

    ### Rationale:
    {rationale}

    ### Answer:
    {answer}

With `chat-ml`, the same layout inside Qwen's turns:

    <|im_start|>user
    {question}<|im_end|>
    <|im_start|>assistant
    ### Rationale:
    {rationale}

    ### Answer:
    {answer}<|im_end|>

The prompt ends right after the rationale header, so the model's whole completion is its own rationale
followed by its answer; splitting on the answer header recovers both. Every template of templates.py
is a reasoning format by this rule (`task.prompt_format`).
"""

from __future__ import annotations

from dataclasses import dataclass

from rationale_loop.data.templates import TEMPLATES, TurnTemplate
from rationale_loop.run.records import Conversation, Turn
from rationale_loop.config.registry import Registry


@dataclass(frozen=True)
class Parsed:
    """A completion split into its parts; `reason` says why it is invalid when it is."""

    rationale: str | None
    answer: str | None
    reason: str | None = None

    @property
    def valid(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class ReasoningFormat:
    template: TurnTemplate
    rationale_header: str = "### Rationale:"
    answer_header: str = "### Answer:"

    @property
    def name(self) -> str:
        return self.template.name

    @property
    def stop(self) -> tuple[str, ...]:
        """Where a completion ends when the model writes on past its answer: the template's end of turn or
        next turn. (A pretrained model often does; nothing after the answer's line is read anyway.)"""
        return self.template.stop

    @property
    def turn_markers(self) -> tuple[str, ...]:
        """The stop strings as they appear in text: a completion holding one has left its turn."""
        return tuple(marker.strip() for marker in self.stop)

    @property
    def reply_end(self) -> str:
        """How the template closes a reply, {eos} standing for the tokenizer's EOS: "{eos}" in most formats,
        "<|im_end|>" in chat-ml, " {eos}" in llama-2. The encoder learns it after every response."""
        return self.template.assistant.partition("{content}")[2]

    def prompt(self, question: str) -> str:
        user = Conversation((Turn("user", question.strip()),))
        return f"{self.template.prompt(user, eos='')}{self.rationale_header}\n"

    def hinted_prompt(self, question: str, answer: str) -> str:
        """STaR's rationalization prompt: the question with its gold answer given as a hint."""
        return self.prompt(f"{question.strip()}\n(Hint: the answer is {answer.strip()}.)")

    def response(self, rationale: str, answer: str) -> str:
        return f"{rationale.strip()}\n\n{self.answer_header}\n{answer.strip()}"

    def parse(self, completion: str) -> Parsed:
        """Split a completion into rationale and answer.

        Invalid (not incorrect) when the answer header is missing, when either side is empty, or when
        the model starts another turn before answering. Only the first line after the answer header is
        the answer: anything the model rambles on with afterwards is not part of it.
        """
        marker = f"\n{self.answer_header}"
        head, found, tail = completion.partition(marker)
        if not found:
            return Parsed(None, None, "no_answer")
        rationale = head.strip()
        if not rationale:
            return Parsed(None, None, "no_rationale")
        if self.rationale_header in rationale or any(marker in rationale for marker in self.turn_markers):
            return Parsed(None, None, "malformed")
        answer = tail.strip().split("\n", 1)[0]
        for marker in self.turn_markers:  # where a backend did not cut at the stop strings, the line ends the turn
            answer = answer.partition(marker)[0]
        answer = answer.strip()
        if not answer:
            return Parsed(rationale, None, "no_answer")
        return Parsed(rationale, answer)


#: task.prompt_format=model: the model's own chat template, read off its tokenizer (data/model_format.py).
MODEL_FORMAT = "model"
FORMATS: Registry[ReasoningFormat] = Registry(
    "task.prompt_format", {name: ReasoningFormat(template) for name, template in TEMPLATES.items()},
    also=f"{MODEL_FORMAT} (the model's own chat template)")
TINYCOT = FORMATS.get("tinycot")


def get_format(name: str) -> ReasoningFormat:
    return FORMATS.get(name)

