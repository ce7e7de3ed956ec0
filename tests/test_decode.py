"""The hf backend's sampling loop (generate/decode.py): greedy equals transformers' generate, draws follow the
nucleus distribution exactly, a finished row leaves the batch without changing the others."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from rationale_loop.generate import decode
from rationale_loop.generate.decode import decode_batch, pick_tokens

NEVER = -1  # an end token no row can write


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None  # generate's reference runs to the length limit, as NEVER does
    return model


PROMPTS = [[5, 9, 11, 3, 7, 2], [8, 1], [4, 4, 6, 12]]


def greedy(model, prompts, end_id=NEVER, n=1, max_new_tokens=12):
    with torch.inference_mode():
        return decode_batch(model, prompts, n, 0.0, 1.0, max_new_tokens, end_id=end_id, pad_id=0, generator=None)


def test_greedy_rows_equal_transformers_generate_one_prompt_at_a_time(model):
    rows = greedy(model, PROMPTS, n=2)
    config = GenerationConfig(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    for i, prompt in enumerate(PROMPTS):
        reference = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   generation_config=config)[0, len(prompt):].tolist()
        for sample in (2 * i, 2 * i + 1):  # both samples of prompt i, read from its one shared forward pass
            assert rows[sample].tokens == reference and rows[sample].finish_reason == "length"


def test_a_finished_row_leaves_the_batch_and_the_others_go_on_unchanged(model):
    free = greedy(model, PROMPTS)
    # An end token that prompt 0 writes early and prompt 2 never writes.
    end = next(t for t in free[0].tokens[1:6] if t not in free[2].tokens)
    widths = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: widths.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        ended = greedy(model, PROMPTS, end_id=end)
    finally:
        hook.remove()
    cut = free[0].tokens.index(end) + 1
    assert ended[0].tokens == free[0].tokens[:cut] and ended[0].finish_reason == "stop"
    assert ended[2].tokens == free[2].tokens and ended[2].finish_reason == "length"
    assert widths[0] == 3 and widths[-1] < 3, "the prompts' forward pass holds all three; a later step fewer"
    assert len(widths) == 12, "one prefill and a step per token but the last"


def exact_nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    probs = (logits / temperature).softmax(-1)
    ranked, order = probs.sort(descending=True)
    inside = (ranked.cumsum(-1) - ranked) < top_p
    kept = torch.zeros_like(probs)
    kept[order[inside]] = probs[order[inside]]
    return kept / kept.sum()


@pytest.mark.parametrize("candidates", [256, 3], ids=["nucleus-within-candidates", "nucleus-wider-than-candidates"])
def test_draws_follow_the_nucleus_distribution(monkeypatch, candidates):
    monkeypatch.setattr(decode, "NUCLEUS_CANDIDATES", candidates)
    logits = torch.tensor([2.0, 1.5, 1.4, 1.0, 0.2, -1.0, -3.0, 0.9])
    expected = exact_nucleus(logits, 0.7, 0.9)
    draws = pick_tokens(logits.repeat(40_000, 1), 0.7, 0.9, torch.Generator().manual_seed(1))
    seen = torch.bincount(draws, minlength=len(logits)).float() / len(draws)
    assert (seen[expected == 0] == 0).all(), "a token outside the nucleus was drawn"
    assert torch.allclose(seen, expected, atol=0.01), (seen, expected)


@pytest.mark.parametrize("spread", [12.0, 3.0], ids=["nucleus-within-candidates", "some-nuclei-wider"])
def test_candidates_picked_a_few_rows_at_a_time_draw_the_same_tokens(monkeypatch, spread):
    """pick_tokens picks candidates CANDIDATE_ROWS rows at a time (their float probabilities stay in cache): the
    draws are those of the whole batch at once, token for token, with a ragged last group of rows."""
    logits = (torch.randn(37, 5000, generator=torch.Generator().manual_seed(0)) * spread).to(torch.bfloat16)
    monkeypatch.setattr(decode, "NUCLEUS_CANDIDATES", 64)

    def draws(rows_at_once):
        monkeypatch.setattr(decode, "CANDIDATE_ROWS", rows_at_once)
        return pick_tokens(logits, 0.8, 0.95, torch.Generator().manual_seed(5))

    assert torch.equal(draws(8), draws(1 << 30))


def test_sampling_is_seeded_and_the_samples_of_a_prompt_differ(model):
    def sampled(seed):
        with torch.inference_mode():
            rows = decode_batch(model, PROMPTS, 4, 1.0, 0.95, 10, end_id=NEVER, pad_id=0,
                                generator=torch.Generator().manual_seed(seed))
        return [row.tokens for row in rows]

    assert sampled(3) == sampled(3)
    assert sampled(3) != sampled(4)
    assert len({tuple(tokens) for tokens in sampled(3)[:4]}) > 1, "prompt 0's four samples share a prompt, not a draw"


def test_a_prefix_every_prompt_shares_is_read_once_and_the_rows_are_unchanged(model):
    shared = [9, 14, 3, 3, 21, 7, 30, 2, 5, 11]  # 10 tokens, as a format's system prompt and turn header
    prompts = [shared + [4, 8], shared + [6], shared + [1, 2, 3]]
    assert decode.shared_prefix_length(prompts) == len(shared)
    assert decode.shared_prefix_length([shared + [4], shared[:5] + [4]]) == 0, "5 shared tokens are read with the rest"
    assert decode.shared_prefix_length([shared, shared + [1]]) == len(shared) - 1, "every prompt keeps a token of its own"
    widths = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        rows = greedy(model, prompts, n=2)
    finally:
        hook.remove()
    assert widths[:2] == [(1, len(shared)), (3, 3)], "the shared prefix as one row, then each prompt's rest"
    config = GenerationConfig(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    for i, prompt in enumerate(prompts):
        reference = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   generation_config=config)[0, len(prompt):].tolist()
        assert rows[2 * i].tokens == reference and rows[2 * i + 1].tokens == reference


def test_the_reserved_cache_writes_in_place_grows_past_its_reserve_and_keeps_selected_rows():
    from rationale_loop.generate.kv_cache import ReservedLayer

    layer, written = ReservedLayer(reserve=4), []
    for length in (3, 1, 2):  # 6 positions into a reserve of 4
        keys = torch.randn(3, 2, length, 5)
        layer.update(keys, -keys)
        written.append(keys)
    expected = torch.cat(written, dim=2)
    assert layer.get_seq_length() == 6 and layer.keys.shape[2] >= 6
    assert torch.equal(layer.keys[:, :, :6], expected) and torch.equal(layer.values[:, :, :6], -expected)
    assert (layer.keys[:, :, 6:] == 0).all(), "unwritten positions are zeros: masked, they weigh exactly nothing"
    assert layer.get_mask_sizes(1) == (layer.keys.shape[2], 0), "attention reads the whole reserve"
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(layer.keys[:, :, :6], expected[[2, 0]])


@pytest.mark.parametrize("key_heads", [2, 6], ids=["grouped-query", "one-key-head-per-query-head"])
def test_grouped_decode_attention_equals_sdpa(key_heads):
    from rationale_loop.generate.decode_attention import grouped_decode_attention

    torch.manual_seed(0)
    query, key, value = torch.randn(4, 6, 1, 8), torch.randn(4, key_heads, 9, 8), torch.randn(4, key_heads, 9, 8)
    mask = torch.ones(4, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., :3] = False  # a left-padded row
    mask[2, ..., 7:] = False  # reserved positions not yet written
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=0.3,
                                                                enable_gqa=True).transpose(1, 2)
    got, _ = grouped_decode_attention(torch.nn.Module(), query, key, value, mask, scaling=0.3)
    assert got.shape == (4, 1, 6, 8) and torch.allclose(got, expected, atol=1e-5)


def test_decoding_switches_sdpa_to_the_decode_attention_and_back(model):
    from rationale_loop.generate.decode_attention import NAME, decode_attention

    assert model.config._attn_implementation == "sdpa"
    with decode_attention(model):
        assert model.config._attn_implementation == NAME
    assert model.config._attn_implementation == "sdpa"
