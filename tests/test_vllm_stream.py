"""The vLLM backend's reader of its worker's streamed results (no vLLM needed: any process that appends
lines will do): whole lines only, characters split across writes kept whole, a worker that hangs after
its last result is killed."""

from __future__ import annotations

import subprocess
import sys
import time

from rationale_loop.generate.vllm import _follow


def test_follow_reads_whole_lines_and_kills_a_worker_that_hangs_after_its_results(tmp_path):
    results, marker = tmp_path / "results.jsonl", tmp_path / "timing.json"
    writer = f"""
import json, time
handle = open({str(results)!r}, "wb")
for index in range(3):
    line = json.dumps({{"index": index, "text": "é → ∞"}}, ensure_ascii=False).encode()
    handle.write(line[:-4]); handle.flush(); time.sleep(0.3)
    handle.write(line[-4:] + b"\\n"); handle.flush()
open({str(marker)!r}, "w").write("{{}}")
time.sleep(600)
"""
    worker = subprocess.Popen([sys.executable, "-c", writer])
    started = time.monotonic()
    rows = list(_follow(results, worker, marker, grace_s=1.0))
    assert [row["index"] for row in rows] == [0, 1, 2]
    assert all(row["text"] == "é → ∞" for row in rows)
    assert worker.returncode is not None and time.monotonic() - started < 30


def test_follow_stops_when_the_worker_exits_and_keeps_its_last_lines(tmp_path):
    results = tmp_path / "results.jsonl"
    writer = "import json, sys\nwith open(sys.argv[1], 'w') as h:\n    h.writelines(json.dumps({'index': i}) + '\\n' for i in range(5))\n"
    worker = subprocess.Popen([sys.executable, "-c", writer, str(results)])
    assert [row["index"] for row in _follow(results, worker, tmp_path / "never")] == list(range(5))
    assert worker.returncode == 0
