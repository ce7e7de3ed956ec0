"""The learning signal reaches the weights: a rank stage raises the fraction of its own pairs the model
ranks right, and the per-round diagnostics say so."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rationale_loop.config.schema import ObjectiveConfig, TrainConfig
from rationale_loop.data.formats import TINYCOT
from rationale_loop.training.diagnostics import pair_scores, ranking_summary, term_at_ends
from rationale_loop.training.losses import sequence_logprobs
from rationale_loop.models.model import train_tokenizer
from rationale_loop.training.objectives import MemphisObjective, RoundData
from rationale_loop.run.records import Pair, Problem
from rationale_loop.training.train import train


def _pairs() -> list[Pair]:
    """Pairs in the shape a round mines: the same question, a right and a wrong last step."""
    pairs = []
    for a in range(2, 26):
        b = a % 7 + 1
        prompt = TINYCOT.prompt(f"Ann has {a} pens. She finds {b} more. How many pens does Ann have now?")
        right, wrong = a + b, a + b + (1 if a % 2 else -1)
        pairs.append(Pair(f"q{a}", prompt, TINYCOT.response(f"{a} + {b} = {right}.", str(right)),
                          TINYCOT.response(f"{a} + {b} = {wrong}.", str(wrong)), 0, 1))
    return pairs


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([p.prompt + p.chosen + p.rejected for p in _pairs()] * 3, vocab_size=300)


def _model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config)


def test_a_rank_stage_raises_the_fraction_of_its_pairs_ranked_right(tokenizer):
    pairs = _pairs()
    model = _model(tokenizer)
    before = ranking_summary(pair_scores(model, tokenizer, pairs, 128), "before")
    objective = MemphisObjective(ObjectiveConfig(anchor="chosen"))
    items = objective.items(RoundData({}, [], pairs, TINYCOT))
    cfg = TrainConfig(lr=3e-3, epochs=24, batch_size=8, micro_batch_size=8, warmup_ratio=0.1, optimizer="adamw")
    result = train(model, tokenizer, items, objective, cfg, seed=0, desc="rank")
    after = ranking_summary(pair_scores(model, tokenizer, pairs, 128), "after")
    ends = term_at_ends(result.history, "rank")

    assert after["pairs_ranked_right_after"] >= before["pairs_ranked_right_before"] + 0.3, (before, after)
    assert after["pairs_ranked_right_after"] >= 0.9
    assert after["pair_margin_after"] > before["pair_margin_before"] + 0.1
    assert after["pair_rank_loss_after"] < before["pair_rank_loss_before"]
    assert ends["rank_term_last"] < ends["rank_term_first"] - 0.1, ends


@pytest.mark.parametrize("attention", ["sdpa", "flash_attention_2"], ids=["shared_rows", "row_per_response"])
@pytest.mark.parametrize("chunk", [0, 7], ids=["head_whole", "head_in_chunks"])
@pytest.mark.parametrize("max_length", [128, 90], ids=["rows_hold_a_prompts_responses", "a_prompts_responses_split"])
def test_pair_scores_are_each_sides_length_normalised_log_probability(tokenizer, chunk, attention, max_length, monkeypatch):
    """pair_scores agrees with scoring each side on its own, unbatched, though it reads a prompt once for all
    its pairs and a response once for every pair it is in: here a question with three pairs (one chosen
    against two rejected, and a rejected one chosen against a third), a pair whose sides are the same text, two
    prompt strings that differ by a space, and a pair too long to score (skipped). The same with the head run on
    7 response tokens at a time (what a model with a large vocabulary gets), with rows too short for all of a
    prompt's responses, and for a model whose attention takes no shared mask (a row per response)."""
    from rationale_loop.data.encode import Encoder
    from rationale_loop.training import diagnostics

    monkeypatch.setattr(diagnostics, "attention_implementation", lambda model: attention)
    model, pairs = _model(tokenizer), _pairs()[:5]
    first = pairs[0]
    pairs += [Pair("q2", first.prompt, first.chosen, TINYCOT.response("2 + 3 = 4.", "4"), 0, 2),
              Pair("q2", first.prompt, first.rejected, TINYCOT.response("2 + 3 = 7.", "7"), 1, 3),
              Pair("q2", first.prompt, first.chosen, first.chosen, 0, 0),
              Pair("q2 spaced", first.prompt + " ", first.chosen, first.rejected, 0, 1)]
    too_long = Pair("q9", pairs[1].prompt, pairs[1].chosen, pairs[1].rejected + " and so on" * 60, 0, 1)
    model.eval()
    encoder = Encoder(tokenizer, max_length)
    assert all(encoder.encode(p.prompt, side) is not None for p in pairs for side in (p.chosen, p.rejected))

    def score(prompt, response):
        batch = encoder.collate([encoder.encode(prompt, response)])
        with torch.no_grad():
            total, count = sequence_logprobs(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        return float(total[0] / count[0])

    expected = [(score(p.prompt, p.chosen), score(p.prompt, p.rejected)) for p in pairs]
    scored = pair_scores(model, tokenizer, [too_long, *pairs], max_length, batch_size=2, chunk=chunk)
    assert len(scored) == len(pairs)
    assert [side for both in scored for side in both] == pytest.approx([side for both in expected for side in both], abs=1e-5)
    assert scored[-2][0] == scored[-2][1]
    assert pair_scores(model, tokenizer, [], max_length) == []


def test_ranking_summary_by_hand():
    summary = ranking_summary([(-1.0, -3.0), (-2.0, -1.0), (-0.5, -0.5), (-1.5, -4.5)], "after")  # margins 2, -1, 0, 3
    assert summary["chosen_score_after"] == pytest.approx(-1.25)
    assert summary["rejected_score_after"] == pytest.approx(-2.25)
    assert summary["pair_margin_after"] == pytest.approx(1.0)
    assert summary["pairs_ranked_right_after"] == 0.5  # a tie is not ranked right
    expected = sum(math.log(1 + math.exp(-m)) for m in (2.0, -1.0, 0.0, 3.0)) / 4
    assert summary["pair_rank_loss_after"] == pytest.approx(expected)
    assert ranking_summary([], "before") == {"chosen_score_before": None, "rejected_score_before": None, "pair_margin_before": None,
                                             "pairs_ranked_right_before": None, "pair_rank_loss_before": None}
    assert term_at_ends([{"nll": 1.0}], "rank") == {"rank_term_first": None, "rank_term_last": None}


def test_replayed_anchor_is_a_gold_sft_example_under_its_own_prompt():
    pairs = _pairs()[:4]
    sft = [Problem(f"s{i}", f"Question {i}?", f"{i} + 1 = {i + 1}.", str(i + 1)) for i in range(3)]
    objective = MemphisObjective(ObjectiveConfig(anchor="replay"))
    items = objective.items(RoundData({}, [], pairs, TINYCOT, sft=sft, seed=5))
    gold = {TINYCOT.prompt(p.question): TINYCOT.response(p.rationale, p.answer) for p in sft}
    assert [item.prompt for item in items] == [p.prompt for p in pairs]
    assert all(gold[item.anchor_prompt] == item.anchor for item in items)
    assert len({item.anchor_prompt for item in items[:3]}) == 3, "each pair replays its own example, cycling"
    assert items == objective.items(RoundData({}, [], pairs, TINYCOT, sft=sft, seed=5))
