"""One adapter per schema: a checked row (rows.py) mapped onto a Conversation (records.py), the turns left
empty dropped and counted; plain text and preference pairs read beside them.

Schemas (`data.sources.<name>.schema`):
  sharegpt   {"conversations": [{"from": "system"|"human"|"gpt", "value": ...}]}
  messages   {"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}
  alpaca     {"instruction", "input" (optional), "output"}
  airoboros  {"instruction", "response"}, with an optional "system"
  tinycot    {"prompt", "rationale", "target"}: a reasoning problem, its reply in the reasoning layout
  gsm8k      {"question", "answer"}: the rationale before "####", the answer after it
  text       {"text"}: plain text (books, articles), every token learned; documents are joined with EOS and
             packed into rows of the SFT stage's length, so no row is mostly padding
  preference {"prompt" (or "question"), "chosen", "rejected"}, an optional "system": preference pairs, as
             orca_dpo_pairs (strings) or ultrafeedback_binarized (chosen and rejected as message lists,
             whose last assistant message is the reply) ship them. Not SFT data: each round's rank stage
             trains on them beside the pairs it mines (pair objectives: memphis, cpo_simpo)
"""

from __future__ import annotations

from typing import Callable, Iterable

from rationale_loop.config.errors import ConfigError, DataError
from rationale_loop.config.keys import unknown_choice
from rationale_loop.data.formats import ReasoningFormat, TINYCOT
from rationale_loop.data.public import split_gsm8k_solution
from rationale_loop.data.rows import Row, Selected
from rationale_loop.run.records import Conversation, Turn


def exchanges(turns: Iterable[tuple[str, str]], system: str | None = None) -> tuple[Conversation, int]:
    """Turns (role, text) as a Conversation with nothing empty in it, and how many turns were dropped. An
    exchange is the user turns since the last reply and the reply: an empty turn is dropped, and an exchange
    left without user text or without a reply is dropped whole (a model never learns to answer nothing, nor
    to answer no one). User turns after the last reply are kept (a prompt, never learned)."""
    kept: list[Turn] = []
    pending: list[Turn] = []
    dropped = 0
    for role, text in turns:
        if role == "system":
            system = text or None
        elif not text:
            dropped += 1 + (len(pending) if role == "assistant" else 0)
            pending = pending if role == "user" else []
        elif role == "user":
            pending.append(Turn("user", text))
        elif not pending:
            dropped += 1
        else:
            kept += [*pending, Turn("assistant", text)]
            pending = []
    return Conversation(tuple(kept + pending), system), dropped


def _reasoning_reply(fmt: ReasoningFormat, rationale: str, answer: str) -> str:
    return f"{fmt.rationale_header}\n{fmt.response(rationale, answer)}"


def _exchange(user: str, reply: str, system: str | None = None) -> tuple[Conversation, int]:
    return exchanges([("user", user), ("assistant", reply)], system or None)


def _gsm8k(row: Row) -> tuple[Conversation, int]:
    question, solution = row.text("question"), row.text("answer")
    if not solution:
        return _exchange(question, "")
    rationale, answer = split_gsm8k_solution(solution, row.where)
    return _exchange(question, _reasoning_reply(TINYCOT, rationale, answer) if rationale.strip() and answer.strip() else "")


def _tinycot(row: Row) -> tuple[Conversation, int]:
    rationale, target = row.text("rationale"), row.text("target", numbers=True)
    # A worked problem without its rationale or its answer teaches a reply the reasoning format calls invalid.
    return _exchange(row.text("prompt"), _reasoning_reply(TINYCOT, rationale, target) if rationale and target else "")


def _alpaca(row: Row) -> tuple[Conversation, int]:
    instruction = "\n\n".join(p for p in (row.text("instruction"), row.text("input")) if p)
    return _exchange(instruction, row.text("output"))


