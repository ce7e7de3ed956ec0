"""task.prompt_format=model: the question in the model's own chat template (read off the tokenizer in
transformers' sandboxed Jinja), the rationale layout inside its reply; and answers read from free text for
the base model's evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from rationale_loop.data.model_format import export_chat_template, model_format
from rationale_loop.config.errors import UserError
from rationale_loop.judging.free_text import FreeTextReading, read_free_answer


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_folder))


@pytest.mark.slow
def test_the_prompt_is_the_model_s_own_generation_prompt_and_the_rationale_header(smollm2_tokenizer):
    fmt = model_format(smollm2_tokenizer, "smollm2")
    question = "Tom has 3 apples. He buys {content} 4 more. How many?"
    own = smollm2_tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    assert own.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert fmt.prompt(question) == own + "### Rationale:\n"
    assert fmt.reply_end == "<|im_end|>" and fmt.stop == ("<|im_end|>",)
    completion = "3 + 4 = 7\n\n### Answer:\n7"
    assert fmt.parse(completion).answer == "7"
    # The exported template: the model's own, its generation prompt ending in the header.
    template = export_chat_template(smollm2_tokenizer.chat_template, fmt)
    rendered = smollm2_tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                                     tokenize=False, chat_template=template)
    assert rendered == fmt.prompt(question)
    system = smollm2_tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
                                                   add_generation_prompt=True, tokenize=False, chat_template=template)
    assert system.startswith("<|im_start|>system\nBe brief.<|im_end|>") and system.endswith("### Rationale:\n"), \
        "a user's own system message works as the model defines it"


def _Tokenizer(chat_template):
    """A real tokenizer (a small BPE, trained here) holding a template a real model would not ship."""
    from rationale_loop.models.model import train_tokenizer

    tokenizer = train_tokenizer(["Tom has 3 apples and buys 4 more."] * 4, 300)
    tokenizer.chat_template = chat_template
    return tokenizer


def test_a_template_reaching_for_python_internals_fails_in_one_line_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    evil = ("{{ ''.__class__.__mro__[1].__subclasses__() }}"
            f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}")
    with pytest.raises(UserError) as caught:
        model_format(_Tokenizer(evil), "evil-model")
    assert "evil-model" in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()


def test_templates_that_cannot_make_one_string_are_refused_by_name():
    with pytest.raises(UserError, match="has no chat template"):
        model_format(_Tokenizer(None), "base-model")
    # A reply rendered unlike the generation prompt's continuation (the historical turn gets other markup).
    odd = ("{% for m in messages %}{% if m['role'] == 'user' %}U:{{ m['content'] }}\n{% else %}[old]A:{{ m['content'] }}</s>"
           "{% endif %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}")
    with pytest.raises(UserError, match="does not render a reply right after its generation prompt"):
        model_format(_Tokenizer(odd), "odd-model")


def test_the_tiny_model_has_no_template_of_its_own():
    from test_config import compose_config

    from rationale_loop.preflight.config_checks import validate

    with pytest.raises(UserError, match="task.prompt_format=model asks in the model's own chat template, and the tiny model has none"):
        validate(compose_config("task.prompt_format=model"), ())


@pytest.mark.parametrize("text, answer", [
    ("He has 3 + 4 = 7 apples. So the answer is 7.", "7"),
    ("The answer is: $1,250.", "1250"),
    ("so the answer is **12**", "12"),
    ("Step: 48/2 = 24\n#### 72", "72"),
    ("Thus \\boxed{-3.5} is it; 9 more words 10", "-3.5"),
    ("Tom ends with 15 apples", "15"),
    ("3 boxes of 4 make 12 apples in all.", "12"),
    ("I cannot tell.", None),
])
def test_answers_are_read_from_free_text(text, answer):
    assert read_free_answer(text) == answer


def test_free_text_reading_prefers_the_layout_and_stops_at_the_turn_end():
    from rationale_loop.data.formats import get_format

    reading = FreeTextReading(get_format("chat-ml"))
    assert reading.parse("2 + 2 = 4\n\n### Answer:\n4").answer == "4"
    assert reading.parse("It is 5<|im_end|> then 9").answer == "5"
    assert reading.parse("no number here").reason == "no_answer"
    assert reading.prompt("q") == get_format("chat-ml").prompt("q")
