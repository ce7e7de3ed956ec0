"""`make data`: what the SFT stage will learn from, as a person checks it before spending compute on it.

The manifest of a prepared mix as tables (rows per source after each filter, rows per format, token
lengths), then one rendered row per format with the learned tokens marked ⟦like this⟧: the loss is on
those and on nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from rationale_loop.views.terminal import text_table as table, visible

LEARNED_OPEN, LEARNED_CLOSE = "⟦", "⟧"


def marked(segments: Iterable[tuple[str, bool]]) -> str:
    """The rendered text with every learned segment between ⟦ and ⟧."""
    return "".join(f"{LEARNED_OPEN}{text}{LEARNED_CLOSE}" if learned else text for text, learned in segments)


def describe_mix(manifest: dict[str, Any], rows: Iterable[dict[str, Any]]) -> str:
    sources = manifest["sources"]
    parts = [
        "Sources (rows after each filter, in priority order of loading):",
        table(["source", "schema", "excluded", "rows", "duplicates", "n-gram contaminated", "near-duplicates", "paraphrases", "kept"],
              [[name, s["schema"], s.get("excluded", 0), s["rows"], s["duplicates"], s["contaminated"], s["near_duplicates"],
                s.get("semantic_duplicates", 0), s["kept"]] for name, s in sources.items()]),
        "",
        f"Rendered rows: {manifest['rendered_rows']}",
        table(["format", "rows", "over length: dropped", "truncated"],
              [[name, count, manifest.get("over_length", {}).get("dropped", {}).get(name, 0),
                manifest.get("over_length", {}).get("truncated", {}).get(name, 0)] for name, count in manifest["formats"].items()]),
    ]
    if manifest.get("token_length_percentiles"):
        lengths = manifest["token_length_percentiles"]
        parts += ["", "Tokens per rendered row:", table(list(lengths), [list(lengths.values())])]
    shown: set[str] = set()
    for row in rows:
        if row["format"] in shown:
            continue
        shown.add(row["format"])
        parts += ["", f"--- one row in {row['format']} (id {row['id']}); ⟦...⟧ is learned ---", marked(row["segments"])]
    return "\n".join(parts)


def describe_removed(removed: list[dict[str, Any]], shown: int = 3) -> str:
    """What decontamination dropped, a few of each reason, each beside the held-out text it matched."""
    lines = [f"Removed as held-out text: {len(removed)} (all of them in decontamination.jsonl)"]
    for reason in dict.fromkeys(row["reason"] for row in removed):
        for row in [r for r in removed if r["reason"] == reason][:shown]:
            score = f", cosine {row['score']:.3f}" if row.get("score") is not None else ""
            lines += [f"--- {row['source']} {row['id']}: {reason}{score} ---", f"  kept out: {row['text'][:160]!r}",
                      f"  held out: {row['held_out'][:160]!r}"]
    return "\n".join(lines)


def describe_task_example(prompt: str, response: str, count: int) -> str:
    return "\n".join([f"Task examples: {count}, each the prompt with its worked response learned.",
                      "--- one task example; ⟦...⟧ is learned ---", marked([(prompt, False), (response, True)])])


def preview(out: Path, task_example: tuple[str, str], task_count: int) -> str:
    """Everything SFT in round directory `out` learns from: the task's examples and, when data= lists
    sources, the prepared mix (read from the files the SFT stage reads)."""
    from rationale_loop.data.sources import read_preference_pairs
    from rationale_loop.run.run_config import DECONTAMINATION, MIX_MANIFEST, MIX_ROWS
    from rationale_loop.run.records import read_json, read_jsonl

    parts = [describe_task_example(*task_example, task_count)]
    manifest = out / MIX_MANIFEST
    if manifest.exists():
        parts += ["", describe_mix(read_json(manifest), read_jsonl(out / MIX_ROWS))]
        removed = list(read_jsonl(out / DECONTAMINATION)) if (out / DECONTAMINATION).exists() else []
        if removed:
            parts += ["", describe_removed(removed)]
        pairs = read_preference_pairs(out)
        if pairs:
            first = pairs[0]
            parts += ["", f"Preference pairs for the rounds' rank stage: {len(pairs)}",
                      f"--- one pair (id {first['id']}) ---", first["prompt"] + LEARNED_OPEN + first["chosen"] + LEARNED_CLOSE,
                      "--- its rejected reply ---", first["prompt"] + first["rejected"]]
    else:
        parts += ["", "No chat or instruction sources (data=none): SFT learns from the task's examples only."]
    # Data text, printed to a terminal: its control characters (escape sequences) written out, not sent.
    return visible("\n".join(parts))
