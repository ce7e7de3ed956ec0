"""Text from data or from a model, made safe to print on a terminal.

A completion, a prompt, a gold answer or a question id is untrusted text: an escape sequence in it would
move the cursor, clear the screen or retitle the window, and rich would read `[/INST]` (llama-2's prompt
format) or `[link=...]` as markup and crash or make a hyperlink. So every such text goes through
`visible` (control characters shown as `\\x1b`, never sent) and reaches rich as a `Text` object, which
rich parses for neither markup nor :emoji: codes. Never put such text in a markup string.
Newlines and tabs are kept: completions have lines.
"""

from __future__ import annotations

import io
import re
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

# C0 controls but tab and newline, DEL, C1 controls (U+0080-U+009F: 8-bit CSI, NEL, ...), and the
# bidirectional embeddings, overrides and isolates that reorder what a reader sees ("Trojan Source").
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: Any) -> str:
    """`value` as a string in which every control character is written out (ESC as the four
    characters `\\x1b`), so that printing it sends no control sequence to the terminal."""
    return CONTROL.sub(_shown, str(value))


def plain(value: Any, style: str = "") -> Text:
    """A rich Text of `value`, control characters written out, never parsed as markup."""
    return Text(visible(value), style=style)


def text_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A table as plain text (rich, no colour, as wide as it needs): columns whose cells are all numbers
    are right-aligned. Every cell goes through `plain`: a source's name or a format is data."""
    rows = [[str(cell) for cell in row] for row in rows]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, title in enumerate(header):
        numeric = bool(rows) and all(row[i].replace(".", "", 1).isdigit() for row in rows)
        table.add_column(plain(title), justify="right" if numeric else "left", no_wrap=True)
    for row in rows:
        table.add_row(*map(plain, row))
    out = io.StringIO()
    # A height too, or rich takes a dumb terminal's 80 columns; never a notebook's display (it would print
    # there and return nothing here).
    Console(file=out, width=10_000, height=10_000, force_terminal=False, force_jupyter=False, color_system=None,
            legacy_windows=False).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())


class _Bar(tqdm):
    """tqdm with its speed averaged over the whole phase, and no remaining time until it has moved twice.
    Generation yields a batch's questions together once the batch is done, and its first batch (the longest
    prompts) is its slowest: the first redraw, one question in that batch's time, would put the remaining
    time at the batch's time per question (48 minutes for a 17-second phase)."""

    moves, last_n = 0, None
    WITHOUT_ETA = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

    def display(self, msg: str | None = None, pos: int | None = None) -> Any:
        if self.n != self.last_n:
            self.moves, self.last_n = self.moves + 1, self.n
        return super().display(msg, pos)

    @property
    def format_dict(self) -> dict[str, Any]:
        shown = super().format_dict
        return shown if self.moves > 2 else {**shown, "bar_format": self.WITHOUT_ETA}  # the first draw is at n=initial


@contextmanager
def progress_bar(total: int, initial: int = 0, desc: str = "", unit: str = "it") -> Iterator[tqdm]:
    """A progress bar on a terminal, nothing at all otherwise (piped into a log, a bar is debris). While it
    is shown, log lines go above it (tqdm.write), not onto the end of its line."""
    if not sys.stderr.isatty():
        with tqdm(total=total, initial=initial, disable=True) as bar:
            yield bar
        return
    with logging_redirect_tqdm(tqdm_class=_Bar), _Bar(total=total, initial=initial, desc=desc, unit=unit, leave=False,
                                                     smoothing=0) as bar:
        yield bar
