"""The pair objectives' remedies for likelihood displacement, worked by hand on a real tiny Llama:
rank_scope (divergent, step), detach_rejected, chosen_floor, and Iterative RPO (docs/recipe.md)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rationale_loop.training.objectives import ranked_groups as objectives_module
from rationale_loop.config.schema import ObjectiveConfig, TrainConfig
from rationale_loop.data.formats import TINYCOT
from rationale_loop.data.encode import Encoder
from rationale_loop.training.losses import dpo_loss, sequence_logprobs
from rationale_loop.training.objectives import RankItem, build_objective
from rationale_loop.training.rank_scope import divergence_points, scored_windows, step_boundaries

from test_objectives import model, tokenizer  # noqa: F401  (fixtures)

PROMPT = TINYCOT.prompt("Ann has 3 pens. She finds 2 more. She finds 4 more. She loses 1.")
CHOSEN = TINYCOT.response("3 + 2 = 5. 5 + 4 = 9. 9 - 1 = 8.", "8")
REJECTED = TINYCOT.response("3 + 2 = 5. 5 + 4 = 10. 10 - 1 = 9.", "9")
ITEM = RankItem(PROMPT, CHOSEN, (REJECTED,), CHOSEN)
W = 5.0


def chars(sequences):
    """A decode for token ids that are character codes."""
    return ["".join(map(chr, ids)) for ids in sequences]


def codes(text):
    return [ord(c) for c in text]


# -- the windows, on character "tokens" ---------------------------------------------------------------

def test_divergence_is_past_the_longest_prefix_shared_with_any_other_response():
    assert divergence_points([codes("abcx"), codes("abyy"), codes("azzz")]) == [2, 2, 1]
    assert divergence_points([codes("abc")]) == [0]
    windows = scored_windows([codes("3 + 2 = 5. 5 + 4 = 9."), codes("3 + 2 = 5. 5 + 4 = 10.")], "divergent")
    assert windows == [(19, 21), (19, 22)]  # "9." and "10."


def test_the_step_window_is_the_first_step_in_which_the_responses_part():
    chosen, rejected = "3 + 2 = 5. 5 + 4 = 9. 9 - 1 = 8.\n### Answer:\n8", "3 + 2 = 5. 5 + 4 = 10. 10 - 1 = 9.\n### Answer:\n9"
    windows = scored_windows([codes(chosen), codes(rejected)], "step", chars, [". ", "\n"])
    assert [text[b:e] for text, (b, e) in zip((chosen, rejected), windows)] == [" 5 + 4 = 9.", " 5 + 4 = 10."]
    # Parting in the first step, or in the answer after identical chains.
    windows = scored_windows([codes("7 + 1 = 8. ok"), codes("6 + 1 = 7. ok")], "step", chars, [". "])
    assert windows == [(0, 10), (0, 10)]
    windows = scored_windows([codes("2 * 3 = 6.\nA: 6"), codes("2 * 3 = 6.\nA: 7")], "step", chars, [". ", "\n"])
    assert windows == [(11, 15), (11, 15)]
    assert step_boundaries("a. b.\nc", [". ", "\n"]) == [2, 6]


# -- gradients per token -----------------------------------------------------------------------------

def _token_grads(monkeypatch, objective, model, tokenizer, items):
    """The loss, the batch, and d loss / d log p of every learned token (shared-prompt layout)."""
    captured = {}
    original = objectives_module.response_logprobs

    def spy(model, batch, chunk=0):
        logprobs = original(model, batch, chunk)
        logprobs.retain_grad()
        captured["logprobs"] = logprobs
        return logprobs

    monkeypatch.setattr(objectives_module, "response_logprobs", spy)
    encoder = Encoder(tokenizer, 256)
    encoded = [objective.encode(item, encoder) for item in items]
    objective.prepare(model, encoded, encoder, 8)
    batch = objective.collate(encoded, encoder)
    units, sums = objective.units(batch), objective.loss_sums(model, batch, TrainConfig())
    loss = sum(objective.coefficients[n] * sums[n] / units[n] for n in sums)
    loss.backward()
    return loss, batch, captured["logprobs"].detach(), captured["logprobs"].grad


def _responses(batch, logprobs, grads):
    """Per response of the batch: its token log-probs and their gradients, in order."""
    index = batch["response_of_token"]
    return [(logprobs[index == r], grads[index == r]) for r in range(batch["responses"])]


def test_divergent_sends_no_gradient_into_the_shared_prefix_and_todays_weights_past_it(monkeypatch, model, tokenizer):
    encoder = Encoder(tokenizer, 256)
    ids = [encoder.response_ids(r) for r in (CHOSEN, REJECTED)]
    shared = divergence_points(ids)[0]
    assert shared == divergence_points(ids)[1] and shared > 5, "the chains share their first step"
    config = ObjectiveConfig(name="memphis", rank_weight=W, anchor_weight=0.0, anchor="chosen", rank_scope="divergent")
    _, batch, logprobs, grads = _token_grads(monkeypatch, build_objective(config), model, tokenizer, [ITEM])
    (chosen_lp, chosen_grad), (rejected_lp, rejected_grad) = _responses(batch, logprobs, grads)
    assert len(chosen_lp) == len(ids[0]) and len(rejected_lp) == len(ids[1])
    # The common prefix is context: exactly zero, token by token.
    assert torch.all(chosen_grad[:shared] == 0) and torch.all(rejected_grad[:shared] == 0)
    # Past it, the rank term's weights on mean-token scores of the suffixes: with d = s_c - s_r,
    # d/d log p_t of W * -log sigmoid(d) is -W sigmoid(-d) / n_c on the chosen, +W sigmoid(-d) / n_r on the rejected.
    s_c, s_r = chosen_lp[shared:].mean(), rejected_lp[shared:].mean()
    pull = W * torch.sigmoid(-(s_c - s_r))
    assert torch.allclose(chosen_grad[shared:], (-pull / (len(ids[0]) - shared)).expand(len(ids[0]) - shared), atol=1e-6)
    assert torch.allclose(rejected_grad[shared:], (pull / (len(ids[1]) - shared)).expand(len(ids[1]) - shared), atol=1e-6)


def test_the_sequence_score_pushes_a_longer_chosen_chains_shared_prefix_down(monkeypatch, model, tokenizer):
    """Today's score, for contrast: a shared token gets -W sigma / |c| on the chosen side and +W sigma / |r|
    on the rejected side, so when the chosen chain is longer the prefix's net weight pushes it down."""
    config = ObjectiveConfig(name="memphis", rank_weight=W, anchor_weight=0.0, anchor="chosen")
    _, batch, logprobs, grads = _token_grads(monkeypatch, build_objective(config), model, tokenizer, [ITEM])
    (chosen_lp, chosen_grad), (rejected_lp, rejected_grad) = _responses(batch, logprobs, grads)
    pull = W * torch.sigmoid(-(chosen_lp.mean() - rejected_lp.mean()))
    assert torch.allclose(chosen_grad, (-pull / len(chosen_lp)).expand(len(chosen_lp)), atol=1e-6)
    assert torch.allclose(rejected_grad, (pull / len(rejected_lp)).expand(len(rejected_lp)), atol=1e-6)


