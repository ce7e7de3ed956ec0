"""The chunked loss (train.loss_chunk_tokens, token_loss.py) and padding-free packing (train.packing,
packing.py) give the plain padded path's loss and gradients, on a tiny Llama, for SFT and the rank stage."""

import pytest
import torch
from accelerate import Accelerator

from rationale_loop.config.schema import ObjectiveConfig, TrainConfig
from rationale_loop.data.formats import TINYCOT
from rationale_loop.data.encode import Encoder
from rationale_loop.training.objectives import RankItem, SupervisedObjective, build_objective
from rationale_loop.training.packing import collate_packed, pack_indices
from rationale_loop.training.train import accumulate_gradients, cut_micro_batches, train

from test_train import ITEMS, tiny_model, tokenizer  # noqa: F401  (tokenizer is a fixture)


def _loss_and_grads(model, objective, micro_batches, cfg):
    model.zero_grad()
    terms = accumulate_gradients(model, objective, micro_batches, cfg, Accelerator(cpu=True))
    loss = sum(objective.coefficients[n] * v for n, v in terms.items())
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert loss_a == pytest.approx(loss_b, rel=1e-5, abs=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_chunked_sft_loss_has_the_plain_loss_and_gradients(tokenizer, eta):
    model, objective, encoder = tiny_model(tokenizer), SupervisedObjective(), Encoder(tokenizer, 256)
    encoded = [objective.encode(item, encoder) for item in ITEMS]
    micro = [objective.collate(encoded[:3], encoder), objective.collate(encoded[3:], encoder)]
    plain = _loss_and_grads(model, objective, micro, TrainConfig(mixce_eta=eta))
    for chunk in (1, 7, 4096):
        _assert_same(_loss_and_grads(model, objective, micro, TrainConfig(mixce_eta=eta, loss_chunk_tokens=chunk)), plain)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_chunked_rank_loss_has_the_plain_loss_and_gradients(tokenizer, share_prompt):
    prompt = TINYCOT.prompt("Ann has 3 pens.")
    good, bad, worse = (TINYCOT.response(r, a) for r, a in (("3 + 2 = 5.", "5"), ("3 + 2 = 6.", "6"), ("3 - 2 = 1.", "1")))
    items = [RankItem(prompt, good, (bad, worse), TINYCOT.response("Ann has 3. 3 + 2 = 5.", "5")),
             RankItem(prompt, good, (bad,), good, anchor_prompt=TINYCOT.prompt("Dev?"))]
    model, encoder = tiny_model(tokenizer), Encoder(tokenizer, 256)
    objective = build_objective(ObjectiveConfig(name="memphis", share_prompt=share_prompt))
    micro = [objective.collate([objective.encode(item, encoder) for item in items], encoder)]
    plain = _loss_and_grads(model, objective, micro, TrainConfig())
    for chunk in (1, 5):
        _assert_same(_loss_and_grads(model, objective, micro, TrainConfig(loss_chunk_tokens=chunk)), plain)


def test_rows_are_packed_in_order_within_the_token_budget():
    assert pack_indices([3, 4, 2, 9, 1, 1], 7) == [[0, 1], [2], [3], [4, 5]]
    assert pack_indices([], 5) == []


def test_a_packed_row_restarts_positions_and_learns_no_token_across_rows(tokenizer):
    encoder = Encoder(tokenizer, 256)
    encoded = [SupervisedObjective().encode(item, encoder) for item in ITEMS[:2]]
    batch = collate_packed(encoded)
    first = len(encoded[0].input_ids)
    assert batch["input_ids"].shape == (1, first + len(encoded[1].input_ids))
    assert batch["position_ids"][0, first] == 0 and batch["position_ids"][0, first - 1] == first - 1
    assert batch["labels"][0, first] == -100 and batch["attention_mask"].all()


@pytest.mark.parametrize("chunk", [0, 6])
def test_packed_sft_has_the_padded_loss_and_gradients(tokenizer, chunk):
    model, objective, encoder = tiny_model(tokenizer), SupervisedObjective(), Encoder(tokenizer, 256)
    encoded = [objective.encode(item, encoder) for item in ITEMS]
    padded_cfg = TrainConfig(micro_batch_size=2, max_length=256, loss_chunk_tokens=chunk)
    budget = len(encoded[0].input_ids) + len(encoded[1].input_ids)  # the first two rows fill one micro-batch
    packed_cfg = TrainConfig(micro_batch_size=2, max_length=256, loss_chunk_tokens=chunk, packing=True, micro_batch_tokens=budget)
    packed = cut_micro_batches(objective, encoded, encoder, packed_cfg)
    assert 1 < len(packed) < len(ITEMS), "the budget packs some rows together and cuts the step in more than one"
    assert all(m["input_ids"].size(0) == 1 for m in packed)
    _assert_same(_loss_and_grads(model, objective, packed, packed_cfg),
                 _loss_and_grads(model, objective, cut_micro_batches(objective, encoded, encoder, padded_cfg), padded_cfg))
    assert model.config._attn_implementation == "sdpa"  # the packed forwards' attention was put back


def test_neftune_gives_each_packed_row_the_noise_of_its_own_length(tokenizer):
    """alpha / sqrt(L * d) with L each original row's length, not the packed row's: packing must not thin
    the noise. The noise is read off the embedding's output; its largest entry in a row nears that row's bound."""
    from rationale_loop.models.model import neftune
    from rationale_loop.training.packing import forward_packed

    model, objective, encoder = tiny_model(tokenizer), SupervisedObjective(), Encoder(tokenizer, 256)
    batch = collate_packed([objective.encode(item, encoder) for item in ITEMS])
    bounds, alpha, hidden = batch["row_bounds"], 5.0, model.config.hidden_size
    seen = []
    model.train()
    with torch.no_grad():
        clean = forward_packed(model, batch).logits
        with neftune(model, alpha):  # the hook below runs after NEFTune's, so it sees the noisy embeddings
            model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: seen.append(output.detach()))
            noisy = forward_packed(model, batch).logits
    assert not torch.equal(clean, noisy)
    seen.insert(0, model.get_input_embeddings()(batch["input_ids"]).detach())
    noise = (seen[1] - seen[0])[0].abs()
    for start, end in zip(bounds, bounds[1:]):
        bound = alpha / (((end - start) * hidden) ** 0.5)
        largest = noise[start:end].max().item()
        assert 0.9 * bound < largest <= bound * (1 + 1e-5), (start, end, largest, bound)


