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
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from rationale_loop.data.formats import ReasoningFormat, TINYCOT
from rationale_loop.errors import DataError
from rationale_loop.records import Conversation, Turn

ROLE_OF = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant"}


def _turns(entries: Iterable[dict[str, Any]], role_key: str, text_key: str, where: str) -> Conversation:
    system, turns = None, []
    for entry in entries:
        role = ROLE_OF.get(str(entry.get(role_key, "")).lower())
        if role is None:
            raise DataError(f"{where}: unknown role {entry.get(role_key)!r} (known: {', '.join(sorted(ROLE_OF))})")
        text = str(entry.get(text_key) or "").strip()
        if role == "system":
            system = text
        else:
            turns.append(Turn(role, text))
    return Conversation(tuple(turns), system)


def _reasoning_reply(fmt: ReasoningFormat, rationale: str, answer: str) -> str:
    return f"{fmt.rationale_header}\n{fmt.response(rationale, answer)}"


def _gsm8k(row: dict[str, Any], where: str) -> Conversation:
    from rationale_loop.data.public import split_gsm8k_solution

    rationale, answer = split_gsm8k_solution(str(row["answer"]), where)
    return Conversation((Turn("user", str(row["question"]).strip()), Turn("assistant", _reasoning_reply(TINYCOT, rationale, answer))))


ADAPTERS: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any], str], Conversation]]] = {
    "sharegpt": (("conversations",), lambda row, where: _turns(row["conversations"], "from", "value", where)),
    "messages": (("messages",), lambda row, where: _turns(row["messages"], "role", "content", where)),
    "alpaca": (("instruction", "output"), lambda row, where: Conversation((
        Turn("user", "\n\n".join(p for p in (str(row["instruction"]).strip(), str(row.get("input") or "").strip()) if p)),
        Turn("assistant", str(row["output"]).strip())))),
    "airoboros": (("instruction", "response"), lambda row, where: Conversation((
        Turn("user", str(row["instruction"]).strip()), Turn("assistant", str(row["response"]).strip())), row.get("system") or None)),
    "tinycot": (("prompt", "rationale", "target"), lambda row, where: Conversation((
        Turn("user", str(row["prompt"]).strip()),
        Turn("assistant", _reasoning_reply(TINYCOT, str(row["rationale"]), str(row["target"])))))),
    "gsm8k": (("question", "answer"), _gsm8k),
}


TEXT_SCHEMA = "text"


def documents(source_name: str, selected: "Selected") -> list[tuple[str, str]]:
    """A plain-text source's documents as (id, text); empty ones skipped."""
    selected.require(TEXT_SCHEMA, ["text"])
    return [(f"{source_name}/{index:06d}", str(row["text"])) for index, row in selected.rows if str(row["text"] or "").strip()]


def pack(texts: Iterable[str], tokenizer: Any, length: int) -> list[str]:
    """Documents joined by EOS and cut into pieces of at most `length` tokens once BOS is added in front.
    A piece is cut at a token boundary and decoded back to text; a few tokens of slack cover the
    re-tokenization of its edges, so no piece is dropped as too long."""
    eos = tokenizer.eos_token or ""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text.strip() + eos, add_special_tokens=False)["input_ids"]
    size = max(1, length - 1 - 4)
    pieces = (tokenizer.decode(ids[i : i + size]) for i in range(0, len(ids), size))
    return [piece for piece in pieces if piece.strip()]


PREFERENCE_SCHEMA = "preference"


def _reply(value: Any, where: str, column: str) -> str:
    """A chosen or rejected reply: a string, or a message list whose last assistant message it is."""
    if isinstance(value, str):
        return value.strip()
    replies = [m.get("content", "") for m in value or [] if isinstance(m, dict) and ROLE_OF.get(str(m.get("role", "")).lower()) == "assistant"]
    if not replies:
        raise DataError(f"{where}: {column} holds no assistant message")
    return str(replies[-1]).strip()


