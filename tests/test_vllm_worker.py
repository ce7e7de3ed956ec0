"""The vLLM backend's long-lived worker without vLLM: the worker runs in this interpreter against a
stand-in engine (tests/fake_vllm), so the protocol (several requests on one engine, cancel on an early
stop, close, a dead worker's error) is tested in seconds. The real engine: tests/test_vllm.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rationale_loop.generate import Sampling
from rationale_loop.generate.vllm import LineReader, VLLMBackend, control_line, parse_control_line

FAKE = Path(__file__).parent / "fake_vllm"
PROMPTS = [f"question {i}" for i in range(6)]


@pytest.fixture
def fake_engine(monkeypatch, tmp_path):
    """The worker imports the stand-in as `vllm`; its engine starts are logged to the returned file."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKE), str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    starts = tmp_path / "engine_starts.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(starts))
    return starts


def backend(**kwargs) -> VLLMBackend:
    return VLLMBackend("tiny", {"dtype": "float32", "gpu_memory_utilization": 0.42}, python=sys.executable, chunk_size=2, **kwargs)


def texts(results) -> dict[int, list[str]]:
    return {i: [c.text for c in completions] for i, completions in results}


def test_control_lines_round_trip_and_anything_else_is_refused():
    line = control_line("generate", id=3, request="/tmp/r.json", results="/tmp/r.jsonl")
    assert line.endswith(b"\n") and parse_control_line(line) == {"op": "generate", "id": 3, "request": "/tmp/r.json", "results": "/tmp/r.jsonl"}
    assert parse_control_line(control_line("cancel", id=3)) == {"op": "cancel", "id": 3}
    assert parse_control_line(control_line("close")) == {"op": "close"}
    with pytest.raises(ValueError):
        control_line("reboot")
    for bad in (b'{"op": "reboot"}', b'[1]', b'{"op": "generate", "id": "3", "request": "a", "results": "b"}',
                b'{"op": "cancel"}', b'not json'):
        with pytest.raises(ValueError):
            parse_control_line(bad)


def test_line_reader_takes_whole_lines_and_keeps_characters_split_across_writes(tmp_path):
    path = tmp_path / "results.jsonl"
    reader = LineReader(path)
    assert reader.read() == []  # not there yet
    line = json.dumps({"index": 0, "text": "é → ∞"}, ensure_ascii=False).encode() + b"\n"
    with path.open("wb") as handle:
        handle.write(line[:-4])
        handle.flush()
        assert reader.read() == []
        handle.write(line[-4:] + line)
        handle.flush()
        assert reader.read() == [{"index": 0, "text": "é → ∞"}] * 2


def test_one_engine_serves_requests_with_different_sampling_as_fresh_engines_would(fake_engine):
    a = Sampling(n=3, temperature=0.7, max_new_tokens=7, seed=1)
    b = Sampling(n=2, temperature=0.9, max_new_tokens=5, seed=2, stop=("|5",))
    greedy = Sampling(n=1, temperature=0.0, max_new_tokens=9)
    with backend() as shared:
        first, second, third = (texts(shared.generate(PROMPTS, s)) for s in (a, b, greedy))
        assert shared.engine_starts == 1 and shared.last_timing["engine_start_s"] == 0.0
        resumed = texts(shared.generate(PROMPTS, b, skip={0, 1, 4}))
    assert shared.worker_pid is None
    assert [len(first[i]) for i in range(6)] == [3] * 6 and len(set(first[0])) == 3
    assert all(t == f"question {i}" for i, ts in second.items() for t in ts)  # cut at the stop string
    assert third[5] == ["question 5|9|greedy"]
    assert resumed == {i: second[i] for i in (2, 3, 5)}
    # B alone on a fresh engine (a different seed to start it with) samples what B after A sampled.
    with backend() as fresh:
        alone = texts(fresh.generate(PROMPTS, b))
    assert alone == second
    engines = [json.loads(line) for line in fake_engine.read_text().splitlines()]
    assert len(engines) == 2 and engines[0]["gpu_memory_utilization"] == 0.42 and engines[0]["seed"] == 1 and engines[1]["seed"] == 2


