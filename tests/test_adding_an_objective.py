"""Adding an objective is one class and one YAML file: the config checks, the task checks and the model
card read what the class declares (objectives.Declared), and none of config/schema.py, config_checks.py,
task_checks.py, loop.py or export.py names it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rationale_loop import export
from rationale_loop.config.errors import ConfigError
from rationale_loop.config.schema import register_configs
from rationale_loop.preflight.config_checks import pair_objectives, validate
from rationale_loop.data.tasks import TaskSplits
from rationale_loop.training.objectives import OBJECTIVES, SFTItem, SupervisedObjective, build_objective
from rationale_loop.run.records import Problem
from rationale_loop.preflight.task_checks import check_task_fits_config

CONF = Path(__file__).resolve().parents[1] / "conf"
NAME = "gold_echo"


class GoldEchoObjective(SupervisedObjective):
    """A trivial self-training objective: cross-entropy on the pool questions' gold rationales, whatever
    the samples said. It needs gold rationales in the pool, and says so."""

    @classmethod
    def gold_rationales_needed(cls, cfg):
        return ("pool",)

    @classmethod
    def describe(cls, cfg):
        return f"gold echo: cross-entropy on the pool's gold rationales (weight {cfg.anchor_weight:g})"

    def items(self, data):
        return [SFTItem(data.fmt.prompt(p.question), data.fmt.response(p.rationale, p.answer)) for p in data.problems.values()]


@pytest.fixture
def added(tmp_path):
    """The class registered and its YAML written into a copy of conf/; both gone afterwards."""
    OBJECTIVES.register(NAME, GoldEchoObjective)
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "objective" / f"{NAME}.yaml").write_text(f"# The pool's gold rationales, echoed.\nname: {NAME}\nanchor_weight: 2.0\n")
    register_configs()
    try:
        yield conf
    finally:
        OBJECTIVES.unregister(NAME)


def compose_in(conf: Path, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(conf)):
        return compose("config", overrides=list(overrides))


def test_a_new_objective_validates_builds_and_describes_itself(added):
    cfg = compose_in(added, f"objective={NAME}", "rank.packing=true")
    validate(cfg)  # token-level, as its base class declares: rank.packing is allowed
    assert isinstance(build_objective(cfg.objective), GoldEchoObjective)
    assert NAME not in pair_objectives()
    assert export._objective(cfg) == "gold echo: cross-entropy on the pool's gold rationales (weight 2)"
    assert "pool" in export._declared(cfg).gold_rationales_needed(cfg.objective)  # the card's "gold rationale as anchor"


def test_what_a_new_objective_does_not_declare_is_refused_naming_the_key(added):
    with pytest.raises(ConfigError, match=f"objective.rationalize needs an objective that rationalizes .*not objective={NAME}"):
        validate(compose_in(added, f"objective={NAME}", "objective.rationalize=true"))
    with pytest.raises(ConfigError, match=f"objective.detach_rejected=True is an option of the pair objectives .*not of objective={NAME}"):
        validate(compose_in(added, f"objective={NAME}", "objective.detach_rejected=true"))


def test_the_task_check_reads_the_new_objectives_needs(added):
    cfg = compose_in(added, f"objective={NAME}")
    with_gold = Problem(id="p1", question="1+1?", answer="2", rationale="1+1=2")
    without = Problem(id="p2", question="2+2?", answer="4", rationale="")
    check_task_fits_config(cfg, TaskSplits([with_gold], [with_gold], [with_gold]))
    with pytest.raises(ConfigError, match="needs gold rationales, but 1 pool question"):
        check_task_fits_config(cfg, TaskSplits([with_gold], [with_gold, without], [with_gold]))


def test_an_unknown_objective_is_one_line_with_a_guess():
    cfg = OmegaConf.create({"name": "stra"})
    with pytest.raises(ConfigError) as info:
        build_objective(cfg)
    assert str(info.value).startswith("objective.name=stra is unknown (did you mean objective.name=star?); known: ")