def test_step_scores_exactly_the_first_divergent_step(monkeypatch, model, tokenizer):
    config = ObjectiveConfig(name="memphis", rank_weight=W, anchor_weight=0.0, anchor="chosen", rank_scope="step")
    objective = build_objective(config)
    encoder = Encoder(tokenizer, 256)
    windows = objective.encode(ITEM, encoder).windows
    ids = [encoder.response_ids(r) for r in (CHOSEN, REJECTED)]
    steps = [tokenizer.decode(i[b:e]).strip() for i, (b, e) in zip(ids, windows)]
    assert steps == ["5 + 4 = 9.", "5 + 4 = 10."]
    _, batch, logprobs, grads = _token_grads(monkeypatch, objective, model, tokenizer, [ITEM])
    for (lp, grad), (begin, end) in zip(_responses(batch, logprobs, grads), windows):
        assert torch.all(grad[:begin] == 0) and torch.all(grad[end:] == 0)
        assert torch.all(grad[begin:end] != 0)


def test_detach_rejected_sends_no_gradient_into_the_rejected_response(monkeypatch, model, tokenizer):
    config = ObjectiveConfig(name="memphis", rank_weight=W, anchor_weight=1.0, anchor="chosen", detach_rejected=True)
    _, batch, logprobs, grads = _token_grads(monkeypatch, build_objective(config), model, tokenizer, [ITEM])
    (chosen_lp, chosen_grad), (rejected_lp, rejected_grad) = _responses(batch, logprobs, grads)
    assert torch.all(rejected_grad == 0)
    # The chosen side keeps the rank term's pull (and the anchor's): d/d log p_t = -(W sigma(-d) + 1) / |c|.
    pull = W * torch.sigmoid(-(chosen_lp.mean() - rejected_lp.mean()))
    assert torch.allclose(chosen_grad, (-(pull + 1) / len(chosen_lp)).expand(len(chosen_lp)), atol=1e-6)


