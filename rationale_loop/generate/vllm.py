"""Generation through vLLM's offline engine, always in a child process, which starts the engine once
and serves every `generate` call of its backend until `close()`.

The engine holds its memory (KV cache, CUDA graphs) until its process ends, so it never shares a
process with training: `VLLMBackend` runs vllm_engine.py as a worker (`python -m rationale_loop.generate.vllm_engine
--serve DIR`) on its first `generate` call, and `close()` (or the end of a `with` block, or the backend
being garbage collected, or the parent dying) ends it, which frees the engine's memory. The worker's
interpreter is `generate.python` (default: the current one), so vLLM may live in its own virtual
environment (.venv-vllm) while everything else runs in .venv.

The protocol between the two (DIR is a temporary folder of the backend's):
  DIR/engine.json        the model, the engine's settings, the LoRA adapter, the engine's seed
  DIR/ready.json         written by the worker once its engine is up: its import and start times
  worker's stdin         the control pipe, one JSON line a message (`control_line`):
                           {"op": "generate", "id": k, "request": DIR/request-k.json, "results": DIR/results-k.jsonl}
                           {"op": "cancel", "id": k}   stop request k before its next chunk
                           {"op": "close"}             (or end of file) stop, and exit once idle
  DIR/request-k.json     prompts, sampling, skip, chunk size
  DIR/results-k.jsonl    one line a prompt, {"index", "completions"}, appended and flushed chunk by chunk,
                         then the end line {"end": "finished" | "cancelled" | "error", "timing" | "error"}
  worker's stdout+stderr forwarded to the parent's stderr; the last lines go into the parent's errors

Requests run one at a time, in the order sent. Each reseeds the sampler from its own seed and chunk
number and starts from an empty prefix cache, so its completions do not depend on what the engine
served before it: the same as a fresh engine's.

vLLM is imported only inside the worker (vllm_engine.py); importing this module costs nothing.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Collection, Iterator, Sequence

from rationale_loop.generate.base import Completion, Sampling

log = logging.getLogger(__name__)
PARENT_PID = "RATIONALE_LOOP_PARENT_PID"  # set for the worker, so it can tell that its parent has died
OPS = ("generate", "cancel", "close")
TAIL_LINES = 40  # of the worker's output, kept for the parent's error messages


class VLLMBackend:
    """One vLLM engine in one child process, started by the first `generate` call and reused by the
    next ones until `close()`:

        with VLLMBackend(checkpoint, {"dtype": "bfloat16"}) as backend:
            pool = list(backend.generate(prompts, sampling))
            evaluation = list(backend.generate(questions, greedy))   # same engine
        # the worker has exited: the engine's memory is free

    A call whose caller stops iterating early cancels its request: the worker stops before its next
    chunk and the engine stays up for the next call (which waits, at most `grace_s`, for the chunk in
    flight to end; past that, the worker is killed and the next call starts a new one). A worker found
    dead between calls is replaced by a new one; a worker that dies during a call fails that call,
    naming how it ended and its last lines of output."""

    def __init__(
        self,
        checkpoint: str | Path,
        engine: dict[str, Any],
        python: str | None = None,
        lora: str | Path | None = None,
        chunk_size: int = 512,
        grace_s: float = 60.0,
    ):
        self.checkpoint = str(checkpoint)
        self.engine = engine
        self.python = python or sys.executable
        self.lora = str(lora) if lora else None
        self.chunk_size = chunk_size
        self.grace_s = grace_s
        # The worker's own clock for the last call: import and engine start (0 when the engine was
        # already up) and generation.
        self.last_timing: dict[str, float] = {}
        self.engine_starts = 0
        self._worker: _Worker | None = None
        self._running: _Request | None = None  # the call being iterated
        self._cancelled: _Request | None = None  # a call stopped early, its end not read yet

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> "VLLMBackend":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """End the worker, and with it the engine and its memory (a running call is cancelled and then
        fails if iterated further). The backend stays usable: a later call starts a new engine."""
        self._running = self._cancelled = None
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker.stop(self.grace_s)

    @property
    def worker_pid(self) -> int | None:
        """The worker's process id while one is running."""
        return self._worker.process.pid if self._worker is not None and self._worker.alive() else None

    @property
    def engine_info(self) -> dict[str, Any]:
        """What the running worker wrote once its engine was up: import and start seconds, and the
        engine's own gpu_memory_utilization (None where vLLM keeps it elsewhere); {} without one."""
        ready = self._worker.dir / "ready.json" if self._worker is not None else None
        return json.loads(ready.read_text()) if ready is not None and ready.exists() else {}

    # -- generation --------------------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[str], sampling: Sampling, skip: Collection[int] = ()
    ) -> Iterator[tuple[int, list[Completion]]]:
        """Results stream back chunk by chunk while the worker runs, so the caller can save each
        chunk before the next one is sampled: a crash loses at most the chunk in flight."""
        skip = set(skip)
        wanted = len(prompts) - len(skip)
        request = self._submit(prompts, sampling, skip)
        log.info("vllm: generating %d x %d (engine in process %d)", wanted, sampling.n, request.worker.process.pid)
        seen = set()
        try:
            for row in request.rows():
                seen.add(row["index"])
                yield row["index"], [Completion(**c) for c in row["completions"]]
                if self._running is not request:
                    raise RuntimeError("this generate() call was cancelled: a later call on the same backend, or close(), took its engine")
        finally:
            if self._running is request:
                self._running = None
                if request.end is None and request.worker.alive():
                    self._cancel(request)  # the caller stopped early: the worker stops before its next chunk
        self._finish(request, len(seen), wanted)

    def _submit(self, prompts: Sequence[str], sampling: Sampling, skip: set[int]) -> "_Request":
        if self._running is not None:  # an earlier call neither finished nor closed gives way
            self._cancel(self._running)
            self._running = None
        self._drain()
        if self._worker is not None and not self._worker.alive():
            log.warning("vllm: the worker %s between calls; starting a new one", self._worker.exit_description())
            self._worker.stop(0)
            self._worker = None
        if self._worker is None:
            # The engine's own seed is the first call's (as a worker per call had); every chunk reseeds anyway.
            spec = {"model": self.checkpoint, "engine": self.engine, "lora": self.lora, "seed": sampling.seed}
            self._worker = _Worker(self.python, spec)
            self.engine_starts += 1
        self._running = self._worker.submit({
            "sampling": asdict(sampling),
            "prompts": list(prompts),
            "skip": sorted(skip),
            "chunk_size": self.chunk_size,
        })
        return self._running

    def _cancel(self, request: "_Request") -> None:
        request.worker.send({"op": "cancel", "id": request.id})
        self._cancelled = request

    def _drain(self) -> None:
        """Wait for the end of a cancelled call (the chunk it was in), so the engine is idle; a worker
        that takes longer than grace_s is killed (the next call starts a new one)."""
        request, self._cancelled = self._cancelled, None
        if request is None or request.worker is not self._worker:
            return
        try:
            for _ in request.rows(timeout=self.grace_s):
                pass
        except TimeoutError:
            log.warning("vllm: a cancelled call's chunk did not end within %.0f s; restarting the engine", self.grace_s)
            self.close()
            return
        request.remove()

    def _finish(self, request: "_Request", returned: int, wanted: int) -> None:
        worker, end = request.worker, request.end
        if end is None:
            message = (f"the vLLM worker (process {worker.process.pid}) {worker.exit_description()} after returning "
                       f"{returned} of {wanted} prompts of this call{worker.output_tail()}")
            self._worker = None if worker is self._worker else self._worker
            worker.stop(0)
            raise RuntimeError(message)
        request.remove()
        if end["end"] == "error":
            self._worker = None if worker is self._worker else self._worker
            worker.stop(self.grace_s)
            raise RuntimeError(f"the vLLM worker failed on this call (its engine is closed; the next call starts a new one):\n{end['error']}")
        self.last_timing = end["timing"]
        if returned != wanted:
            raise RuntimeError(f"the vLLM worker returned {returned} of {wanted} prompts")


