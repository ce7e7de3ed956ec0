"""Named crash points, for testing that every phase of a round resumes after a hard crash.

`RATIONALE_LOOP_KILL_AT=<point>[:<hit>][@<rank>]` makes the process send itself SIGKILL the <hit>-th time
(default the first) it passes the named point: no exception handler, `finally` block or atexit hook runs,
exactly as when the machine's OOM killer or a pre-empted node ends a job. With @<rank>, only the process of
that rank under a launcher (the RANK variable) is killed: one worker of several. Unset, a crash point costs one
dictionary lookup. The points a round passes:

    generate      after each question's samples are appended to generations.jsonl.partial (a worker's own)
    generated     after generations.jsonl is written, before mining
    mined         after pairs.jsonl and stats.json are written, before training
    train_step    after each optimizer step (and the training state saved at that step, if any)
    trained       after the round's checkpoint is saved, before evaluation
    evaluate      after each held-out question's sample is appended (in generate.workers' workers only)
    evaluated     after eval.jsonl is written, before metrics.json and DONE

`RATIONALE_LOOP_WAIT_AT=<point>:<file>` makes the process stop at the named point (every time it passes
it) until <file> exists: a test holds one process inside a phase while it starts another on the same run.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

KILL_AT = "RATIONALE_LOOP_KILL_AT"
WAIT_AT = "RATIONALE_LOOP_WAIT_AT"
_passes: Counter[str] = Counter()


def crash_point(name: str) -> None:
    _wait_if_asked(name)
    wanted = os.environ.get(KILL_AT)
    if not wanted:
        return
    wanted, _, rank = wanted.partition("@")
    point, _, hit = wanted.partition(":")
    if point != name or (rank and rank != os.environ.get("RANK", "0")):
        return
    _passes[name] += 1
    if _passes[name] == int(hit or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _wait_if_asked(name: str) -> None:
    wanted = os.environ.get(WAIT_AT)
    if not wanted:
        return
    point, _, release = wanted.partition(":")
    while point == name and not Path(release).exists():
        time.sleep(0.1)
