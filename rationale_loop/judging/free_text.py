"""Reading an answer from free text, as a model that never learned the task's answer header writes it.

The base model, evaluated before SFT (phases/base_eval.py), answers in its own words: "so the answer is 72",
"#### 72", "\\boxed{72}", or a sentence ending in the number. Its held-out accuracy is read leniently, in
this order: the format's own answer header (a model that already follows the layout), the last \\boxed{},
the last "####", the last "the answer is", the last number. A completion with none of them is invalid
("no_answer"), one cut off by the token limit "truncated", as for every other sample (rollouts.judge).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rationale_loop.data.formats import Parsed, ReasoningFormat

NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
# Each pattern's last match is the answer; the first pattern that matches at all wins.
ANSWER_PATTERNS = (
    re.compile(r"\\boxed\{([^{}]*)\}"),
    re.compile(r"####\s*([^\n]+)"),
    re.compile(r"answer\s+is\s*:?\s*\**\s*([^\n]+?)\s*\**\s*(?:\.\s|\.?$)", re.IGNORECASE | re.MULTILINE),
    re.compile(rf"({NUMBER})"),
)


def read_free_answer(text: str) -> str | None:
    for pattern in ANSWER_PATTERNS:
        found = pattern.findall(text)
        if found:
            answer = found[-1].strip().rstrip(".").strip()
            number = re.fullmatch(rf"\s*({NUMBER})\s*(?:[a-zA-Z%]+\s*)?", answer)  # "72 apples" -> 72
            if number:
                answer = number.group(1)
            return answer.replace("$", "").replace(",", "") if number else answer
    return None


@dataclass(frozen=True)
class FreeTextReading:
    """A prompt format whose completions are read as free text: prompts as the format asks, answers as
    read_free_answer finds them. Stands in for the format wherever rollouts judge a sample."""

    fmt: ReasoningFormat

    @property
    def reply_end(self) -> str:
        return self.fmt.reply_end

    def prompt(self, question: str) -> str:
        return self.fmt.prompt(question)

    def hinted_prompt(self, question: str, answer: str) -> str:
        return self.fmt.hinted_prompt(question, answer)

    def parse(self, completion: str) -> Parsed:
        strict = self.fmt.parse(completion)
        if strict.valid:
            return strict
        text = completion
        for marker in self.fmt.turn_markers:  # the model's turn ends at its end-of-turn marker
            if marker:
                text = text.partition(marker)[0]
        answer = read_free_answer(text)
        if not answer:
            return Parsed(None, None, "no_answer")
        return Parsed(text.strip(), answer)