class _Worker:
    """The parent's handle on one worker process."""

    def __init__(self, python: str, spec: dict[str, Any]):
        self.dir = Path(tempfile.mkdtemp(prefix="rationale_loop_vllm_"))
        (self.dir / "engine.json").write_text(json.dumps(spec))
        command = [python, "-m", "rationale_loop.generate.vllm_engine", "--serve", str(self.dir)]
        log.info("vllm: starting the engine's worker (%s)", python)
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**_worker_env(), PARENT_PID: str(os.getpid())},
        )
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._pump = threading.Thread(target=_forward, args=(self.process.stdout, self.tail), daemon=True, name="vllm-worker-output")
        self._pump.start()
        self._ids = 0
        # Garbage collection or interpreter exit ends a worker nobody closed.
        self._finalizer = weakref.finalize(self, _shutdown, self.process, self.dir, 10.0)

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, message: dict[str, Any]) -> bool:
        try:
            self.process.stdin.write(control_line(**message))  # type: ignore[union-attr]
            self.process.stdin.flush()  # type: ignore[union-attr]
            return True
        except (BrokenPipeError, OSError, ValueError):  # the worker is gone: its end is read elsewhere
            return False

    def submit(self, request: dict[str, Any]) -> "_Request":
        self._ids += 1
        path, results = self.dir / f"request-{self._ids}.json", self.dir / f"results-{self._ids}.jsonl"
        path.write_text(json.dumps(request))
        self.send({"op": "generate", "id": self._ids, "request": str(path), "results": str(results)})
        return _Request(self, self._ids, path, results)

    def stop(self, grace_s: float) -> None:
        self._finalizer.detach()
        _shutdown(self.process, self.dir, grace_s)

    def exit_description(self) -> str:
        code = self.process.poll()
        if code is None:
            return "is still running"
        if code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return how if (self.dir / "ready.json").exists() else f"{how} while starting its engine"

    def output_tail(self) -> str:
        self._pump.join(timeout=5)  # the last lines of a worker that has ended
        return "; its last lines of output:\n" + "\n".join(self.tail) if self.tail else " (it wrote no output)"


