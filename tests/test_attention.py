"""The training attention: half precision attends in float32 on a CPU, and the names a training loop
switches to stand for the model's own (training/attention.py)."""

from types import SimpleNamespace

import pytest
import torch

from rationale_loop.training.attention import (CPU_SDPA, SEGMENTED, attention_implementation, segmented_attention,
                                               training_attention)

from test_train import ITEMS, tiny_model, tokenizer  # noqa: F401  (tokenizer is a fixture)

BOUNDS = (0, 5, 7, 13)


def _rows(*dtypes):
    torch.manual_seed(0)
    return [torch.randn(1, 2, 13, 8).to(dtype).requires_grad_() for dtype in dtypes]


def test_bf16_rows_attend_in_float32_and_answer_in_bf16():
    query, key, value = _rows(torch.bfloat16, torch.bfloat16, torch.bfloat16)
    out, _ = segmented_attention(SimpleNamespace(), query, key, value, None, row_bounds=BOUNDS)
    exact, _ = segmented_attention(SimpleNamespace(), query.float(), key.float(), value.float(), None, row_bounds=BOUNDS)
    assert exact.dtype == torch.float32 and out.dtype == torch.bfloat16 and torch.equal(out, exact.bfloat16())
    assert all(g.dtype == torch.bfloat16 for g in torch.autograd.grad(out.float().sum(), (query, key, value)))


def test_under_autocast_the_rows_attend_in_float32_whatever_dtypes_reach_it():
    """Under autocast the rotary embedding hands over float32 query and key with a bf16 value; sdpa alone
    would cast all three to bf16. The answer is autocast's dtype, computed in float32."""
    query, key, value = _rows(torch.float32, torch.float32, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = segmented_attention(SimpleNamespace(), query, key, value, None, row_bounds=BOUNDS)
        in_bf16 = torch.nn.functional.scaled_dot_product_attention(query[:, :, :5], key[:, :, :5], value[:, :, :5], is_causal=True)
    exact, _ = segmented_attention(SimpleNamespace(), query, key, value.float(), None, row_bounds=BOUNDS)
    assert out.dtype == torch.bfloat16 and torch.equal(out, exact.bfloat16())
    assert in_bf16.dtype == torch.bfloat16  # what autocast alone would have done


def test_a_training_loop_switches_names_that_stand_for_the_models_own_and_restores_them(tokenizer):
    model = tiny_model(tokenizer)
    assert model.config._attn_implementation == "sdpa"
    with training_attention(model, packed=False):
        assert model.config._attn_implementation == CPU_SDPA and attention_implementation(model) == "sdpa"
        with training_attention(model, packed=True):  # nested: a packed row inside
            assert model.config._attn_implementation == SEGMENTED
        assert model.config._attn_implementation == CPU_SDPA
    assert model.config._attn_implementation == "sdpa"
    model.config._attn_implementation = "eager"
    with training_attention(model, packed=False):
        assert model.config._attn_implementation == "eager"  # eager keeps its own arithmetic
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="train.packing needs sdpa, eager or flash"):
        with training_attention(model, packed=True):
            pass


def test_only_the_configs_attending_as_the_model_does_switch_and_each_gets_back_exactly_what_it_had(tokenizer):
    """A sub-model configured otherwise (an eager tower) keeps its attention; a config that said None (sdpa by
    default) says None again after, not "sdpa"."""
    from transformers import LlamaConfig

    model = tiny_model(tokenizer)
    tower = torch.nn.Module()
    tower.config = LlamaConfig(attn_implementation="eager")
    model.add_module("tower", tower)
    model.config._attn_implementation_internal = None
    with training_attention(model, packed=False):
        assert model.config._attn_implementation == CPU_SDPA and tower.config._attn_implementation == "eager"
        assert model.model.layers[0].self_attn.config._attn_implementation == CPU_SDPA  # what the layers read
    assert model.config._attn_implementation is None and tower.config._attn_implementation == "eager"


def test_a_model_whose_attention_transformers_does_not_dispatch_keeps_its_own(tokenizer, monkeypatch):
    """Remote code may branch on the name itself: a name of ours would send it down another path silently."""
    model = tiny_model(tokenizer)
    monkeypatch.setattr(type(model), "_supports_attention_backend", False)
    with training_attention(model, packed=False):
        assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="transformers dispatches"):
        with training_attention(model, packed=True):
            pass


def test_cpu_sdpa_in_float32_is_sdpa_bit_for_bit_and_close_to_it_under_autocast(tokenizer):
    model = tiny_model(tokenizer).eval()
    rows = [tokenizer(item.prompt + item.response)["input_ids"] for item in ITEMS[:3]]
    width = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(r) for r in rows])[:, None]).long()
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain_bf16 = model(input_ids=ids, attention_mask=mask).logits
        with training_attention(model, packed=False):
            switched = model(input_ids=ids, attention_mask=mask).logits
            with torch.autocast("cpu", dtype=torch.bfloat16):
                switched_bf16 = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(switched, plain)
    real = mask.bool()
    # Attending in float32 can only move the bf16 answer toward the float32 one, not away from it.
    assert (switched_bf16 - plain)[real].abs().mean() <= (plain_bf16 - plain)[real].abs().mean() * 1.25
    assert torch.allclose(switched_bf16[real].float(), plain[real], atol=0.1)
