"""Prompt formats for reasoning data: how a question becomes a prompt, how a rationale and an answer
become the response the model learns, and how a completion is split back into the two.

The TinyCoT format is the recipe's reasoning format:

    ### User:
    {question}

    ### Rationale:
    {rationale}

    ### Answer:
    {answer}

The prompt ends right after the `### Rationale:` header, so the model's whole completion is its own
rationale followed by its answer; splitting on the answer header recovers both.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    user_header: str
    rationale_header: str
    answer_header: str

    @property
    def stop(self) -> tuple[str, ...]:
        """Where a completion ends when the model writes on past its answer: the next turn's header.
        (A pretrained model often does; nothing after the answer's line is read anyway.)"""
        return (f"\n{self.user_header}",)

    def prompt(self, question: str) -> str:
        return f"{self.user_header}\n{question.strip()}\n\n{self.rationale_header}\n"

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
        if self.user_header in rationale or self.rationale_header in rationale:
            return Parsed(None, None, "malformed")
        answer = tail.strip().split("\n", 1)[0].strip()
        if not answer:
            return Parsed(rationale, None, "no_answer")
        return Parsed(rationale, answer)


TINYCOT = ReasoningFormat("### User:", "### Rationale:", "### Answer:")

FORMATS: dict[str, ReasoningFormat] = {"tinycot": TINYCOT}


def get_format(name: str) -> ReasoningFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown prompt format {name!r}; known: {sorted(FORMATS)}") from None