def test_detach_rejected_leaves_the_rejected_rows_without_gradient_in_one_row_per_response(model, tokenizer):
    config = ObjectiveConfig(name="memphis", rank_weight=W, anchor_weight=0.0, anchor="chosen", detach_rejected=True, share_prompt=False)
    objective = build_objective(config)
    encoder = Encoder(tokenizer, 256)
    batch = objective.collate([objective.encode(ITEM, encoder)], encoder)
    embeddings = model.get_input_embeddings()
    captured = {}

    def keep_output(module, args, out):
        out.retain_grad()
        captured["out"] = out

    handle = embeddings.register_forward_hook(keep_output)
    try:
        objective.loss_sums(model, batch, TrainConfig())["rank"].backward()
    finally:
        handle.remove()
    row_grads = captured["out"].grad.abs().sum(dim=(1, 2))
    assert row_grads[0] > 0 and row_grads[1] == 0  # the chosen row moves, the rejected row does not


# -- the floor and RPO against the starting weights ---------------------------------------------------

def _scores(model, tokenizer, responses):
    encoder = Encoder(tokenizer, 256)
    batch = encoder.collate([encoder.encode(PROMPT, r) for r in responses])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logprobs(logits, batch["labels"])


def _perturbed(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("share_prompt", [True, False])
def test_the_floor_is_zero_above_the_start_and_lambda_times_the_drop_below(model, tokenizer, share_prompt):
    lam = 3.0
    config = ObjectiveConfig(name="memphis", rank_weight=0.0, anchor_weight=0.0, anchor="chosen", chosen_floor=lam,
                             share_prompt=share_prompt)
    objective = build_objective(config)
    encoder = Encoder(tokenizer, 256)
    encoded = [objective.encode(ITEM, encoder)]
    objective.prepare(model, encoded, encoder, 8)
    sums, counts = _scores(model, tokenizer, [CHOSEN, REJECTED])
    start = float(sums[0] / counts[0])
    assert encoded[0].reference[0] == pytest.approx(start, abs=1e-5)

    def floor(reference):
        group = [dataclasses.replace(encoded[0], reference=(reference, encoded[0].reference[1]))]
        batch = objective.collate(group, encoder)
        with torch.no_grad():
            terms = objective.loss_sums(model, batch, TrainConfig())
        return objective.coefficients["floor"] * float(terms["floor"]) / objective.units(batch)["floor"]

    assert floor(start - 0.3) == 0.0  # s_c above its start: no floor
    assert floor(start + 0.3) == pytest.approx(lam * 0.3, abs=1e-4)  # below: lambda (s_c_start - s_c)
    assert floor(start) == pytest.approx(0.0, abs=1e-4)  # at the starting weights themselves


def test_dpo_and_rpo_equal_the_formula_on_hand_made_log_probabilities():
    chosen, rejected = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    reference_chosen, reference_rejected = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -2.0])
    got = dpo_loss(chosen, rejected, reference_chosen, reference_rejected, 0.1)
    # margins: (1) - (-1) = 2 and (1) - (-1) = 2 -> -log sigmoid(0.2) each
    assert got.tolist() == pytest.approx([-math.log(1 / (1 + math.exp(-0.2)))] * 2, abs=1e-6)
    got = dpo_loss(torch.tensor([-3.0]), torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    assert got.item() == pytest.approx(math.log(1 + math.exp(1.0)), abs=1e-6)  # margin -2, beta 0.5: -log sigmoid(-1)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_rpo_is_dpo_against_the_starting_model_plus_alpha_times_the_chosen_nll_per_token(model, tokenizer, share_prompt):
    beta, alpha = 0.1, 1.0
    other = TINYCOT.response("3 + 2 = 6. 6 + 4 = 10. 10 - 1 = 9.", "9")
    items = [ITEM, RankItem(PROMPT, REJECTED, (other,), REJECTED)]
    objective = build_objective(ObjectiveConfig(name="rpo", beta=beta, alpha=alpha, share_prompt=share_prompt))
    encoder = Encoder(tokenizer, 256)
    encoded = [objective.encode(item, encoder) for item in items]
    start_sums, _ = _scores(model, tokenizer, [CHOSEN, REJECTED, REJECTED, other])
    objective.prepare(model, encoded, encoder, 8)
    _perturbed(model)
    sums, counts = _scores(model, tokenizer, [CHOSEN, REJECTED, REJECTED, other])
    batch = objective.collate(encoded, encoder)
    terms = objective.loss_sums(model, batch, TrainConfig())
    loss = sum(objective.coefficients[n] * terms[n] / objective.units(batch)[n] for n in terms)
    expected = 0.0
    for c, r in ((0, 1), (2, 3)):
        margin = (sums[c] - start_sums[c]) - (sums[r] - start_sums[r])
        expected += -math.log(1 / (1 + math.exp(-beta * float(margin)))) + alpha * float(-sums[c] / counts[c])
    assert float(loss.detach()) == pytest.approx(expected / 2, rel=1e-5)
    assert set(terms) == {"dpo", "nll"}


# -- every layout gives the same numbers ---------------------------------------------------------------

def _weights_lowering_the_chosen(model, tokenizer, items) -> dict:
    """The model's weights after a step up the chosen responses' NLL (the model left as it was): below the
    starting weights' chosen scores, so that the floor is active by a margin and not on its kink."""
    objective, encoder = build_objective(ObjectiveConfig(name="memphis", anchor="chosen")), Encoder(tokenizer, 256)
    batch = objective.collate([objective.encode(item, encoder) for item in items], encoder)
    model.zero_grad()
    objective.loss_sums(model, batch, TrainConfig())["anchor"].backward()
    norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters() if p.grad is not None))
    moved = {k: v.clone() for k, v in model.state_dict().items()}
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            moved[name] += 0.5 * parameter.grad / norm
    model.zero_grad()
    return moved