def preference_pairs(source_name: str, selected: "Selected") -> list[tuple[Conversation, str]]:
    """A preference source's rows as (conversation of the prompt and the chosen reply, rejected reply);
    as a Conversation, a pair is deduplicated and decontaminated by the same rules as chat data."""
    prompt_column = "question" if "prompt" not in selected.column_names and "question" in selected.column_names else "prompt"
    selected.require(PREFERENCE_SCHEMA, [prompt_column, "chosen", "rejected"])
    out = []
    for index, row in selected.rows:
        where = f"{selected.path}: row {index + 1}"
        prompt, chosen, rejected = str(row.get("prompt") or row.get("question") or "").strip(), _reply(row["chosen"], where, "chosen"), _reply(row["rejected"], where, "rejected")
        if prompt and chosen and rejected and chosen != rejected:
            turns = (Turn("user", prompt), Turn("assistant", chosen))
            out.append((Conversation(turns, str(row.get("system") or "").strip() or None, id=f"{source_name}/{index:06d}"), rejected))
    return out


@dataclass
class Selected:
    """A source's rows after its column renames and exclusion filters, the first max_rows of them."""

    path: str
    column_names: list[str]
    rows: list[tuple[int, dict[str, Any]]]  # (row number in the file, from 0; the row)
    excluded: int = 0  # rows an exclusion filter dropped

    def require(self, schema: str, columns: Iterable[str]) -> None:
        missing = [c for c in columns if c not in self.column_names]
        if missing:
            raise DataError(f"{self.path}: schema {schema} needs column(s) {missing}; the file has {self.column_names}")


def select_rows(path: str, split: str = "train", max_rows: int = 0, columns: dict[str, str] | None = None,
                exclude: dict[str, str] | None = None) -> Selected:
    """Load a source, rename its columns (`columns`: schema column -> the file's column, so any file fits a
    schema), drop every row where a column matches its `exclude` regular expression (the recipe's
    reddit-instruct subset: no brackets in the title), and keep the first max_rows of the rest."""
    import re

    rows = load_rows(path, split)
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
        if any(pattern.search(str(row[column] or "")) for column, pattern in patterns.items()):
            excluded += 1
        else:
            kept.append((index, row))
    return Selected(path, list(rows.column_names), kept, excluded)


