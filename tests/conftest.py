"""Shared fixtures: where the public data lives, and the tiny config used by end-to-end tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """../shared/data beside the checkout (CI puts it there), or $RATIONALE_LOOP_SHARED_DATA."""
    candidates = [os.environ.get("RATIONALE_LOOP_SHARED_DATA"), REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate, "gsm8k").is_dir():
            return Path(candidate)
    return None


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Each test's Accelerator starts from nothing: accelerate keeps one process-wide state, and a test that
    asks for Accelerator(cpu=True) after another test's train() settled on a GPU is refused ("AcceleratorState
    has already been initialized")."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def cpu_only_env() -> dict[str, str]:
    """The environment for a test's subprocesses that run DDP over gloo: no GPU visible, so that two
    processes do not land on one GPU (or on NCCL) on a machine with one, and one thread each. A job script's
    own folder, not the checkout, heads its sys.path: PYTHONPATH names the checkout, so that the job imports
    this checkout's rationale_loop and not whichever one is installed."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("public data not found: set RATIONALE_LOOP_SHARED_DATA or put shared/ beside the checkout")
    return path


@pytest.fixture(scope="session")
def two_round_run(tmp_path_factory) -> Path:
    """SFT and two rounds on the end-to-end test's small config: a finished run for the tests that read
    runs (the report), built once per session because it trains."""
    from rationale_loop.loop import run_loop
    from test_config import compose_config
    from test_end_to_end import SMALL

    root = tmp_path_factory.mktemp("two_rounds")
    # Later overrides of a key win over SMALL's. Half SFT's epochs halves the fixture's time and still
    # leaves a model right often enough, and wrong often enough, for both rounds to mine pairs. memphis,
    # not the embedded default's star, so that the rounds have a rank term for the report to show.
    overrides = [*SMALL, "rounds=2", "sft.epochs=2", "objective=memphis",
                 f"output_root={root}/runs", f"model.cache_dir={root}/models", "run=two"]
    # The overrides as the CLI hands them over, so that the run remembers them (run_config.py) as a run
    # made by `make loop` does: forks and later commands start from them.
    run_loop(compose_config(*overrides), overrides=overrides)
    return root / "runs" / "two"
