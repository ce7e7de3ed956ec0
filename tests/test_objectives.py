"""Objectives on a real tiny Llama: the memphis / cpo_simpo identity, SPIN at its reference point,
STaR's items, and NEFTune touching training forward passes only."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rationale_loop.config.schema import ObjectiveConfig, TrainConfig
from rationale_loop.data.formats import TINYCOT
from rationale_loop.data.encode import Encoder
from rationale_loop.training.losses import sequence_logprobs
from rationale_loop.models.model import neftune, train_tokenizer
from rationale_loop.training.objectives import OBJECTIVES, RoundData, build_objective
from rationale_loop.run.records import Generation, Pair, Problem

TEXTS = [TINYCOT.prompt(f"Ann has {i} pens. She finds {i % 7} more.") + TINYCOT.response(f"{i} + {i % 7} = {i + i % 7}.", str(i + i % 7)) for i in range(60)]
PROBLEM = Problem("q1", "Ann has 3 pens. She finds 2 more.", "3 + 2 = 5.", "5")
PROMPT = TINYCOT.prompt(PROBLEM.question)
CHOSEN = TINYCOT.response("3 + 2 = 5.", "5")
REJECTED = TINYCOT.response("3 + 2 = 6.", "6")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture()
def model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def round_data(pairs=(), generations=()):
    return RoundData({"q1": PROBLEM}, list(generations), list(pairs), TINYCOT)


def loss_of(objective, model, items, tokenizer):
    encoder = Encoder(tokenizer, 256)
    encoded = [objective.encode(item, encoder) for item in items]
    if hasattr(objective, "prepare"):
        objective.prepare(model, encoded, encoder, 8)
    batch = objective.collate(encoded, encoder)
    units = objective.units(batch)
    sums = objective.loss_sums(model, batch, TrainConfig())
    return sum(objective.coefficients[n] * sums[n] / units[n] for n in sums)


PAIR = Pair("q1", PROMPT, CHOSEN, REJECTED, 0, 1, PROBLEM.rationale, PROBLEM.answer)


def test_registry_has_every_objective():
    assert {"memphis", "star", "spin", "cpo_simpo"} <= set(OBJECTIVES)
    with pytest.raises(ValueError, match="known"):
        build_objective(ObjectiveConfig(name="nope"))


def test_memphis_over_w_equals_cpo_simpo_on_one_pair(model, tokenizer):
    w = 5.0
    memphis = build_objective(ObjectiveConfig(name="memphis", rank_weight=w, anchor="chosen"))
    cpo = build_objective(ObjectiveConfig(name="cpo_simpo", beta=1.0, gamma=0.0, alpha=1.0 / w))
    memphis_loss = loss_of(memphis, model, memphis.items(round_data([PAIR])), tokenizer)
    cpo_loss = loss_of(cpo, model, cpo.items(round_data([PAIR])), tokenizer)
    assert (memphis_loss / w).item() == pytest.approx(cpo_loss.item(), abs=1e-6)


def test_memphis_loss_is_anchor_nll_plus_w_times_minus_log_sigmoid(model, tokenizer):
    # Worked from the model's own log-probs: s = summed log p / tokens for chosen and rejected,
    # rank = -log sigmoid(s_c - s_r), anchor = mean NLL over the gold response's tokens.
    encoder = Encoder(tokenizer, 256)
    batch = encoder.collate([encoder.encode(PROMPT, CHOSEN), encoder.encode(PROMPT, REJECTED), encoder.encode(PROMPT, CHOSEN)])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sums, counts = sequence_logprobs(logits, batch["labels"])
    s_c, s_r = sums[0] / counts[0], sums[1] / counts[1]
    expected = -sums[2] / counts[2] + 5.0 * math.log1p(math.exp(-(s_c - s_r).item()))
    memphis = build_objective(ObjectiveConfig(name="memphis", rank_weight=5.0, anchor="gold"))
    with torch.no_grad():
        got = loss_of(memphis, model, memphis.items(round_data([PAIR])), tokenizer)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)


def test_spin_starts_at_log_2_and_its_gradient_favours_gold(model, tokenizer):
    # At the reference weights every margin is 0, so the loss is -log sigmoid(0) = log 2.
    generation = Generation("q1", 0, PROMPT, REJECTED, "3 + 2 = 6.", "6", "5", "stop", True, False, 9)
    spin = build_objective(ObjectiveConfig(name="spin", beta=0.1))
    items = spin.items(round_data(generations=[generation]))
    assert [(i.chosen, i.rejected) for i in items] == [(CHOSEN, (REJECTED,))]
    loss = loss_of(spin, model, items, tokenizer)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-5)


def test_star_trains_on_unique_correct_samples_and_rationalizations():
    make = lambda i, text, correct: Generation("q1", i, PROMPT, text, "r", "a", "5", "stop", True, correct, 3)
    star = build_objective(ObjectiveConfig(name="star", rationalize=True))
    data = RoundData({"q1": PROBLEM}, [make(0, CHOSEN, True), make(1, CHOSEN, True), make(2, REJECTED, False)], [], TINYCOT,
                     rationalizations=[make(0, "hinted " + CHOSEN, True)])
    assert [(i.prompt, i.response) for i in star.items(data)] == [(PROMPT, CHOSEN), (PROMPT, "hinted " + CHOSEN)]


def test_star_with_sft_replay_adds_every_worked_sft_example_once():
    make = lambda i, text, correct: Generation("q1", i, PROMPT, text, "r", "a", "5", "stop", True, correct, 3)
    worked = Problem("s1", "Ben has 4 cards. He loses 1.", "4 - 1 = 3.", "3")
    answer_only = Problem("s2", "Cara has 2 eggs.", "", "2")
    data = RoundData({"q1": PROBLEM}, [make(0, CHOSEN, True), make(1, REJECTED, False)], [], TINYCOT, sft=[worked, answer_only])
    replaying = build_objective(ObjectiveConfig(name="star", sft_replay=True))
    assert [(i.prompt, i.response) for i in replaying.items(data)] == [
        (PROMPT, CHOSEN), (TINYCOT.prompt(worked.question), TINYCOT.response(worked.rationale, worked.answer))]
    assert len(build_objective(ObjectiveConfig(name="star")).items(data)) == 1


def test_neftune_changes_training_forwards_only(model, tokenizer, tmp_path):
    from rationale_loop.generate import Sampling
    from rationale_loop.generate.hf import HFBackend
    from rationale_loop.models.model import save_checkpoint

    ids = torch.tensor([tokenizer(PROMPT + CHOSEN)["input_ids"]])
    greedy = Sampling(n=1, temperature=0.0, max_new_tokens=12)
    backend = HFBackend(model, tokenizer)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        plain_generation = list(backend.generate([PROMPT], greedy))
        with neftune(model, alpha=5.0):
            model.eval()
            eval_logits = model(input_ids=ids).logits
            noisy_generation = list(backend.generate([PROMPT], greedy))
            model.train()
            noisy = model(input_ids=ids).logits
            save_checkpoint(model, tokenizer, tmp_path / "saved")
        model.eval()
        after = model(input_ids=ids).logits
    assert not torch.allclose(clean, noisy), "NEFTune must change training forward passes"
    assert torch.equal(clean, eval_logits), "NEFTune must not touch eval forward passes"
    assert plain_generation == noisy_generation, "NEFTune must not touch generation"
    assert torch.equal(clean, after), "NEFTune must leave nothing behind"
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert all(torch.equal(saved[k], weights[k]) for k in saved), "NEFTune must not reach the saved weights"


def test_listwise_groups_face_every_unique_incorrect_response():
    sample = lambda i, text, correct: Generation("q1", i, PROMPT, text, "r", "a", "5", "stop", True, correct, 3)
    other = TINYCOT.response("3 + 2 = 7.", "7")
    generations = [sample(0, CHOSEN, True), sample(1, REJECTED, False), sample(2, other, False), sample(3, REJECTED, False)]
    memphis = build_objective(ObjectiveConfig(name="memphis", listwise=True))
    items = memphis.items(round_data([PAIR], generations))
    assert [i.rejected for i in items] == [(REJECTED, other)]
    pairwise = build_objective(ObjectiveConfig(name="memphis"))
    assert [i.rejected for i in pairwise.items(round_data([PAIR], generations))] == [(REJECTED,)]


def test_listwise_loss_averages_negatives_in_one_forward(model, tokenizer):
    other = TINYCOT.response("3 + 2 = 7.", "7")
    encoder = Encoder(tokenizer, 256)
    batch = encoder.collate([encoder.encode(PROMPT, t) for t in (CHOSEN, REJECTED, other)])
    with torch.no_grad():
        sums, counts = sequence_logprobs(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    s = (sums / counts).tolist()
    # rank = -log(e^{s_c} / (e^{s_c} + (e^{s_r1} + e^{s_r2}) / 2))
    expected_rank = -math.log(math.exp(s[0]) / (math.exp(s[0]) + (math.exp(s[1]) + math.exp(s[2])) / 2))
    from rationale_loop.training.objectives import RankItem

    memphis = build_objective(ObjectiveConfig(name="memphis", rank_weight=1.0, anchor="chosen"))
    item = RankItem(PROMPT, CHOSEN, (REJECTED, other), CHOSEN)
    with torch.no_grad():
        got = loss_of(memphis, model, [item], tokenizer)
    assert got.item() == pytest.approx(expected_rank - s[0], abs=1e-5)  # anchor on chosen = -s_c


@pytest.mark.parametrize("name", ["memphis", "cpo_simpo"])
def test_an_anchor_read_off_the_chosen_row_equals_its_own_forward(name, model, tokenizer):
    """anchor=chosen (and cpo_simpo's NLL) reuse the chosen row instead of forwarding it twice: fewer
    rows, the same loss and gradient as the unshared computation; a gold anchor keeps its own row."""
    from rationale_loop.training.objectives import RankItem

    other = TINYCOT.response("3 + 2 = 7 apples in all.", "7")
    items = [RankItem(PROMPT, CHOSEN, (REJECTED,), CHOSEN), RankItem(PROMPT, other, (REJECTED,), other),
             RankItem(PROMPT, CHOSEN, (other,), TINYCOT.response("Ann has 3. 3 + 2 = 5.", "5"))]
    results = []
    for share in (True, False):
        objective = build_objective(ObjectiveConfig(name=name, anchor="chosen", share_prompt=False))
        objective.share_anchor = share
        model.zero_grad()
        encoder = Encoder(tokenizer, 256)
        batch = objective.collate([objective.encode(item, encoder) for item in items], encoder)
        units, sums = objective.units(batch), objective.loss_sums(model, batch, TrainConfig())
        loss = sum(objective.coefficients[n] * sums[n] / units[n] for n in sums)
        loss.backward()
        results.append((batch["input_ids"].shape[0], units, float(loss), [p.grad.clone() for p in model.parameters()]))
    (rows_shared, units_shared, loss_shared, grads_shared), (rows_own, units_own, loss_own, grads_own) = results
    assert rows_shared == rows_own - 2, "two of the three anchors are the chosen rows"
    assert units_shared == units_own
    assert loss_shared == pytest.approx(loss_own, rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_shared, grads_own))


def _loss_and_grads(objective, items, model, encoder, train):
    model.zero_grad()
    batch = objective.collate([objective.encode(item, encoder) for item in items], encoder)
    units, sums = objective.units(batch), objective.loss_sums(model, batch, train)
    loss = sum(objective.coefficients[n] * sums[n] / units[n] for n in sums)
    loss.backward()
    return batch, units, {n: float(v) for n, v in sums.items()}, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name, anchor, eta", [("memphis", "chosen", 1.0), ("memphis", "gold", 0.75), ("memphis", "replay", 1.0),
                                               ("cpo_simpo", "chosen", 1.0)])
def test_the_shared_prompt_forward_gives_the_unshared_losses_and_gradients(name, anchor, eta, model, tokenizer):
    """Each group's prompt forwarded once, its responses packed behind it (objective.share_prompt), against
    one row per response: the same units, loss terms (relative 1e-5) and gradients (absolute 1e-6), with
    groups of one to three rejected responses of different lengths, an anchor in the row (gold), an anchor
    under another prompt (replay), and MixCE on the anchor."""
    from rationale_loop.training.objectives import RankItem

    other_prompt = TINYCOT.prompt("Bo has 4 cups. He breaks 1.")
    gold = TINYCOT.response("Ann has 3. 3 + 2 = 5.", "5")
    wrong = [REJECTED, TINYCOT.response("3 - 2 = 1.", "1"), TINYCOT.response("She has 3 and 2, so 3 * 2 = 6 pens in all.", "6")]
    def anchor_of(chosen, prompt):
        return {"chosen": (chosen, None), "gold": (gold, None), "replay": (TINYCOT.response("4 - 1 = 3.", "3"), other_prompt)}[anchor]
    items = []
    for prompt, chosen, rejected in [(PROMPT, CHOSEN, tuple(wrong[:1])), (PROMPT, gold, tuple(wrong)), (other_prompt, TINYCOT.response("4 - 1 = 3.", "3"), tuple(wrong[1:]))]:
        target, anchor_prompt = anchor_of(chosen, prompt)
        items.append(RankItem(prompt, chosen, rejected if name == "memphis" else rejected[:1], target, anchor_prompt))
    encoder, train = Encoder(tokenizer, 256), TrainConfig(mixce_eta=eta)
    shared = _loss_and_grads(build_objective(ObjectiveConfig(name=name, anchor=anchor, share_prompt=True)), items, model, encoder, train)
    plain = _loss_and_grads(build_objective(ObjectiveConfig(name=name, anchor=anchor, share_prompt=False)), items, model, encoder, train)
    (batch, units, sums, grads), (plain_batch, plain_units, plain_sums, plain_grads) = shared, plain
    assert units == plain_units
    assert sums.keys() == plain_sums.keys() and all(sums[n] == pytest.approx(plain_sums[n], rel=1e-5) for n in sums)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, plain_grads))
    # Fewer tokens forwarded: every prompt once per group.
    assert int(batch["attention_mask"].sum()) < int(plain_batch["attention_mask"].sum())
    # One row a group, and one for each anchor under another prompt (replay: two of the three).
    assert batch["input_ids"].shape[0] == (5 if anchor == "replay" else 3)
