"""Plain text (books, articles) for the SFT stage: documents joined with EOS and cut into rows of the
stage's length, so no row is mostly padding."""

from __future__ import annotations

from typing import Any, Iterable


def pack(texts: Iterable[str], tokenizer: Any, length: int) -> list[tuple[str, tuple[tuple[int, int], ...]]]:
    """Documents joined by EOS and cut into pieces of at most `length` tokens once BOS is added in front.
    A piece is cut at a token boundary and decoded back to text; a few tokens of slack cover the
    re-tokenization of its edges, so no piece is dropped as too long. Each piece comes with the spans of
    document text in it (templates.Segment.data): only the EOS between documents is a real EOS, a `</s>`
    written in a document is text."""
    from rationale_loop.data.encode import special_token_ids

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
