"""The embedded default task: seeded multi-step arithmetic word problems.

Each problem tells a short story (someone has some things, gains, loses or multiplies them) and asks
how many are left. The gold rationale works it out one operation per sentence, so a model has to copy
the right numbers in the right order and get every step's arithmetic right: easy enough that a tiny
model trained for a minute gets part of it, hard enough that it does not get all of it.

The three splits are seeded and disjoint by question text, so no eval or pool question is ever
trained on by SFT.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rationale_loop.config.errors import ConfigError
from rationale_loop.config.keys import unknown_choice
from rationale_loop.config.schema import ARITH_ANSWERS
from rationale_loop.run.records import Problem

NAMES = ["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea", "Max", "Nia", "Omar", "Pia"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "shells", "pens", "cards", "eggs", "stamps"]


@dataclass(frozen=True)
class ArithSpec:
    """Difficulty knobs; the defaults are the embedded default's."""

    min_steps: int = 2
    max_steps: int = 3
    max_start: int = 15
    max_operand: int = 9
    max_value: int = 60  # no intermediate result goes above this (keeps every number at two digits)
    # "final": the answer is the count at the end. "running": the count after every event, in order
    # ("5, 15, 17"): with small numbers a wrong chain often lands on the right final count, and a
    # round would learn from it as if it were right; a wrong chain rarely gets every count right.
    answer: str = "final"

    def __post_init__(self) -> None:
        if self.answer not in ARITH_ANSWERS:
            raise ConfigError(unknown_choice("task.arith.answer / task.pool_arith.answer", self.answer, ARITH_ANSWERS))


def _step(rng: random.Random, value: int, name: str, item: str, spec: ArithSpec) -> tuple[str, str, int]:
    """One story sentence and its rationale sentence, applied to the running value."""
    kinds = [k for k, ok in (("add", value < spec.max_value), ("sub", value > 1), ("mul", value * 2 <= spec.max_value)) if ok]
    kind = rng.choice(kinds)
    if kind == "add":
        amount = rng.randint(1, min(spec.max_operand, spec.max_value - value))
        verb = rng.choice([f"finds {amount} more {item}", f"buys {amount} more {item}", f"gets {amount} {item} from a friend"])
        return f"{name} {verb}.", f"{value} + {amount} = {value + amount}.", value + amount
    if kind == "sub":
        amount = rng.randint(1, min(spec.max_operand, value - 1))
        verb = rng.choice([f"gives away {amount} {item}", f"loses {amount} {item}", f"uses {amount} {item}"])
        return f"{name} {verb}.", f"{value} - {amount} = {value - amount}.", value - amount
    factor = rng.choice([f for f in (2, 3) if value * f <= spec.max_value])
    word = {2: "doubles", 3: "triples"}[factor]
    return f"The number of {item} {word}.", f"{value} * {factor} = {value * factor}.", value * factor


def make_problem(rng: random.Random, spec: ArithSpec) -> tuple[str, str, str]:
    """Return (question, rationale, answer) for one random story."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, spec.max_start)
    story = [f"{name} has {value} {item}."]
    reasoning, counts = [], []
    for _ in range(rng.randint(spec.min_steps, spec.max_steps)):
        sentence, working, value = _step(rng, value, name, item, spec)
        story.append(sentence)
        reasoning.append(working)
        counts.append(str(value))
    if spec.answer == "running":
        story.append(f"How many {item} does {name} have after each event?")
        return " ".join(story), " ".join(reasoning), ", ".join(counts)
    story.append(f"How many {item} does {name} have now?")
    return " ".join(story), " ".join(reasoning), str(value)


def make_splits(
    seed: int, sizes: dict[str, int], spec: ArithSpec | dict[str, ArithSpec] | None = None
) -> dict[str, list[Problem]]:
    """Draw splits of the requested sizes, disjoint by question text; `spec` is one difficulty for
    every split or one per split name.

    Each split has its own random stream seeded by (seed, split name), and splits are drawn in the
    order given, each skipping questions already taken. So a split's content depends only on its own
    size and on the splits before it: growing the pool or the SFT set never changes the eval set
    (listed first by the task).
    """
    specs = spec if isinstance(spec, dict) else {split: spec or ArithSpec() for split in sizes}
    seen: set[str] = set()
    splits: dict[str, list[Problem]] = {}
    for split, size in sizes.items():
        spec = specs[split]
        rng = random.Random(f"{seed}/{split}")
        problems: list[Problem] = []
        attempts = 0
        while len(problems) < size:
            attempts += 1
            if attempts > 50 * size + 1000:
                raise ConfigError(f"tiny_arith: cannot draw {size} distinct questions for split {split!r}; widen the spec")
            question, rationale, answer = make_problem(rng, spec)
            if question in seen:
                continue
            seen.add(question)
            problems.append(Problem(f"tiny_arith/{split}/{len(problems):05d}", question, rationale, answer))
        splits[split] = problems
    return splits
