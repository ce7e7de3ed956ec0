"""The sources mixed by priority: rows deduplicated across sources (the higher-priority copy wins), each
cut to what the model can read, and decontaminated against the evaluation questions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from rationale_loop.data.decontaminate import NEAR_DUPLICATE, NGRAM, SEMANTIC, Contamination, Match
from rationale_loop.run.records import Conversation


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