def test_segmented_attention_equals_a_block_diagonal_mask_with_grouped_query_heads():
    """The packed row's attention, slice by slice, against sdpa over the whole row under the block-diagonal
    causal mask the slices stand for; 2 key/value heads serving 4 query heads."""
    from types import SimpleNamespace

    from rationale_loop.training.attention import segmented_attention

    torch.manual_seed(0)
    bounds = (0, 5, 7, 13)
    query = torch.randn(1, 4, 13, 8, requires_grad=True)
    key, value = torch.randn(1, 2, 13, 8, requires_grad=True), torch.randn(1, 2, 13, 8, requires_grad=True)
    out, _ = segmented_attention(SimpleNamespace(num_key_value_groups=2), query, key, value, None, scaling=0.3, row_bounds=bounds)
    rows = torch.repeat_interleave(torch.arange(3), torch.tensor([5, 2, 6]))
    mask = (rows[:, None] == rows[None, :]) & torch.ones(13, 13, dtype=torch.bool).tril()
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1), attn_mask=mask, scale=0.3).transpose(1, 2)
    assert out.shape == (1, 13, 4, 8) and torch.allclose(out, expected, atol=1e-6)
    grads = torch.autograd.grad(out.sum(), (query, key, value), retain_graph=True)
    for got, want in zip(grads, torch.autograd.grad(expected.sum(), (query, key, value))):
        assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="row_bounds"):
        segmented_attention(SimpleNamespace(), query, key, value, None)


def test_eager_attention_packs_as_sdpa_does(tokenizer):
    model, objective, encoder = tiny_model(tokenizer), SupervisedObjective(), Encoder(tokenizer, 256)
    encoded = [objective.encode(item, encoder) for item in ITEMS]
    cfg = TrainConfig(packing=True, micro_batch_tokens=10_000)
    sdpa = _loss_and_grads(model, objective, cut_micro_batches(objective, encoded, encoder, cfg), cfg)
    model.config._attn_implementation = "eager"
    _assert_same(_loss_and_grads(model, objective, cut_micro_batches(objective, encoded, encoder, cfg), cfg), sdpa)


