"""Chat and instruction data for the SFT stage: sources read through the `datasets` library, each row
mapped by its schema's adapter onto a Conversation (records.py), deduplicated across sources (the
higher-priority copy wins) and decontaminated against the evaluation questions.

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

Every row is read through one checker (Row), whatever its schema: a field of the wrong type (a turn that is
a string, null or a list, a conversation that is an object, a list or a number where text belongs) stops the
preparation before any work with one line naming the file, the row and the field. Empty text is not an
error but nothing to learn: empty turns, and exchanges left without a question or a reply, are dropped, and
a row left with nothing; the manifest counts both per source (dropped_empty_turns, dropped_empty_rows).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import partial
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable, Iterable

from rationale_loop.config import ConfigError, source_configs, unknown_choice
from rationale_loop.data.decontaminate import NEAR_DUPLICATE, NGRAM, SEMANTIC, Contamination, Match
from rationale_loop.data.formats import ReasoningFormat, TINYCOT
from rationale_loop.data.public import split_gsm8k_solution
from rationale_loop.data.templates import Segment, TurnTemplate, get_template
from rationale_loop.errors import DataError
from rationale_loop.records import Conversation, Turn, _numbered_rows, read_jsonl, write_json_atomic, write_jsonl_atomic

ROLE_OF = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant"}


def _kind(value: Any) -> str:
    """What a JSON value is, for an error message (never its repr: a row can be long)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


class Row:
    """One row of a source, read field by field with every type checked. The one rule for every schema:
    a value of the wrong type (a list or an object where text belongs, a string where a list of turns
    does, a turn that is not an object) stops the preparation with a one-line DataError naming the file,
    the row and the field, before any work; a text that is null, empty or whitespace is empty, and what is
    empty is dropped and counted by the caller (`Counts`), never learned."""

    def __init__(self, row: Any, where: str):
        if not isinstance(row, dict):
            raise DataError(f"{where}: the row is {_kind(row)}, expected an object")
        self.row, self.where = row, where

    def fail(self, field_name: str, value: Any, expected: str) -> DataError:
        return DataError(f"{self.where}: field {field_name} is {_kind(value)}, expected {expected}")

    def text(self, key: str, value: Any = None, field_name: str | None = None, numbers: bool = False) -> str:
        """A text field, stripped; null is empty. `numbers`: a number is its text (an answer)."""
        value = self.row.get(key) if field_name is None else value
        if value is None:
            return ""
        if isinstance(value, str):
            return value.strip()
        if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise self.fail(field_name or key, value, "a string" + (" or a number" if numbers else ""))

    def messages(self, key: str, role_key: str, text_key: str, value: Any = None, field_name: str | None = None) -> list[tuple[str, str]]:
        """A list of turns, each an object with a string role and a string (or null) text: [(role, text)]."""
        name = field_name or key
        value = self.row.get(key) if field_name is None else value
        if not isinstance(value, (list, tuple)):
            raise self.fail(name, value, f"a list of turns ({{{role_key!r}: ..., {text_key!r}: ...}})")
        out = []
        for index, entry in enumerate(value):
            where = f"{name}[{index}]"
            if not isinstance(entry, dict):
                raise self.fail(where, entry, f"an object with {role_key!r} and {text_key!r}")
            role_name = entry.get(role_key)
            if not isinstance(role_name, str):
                raise self.fail(f"{where}.{role_key}", role_name, "a string")
            role = ROLE_OF.get(role_name.lower())
            if role is None:
                raise DataError(f"{self.where}: field {where}.{role_key} is the unknown role {role_name[:40]!r} "
                                f"(known: {', '.join(sorted(ROLE_OF))})")
            out.append((role, self.text(text_key, entry.get(text_key), f"{where}.{text_key}")))
        return out


@dataclass
class Counts:
    """What a source's rows lost to emptiness: turns with no text, and rows left with nothing to learn."""

    empty_turns: int = 0
    empty_rows: int = 0


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