# schema -> (required columns, adapter: a checked row -> (conversation, turns dropped as empty))
ADAPTERS: dict[str, tuple[tuple[str, ...], Callable[[Row], tuple[Conversation, int]]]] = {
    "sharegpt": (("conversations",), lambda row: exchanges(row.messages("conversations", "from", "value"))),
    "messages": (("messages",), lambda row: exchanges(row.messages("messages", "role", "content"))),
    "alpaca": (("instruction", "output"), _alpaca),
    "airoboros": (("instruction", "response"), lambda row: _exchange(row.text("instruction"), row.text("response"), row.text("system"))),
    "tinycot": (("prompt", "rationale", "target"), _tinycot),
    "gsm8k": (("question", "answer"), _gsm8k),
}


TEXT_SCHEMA = "text"


def documents(source_name: str, selected: "Selected") -> list[tuple[str, str]]:
    """A plain-text source's documents as (id, text); empty ones skipped (counted in selected.counts)."""
    selected.require(TEXT_SCHEMA, ["text"])
    out = []
    for index, row in selected.rows:
        text = Row(row, selected.where(index)).text("text")
        if text:
            out.append((f"{source_name}/{index:06d}", text))
        else:
            selected.counts.empty_rows += 1
    return out


PREFERENCE_SCHEMA = "preference"


#: data.sources.<name>.schema's values: a chat or instruction schema of ADAPTERS, plain text, or preference pairs.
SCHEMAS = (*ADAPTERS, TEXT_SCHEMA, PREFERENCE_SCHEMA)


def check_schema(source_name: str, schema: str) -> None:
    if schema not in SCHEMAS:
        raise ConfigError(unknown_choice(f"data.sources.{source_name}.schema", schema, SCHEMAS))


def _reply(row: Row, column: str) -> str:
    """A chosen or rejected reply: a string, or a message list whose last assistant message it is."""
    value = row.row.get(column)
    if value is None or isinstance(value, str):
        return row.text(column)
    if not isinstance(value, (list, tuple)):
        raise row.fail(column, value, "a string or a list of messages")
    replies = [text for role, text in row.messages(column, "role", "content") if role == "assistant"]
    if not replies:
        raise DataError(f"{row.where}: field {column} holds no assistant message")
    return replies[-1]


def preference_pairs(source_name: str, selected: "Selected") -> list[tuple[Conversation, str]]:
    """A preference source's rows as (conversation of the prompt and the chosen reply, rejected reply);
    as a Conversation, a pair is deduplicated and decontaminated by the same rules as chat data. A row with
    an empty prompt, chosen or rejected reply is dropped (counted in selected.counts)."""
    prompt_column = "question" if "prompt" not in selected.column_names and "question" in selected.column_names else "prompt"
    selected.require(PREFERENCE_SCHEMA, [prompt_column, "chosen", "rejected"])
    out = []
    for index, row in selected.rows:
        checked = Row(row, selected.where(index))
        prompt = checked.text("prompt") or checked.text("question")  # a file may mix the two (orca beside ultrafeedback)
        chosen, rejected = _reply(checked, "chosen"), _reply(checked, "rejected")
        if not (prompt and chosen and rejected):
            selected.counts.empty_rows += 1
            selected.counts.empty_turns += sum(1 for text in (prompt, chosen, rejected) if not text)
        elif chosen != rejected:
            turns = (Turn("user", prompt), Turn("assistant", chosen))
            out.append((Conversation(turns, checked.text("system") or None, id=f"{source_name}/{index:06d}"), rejected))
    return out


def conversations(source_name: str, selected: "Selected", schema: str) -> list[Conversation]:
    """Every selected row of a chat or instruction source as a Conversation, each keeping where it came from.
    Every field's type is checked (Row): a wrong one stops with the file, row and field. Empty turns are
    dropped (exchanges), and a row left with no reply to learn; both are counted in selected.counts."""
    check_schema(source_name, schema)
    required, adapt = ADAPTERS[schema]
    selected.require(schema, required)
    out = []
    for index, row in selected.rows:
        conversation, dropped = adapt(Row(row, selected.where(index)))
        selected.counts.empty_turns += dropped
        if any(t.role == "assistant" for t in conversation.turns):
            out.append(Conversation(conversation.turns, conversation.system, id=f"{source_name}/{index:06d}"))
        else:  # nothing left to learn
            selected.counts.empty_rows += 1
    return out


# Schemas of worked reasoning problems: rendered in the task's reasoning format, not the chat formats.
REASONING_SCHEMAS = ("tinycot", "gsm8k")