@pytest.mark.parametrize("name, options", [
    ("memphis", {"rank_scope": "divergent"}),
    ("memphis", {"rank_scope": "step", "detach_rejected": True, "chosen_floor": 2.0}),
    ("memphis", {"rank_scope": "divergent", "listwise": True}),
    ("cpo_simpo", {"rank_scope": "divergent", "chosen_floor": 2.0}),
    ("rpo", {"rank_scope": "step"}),
    ("rpo", {}),
])
def test_the_options_give_the_same_losses_and_gradients_in_every_layout(name, options, model, tokenizer):
    """Shared prompt or one row per response, full logits or the chunked loss (token_loss.py). The losses are
    taken at weights moved away from those `prepare` recorded: at the starting weights the floor (and a
    reference model's margin) sits exactly on its kink, where float rounding alone decides 0 or 1e-7."""
    other = TINYCOT.response("3 + 2 = 6. 6 + 4 = 10. 10 - 1 = 9.", "9")
    third = TINYCOT.response("3 + 2 = 5. 5 + 4 = 9. 9 - 1 = 7.", "7")
    items = [RankItem(PROMPT, CHOSEN, (REJECTED, other) if name == "memphis" else (REJECTED,), CHOSEN),
             RankItem(PROMPT, CHOSEN, (third,), CHOSEN)]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    moved = _weights_lowering_the_chosen(model, tokenizer, items)
    results = []
    for share, chunk in ((True, 0), (False, 0), (True, 5), (False, 5)):
        objective = build_objective(ObjectiveConfig(name=name, anchor="chosen", share_prompt=share, **options))
        encoder = Encoder(tokenizer, 256)
        encoded = [objective.encode(item, encoder) for item in items]
        model.load_state_dict(start)
        objective.prepare(model, encoded, encoder, 8)
        model.load_state_dict(moved)
        model.zero_grad()
        batch = objective.collate(encoded, encoder)
        units, sums = objective.units(batch), objective.loss_sums(model, batch, TrainConfig(loss_chunk_tokens=chunk))
        loss = sum(objective.coefficients[n] * sums[n] / units[n] for n in sums)
        loss.backward()
        results.append((units, {n: float(v.detach()) for n, v in sums.items()}, [p.grad.clone() for p in model.parameters()]))
    units, sums, grads = results[0]
    for other_units, other_sums, other_grads in results[1:]:
        assert other_units == units
        assert other_sums.keys() == sums.keys()
        # rpo's DPO term is a difference of unnormalised sequence log-probability sums, each far larger than the
        # term: float32 summation order, which differs with the layout and the CPU's kernels, moves it by more
        # than 1e-5 of its own size (4.6e-5 of 2.76 on an AVX-512 CPU, where rel=1e-5 alone failed).
        assert all(other_sums[n] == pytest.approx(sums[n], rel=1e-5, abs=2e-4 if n == "dpo" else 1e-7) for n in sums)
        # float32 rounding differs with the layout: entries agree to 1e-5 of their tensor's largest gradient
        assert all(torch.allclose(a, b, atol=1e-5 * max(1.0, float(b.abs().max()))) for a, b in zip(other_grads, grads))
