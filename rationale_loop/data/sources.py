"""Chat and instruction data for the SFT stage: sources read through the `datasets` library, each row
mapped by its schema's adapter onto a Conversation (records.py), deduplicated across sources (the
higher-priority copy wins) and decontaminated against the evaluation questions.

The steps, each a module of data/: rows.py reads and selects a source's rows, schemas.py maps each row onto
a conversation by its schema, mixing.py mixes the sources by priority (dedup, decontamination),
plain_text.py packs plain text; this module renders the mix into round_00 (prepare_sft_mix) and reads
it back for training.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from pathlib import Path
from typing import Any, Iterable

from rationale_loop.config.schema import source_configs
from rationale_loop.data.decontaminate import Contamination
from rationale_loop.data.formats import TINYCOT
from rationale_loop.data.mixing import conversation_view, document_view, mix, row_reach
from rationale_loop.data.plain_text import pack
from rationale_loop.data.rows import Selected, held_out_questions, select_rows
from rationale_loop.data.schemas import PREFERENCE_SCHEMA, REASONING_SCHEMAS, TEXT_SCHEMA, conversations, documents, preference_pairs
from rationale_loop.data.templates import ConversationItem, Segment, TurnTemplate, get_template
from rationale_loop.run.records import Conversation, read_jsonl, write_json_atomic, write_jsonl_atomic
from rationale_loop.run.run_config import DECONTAMINATION, MIX_MANIFEST, MIX_ROWS, PREFERENCE_ROWS


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

    from rationale_loop.data.encode import Encoder

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
    from rationale_loop.data.encode import Encoder

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