def load_rows(path: str, split: str = "train") -> Any:
    """A source's rows as a `datasets.Dataset`: a JSON, JSON lines, Parquet or CSV file, a folder written by
    save_to_disk, or (with a network) a hub id."""
    import datasets

    local = Path(path)
    builders = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
    try:
        if local.is_dir() and (local / "dataset_info.json").exists():
            return datasets.load_from_disk(str(local))
        if local.is_file() and local.suffix in builders:
            return datasets.load_dataset(builders[local.suffix], data_files=str(local), split=split)
        if local.exists():
            raise DataError(f"{path}: not a file datasets can read (.json, .jsonl, .parquet, .csv, or a save_to_disk folder)")
        return datasets.load_dataset(path, split=split)
    except DataError:
        raise
    except Exception as error:  # datasets names neither the line nor, often, the file
        if local.is_file() and local.suffix in (".json", ".jsonl"):
            from rationale_loop.records import read_jsonl

            for _ in read_jsonl(local):  # raises naming the first broken line
                pass
        raise DataError(f"{path}: cannot be read ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None


def conversations(source_name: str, selected: "Selected", schema: str) -> list[Conversation]:
    """Every selected row of a chat or instruction source as a Conversation, each keeping where it came from."""
    try:
        required, adapt = ADAPTERS[schema]
    except KeyError:
        raise DataError(f"data.sources.{source_name}.schema={schema!r} is unknown; known: {', '.join(sorted(ADAPTERS))}") from None
    selected.require(schema, required)
    out = []
    for index, row in selected.rows:
        conversation = adapt(row, f"{selected.path}: row {index + 1}")
        if any(t.role == "assistant" for t in conversation.turns):
            out.append(Conversation(conversation.turns, conversation.system, id=f"{source_name}/{index:06d}"))
    return out


def instruction_key(conversation: Conversation) -> str:
    """uuid5 of the first user turn, normalized (case and whitespace): the identity dedup goes by."""
    first = next((t.content for t in conversation.turns if t.role == "user"), "")
    return str(uuid.uuid5(uuid.NAMESPACE_OID, " ".join(first.lower().split())))


@dataclass
class Mixed:
    conversations: list[Any]  # Conversations; for plain-text sources (mix_documents), the documents' texts
    kept: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    contaminated: dict[str, int] = field(default_factory=dict)  # a shared word n-gram with a held-out text
    near_duplicates: dict[str, int] = field(default_factory=dict)  # the instruction is a held-out text reworded


def mix(sources: list[tuple[str, int, list[Conversation]]], evaluation_texts: Iterable[str], ngram: int = 13,
        near_duplicate: float = 0.7) -> Mixed:
    """Sources (name, priority, conversations) merged: higher priority first, the first copy of an
    instruction wins; a conversation sharing a word n-gram with an evaluation text, or whose first user
    turn is a near-duplicate of one (MinHash, estimated Jaccard >= near_duplicate), is dropped."""
    from rationale_loop.data.decontaminate import Contamination

    guard = Contamination(ngram=ngram, threshold=near_duplicate).add(evaluation_texts)
    seen: set[str] = set()
    result = Mixed([])
    for name, _, items in sorted(sources, key=lambda source: -source[1]):
        result.kept[name] = result.duplicates[name] = result.contaminated[name] = result.near_duplicates[name] = 0
        for conversation in items:
            key = instruction_key(conversation)
            if key in seen:
                result.duplicates[name] += 1
                continue
            seen.add(key)
            if guard.reason(" ".join(t.content for t in conversation.turns)) == "ngram":
                result.contaminated[name] += 1
                continue
            first = next((t.content for t in conversation.turns if t.role == "user"), "")
            if guard.reason(first) == "near_duplicate":
                result.near_duplicates[name] += 1
                continue
            result.kept[name] += 1
            result.conversations.append(conversation)
    return result


def mix_documents(sources: list[tuple[str, int, list[tuple[str, str]]]], evaluation_texts: Iterable[str],
                  ngram: int = 13) -> Mixed:
    """Plain-text sources merged like conversations: higher priority first, the first copy of a document
    (normalized) wins, and a document sharing a word n-gram with an evaluation text is dropped. (A long
    document is no near-duplicate of a question, so the MinHash check is for instructions only.)
    `conversations` of the result holds the kept documents' texts."""
    from rationale_loop.data.decontaminate import Contamination

    guard = Contamination(ngram=ngram, threshold=1.0).add(evaluation_texts)
    seen: set[str] = set()
    result = Mixed([])
    for name, _, items in sorted(sources, key=lambda source: -source[1]):
        result.kept[name] = result.duplicates[name] = result.contaminated[name] = result.near_duplicates[name] = 0
        for _, text in items:
            key = str(uuid.uuid5(uuid.NAMESPACE_OID, " ".join(text.lower().split())))
            if key in seen:
                result.duplicates[name] += 1
            elif guard.reason(text) == "ngram":
                result.contaminated[name] += 1
            else:
                result.kept[name] += 1
                result.conversations.append(text)
            seen.add(key)
    return result


MIX_ROWS = "sft_mix.jsonl"
MIX_MANIFEST = "data_manifest.json"
PREFERENCE_ROWS = "preference_pairs.jsonl"


def prepare_sft_mix(data_cfg: Any, evaluation_texts: Iterable[str], tokenizer: Any, out: Path, seed: int,
                    pack_length: int = 2048) -> dict[str, Any]:
    """Load, adapt, dedup and decontaminate the configured sources once, render each conversation in the
    configured formats (plain text is packed into rows of pack_length tokens instead; preference pairs are
    rendered in the first format into preference_pairs.jsonl, for the rounds' rank stage), and write the rendered rows (sft_mix.jsonl: id, format, segments) and a manifest
    (data_manifest.json: rows per source after each filter, rows per format, token-length percentiles)
    into the round directory. The manifest is written last: its presence says the mix is complete, and a
    failed preparation leaves nothing a later stage reads."""
    import random

    from rationale_loop.data.templates import get_template
    from rationale_loop.records import write_json_atomic, write_jsonl_atomic

    evaluation_texts = list(evaluation_texts) if data_cfg.decontaminate_ngram > 0 else []
    loaded, texts, preferences = [], [], []
    rejected_of: dict[str, str] = {}
    from rationale_loop.config import source_configs

    configured = source_configs(data_cfg)
    excluded: dict[str, int] = {}
    for name, source in configured.items():
        selected = select_rows(source.path, source.split, source.max_rows, source.columns, source.exclude)
        excluded[name] = selected.excluded
        if source.schema == TEXT_SCHEMA:
            texts.append((name, source.priority, documents(name, selected)))
        elif source.schema == PREFERENCE_SCHEMA:
            pairs = preference_pairs(name, selected)
            rejected_of.update((conversation.id, rejected) for conversation, rejected in pairs)
            preferences.append((name, source.priority, [conversation for conversation, _ in pairs]))
        else:
            loaded.append((name, source.priority, conversations(name, selected, source.schema)))
    merged = mix(loaded, evaluation_texts, data_cfg.decontaminate_ngram or 13, data_cfg.near_duplicate_threshold)
    plain = mix_documents(texts, evaluation_texts, data_cfg.decontaminate_ngram or 13)
    preferred = mix(preferences, evaluation_texts, data_cfg.decontaminate_ngram or 13, data_cfg.near_duplicate_threshold)
    # Rendered in the first format: the prompt as a generation prompt, each reply as it would be learned.
    template = get_template(data_cfg.formats[0])
    pair_rows = [{"id": c.id, "prompt": template.prompt(Conversation(c.turns[:1], c.system), tokenizer.eos_token),
                  "chosen": template.reply(c.turns[1].content, tokenizer.eos_token),
                  "rejected": template.reply(rejected_of[c.id], tokenizer.eos_token)} for c in preferred.conversations]
    rng = random.Random(f"formats/{seed}")
    rows, per_format, lengths = [], {name: 0 for name in data_cfg.formats}, []
    for conversation in merged.conversations:
        formats = list(data_cfg.formats) if data_cfg.multi_format == "all" else [rng.choice(list(data_cfg.formats))]
        for name in formats:
            segments = get_template(name).segments(conversation, tokenizer.eos_token)
            rows.append({"id": conversation.id, "format": name, "segments": [[s.text, s.learned] for s in segments]})
            per_format[name] += 1
            lengths.append(len(tokenizer("".join(s.text for s in segments), add_special_tokens=False)["input_ids"]))
    if texts:
        for index, piece in enumerate(pack(plain.conversations, tokenizer, pack_length)):
            rows.append({"id": f"text/{index:06d}", "format": TEXT_SCHEMA, "segments": [[piece, True]]})
            lengths.append(len(tokenizer(piece, add_special_tokens=False)["input_ids"]))
        per_format[TEXT_SCHEMA] = len(rows) - sum(per_format.values())
    lengths.sort()
    manifest = {
        "sources": {name: {"path": configured[name].path, "schema": configured[name].schema, "excluded": excluded[name], "rows": len(items),
                           "duplicates": filtered.duplicates[name], "contaminated": filtered.contaminated[name],
                           "near_duplicates": filtered.near_duplicates[name], "kept": filtered.kept[name]}
                    for filtered, group in ((merged, loaded), (plain, texts), (preferred, preferences)) for name, _, items in group},
        "preference_pairs": len(pair_rows),
        "formats": per_format,
        "rendered_rows": len(rows),
        "token_length_percentiles": {f"p{q}": lengths[min(len(lengths) - 1, len(lengths) * q // 100)] for q in (50, 90, 99, 100)} if lengths else {},
    }
    write_jsonl_atomic(out / MIX_ROWS, rows)
    write_jsonl_atomic(out / PREFERENCE_ROWS, pair_rows)
    write_json_atomic(out / MIX_MANIFEST, manifest)
    return manifest


def read_preference_pairs(out: Path) -> list[dict[str, str]]:
    """The rendered preference pairs prepare_sft_mix wrote (prompt, chosen, rejected), or none."""
    from rationale_loop.records import read_jsonl

    if not (out / MIX_MANIFEST).exists() or not (out / PREFERENCE_ROWS).exists():
        return []
    return list(read_jsonl(out / PREFERENCE_ROWS))


def read_sft_mix(out: Path) -> list[Any]:
    """The rendered rows prepare_sft_mix wrote, as training items."""
    from rationale_loop.data.templates import Segment
    from rationale_loop.objectives import ConversationItem
    from rationale_loop.records import read_jsonl

    if not (out / MIX_MANIFEST).exists():
        return []
    return [ConversationItem(tuple(Segment(text, learned) for text, learned in row["segments"])) for row in read_jsonl(out / MIX_ROWS)]