def pack(texts: Iterable[str], tokenizer: Any, length: int) -> list[tuple[str, tuple[tuple[int, int], ...]]]:
    """Documents joined by EOS and cut into pieces of at most `length` tokens once BOS is added in front.
    A piece is cut at a token boundary and decoded back to text; a few tokens of slack cover the
    re-tokenization of its edges, so no piece is dropped as too long. Each piece comes with the spans of
    document text in it (templates.Segment.data): only the EOS between documents is a real EOS, a `</s>`
    written in a document is text."""
    from rationale_loop.encode import special_token_ids

    specials = special_token_ids(tokenizer)
    eos, eos_id = tokenizer.eos_token or "", tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        text = text.strip()
        if any(token in text for token in specials):
            ids += tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [eos_id]
        else:
            ids += tokenizer(text + eos, add_special_tokens=False)["input_ids"]
    size = max(1, length - 1 - 4)
    out = []
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        piece = tokenizer.decode(chunk)
        ends = sum(1 for token in chunk if token == eos_id)
        if eos and piece.count(eos) == ends and not any(token in piece for token in specials if token != eos):
            cuts = [i for i in range(len(piece)) if piece.startswith(eos, i)]
        else:  # a document's own special-token text in the piece: decoded apart from the real EOS between documents
            runs, run = [], []
            for token in chunk:
                if token == eos_id:
                    runs.append(run)
                    run = []
                else:
                    run.append(token)
            parts = [tokenizer.decode(r) if r else "" for r in [*runs, run]]
            piece, cuts = "", []
            for index, part in enumerate(parts):
                piece += part
                if index < len(parts) - 1:
                    cuts.append(len(piece))
                    piece += eos
        spans, position = [], 0
        for cut in [*cuts, len(piece)]:
            if cut > position:
                spans.append((position, cut))
            position = cut + len(eos)
        if piece.strip():
            out.append((piece, tuple(spans)))
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


@dataclass
class Selected:
    """A source's rows after its column renames and exclusion filters, the first max_rows of them."""

    path: str
    column_names: list[str]
    rows: list[tuple[int, dict[str, Any]]]  # (row number in the file, from 0; the row)
    excluded: int = 0  # rows an exclusion filter dropped
    counts: Counts = field(default_factory=Counts)  # turns and rows dropped as empty when the rows are read

    def where(self, index: int) -> str:
        """How an error names a row: the file and the 1-based row."""
        return f"{self.path}: row {index + 1}"

    def require(self, schema: str, columns: Iterable[str]) -> None:
        missing = [c for c in columns if c not in self.column_names]
        if missing:
            raise DataError(f"{self.path}: schema {schema} needs column(s) {missing}; the file has {self.column_names}")


def select_rows(path: str, split: str = "train", max_rows: int = 0, columns: dict[str, str] | None = None,
                exclude: dict[str, str] | None = None, name: str | None = None) -> Selected:
    """Load a source, rename its columns (`columns`: schema column -> the file's column, so any file fits a
    schema), drop every row where a column matches its `exclude` regular expression (the recipe's
    reddit-instruct subset: no brackets in the title), and keep the first max_rows of the rest."""
    import re

    rows = load_rows(path, split, name)
    renames = {theirs: ours for ours, theirs in (columns or {}).items() if theirs != ours}
    absent = [theirs for theirs in renames if theirs not in rows.column_names]
    if absent:
        raise DataError(f"{path}: columns {absent} (named in the source's `columns`) are not in the file; it has {rows.column_names}")
    if renames:
        rows = rows.rename_columns(renames)
    patterns = {column: re.compile(pattern) for column, pattern in (exclude or {}).items()}
    unknown = [c for c in patterns if c not in rows.column_names]
    if unknown:
        raise DataError(f"{path}: `exclude` names columns {unknown} that the file does not have; it has {rows.column_names}")
    kept, excluded = [], 0
    for index, row in enumerate(rows):
        if max_rows and len(kept) >= max_rows:
            break
        if isinstance(row, dict) and any(pattern.search(str(row[column] or "")) for column, pattern in patterns.items()):
            excluded += 1
        else:
            kept.append((index, row))
    return Selected(path, list(rows.column_names), kept, excluded)


class PlainRows:
    """Rows read without `datasets` (json_rows): the little of a Dataset that select_rows uses. A row
    missing a column holds None there, as in a Dataset."""

    def __init__(self, rows: list[Any]):
        self.rows = rows
        self.column_names = list(dict.fromkeys(key for row in rows if isinstance(row, dict) for key in row))

    def rename_columns(self, renames: dict[str, str]) -> "PlainRows":
        return PlainRows([{renames.get(k, k): v for k, v in row.items()} if isinstance(row, dict) else row for row in self.rows])

    def __iter__(self) -> Any:
        for row in self.rows:
            yield {column: row.get(column) for column in self.column_names} if isinstance(row, dict) else row


