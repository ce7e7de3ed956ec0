"""The training loop's accounting: token-weighted accumulation and frozen embeddings."""

import pytest
import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForCausalLM

from rationale_loop.config import TrainConfig
from rationale_loop.data.formats import TINYCOT
from rationale_loop.encode import Encoder
from rationale_loop.model import train_tokenizer
from rationale_loop.objectives import SFTItem, SupervisedObjective
from rationale_loop.train import accumulate_gradients, train

ITEMS = [
    SFTItem(TINYCOT.prompt("Ann has 3 pens."), TINYCOT.response("3 + 2 = 5.", "5")),
    SFTItem(TINYCOT.prompt("Ben has 12 pens. He finds 7 more. Then it doubles."), TINYCOT.response("12 + 7 = 19. 19 * 2 = 38.", "38")),
    SFTItem(TINYCOT.prompt("Cara has 9 pens."), TINYCOT.response("9 - 1 = 8. 8 * 3 = 24. 24 - 20 = 4.", "4")),
    SFTItem(TINYCOT.prompt("Dev?"), TINYCOT.response("1.", "1")),
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([i.prompt + i.response for i in ITEMS] * 5, vocab_size=290)


def tiny_model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config)


def gradient(tokenizer, micro_batch_size):
    model, objective, encoder = tiny_model(tokenizer), SupervisedObjective(), Encoder(tokenizer, 256)
    encoded = [objective.encode(item, encoder) for item in ITEMS]
    micro = [objective.collate(encoded[i : i + micro_batch_size], encoder) for i in range(0, len(encoded), micro_batch_size)]
    terms = accumulate_gradients(model, objective, micro, TrainConfig(), Accelerator(cpu=True))
    return terms["nll"], {n: p.grad.clone() for n, p in model.named_parameters()}


def test_accumulated_loss_is_weighted_by_tokens_not_by_micro_batch(tokenizer):
    # Examples of very different lengths: averaging per micro-batch would weigh the short one's tokens
    # far more when it sits alone. Token weighting makes 4 x 1, 2 x 2 and 1 x 4 identical.
    whole_loss, whole = gradient(tokenizer, 4)
    for size in (1, 2):
        loss, grads = gradient(tokenizer, size)
        assert loss == pytest.approx(whole_loss, rel=1e-5)
        for name in whole:
            torch.testing.assert_close(grads[name], whole[name], atol=1e-6, rtol=1e-4)


def test_frozen_embeddings_stay_put_while_the_rest_trains(tokenizer):
    model = tiny_model(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(lr=1e-2, batch_size=2, micro_batch_size=1, warmup_ratio=0.0, max_length=256, freeze_embeddings=True)
    result = train(model, tokenizer, ITEMS, SupervisedObjective(), cfg, seed=0, desc="test")
    assert result.steps == 2
    after = dict(model.named_parameters())
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
