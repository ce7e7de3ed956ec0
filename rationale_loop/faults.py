"""Named crash points, for testing that every phase of a round resumes after a hard crash.

`RATIONALE_LOOP_KILL_AT=<point>[:<hit>]` makes the process send itself SIGKILL the <hit>-th time (default
the first) it passes the named point: no exception handler, `finally` block or atexit hook runs, exactly
as when the machine's OOM killer or a pre-empted node ends a job. Unset, a crash point costs one
dictionary lookup. The points a round passes:

    generate      after each question's samples are appended to generations.jsonl.partial
    generated     after generations.jsonl is written, before mining
    mined         after pairs.jsonl and stats.json are written, before training
    train_step    after each optimizer step (and the training state saved at that step, if any)
    trained       after the round's checkpoint is saved, before evaluation
    evaluated     after eval.jsonl is written, before metrics.json and DONE
"""

from __future__ import annotations

import os
import signal
from collections import Counter

KILL_AT = "RATIONALE_LOOP_KILL_AT"
_passes: Counter[str] = Counter()


def crash_point(name: str) -> None:
    wanted = os.environ.get(KILL_AT)
    if not wanted:
        return
    point, _, hit = wanted.partition(":")
    if point != name:
        return
    _passes[name] += 1
    if _passes[name] == int(hit or 1):
        os.kill(os.getpid(), signal.SIGKILL)
