"""Turn templates render a known multi-turn conversation to the exact expected string, learn exactly the
assistant turns, and ship a Jinja chat_template that apply_chat_template renders identically."""

from __future__ import annotations

import pytest

from rationale_loop.data.templates import TEMPLATES, contextual_instruction, get_template
from rationale_loop.data.encode import Encoder
from rationale_loop.training.losses import IGNORE_INDEX
from rationale_loop.models.model import train_tokenizer
from rationale_loop.run.records import Conversation, Turn

TURNS = (Turn("user", "Hi"), Turn("assistant", "Hello!"), Turn("user", "2+2?"), Turn("assistant", "4"))
ALPACA = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
AIROBOROS = ("A chat between a curious user and an assistant. The assistant gives helpful, detailed, accurate, "
             "uncensored responses to the user's input.")
# (template, system, expected rendering with EOS written </s>)
EXPECTED = [
    ("tinycot", None, "### User:\nHi\n\nHello!</s>\n\n### User:\n2+2?\n\n4</s>"),
    ("memphis", None, "### User:\nHi\n\n### Assistant:\nHello!</s>\n\n### User:\n2+2?\n\n### Assistant:\n4</s>"),
    ("memphis", "Be brief.", "### System:\nBe brief.\n\n### User:\nHi\n\n### Assistant:\nHello!</s>\n\n### User:\n2+2?\n\n### Assistant:\n4</s>"),
    ("alpaca", None, f"{ALPACA}\n\n### Instruction:\nHi\n\n### Response:\nHello!</s>\n\n### Instruction:\n2+2?\n\n### Response:\n4</s>"),
    ("vicuna", "Be brief.", "Be brief.\nUSER: Hi\nASSISTANT: Hello!</s>\nUSER: 2+2?\nASSISTANT: 4</s>"),
    ("vicuna", None, "USER: Hi\nASSISTANT: Hello!</s>\nUSER: 2+2?\nASSISTANT: 4</s>"),
    ("llama-2", "Be brief.", "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s>[INST] 2+2? [/INST] 4 </s>"),
    ("llama-2", None, "[INST] Hi [/INST] Hello! </s>[INST] 2+2? [/INST] 4 </s>"),
    ("chat-ml", "Be brief.", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                             "Hello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>"),
    ("airoboros", None, f"{AIROBOROS} USER: Hi ASSISTANT: Hello!</s> USER: 2+2? ASSISTANT: 4</s>"),
]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [get_template(name).render(Conversation(TURNS, system), "</s>") for name, system, _ in EXPECTED]
    return train_tokenizer(texts * 3, vocab_size=400)


@pytest.mark.parametrize("name, system, expected", EXPECTED, ids=[f"{n}-{'system' if s else 'plain'}" for n, s, _ in EXPECTED])
def test_each_template_renders_the_exact_string(name, system, expected):
    assert get_template(name).render(Conversation(TURNS, system), "</s>") == expected


def test_every_template_has_an_expected_rendering():
    assert {name for name, _, _ in EXPECTED} == set(TEMPLATES)


@pytest.mark.parametrize("name, system, expected", EXPECTED, ids=[f"{n}-{'system' if s else 'plain'}" for n, s, _ in EXPECTED])
def test_only_the_assistant_turns_are_learned(name, system, expected, tokenizer):
    template = get_template(name)
    segments = template.segments(Conversation(TURNS, system), tokenizer.eos_token)
    encoded = Encoder(tokenizer, 4096).encode_segments(segments)
    learned = tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])
    end = "<|im_end|>" if name == "chat-ml" else "</s>"
    replies = ["Hello!", "4"]
    if name == "llama-2":
        assert learned == f"Hello! {end}4 {end}"
    else:
        assert learned == "".join(f"{reply}{end}" for reply in replies)
    assert tokenizer.decode(encoded.input_ids, skip_special_tokens=False).endswith(expected[-12:])


@pytest.mark.parametrize("name, system, expected", EXPECTED, ids=[f"{n}-{'system' if s else 'plain'}" for n, s, _ in EXPECTED])
def test_the_chat_template_renders_what_the_model_is_trained_on_and_prompted_with(name, system, expected, tokenizer):
    template = get_template(name)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": t.role, "content": t.content} for t in TURNS]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template.chat_template())
    assert rendered == expected
    asking = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True, chat_template=template.chat_template())
    assert asking == template.prompt(Conversation(TURNS[:-1], system), tokenizer.eos_token)
    assert expected.startswith(asking)


def test_airoboros_context_blocks_are_spelled_as_the_format_has_them():
    text = contextual_instruction([({"date": "2021-01-01", "url": "https://x.org"}, "Blueberries are blue.")], "What color are blueberries?")
    assert text == ("BEGININPUT\nBEGINCONTEXT\ndate: 2021-01-01\nurl: https://x.org\nENDCONTEXT\nBlueberries are blue.\nENDINPUT\n"
                    "BEGININSTRUCTION\nWhat color are blueberries?\nENDINSTRUCTION")
