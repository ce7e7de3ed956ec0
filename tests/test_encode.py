"""No training on inputs: prompt tokens are masked, response tokens and EOS are learned."""

import pytest

from rationale_loop.data.formats import TINYCOT
from rationale_loop.data.encode import Encoder
from rationale_loop.training.losses import IGNORE_INDEX
from rationale_loop.models.model import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    texts = [TINYCOT.prompt(f"Ann has {i} apples. How many?") + TINYCOT.response(f"{i} + 1 = {i + 1}.", str(i + 1)) for i in range(50)]
    return train_tokenizer(texts, vocab_size=300)


def test_prompt_is_masked_and_response_with_eos_is_learned(tokenizer):
    encoder = Encoder(tokenizer, max_length=512)
    prompt, response = TINYCOT.prompt("Ann has 3 apples. How many?"), TINYCOT.response("3 + 1 = 4.", "4")
    encoded = encoder.encode(prompt, response)
    prompt_ids = tokenizer(prompt)["input_ids"]
    assert prompt_ids[0] == tokenizer.bos_token_id
    n = len(prompt_ids)
    assert encoded.input_ids[:n] == prompt_ids
    assert encoded.labels[:n] == [IGNORE_INDEX] * n
    assert encoded.labels[n:] == encoded.input_ids[n:]
    assert encoded.labels[-1] == tokenizer.eos_token_id
    # The learned tokens decode back to exactly the response.
    assert tokenizer.decode(encoded.labels[n:-1]) == response


def test_too_long_examples_are_dropped_not_truncated(tokenizer):
    encoder = Encoder(tokenizer, max_length=8)
    assert encoder.encode(TINYCOT.prompt("Ann has 3 apples. How many?"), "4") is None


def test_collate_pads_right_with_masked_labels(tokenizer):
    encoder = Encoder(tokenizer, max_length=512)
    short = encoder.encode(TINYCOT.prompt("Ann?"), "1")
    long = encoder.encode(TINYCOT.prompt("Ann has 3 apples. How many?"), TINYCOT.response("3 + 1 = 4.", "4"))
    batch = encoder.collate([short, long])
    width = len(long.input_ids)
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"][0].tolist() == [1] * len(short.input_ids) + [0] * (width - len(short.input_ids))
    assert batch["labels"][0, len(short.input_ids):].eq(IGNORE_INDEX).all()