def test_an_early_stop_cancels_the_request_and_leaves_the_engine_for_the_next(fake_engine, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_CHUNK_S", "0.5")
    sampling = Sampling(n=2, temperature=0.7, seed=5)
    shared = backend()
    try:
        stream = shared.generate(PROMPTS, sampling)
        first = next(stream)
        pid = shared.worker_pid
        stream.close()  # the caller stops after one result: the worker ends that request after its chunk
        started = time.monotonic()
        whole = texts(shared.generate(PROMPTS, sampling))
        assert time.monotonic() - started < 5  # it did not sample the three chunks the first call left
        assert shared.worker_pid == pid and shared.engine_starts == 1
        assert whole[first[0]] == [c.text for c in first[1]] and len(whole) == 6
        # A call left hanging (neither finished nor closed) gives way to the next, and fails if resumed.
        hanging = shared.generate(PROMPTS, sampling)
        next(hanging)
        assert texts(shared.generate(PROMPTS[:2], sampling)) == {0: whole[0], 1: whole[1]}
        with pytest.raises(RuntimeError, match="cancelled: a later call"):
            list(hanging)
        assert shared.engine_starts == 1
    finally:
        shared.close()


def test_close_ends_the_worker_and_a_later_call_starts_a_new_engine(fake_engine):
    shared = backend()
    assert shared.worker_pid is None  # nothing starts before the first call
    list(shared.generate(PROMPTS[:1], Sampling()))
    worker = shared._worker
    shared.close()
    assert worker.process.returncode == 0 and not worker.dir.exists()
    shared.close()  # twice is fine
    assert len(list(shared.generate(PROMPTS[:1], Sampling()))) == 1 and shared.engine_starts == 2
    shared.close()


def test_a_garbage_collected_backend_ends_its_worker(fake_engine):
    shared = backend()
    list(shared.generate(PROMPTS[:1], Sampling()))
    process = shared._worker.process
    del shared
    assert process.wait(timeout=15) == 0


def test_a_worker_killed_mid_request_fails_the_call_clearly_and_the_next_call_starts_anew(fake_engine, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_CHUNK_S", "0.5")
    with backend() as shared:
        stream = shared.generate(PROMPTS, Sampling(n=1, temperature=0.7))
        next(stream)
        os.kill(shared.worker_pid, signal.SIGKILL)
        with pytest.raises(RuntimeError) as failure:
            list(stream)
        message = str(failure.value)
        assert "was killed by signal SIGKILL after returning" in message and "of 6 prompts" in message
        assert "fake vllm: starting an engine" in message  # its last lines of output
        assert len(list(shared.generate(PROMPTS[:2], Sampling()))) == 2 and shared.engine_starts == 2


@pytest.mark.slow
def test_an_engine_error_names_itself_and_an_engine_that_cannot_start_says_so(fake_engine):
    with backend() as shared:
        with pytest.raises(RuntimeError, match="the engine failed on this prompt"):
            list(shared.generate(["fine", "CRASH"], Sampling()))
        assert shared.worker_pid is None  # that engine is closed; the next call starts a new one
        assert len(list(shared.generate(["fine"], Sampling()))) == 1
    broken = VLLMBackend("FAIL", {}, python=sys.executable)
    with pytest.raises(RuntimeError, match="(?s)exited with code 1 while starting its engine.*no such model"):
        list(broken.generate(["x"], Sampling()))


def test_the_worker_exits_when_its_control_pipe_closes(fake_engine, tmp_path):
    """The parent gone (its end of the pipe closed) and the worker idle: it exits by itself."""
    (tmp_path / "engine.json").write_text(json.dumps({"model": "tiny", "engine": {}, "lora": None, "seed": 0}))
    worker = subprocess.Popen([sys.executable, "-m", "rationale_loop.generate.vllm_engine", "--serve", str(tmp_path)], stdin=subprocess.PIPE)
    worker.stdin.close()
    assert worker.wait(timeout=30) == 0


def test_auto_is_hf_without_cuda_and_vllm_with_cuda_where_vllm_imports(monkeypatch):
    import torch

    from rationale_loop import generate

    cfg = SimpleNamespace(backend="auto", python=None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(generate, "vllm_importable", lambda python: True)
    assert generate.resolve_backend(cfg) == "hf"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert generate.resolve_backend(cfg) == "vllm"
    monkeypatch.setattr(generate, "vllm_importable", lambda python: False)
    assert generate.resolve_backend(cfg) == "hf"
    assert generate.resolve_backend(SimpleNamespace(backend="vllm", python=None)) == "vllm"
    assert "auto" in generate.BACKENDS


def test_vllm_importable_asks_the_named_interpreter(tmp_path):
    from rationale_loop.generate import vllm_importable

    assert vllm_importable(str(tmp_path / "no-python")) is False
    assert vllm_importable(sys.executable) == (__import__("importlib").util.find_spec("vllm") is not None)


def test_the_default_backend_is_auto_hf_without_cuda_and_vllm_with_it(monkeypatch, tmp_path):
    """generate's default is auto: transformers on a machine without CUDA (this one, and CI), vLLM where
    CUDA is available and generate.python has vLLM. Each backend batches by its own key: hf by
    generate.batch_size prompts, vLLM in engine calls of generate.chunk_size prompts."""
    import torch

    from rationale_loop import generate
    from rationale_loop.preflight.config_checks import validate
    from test_config import compose_config

    cfg = compose_config()
    validate(cfg)
    assert cfg.generate.backend == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert generate.resolve_backend(cfg.generate) == "hf"
    # The environment a GPU machine with `make setup-vllm` has, stood in for: CUDA present, and the
    # interpreter generate.python names finds vllm (its own probe is tested above).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(generate, "vllm_importable", lambda python: python == "/venv-vllm/bin/python")
    assert generate.resolve_backend(cfg.generate) == "hf"  # this interpreter has no vLLM: hf still
    cfg = compose_config("generate.python=/venv-vllm/bin/python", "generate.chunk_size=96", "generate.batch_size=8")
    assert generate.resolve_backend(cfg.generate) == "vllm"
    backend = generate.make_backend(cfg.generate, tmp_path, "float32", batch_size=8)  # starts nothing until generate()
    assert type(backend).__name__ == "VLLMBackend" and backend.chunk_size == 96 and backend.python == "/venv-vllm/bin/python"
    assert not hasattr(backend, "batch_size")  # hf's key; the engine batches by itself


def test_vllm_compiles_by_default_on_a_gpu_only(monkeypatch, tmp_path):
    """generate.enforce_eager unset (null): eager on a CPU, where compiling costs minutes of engine start for
    8-25% of generation speed (docs/benchmarks.md), compiled on a GPU; set, it is what the engine gets."""
    import torch

    from rationale_loop import generate
    from test_config import compose_config

    def engine(*overrides):
        cfg = compose_config("generate.backend=vllm", *overrides)
        return generate.make_backend(cfg.generate, tmp_path, "float32", batch_size=8).engine  # starts nothing

    assert compose_config().generate.enforce_eager is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine()["enforce_eager"] is True
    assert engine("generate.enforce_eager=false")["enforce_eager"] is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engine()["enforce_eager"] is False
    assert engine("generate.enforce_eager=true")["enforce_eager"] is True


def test_a_worker_that_does_not_exit_when_asked_is_killed_after_the_grace(tmp_path):
    from rationale_loop.generate.vllm import _shutdown

    (tmp_path / "dir").mkdir()
    stuck = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
                             stdin=subprocess.PIPE)
    started = time.monotonic()
    _shutdown(stuck, tmp_path / "dir", grace_s=1.0)
    assert stuck.returncode == -signal.SIGKILL and time.monotonic() - started < 30 and not (tmp_path / "dir").exists()


def test_the_hf_backend_closes_too():
    import torch

    from rationale_loop.generate.hf import HFBackend

    model = SimpleNamespace(device=torch.device("cpu"))
    with HFBackend(model, SimpleNamespace(eos_token_id=2, pad_token_id=0)) as backend:
        assert backend.model is model
    assert backend.model is None
    backend.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        list(backend.generate(["x"], Sampling()))