def test_training_with_packing_and_chunks_reaches_the_padded_weights(tokenizer):
    def trained(**settings):
        model = tiny_model(tokenizer)
        cfg = TrainConfig(lr=1e-2, epochs=2, batch_size=4, micro_batch_size=2, max_length=256, save_every=0, **settings)
        result = train(model, tokenizer, ITEMS, SupervisedObjective(), cfg, seed=0, desc="sft")
        return model.state_dict(), result

    plain, plain_result = trained()
    fast, fast_result = trained(packing=True, micro_batch_tokens=80, loss_chunk_tokens=16)
    assert max((plain[k] - fast[k]).abs().max().item() for k in plain) < 1e-5
    assert fast_result.tokens == plain_result.tokens and fast_result.padding_fraction == 0.0 < plain_result.padding_fraction
    assert [r["loss"] for r in fast_result.history] == pytest.approx([r["loss"] for r in plain_result.history], rel=1e-5)


@pytest.mark.parametrize("stage, settings", [
    ("sft", {"packing": True, "micro_batch_tokens": 60, "loss_chunk_tokens": 5}),
    ("rank", {"loss_chunk_tokens": 5}),
])
@pytest.mark.slow
def test_two_processes_with_packing_and_chunks_reach_the_plain_one_process_weights(tmp_path, stage, settings):
    """Under DDP (2 processes over gloo) packed micro-batches differ in number between the processes, and
    the chunked loss reads the head's weight outside the model's forward: the all-reduced gradient is still
    the plain one-process one."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import cpu_only_env

    job = str(Path(__file__).with_name("ddp_fast_job.py"))
    plain = subprocess.run([sys.executable, job, str(tmp_path / "one"), stage, "{}"], capture_output=True, text=True,
                           env=cpu_only_env(), check=False)
    assert plain.returncode == 0, plain.stderr[-3000:]
    fast = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", job,
                           str(tmp_path / "two"), stage, json.dumps(settings)], capture_output=True, text=True,
                          env=cpu_only_env(), check=False)
    assert fast.returncode == 0, fast.stderr[-3000:]
    a, b = (torch.load(tmp_path / name / "final.pt") for name in ("one", "two"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    losses = [[r["loss"] for r in json.loads((tmp_path / name / "history.json").read_text())] for name in ("one", "two")]
    assert len(losses[0]) == {"sft": 3, "rank": 2}[stage] and losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_the_default_chunks_the_loss_only_where_the_vocabulary_is_large(tokenizer, caplog):
    """loss_chunk_tokens=-1, the default: chunks of 1024 for a head of 16,384 rows or more (unless the
    launch shards the weights), the plain path for the embedded default's small head; a number is kept."""
    import logging

    from transformers import LlamaConfig, LlamaForCausalLM

    from rationale_loop.training.token_loss import AUTO, AUTO_CHUNK, LARGE_HEAD, chunk_for

    def model(vocab):
        torch.manual_seed(0)
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128))

    large, small = model(LARGE_HEAD), model(384)
    assert TrainConfig().loss_chunk_tokens == AUTO
    assert chunk_for(AUTO, large, sharded=False) == AUTO_CHUNK and chunk_for(AUTO, large, sharded=True) == 0
    assert chunk_for(AUTO, small, sharded=False) == 0 and chunk_for(AUTO, model(LARGE_HEAD - 1), sharded=False) == 0
    assert chunk_for(0, large, sharded=False) == 0 and chunk_for(7, small, sharded=True) == 7
    cfg = TrainConfig(lr=1e-2, steps=2, batch_size=4, micro_batch_size=2, max_length=256, save_every=0)
    with caplog.at_level(logging.INFO, logger="rationale_loop.training.train"):
        auto = train(large, tokenizer, ITEMS, SupervisedObjective(), cfg, seed=0, desc="sft")
    assert f"sft: the loss in chunks of {AUTO_CHUNK} tokens" in caplog.text
    plain_model = model(LARGE_HEAD)
    plain = train(plain_model, tokenizer, ITEMS, SupervisedObjective(), TrainConfig(**{**cfg.__dict__, "loss_chunk_tokens": 0}),
                  seed=0, desc="sft")
    assert [r["loss"] for r in auto.history] == pytest.approx([r["loss"] for r in plain.history], rel=1e-5)
    assert max((a - b).abs().max().item() for a, b in zip(large.state_dict().values(), plain_model.state_dict().values())) < 1e-5
