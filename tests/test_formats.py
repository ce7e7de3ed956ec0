from rationale_loop.data.formats import TINYCOT, get_format

import pytest


def test_prompt_and_response_render_the_tinycot_layout():
    prompt = TINYCOT.prompt("What is 2 + 3?")
    response = TINYCOT.response("2 + 3 = 5.", "5")
    assert prompt == "### User:\nWhat is 2 + 3?\n\n### Rationale:\n"
    assert prompt + response == "### User:\nWhat is 2 + 3?\n\n### Rationale:\n2 + 3 = 5.\n\n### Answer:\n5"


def test_parse_round_trips_a_rendered_response():
    parsed = TINYCOT.parse(TINYCOT.response("4 * 2 = 8. 8 - 1 = 7.", "7"))
    assert parsed.valid and parsed.rationale == "4 * 2 = 8. 8 - 1 = 7." and parsed.answer == "7"


@pytest.mark.parametrize(
    "completion, reason",
    [
        ("4 + 4 = 8.", "no_answer"),  # never reaches the answer header
        ("\n\n### Answer:\n8", "no_rationale"),  # an answer with no reasoning before it
        ("4 + 4 = 8.\n\n### Answer:\n", "no_answer"),  # header, then nothing
        ("4 + 4 = 8.\n\n### User:\nmore\n\n### Answer:\n8", "malformed"),  # starts a new turn
    ],
)
def test_parse_marks_incomplete_completions_invalid(completion, reason):
    parsed = TINYCOT.parse(completion)
    assert not parsed.valid and parsed.reason == reason


def test_parse_keeps_only_the_first_answer_line():
    parsed = TINYCOT.parse("1 + 1 = 2.\n\n### Answer:\n2\nand then some rambling 7")
    assert parsed.answer == "2"


def test_unknown_format_names_the_known_ones():
    with pytest.raises(ValueError, match="tinycot"):
        get_format("nope")


def test_the_reasoning_layout_goes_inside_any_turn_template():
    """task.prompt_format=chat-ml (say): Qwen's turns around TinyCoT's layout; the reply ends in the
    template's end of turn, which the encoder learns after every response and generation stops at."""
    chatml = get_format("chat-ml")
    assert chatml.prompt("What is 2 + 3?") == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n### Rationale:\n"
    assert chatml.reply_end == "<|im_end|>" and chatml.stop == ("<|im_end|>",)
    assert chatml.parse("2 + 3 = 5.\n\n### Answer:\n5<|im_end|>\n<|im_start|>user") == chatml.parse(chatml.response("2 + 3 = 5.", "5"))
    alpaca = get_format("alpaca")
    assert alpaca.prompt("Q?").startswith("Below is an instruction") and alpaca.prompt("Q?").endswith("### Response:\n### Rationale:\n")
    assert get_format("llama-2").prompt("Q?") == "[INST] Q? [/INST] ### Rationale:\n"
    assert TINYCOT.reply_end == "{eos}" and TINYCOT.stop == ("\n### User:",)
    assert get_format("llama-2").reply_end == " {eos}"


def test_the_encoder_learns_the_formats_reply_end():
    """tinycot ends a learned reply with EOS; chat-ml with <|im_end|> and no EOS after it, as its rendered
    chats and its chat_template do."""
    from rationale_loop.data.encode import Encoder
    from rationale_loop.models.model import train_tokenizer

    chatml = get_format("chat-ml")
    tokenizer = train_tokenizer([chatml.prompt("What is 2 + 3?") + chatml.response("2 + 3 = 5.", "5") + "<|im_end|>"] * 5, vocab_size=300)
    prompt, response = chatml.prompt("What is 2 + 3?"), chatml.response("2 + 3 = 5.", "5")
    plain, closed = Encoder(tokenizer, 256, TINYCOT.reply_end), Encoder(tokenizer, 256, chatml.reply_end)
    a, b = plain.encode(prompt, response), closed.encode(prompt, response)
    end = tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
    assert a.input_ids[-1] == tokenizer.eos_token_id and Encoder(tokenizer, 256).encode(prompt, response) == a
    assert b.input_ids == a.input_ids[:-1] + end and b.labels[-len(end):] == end


def test_a_round_in_chat_ml_samples_trains_and_evaluates_in_chat_ml(tmp_path):
    """task.prompt_format=chat-ml through the loop: every sample's prompt is chat-ml's, samples are parsed
    by the same layout, and SFT and a round train (the end of turn learned with each response)."""
    import json

    from rationale_loop.loop import run_loop

    from test_config import compose_config
    from test_run_safety import QUICK

    cfg = compose_config(*QUICK, "rounds=1", "task.prompt_format=chat-ml", "task.pool_size=16", "generate.n=2", "rank.steps=2",
                         "objective=memphis", "objective.anchor=chosen", f"output_root={tmp_path}/runs",
                         f"model.cache_dir={tmp_path}/models", "run=chatml")
    rows = run_loop(cfg)
    assert [r["round"] for r in rows] == [0, 1]
    generations = [json.loads(line) for line in (tmp_path / "runs" / "chatml" / "round_01" / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 32
    assert all(g["prompt"].startswith("<|im_start|>user\n") and g["prompt"].endswith("<|im_start|>assistant\n### Rationale:\n") for g in generations)
    assert all("<|im_end|>" not in g["completion"] for g in generations), "sampling stops at the end of turn"
    evaluated = [json.loads(line) for line in (tmp_path / "runs" / "chatml" / "round_01" / "eval.jsonl").read_text().splitlines()]
    assert evaluated and all(e["prompt"].startswith("<|im_start|>user\n") for e in evaluated)