def json_rows(path: Path) -> PlainRows | None:
    """A local JSON lines file (or a .json file holding one array of rows) read as its JSON says, not through
    `datasets`: where a field's type differs between rows, its JSON reader turns the odd values into JSON
    text (or, through pandas, "5" into 5), and a list would be trained on as its text. Each row's types are
    then checked by its schema's adapter (Row), which names the row and the field. A broken line raises
    naming it; None for a .json file that is neither (left to `datasets`)."""
    import json

    try:
        return PlainRows([row for _, row in _numbered_rows(path, strip_bom=True)])
    except DataError:
        if path.suffix != ".json":
            raise
        try:
            whole = json.loads(path.read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError):
            raise DataError(f"{path}: not JSON lines, nor one JSON array of rows") from None
        return PlainRows(whole) if isinstance(whole, list) else None


def load_rows(path: str, split: str = "train", name: str | None = None) -> Any:
    """A source's rows: a local JSON lines file as its JSON says (json_rows); else a `datasets.Dataset`: a
    JSON, Parquet or CSV file, a folder written by save_to_disk, a folder laid out like a hub dataset (data files named by split, or a README's configs),
    or (with a network) a hub id; `name` is the dataset's config (gsm8k: main)."""
    import datasets

    local = Path(path)
    builders = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
    if local.is_file() and local.suffix in (".json", ".jsonl") and split == "train":
        rows = json_rows(local)
        if rows is not None:
            return rows
    try:
        if local.is_dir() and (local / "dataset_info.json").exists():
            return datasets.load_from_disk(str(local))
        if local.is_file() and local.suffix in builders:
            return datasets.load_dataset(builders[local.suffix], data_files=str(local), split=split)
        if local.is_file():
            raise DataError(f"{path}: not a file datasets can read (.json, .jsonl, .parquet, .csv, or a save_to_disk folder)")
        return datasets.load_dataset(path, name, split=split)
    except DataError:
        raise
    except Exception as error:  # datasets names neither the line nor, often, the file
        if local.is_file() and local.suffix in (".json", ".jsonl"):
            for _ in read_jsonl(local):  # raises naming the first broken line
                pass
        raise DataError(f"{path}: cannot be read ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None


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


def instruction_key(instruction: str) -> str:
    """uuid5 of a conversation's first user turn, normalized (case and whitespace): the identity dedup goes by."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, " ".join(instruction.lower().split())))


# NFC and NFKC normalizers compose code points, at most 4 into 1 (U+1F82, an alpha with three marks;
# decomposing never shrinks a text): the characters one token stands for, at most.
NORMALIZER_SLACK = 4


def row_reach(tokenizer: Any, max_length: int) -> int:
    """The most characters a conversation of max_length tokens can hold: one longer is over-length whatever
    its text, so it is dropped (or cut) without being rendered, tokenized or n-grammed whole; what a 45 MB
    row costs beyond reading it is bounded by max_length. A token stands for at most as many characters
    as its vocabulary entry spells (a byte-level BPE entry spells each byte as one character, a
    byte-fallback piece "<0xE2>" one byte as six), times what a normalizer composes. The bound is
    conservative, no row it drops could fit, for the tokenizers of causal models: byte-level BPE (GPT-2's,
    Llama 3's, Qwen's) and SentencePiece with byte fallback (Llama 2's, Mistral's). Not for a normalizer
    that deletes or collapses characters (T5's collapses runs of spaces), nor for a tokenizer that fuses
    unknown characters into one token: neither is among them."""
    return NORMALIZER_SLACK * max(map(len, tokenizer.get_vocab()), default=1) * max_length


@dataclass
class Mixed:
    items: list[Any]  # what was kept, in order: Conversations, or (id, text) documents
    kept: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    contaminated: dict[str, int] = field(default_factory=dict)  # a shared word n-gram with a held-out text
    near_duplicates: dict[str, int] = field(default_factory=dict)  # the instruction is a held-out text reworded
    semantic_duplicates: dict[str, int] = field(default_factory=dict)  # the instruction is a held-out text paraphrased
    removed: list[dict[str, Any]] = field(default_factory=list)  # each contaminated item: what, why, and what it matched


COUNTER_OF = {NGRAM: "contaminated", NEAR_DUPLICATE: "near_duplicates", SEMANTIC: "semantic_duplicates"}


def conversation_view(conversation: Conversation, reach: int | None = None) -> tuple[str, str, str | None, str]:
    """(dedup key, the text the n-gram check reads, the instruction the near-duplicate checks read, id).
    With `reach` (row_reach), the first `reach` characters of each: what fit() keeps of a row (its first
    turns, at most `reach` characters in all) lies within them, so all of it is checked, and the rest of a
    huge row, never learned, is never read."""
    first = next((t.content for t in conversation.turns if t.role == "user"), "")
    if reach is None:
        return instruction_key(first), " ".join(t.content for t in conversation.turns), first, conversation.id
    text = " ".join(t.content[:reach] for t in conversation.turns)[: reach + len(conversation.turns)]  # a space per turn
    return instruction_key(first[:reach]), text, first[:reach], conversation.id


def document_view(document: tuple[str, str]) -> tuple[str, str, str | None, str]:
    """A plain-text document: the whole text is its identity, and a long document is no near-duplicate of
    a question, so only the n-gram check reads it."""
    doc_id, text = document
    return str(uuid.uuid5(uuid.NAMESPACE_OID, " ".join(text.lower().split()))), text, None, doc_id


def mix(sources: list[tuple[str, int, list[Any]]], guard: Contamination,
        view: Callable[[Any], tuple[str, str, str | None, str]] = conversation_view) -> Mixed:
    """Sources (name, priority, items) merged: higher priority first, the first copy of an item (by its
    view's key) wins; an item the guard matches to a held-out text (decontaminate.py) is dropped and
    recorded in `removed`."""
    seen: set[str] = set()
    result = Mixed([])
    candidates: list[tuple[str, Any, str | None]] = []
    ordered = sorted(sources, key=lambda source: -source[1])
    for name, _, _ in ordered:
        for counter in ("kept", "duplicates", *COUNTER_OF.values()):
            getattr(result, counter)[name] = 0

    def drop(name: str, item: Any, found: Match) -> None:
        _, text, _, item_id = view(item)
        getattr(result, COUNTER_OF[found.reason])[name] += 1
        result.removed.append({"source": name, "id": item_id, "reason": found.reason, "score": found.score,
                               "text": text[:300], "held_out": guard.held_out[found.held_out][:300]})

    for name, _, items in ordered:
        for item in items:
            key, text, instruction, _ = view(item)
            if key in seen:
                result.duplicates[name] += 1
                continue
            seen.add(key)
            found = guard.match(text, instruction)
            if found:
                drop(name, item, found)
            else:
                candidates.append((name, item, instruction))
    # The embedding check last and batched: it is the slow one, and needs only the survivors' instructions.
    semantic = iter(guard.semantic_matches([instruction for _, _, instruction in candidates if instruction is not None]))
    for name, item, instruction in candidates:
        found = next(semantic) if instruction is not None else None
        if found:
            drop(name, item, found)
        else:
            result.kept[name] += 1
            result.items.append(item)
    return result


def fit(conversation: Conversation, template: Any, encoder: Any, truncate: bool, reach: int) -> tuple[list[Any] | None, int, str]:
    """The conversation rendered by `template` if it fits the encoder's max_length: (segments, tokens,
    "fits"). Too long: with `truncate`, the longest run of its first turns that ends with an assistant turn
    and fits ("truncated"), else nothing ("dropped"). Lengths are counted as training encodes them. A run
    of turns (with the system text) longer than `reach` characters (row_reach) cannot fit: never rendered
    nor tokenized."""
    sizes = list(accumulate((len(turn.content) for turn in conversation.turns), initial=len(conversation.system or "")))
    if sizes[-1] <= reach:
        segments = template.segments(conversation, encoder.tokenizer.eos_token)
        encoded = encoder.encode_segments(segments)
        if encoded is not None:
            return segments, len(encoded.input_ids), "fits"
    if truncate:
        ends = [i + 1 for i, turn in enumerate(conversation.turns) if turn.role == "assistant" and i + 1 < len(conversation.turns)]
        for end in (end for end in reversed(ends) if sizes[end] <= reach):
            shorter = template.segments(Conversation(conversation.turns[:end], conversation.system, conversation.id), encoder.tokenizer.eos_token)
            encoded = encoder.encode_segments(shorter)
            if encoded is not None:
                return shorter, len(encoded.input_ids), "truncated"
    return None, 0, "dropped"


def header_in_prompt(segments: list[Any], header: str) -> list[Any]:
    """A worked problem's reply opens with the reasoning layout's rationale header, with which the rounds'
    prompts end: moved from the learned reply to the prompt before it, so the mix teaches what the rounds ask."""
    out: list[Any] = []
    for segment in segments:
        if segment.learned and segment.text.startswith(header) and out and not out[-1].learned:
            out[-1] = Segment(out[-1].text + header, False, out[-1].data)
            shift = len(header)
            segment = Segment(segment.text[shift:], True,
                              tuple((max(0, s - shift), e - shift) for s, e in segment.data if e > shift))
        out.append(segment)
    return out


# Schemas of worked reasoning problems: rendered in the task's reasoning format, not the chat formats.
REASONING_SCHEMAS = ("tinycot", "gsm8k")

QUESTION_COLUMNS = ("question", "prompt", "instruction", "problem", "input", "text")


def held_out_questions(path: str) -> list[str]:
    """The questions of an evaluation file (data.decontaminate_against: GSM8K's test split, say), from
    its first column named like a question. A hub id is read at its test split, in the config named
    after a colon when it has several (openai/gsm8k:main)."""
    if Path(path).is_file():
        selected = select_rows(path)
    else:  # a hub id, or a folder laid out like a hub dataset (or written by save_to_disk)
        dataset, _, name = path.rpartition(":") if ":" in path and not Path(path).exists() else (path, "", "")
        selected = select_rows(dataset, split="test", name=name or None)
    column = next((c for c in QUESTION_COLUMNS if c in selected.column_names), None)
    if column is None:
        raise DataError(f"data.decontaminate_against: {path} has no question column (looked for {', '.join(QUESTION_COLUMNS)}; "
                        f"it has {', '.join(selected.column_names)})")
    return [str(row[column]) for _, row in selected.rows if str(row[column] or "").strip()]


MIX_ROWS = "sft_mix.jsonl"
MIX_MANIFEST = "data_manifest.json"
PREFERENCE_ROWS = "preference_pairs.jsonl"
DECONTAMINATION = "decontamination.jsonl"  # each row dropped as a held-out text: source, id, reason, score, both texts


def prepare_sft_mix(data_cfg: Any, evaluation_texts: Iterable[str], tokenizer: Any, out: Path, seed: int,
                    max_length: int = 2048, reasoning_template: TurnTemplate | None = None) -> dict[str, Any]:
    """Load, adapt, dedup and decontaminate the configured sources once (against `evaluation_texts` and the
    files of data.decontaminate_against), render each conversation in the configured formats (a worked
    problem from a reasoning schema, TinyCoT or GSM8K, in `reasoning_template` instead (default tinycot): the turns the task's
    problems are asked in, so it is learned as the rounds ask; one longer
    than max_length tokens dropped or truncated, as data.too_long says; plain text is packed into rows of
    max_length tokens instead; preference pairs are rendered in the task's format into
    preference_pairs.jsonl, for the rounds' rank stage), and write into the round directory the
    rendered rows (sft_mix.jsonl: id, format, segments), what decontamination removed and why
    (decontamination.jsonl), and a manifest (data_manifest.json: rows per source after each filter and the
    turns and rows dropped as empty, rows
    per format, token-length percentiles). The manifest is written last: its presence says the mix is
    complete, and a failed preparation leaves nothing a later stage reads."""
    configured = source_configs(data_cfg)
    loaded, texts, preferences, rejected_of, selections = _load_sources(configured)
    guard = Contamination(ngram=data_cfg.decontaminate_ngram, threshold=data_cfg.near_duplicate_threshold,
                          embedding_model=data_cfg.embedding_model, embedding_threshold=data_cfg.embedding_threshold)
    guard.add(evaluation_texts)
    for path in data_cfg.decontaminate_against:
        guard.add(held_out_questions(path))
    reach = row_reach(tokenizer, max_length)
    merged = mix(loaded, guard, partial(conversation_view, reach=reach))
    plain = mix(texts, guard, document_view)
    preferred = mix(preferences, guard)
    # Ranked beside the mined pairs, so asked as they are: the prompt in the task's format (a generation prompt),
    # each reply bare (the rank stage's encoder adds the format's end of a reply, as to every response).
    template = reasoning_template or get_template(TINYCOT.name)
    pair_rows = [{"id": c.id, "prompt": template.prompt(Conversation(c.turns[:1], c.system), tokenizer.eos_token),
                  "chosen": c.turns[1].content, "rejected": rejected_of[c.id]} for c in preferred.items]
    reasoning_sources = {name for name, source in configured.items() if source.schema in REASONING_SCHEMAS}
    rendered = _render(merged.items, data_cfg, reasoning_sources, template, tokenizer, max_length, seed, reach)
    if texts:
        _add_packed_text(rendered, [text for _, text in plain.items], tokenizer, max_length)
    rendered.lengths.sort()
    lengths = rendered.lengths
    manifest = {
        "sources": {name: {"path": configured[name].path, "schema": configured[name].schema, "excluded": selections[name].excluded,
                           # turns with no text dropped, and rows dropped as left with nothing to learn (Row, exchanges)
                           "dropped_empty_turns": selections[name].counts.empty_turns,
                           "dropped_empty_rows": selections[name].counts.empty_rows, "rows": len(items),
                           "duplicates": filtered.duplicates[name], "contaminated": filtered.contaminated[name],
                           "near_duplicates": filtered.near_duplicates[name],
                           "semantic_duplicates": filtered.semantic_duplicates[name], "kept": filtered.kept[name]}
                    for filtered, group in ((merged, loaded), (plain, texts), (preferred, preferences)) for name, _, items in group},
        "preference_pairs": len(pair_rows),
        "decontamination": {"held_out_texts": len(guard.held_out), "ngram": data_cfg.decontaminate_ngram,
                            "near_duplicate_threshold": data_cfg.near_duplicate_threshold,
                            "embedding_model": data_cfg.embedding_model, "embedding_threshold": data_cfg.embedding_threshold,
                            "removed": len(merged.removed) + len(plain.removed) + len(preferred.removed)},
        "formats": rendered.per_format,
        # rendered rows longer than sft.max_length tokens: dropped (data.too_long=drop, the recipe's choice) or
        # cut after the last assistant turn that fits (data.too_long=truncate; dropped when not even the first fits)
        "over_length": rendered.over_length,
        "rendered_rows": len(rendered.rows),
        "token_length_percentiles": {f"p{q}": lengths[min(len(lengths) - 1, len(lengths) * q // 100)] for q in (50, 90, 99, 100)} if lengths else {},
    }
    write_jsonl_atomic(out / MIX_ROWS, rendered.rows)
    write_jsonl_atomic(out / PREFERENCE_ROWS, pair_rows)
    write_jsonl_atomic(out / DECONTAMINATION, [*merged.removed, *plain.removed, *preferred.removed])
    write_json_atomic(out / MIX_MANIFEST, manifest)
    return manifest


def _load_sources(configured: dict[str, Any]) -> tuple[list, list, list, dict[str, str], dict[str, "Selected"]]:
    """Each configured source's rows, by schema: conversations, plain texts, preference pairs (their
    conversations and each one's rejected reply), with every source's selection (counts of what was left out)."""
    loaded, texts, preferences = [], [], []
    rejected_of: dict[str, str] = {}
    selections: dict[str, Selected] = {}
    for name, source in configured.items():
        selected = select_rows(source.path, source.split, source.max_rows, source.columns, source.exclude)
        selections[name] = selected
        if source.schema == TEXT_SCHEMA:
            texts.append((name, source.priority, documents(name, selected)))
        elif source.schema == PREFERENCE_SCHEMA:
            pairs = preference_pairs(name, selected)
            rejected_of.update((conversation.id, rejected) for conversation, rejected in pairs)
            preferences.append((name, source.priority, [conversation for conversation, _ in pairs]))
        else:
            loaded.append((name, source.priority, conversations(name, selected, source.schema)))
    return loaded, texts, preferences, rejected_of, selections


@dataclass
class _Rendered:
    """The mix's rendered rows, with their count per format, token lengths and rows over max_length."""

    rows: list[dict[str, Any]]
    per_format: dict[str, int]
    lengths: list[int]
    over_length: dict[str, dict[str, int]]


def _render(conversations_kept: list[Conversation], data_cfg: Any, reasoning_sources: set[str], reasoning_template: TurnTemplate,
            tokenizer: Any, max_length: int, seed: int, reach: int) -> _Rendered:
    """Each conversation in its formats (a worked problem in the task's reasoning format; others in every
    format of data.formats, or one drawn per conversation), fitted to max_length as data.too_long says."""
    import random

    from rationale_loop.encode import Encoder

    rng = random.Random(f"formats/{seed}")
    rendered = _Rendered([], {name: 0 for name in data_cfg.formats}, [],
                         {"dropped": {name: 0 for name in data_cfg.formats}, "truncated": {name: 0 for name in data_cfg.formats}})
    encoder = Encoder(tokenizer, max_length)
    reasoning_format = reasoning_template.name
    if reasoning_sources:
        for outcome in rendered.over_length.values():
            outcome.setdefault(reasoning_format, 0)
        rendered.per_format.setdefault(reasoning_format, 0)
    for conversation in conversations_kept:
        if conversation.id.rsplit("/", 1)[0] in reasoning_sources:
            formats = [reasoning_format]
        elif data_cfg.multi_format == "all":
            formats = list(data_cfg.formats)
        else:
            formats = [rng.choice(list(data_cfg.formats))]
        for name in formats:
            template = reasoning_template if name == reasoning_format else get_template(name)
            segments, length, outcome = fit(conversation, template, encoder, data_cfg.too_long == "truncate", reach)
            if outcome != "fits":
                rendered.over_length[outcome][name] += 1
            if segments is None:
                continue
            if formats == [reasoning_format] and conversation.id.rsplit("/", 1)[0] in reasoning_sources:
                segments = header_in_prompt(segments, f"{TINYCOT.rationale_header}\n")
            rendered.rows.append({"id": conversation.id, "format": name, "segments": [[s.text, s.learned] for s in segments],
                                  "data": [[list(span) for span in s.data] for s in segments]})
            rendered.per_format[name] += 1
            rendered.lengths.append(length)
    return rendered


def _add_packed_text(rendered: _Rendered, texts: list[Any], tokenizer: Any, max_length: int) -> None:
    """Plain text packed into rows of max_length tokens, learned whole."""
    from rationale_loop.encode import Encoder

    encoder = Encoder(tokenizer, max_length)
    before = len(rendered.rows)
    for index, (piece, spans) in enumerate(pack(texts, tokenizer, max_length)):
        rendered.rows.append({"id": f"text/{index:06d}", "format": TEXT_SCHEMA, "segments": [[piece, True]], "data": [[list(s) for s in spans]]})
        rendered.lengths.append(len(encoder.prompt_ids("")) + len(encoder.segment_ids(Segment(piece, True, spans))))
    rendered.per_format[TEXT_SCHEMA] = len(rendered.rows) - before


def read_preference_pairs(out: Path) -> list[dict[str, str]]:
    """The rendered preference pairs prepare_sft_mix wrote (prompt, chosen, rejected), or none."""
    if not (out / MIX_MANIFEST).exists() or not (out / PREFERENCE_ROWS).exists():
        return []
    return list(read_jsonl(out / PREFERENCE_ROWS))


def read_sft_mix(out: Path) -> list[Any]:
    """The rendered rows prepare_sft_mix wrote, as training items."""
    from rationale_loop.objectives import ConversationItem  # torch: loaded when a mix is read for training

    if not (out / MIX_MANIFEST).exists():
        return []
    items = []
    for row in read_jsonl(out / MIX_ROWS):
        # "data": each segment's spans of data text (special-token strings there are text); absent in a mix
        # written before it existed, whose segments are then read as they always were.
        spans = row.get("data") or [[] for _ in row["segments"]]
        items.append(ConversationItem(tuple(Segment(text, learned, tuple(tuple(span) for span in data))
                                            for (text, learned), data in zip(row["segments"], spans))))
    return items
