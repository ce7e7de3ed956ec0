"""Data-parallel generation: a phase's prompts dealt to N workers (generate.workers) in whole seed units.

A backend samples its prompts in groups that it seeds by their number alone (hf: its batches; vllm: its
chunks; `seed_units`), and each group is sampled whole even where some of its prompts are skipped. So a
worker given whole groups, and told to skip every other prompt, writes for its prompts exactly the bytes that
one process sampling every prompt writes. Seeding each question and sample on its own would not give that:
a row's logits depend, in their last bits, on the batch it is computed in (its padding, the matrix shapes),
so only the same batches give the same tokens.

Groups are dealt round robin, longest prompts' groups first (hf orders them so), which spreads the long
ones over the workers; a group with nothing left to sample (a resumed phase) is not dealt at all.
"""

from __future__ import annotations

from typing import Collection, Sequence


def deal(units: Sequence[Sequence[int]], todo: Collection[int], workers: int) -> list[list[int]]:
    """The prompt indices each of `workers` workers samples: whole units that hold a prompt of `todo`,
    dealt round robin, each worker's list holding only prompts of `todo`. A worker may be dealt nothing
    (fewer units than workers)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    wanted = set(todo)
    live = [[i for i in unit if i in wanted] for unit in units]
    shards: list[list[int]] = [[] for _ in range(workers)]
    for number, unit in enumerate(u for u in live if u):
        shards[number % workers].extend(unit)
    return shards
