"""generate.stop: a completion ends where a stop string first appears, without it, for the hf backend
(transformers keeps the string; the backend cuts it off, as vLLM does)."""

from __future__ import annotations

import pytest

from rationale_loop.data.formats import FORMATS, TINYCOT
from rationale_loop.data.templates import get_template
from rationale_loop.run.records import Conversation, Turn
from rationale_loop.generate import Sampling
from rationale_loop.generate.base import Completion
from rationale_loop.generate.hf import cut_at_stop


def _stop_string_from(text: str) -> str:
    """Letters or digits the model's own greedy text holds with a few more characters after their first appearance: a
    string the greedy path is known to write. Three of them from the first third of the text where it has
    such (away from the end), else the longest such run anywhere (a half-trained model may write little
    else than digits and symbols). Letters and digits only, so that no tokenizer's space clean-up moves it
    between the tokens and the decoded text."""
    starts = [*range(len(text) // 3, len(text)), *range(len(text) // 3)]
    for size in (3, 2, 1):
        for start in starts:
            window = text[start : start + size]
            if len(window) == size and window.isalnum() and text.index(window) + size + 3 <= len(text.rstrip()):
                return window
    raise AssertionError(f"the trained model's greedy completion holds no letter or digit to cut at: {text!r}")


def test_generation_stops_at_the_stop_string(two_round_run):
    """The case comes from the model's own greedy output, not from what a half-trained model is expected
    to write (that differs between CPUs and GPUs): greedy decoding with a stop string follows the same path
    until the string's first appearance, and ends there, without it."""
    from rationale_loop.generate.hf import HFBackend
    from rationale_loop.models.model import load_model, load_tokenizer

    checkpoint = two_round_run / "round_01" / "checkpoint"
    backend = HFBackend(load_model(checkpoint), load_tokenizer(checkpoint), batch_size=4)
    prompts = [TINYCOT.prompt(q) for q in ("Ann has 3 pens. She finds 2 more. How many pens does Ann have now?",
                                           "Ben has 12 coins. He loses 5. How many coins does Ben have now?")]
    for prompt in prompts:
        greedy = Sampling(n=1, temperature=0.0, max_new_tokens=48)
        [(_, [full])] = backend.generate([prompt], greedy)
        stop = _stop_string_from(full.text)
        [(_, [cut])] = backend.generate([prompt], Sampling(n=1, temperature=0.0, max_new_tokens=48, stop=(stop,)))
        assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop", (stop, full.text)
        assert cut.num_tokens < full.num_tokens, "generation ended at the stop string, not at EOS or the length limit"


def test_cut_at_stop_takes_the_earliest_string():
    done = cut_at_stop(Completion("a b ### User: c USER: d", "length", 9), ("USER:", "### User:"))
    assert done == Completion("a b ", "stop", 9)
    assert cut_at_stop(Completion("plain", "stop", 2), ("USER:",)) == Completion("plain", "stop", 2)


def test_every_sample_stops_at_the_formats_end_of_turn_besides_the_configured_strings(tmp_path):
    """A pretrained model that writes the next `### User:` turn after its answer is stopped there without
    anyone configuring it; generate.stop adds to that stop, it does not replace it."""
    from hydra import compose, initialize_config_dir

    from rationale_loop.cli import CONFIG_DIR
    from rationale_loop.config.schema import register_configs
    from rationale_loop.phases.context import RunContext

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        plain = compose("config", overrides=[f"output_root={tmp_path}", "task.pool_size=8", "task.eval_size=8", "task.sft_size=8"])
        extra = compose("config", overrides=[f"output_root={tmp_path}", "task.pool_size=8", "task.eval_size=8", "task.sft_size=8",
                                             "generate.stop=[USER:,'\n### User:']"])
    assert TINYCOT.stop == ("\n### User:",)
    assert RunContext(plain).stop() == ("\n### User:",)
    assert RunContext(extra).stop() == ("USER:", "\n### User:")


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_each_prompt_format_stops_at_its_own_end_of_turn(name, tmp_path):
    """task.prompt_format=<any template>: sampling and evaluation stop at that template's end of turn, and a
    completion that ran on past it parses to the same answer as one that stopped there."""
    from hydra import compose, initialize_config_dir

    from rationale_loop.cli import CONFIG_DIR
    from rationale_loop.config.schema import register_configs
    from rationale_loop.phases.context import RunContext

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=[f"output_root={tmp_path}", "task.pool_size=8", "task.eval_size=8", "task.sft_size=8",
                                           f"task.prompt_format={name}"])
    fmt = FORMATS[name]
    assert RunContext(cfg).stop() == get_template(name).stop == fmt.stop
    answered = fmt.response("2 + 3 = 5.", "5")
    # What a model that does not stop writes after its reply: the end of turn and the next user turn (special
    # tokens such as EOS are dropped when the backends decode, so none here).
    conversation = Conversation((Turn("user", "Q?"), Turn("assistant", answered), Turn("user", "And 4?")))
    rendered = get_template(name).render(conversation, "")
    ran_on = rendered[rendered.index(answered):]
    assert ran_on != answered
    assert cut_at_stop(Completion(ran_on, "length", 9), fmt.stop).text.rstrip() == answered
    assert fmt.parse(ran_on).answer == fmt.parse(answered).answer == "5"


def test_a_generation_left_unfinished_and_closed_after_its_backend_raises_nothing(two_round_run):
    """Ctrl-C mid-pool leaves the backend's generator unfinished; the run closes the backend, and the
    generator's own clean-up runs later, when it is collected: it must not fail on the closed backend."""
    from rationale_loop.generate.hf import HFBackend
    from rationale_loop.models.model import load_model, load_tokenizer

    checkpoint = two_round_run / "round_01" / "checkpoint"
    backend = HFBackend(load_model(checkpoint), load_tokenizer(checkpoint), batch_size=1)
    prompts = [TINYCOT.prompt(q) for q in ("Ann has 3 pens. She finds 2 more.", "Ben has 12 coins. He loses 5.")]
    unfinished = backend.generate(prompts, Sampling(n=1, temperature=0.0, max_new_tokens=8))
    next(unfinished)
    backend.close()
    unfinished.close()  # runs the generator's finally block, as collection would