class _Request:
    """One generate call as the worker serves it: its result lines as they come, and its end line."""

    def __init__(self, worker: _Worker, request_id: int, path: Path, results: Path):
        self.worker, self.id, self.path = worker, request_id, path
        self.reader = LineReader(results)
        self.end: dict[str, Any] | None = None

    def rows(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """The result rows as the worker appends them, until the end line (kept in `end`) or the
        worker's exit; TimeoutError past `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.end is None:
            exited = not self.worker.alive()  # read after checking, so nothing written last is missed
            for row in self.reader.read():
                if "end" in row:
                    self.end = row
                    return
                yield row
            if exited:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"vLLM request {self.id}")
            time.sleep(0.05)

    def remove(self) -> None:
        self.reader.close()
        for path in (self.path, self.reader.path):
            path.unlink(missing_ok=True)


class LineReader:
    """The JSON lines of a file another process is appending to; a line is taken only once its newline
    is there (bytes are decoded a whole line at a time, so a character split across two writes is
    never cut)."""

    def __init__(self, path: Path):
        self.path = path
        self._handle: IO[bytes] | None = None
        self._buffer = b""

    def read(self) -> list[dict[str, Any]]:
        if self._handle is None:
            if not self.path.exists():
                return []
            self._handle = self.path.open("rb")
        self._buffer += self._handle.read()
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line.decode("utf-8")) for line in lines if line.strip()]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def control_line(op: str, **fields: Any) -> bytes:
    """One message of the control pipe."""
    if op not in OPS:
        raise ValueError(f"unknown vLLM worker op {op!r}; known: {OPS}")
    return (json.dumps({"op": op, **fields}) + "\n").encode()


def parse_control_line(line: bytes | str) -> dict[str, Any]:
    """The message of one control line; ValueError for anything else."""
    message = json.loads(line)
    if not isinstance(message, dict) or message.get("op") not in OPS:
        raise ValueError(f"not a vLLM worker message: {line!r}")
    if message["op"] == "generate" and not all(isinstance(message.get(k), t) for k, t in (("id", int), ("request", str), ("results", str))):
        raise ValueError(f"a generate message needs an int id and request and results paths: {line!r}")
    if message["op"] == "cancel" and not isinstance(message.get("id"), int):
        raise ValueError(f"a cancel message needs an int id: {line!r}")
    return message


def _forward(stream: IO[bytes], tail: collections.deque[str]) -> None:
    """The worker's output, line by line, to this process's stderr, its last lines kept."""
    for line in iter(stream.readline, b""):
        tail.append(line.decode("utf-8", "replace").rstrip("\n"))
        try:
            os.write(2, line)
        except OSError:
            pass
    stream.close()


def _shutdown(process: subprocess.Popen, directory: Path, grace_s: float) -> None:
    """Ask the worker to exit, kill it if it has not within grace_s (an engine hanging at shutdown must
    not hang the round), and remove its folder."""
    if process.poll() is None:
        try:
            process.stdin.write(control_line("close"))  # type: ignore[union-attr]
            process.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError, ValueError):
            pass
    try:
        process.stdin.close()  # type: ignore[union-attr]
    except (BrokenPipeError, OSError, ValueError):
        pass
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("vllm: the worker has not exited %.0f s after being asked to; killing it", grace_s)
        process.kill()
        process.wait()
    shutil.rmtree(directory, ignore_errors=True)


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the checkpoint is local; never reach for a hub
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    # The worker is already its own process: no need for vLLM to start another one for its engine.
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # On CPU, vLLM sizes its KV cache from this (GiB); without it, it asks for most of the memory.
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["PYTHONUNBUFFERED"] = "1"  # its output reaches the parent (and its error messages) as written
    return env
