"""generate.stop: a completion ends where a stop string first appears, without it, for the hf backend
(transformers keeps the string; the backend cuts it off, as vLLM does)."""

from __future__ import annotations

from rationale_loop.data.formats import TINYCOT
from rationale_loop.generate import Sampling
from rationale_loop.generate.base import Completion
from rationale_loop.generate.hf import cut_at_stop


def test_generation_stops_at_the_stop_string(two_round_run):
    from rationale_loop.generate.hf import HFBackend
    from rationale_loop.model import load_model, load_tokenizer

    checkpoint = two_round_run / "round_01" / "checkpoint"
    backend = HFBackend(load_model(checkpoint), load_tokenizer(checkpoint), batch_size=4)
    prompts = [TINYCOT.prompt(q) for q in ("Ann has 3 pens. She finds 2 more. How many pens does Ann have now?",
                                           "Ben has 12 coins. He loses 5. How many coins does Ben have now?")]
    greedy = Sampling(n=1, temperature=0.0, max_new_tokens=48)
    whole = [c for _, cs in sorted(backend.generate(prompts, greedy)) for c in cs]
    assert all("### Answer:" in c.text for c in whole), "the trained model writes the answer header"
    stopped = [c for _, cs in sorted(backend.generate(prompts, Sampling(n=1, temperature=0.0, max_new_tokens=48, stop=("### Answer:",))))
               for c in cs]
    for full, cut in zip(whole, stopped):
        assert cut.text == full.text[: full.text.index("### Answer:")] and cut.finish_reason == "stop"
        assert cut.num_tokens < full.num_tokens, "generation ended at the stop string, not at EOS"


def test_cut_at_stop_takes_the_earliest_string():
    done = cut_at_stop(Completion("a b ### User: c USER: d", "length", 9), ("USER:", "### User:"))
    assert done == Completion("a b ", "stop", 9)
    assert cut_at_stop(Completion("plain", "stop", 2), ("USER:",)) == Completion("plain", "stop", 2)


def test_every_sample_stops_at_the_formats_end_of_turn_besides_the_configured_strings(tmp_path):
    """A pretrained model that writes the next `### User:` turn after its answer is stopped there without
    anyone configuring it; generate.stop adds to that stop, it does not replace it."""
    from hydra import compose, initialize_config_dir

    from rationale_loop.cli import CONFIG_DIR
    from rationale_loop.config import register_configs
    from rationale_loop.loop import Run

    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        plain = compose("config", overrides=[f"output_root={tmp_path}", "task.pool_size=8", "task.eval_size=8", "task.sft_size=8"])
        extra = compose("config", overrides=[f"output_root={tmp_path}", "task.pool_size=8", "task.eval_size=8", "task.sft_size=8",
                                             "generate.stop=[USER:,'\n### User:']"])
    assert TINYCOT.stop == ("\n### User:",)
    assert Run(plain, rebuild_index=False)._stop() == ("\n### User:",)
    assert Run(extra, rebuild_index=False)._stop() == ("USER:", "\n### User:")
