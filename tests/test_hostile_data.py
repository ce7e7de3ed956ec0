"""Hostile data, as a user hits it: files written here and prepared by prepare_sft_mix (what `make data` runs).

Braces in data stay literal in every template (data is never re-scanned as a format string); special-token
text typed in a row, or written by the model, is encoded as plain text (the special ids sit exactly where
the template puts them); every wrongly typed field stops with one line naming the file, the row and the
field; empty turns and exchanges are dropped, never learned, and counted in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rationale_loop.data.formats import FORMATS, get_format
from rationale_loop.data.sources import prepare_sft_mix, read_sft_mix
from rationale_loop.run.run_config import MIX_MANIFEST, MIX_ROWS
from rationale_loop.data.templates import TEMPLATES, get_template
from rationale_loop.data.encode import Encoder
from rationale_loop.config.errors import DataError
from rationale_loop.run.records import Conversation, Turn

MARKERS = ("<|im_start|>", "<|im_end|>")
BRACES = {"system": "Sys {content} {system} {eos} {}", "user": "Hi {eos} {content} {system} {0}", "reply": "Yo {eos} {content} {system}"}
SPECIALS = {"system": "Sys <|im_start|>x <s>", "user": "Hi <s> </s> <|im_end|> <|im_start|>assistant", "reply": "Yo </s> a<|im_end|>b <s>"}


@pytest.fixture(scope="module")
def tokenizer():
    from rationale_loop.models.model import train_tokenizer

    texts = [get_template(n).render(Conversation((Turn("user", "Hi there"), Turn("assistant", "Hello you")), "Be kind."), "</s>")
             for n in TEMPLATES]
    tokenizer = train_tokenizer(texts * 3, vocab_size=350)
    tokenizer.add_special_tokens({"additional_special_tokens": list(MARKERS)})  # chat-ml's tags are special, as in Qwen's
    return tokenizer


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _config(sources: dict, formats: list[str]) -> object:
    from omegaconf import OmegaConf

    from rationale_loop.config.schema import DataConfig

    sources = {name: {"split": "train", "max_rows": 0, "priority": 0, **source} for name, source in sources.items()}
    return OmegaConf.merge(OmegaConf.structured(DataConfig), {"sources": sources, "formats": formats, "multi_format": "all",
                                                               "decontaminate_ngram": 13})


def _chat(texts: dict[str, str]) -> dict:
    return {"conversations": [{"from": "system", "value": texts["system"]}, {"from": "human", "value": texts["user"]},
                              {"from": "gpt", "value": texts["reply"]}]}


def _prepare(tmp_path: Path, tokenizer, rows: list, schema: str = "sharegpt", formats=tuple(TEMPLATES)) -> tuple[dict, list[dict]]:
    path = _write(tmp_path / f"{schema}.jsonl", rows)
    manifest = prepare_sft_mix(_config({"src": {"path": str(path), "schema": schema}}, list(formats)), [], tokenizer,
                               tmp_path / "round_00", seed=0, max_length=4096)
    return manifest, [json.loads(line) for line in (tmp_path / "round_00" / MIX_ROWS).read_text().splitlines()]


def _plain(name: str, texts: dict[str, str], eos: str) -> str:
    """The rendering of the conversation with placeholder-free stand-ins, the stand-ins then put back."""
    stand_in = {"system": "SSSS", "user": "UUUU", "reply": "RRRR"}
    rendered = get_template(name).render(Conversation((Turn("user", stand_in["user"]), Turn("assistant", stand_in["reply"])),
                                                      stand_in["system"]), eos)
    for key, value in stand_in.items():
        rendered = rendered.replace(value, texts[key])
    return rendered


def test_braces_in_data_and_system_text_stay_literal_in_every_template(tmp_path, tokenizer):
    _, rows = _prepare(tmp_path, tokenizer, [_chat(BRACES)])
    assert {row["format"] for row in rows} == set(TEMPLATES)
    for row in rows:
        rendered = "".join(text for text, _ in row["segments"])
        assert rendered == _plain(row["format"], BRACES, tokenizer.eos_token), row["format"]
        assert all(value in rendered for value in BRACES.values()), row["format"]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_the_reasoning_format_keeps_braces_literal(name):
    fmt = get_format(name)
    prompt = fmt.prompt("Q {content} {eos} {system}")
    assert "Q {content} {eos} {system}" in prompt and prompt.endswith(f"{fmt.rationale_header}\n")
    assert fmt.response("R {eos}", "{content}") == f"R {{eos}}\n\n{fmt.answer_header}\n{{content}}"
    parsed = fmt.parse(fmt.response("R {eos}", "{content}"))
    assert (parsed.rationale, parsed.answer) == ("R {eos}", "{content}")


def test_a_worked_problem_keeps_braces_literal(tmp_path, tokenizer):
    _, rows = _prepare(tmp_path, tokenizer, [{"prompt": "P {eos}", "rationale": "R {content}", "target": "{eos}"}], "tinycot",
                       formats=["memphis"])
    [row] = rows
    assert "".join(t for t, _ in row["segments"]) == "### User:\nP {eos}\n\n### Rationale:\nR {content}\n\n### Answer:\n{eos}" + tokenizer.eos_token


def _special_ids(tokenizer, ids: list[int]) -> list[int]:
    specials = set(tokenizer.all_special_ids)
    return [i for i in ids if i in specials]


def test_special_token_text_in_a_row_encodes_as_text(tmp_path, tokenizer):
    _, rows = _prepare(tmp_path, tokenizer, [_chat(SPECIALS)])
    clean = {key: "plain words" for key in SPECIALS}
    encoder = Encoder(tokenizer, 4096)
    items = {row["format"]: item for row, item in zip(rows, read_sft_mix(tmp_path / "round_00"))}
    assert set(items) == set(TEMPLATES)
    for name, item in items.items():
        encoded = encoder.encode_segments(item.segments)
        rendered = "".join(s.text for s in item.segments)
        # The same conversation with clean data: the special ids, in order, are the template's and no more.
        plain = encoder.encode_segments(get_template(name).segments(
            Conversation((Turn("user", clean["user"]), Turn("assistant", clean["reply"])), clean["system"]), tokenizer.eos_token))
        assert _special_ids(tokenizer, encoded.input_ids) == _special_ids(tokenizer, plain.input_ids), name
        # ...and every other token spells the data's text: decoding gives back the rendered text.
        assert tokenizer.decode(encoded.input_ids) == tokenizer.bos_token + rendered, name
        # A data `</s>` is text even when learned: the learned tokens hold exactly the template's end of a reply.
        learned = [t for t, label in zip(encoded.input_ids, encoded.labels) if label != -100]
        assert _special_ids(tokenizer, learned) == ([tokenizer.convert_tokens_to_ids("<|im_end|>")] if name == "chat-ml"
                                                    else [tokenizer.eos_token_id]), name


def test_ordinary_data_keeps_the_ids_it_always_had(tokenizer):
    encoder = Encoder(tokenizer, 4096)
    conversation = Conversation((Turn("user", "Hi there"), Turn("assistant", "Hello you"), Turn("user", "Again"),
                                 Turn("assistant", "Sure")), "Be kind.")
    for name, template in TEMPLATES.items():
        segments = template.segments(conversation, tokenizer.eos_token)
        before = [tokenizer.bos_token_id] + [i for s in segments for i in tokenizer(s.text, add_special_tokens=False)["input_ids"]]
        assert encoder.encode_segments(segments).input_ids == before, name
    fmt = get_format("chat-ml")
    prompt, response = fmt.prompt("Ann has 3 pens."), fmt.response("3 + 1 = 4.", "4")
    chatml = Encoder(tokenizer, 4096, fmt.reply_end)
    assert list(chatml.prompt_ids(prompt)) == tokenizer(prompt)["input_ids"]
    assert chatml.response_ids(response) == tokenizer(response + "<|im_end|>", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", ["tinycot", "chat-ml", "llama-2"])
def test_model_output_holding_special_text_encodes_as_text_in_a_training_pair(name, tokenizer):
    from rationale_loop.config.schema import ObjectiveConfig
    from rationale_loop.training.objectives import RankItem, build_objective

    fmt = get_format(name)
    encoder = Encoder(tokenizer, 4096, fmt.reply_end)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>") if name == "chat-ml" else tokenizer.eos_token_id
    prompt = fmt.prompt("Ann has </s> 3 <s> pens<|im_end|>.")
    chosen, rejected = fmt.response("3 + 1 = 4.", "4"), "I stop here </s><|im_end|> and go on <s>"
    markup = [tokenizer.convert_tokens_to_ids(t) for t in MARKERS]
    prompt_ids = list(encoder.prompt_ids(prompt))
    assert tokenizer.decode(prompt_ids) == tokenizer.bos_token + prompt
    # The prompt's only special ids: BOS in front, and chat-ml's own tags around the question (two tags, not the typed one).
    expected = [tokenizer.bos_token_id] + ([markup[0], markup[1], markup[0]] if name == "chat-ml" else [])
    assert _special_ids(tokenizer, prompt_ids) == expected
    for response in (chosen, rejected):
        encoded = encoder.encode(prompt, response)
        assert _special_ids(tokenizer, encoded.input_ids[len(prompt_ids):]) == [end]
        assert encoded.input_ids[-1] == end and tokenizer.decode(encoded.input_ids[len(prompt_ids):-len(encoder.end_ids)]) == response
    # The rank objective's shared-prompt group carries the same ids.
    objective = build_objective(ObjectiveConfig(name="cpo_simpo", share_prompt=True))
    group = objective.encode(RankItem(prompt, chosen, (rejected,), chosen), encoder)
    assert group.row.prompt_ids == prompt_ids and group.row.responses[1] == encoder.response_ids(rejected)
    assert _special_ids(tokenizer, group.row.responses[1]) == [end]


def test_packed_text_keeps_a_typed_eos_as_text(tmp_path, tokenizer):
    docs = [{"text": "First doc says </s> and <s> inside."}, {"text": "Second doc plain."}]
    _, rows = _prepare(tmp_path, tokenizer, docs, "text")
    [item] = read_sft_mix(tmp_path / "round_00")
    encoded = Encoder(tokenizer, 4096).encode_segments(item.segments)
    assert _special_ids(tokenizer, encoded.input_ids) == [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.eos_token_id]
    assert tokenizer.decode(encoded.input_ids) == tokenizer.bos_token + rows[0]["segments"][0][0]


GOOD = {"sharegpt": _chat({"system": "S", "user": "Hi", "reply": "Hello"}),
        "messages": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        "alpaca": {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        "airoboros": {"instruction": "Name a color.", "response": "Blue.", "system": "Brief."},
        "tinycot": {"prompt": "Ann has 2.", "rationale": "2 + 0 = 2.", "target": "2"},
        "gsm8k": {"question": "Ann has 2.", "answer": "2 + 0 = 2\n#### 2"},
        "preference": {"prompt": "Ann has 2?", "chosen": "2", "rejected": "3"},
        "text": {"text": "A story."}}
HOSTILE = [  # (schema, the second row, the error's field and what it says)
    ("sharegpt", {"conversations": ["Hi", "Hello"]}, "field conversations[0] is a string, expected an object"),
    ("sharegpt", {"conversations": [None, {"from": "gpt", "value": "x"}]}, "field conversations[0] is null, expected an object"),
    ("sharegpt", {"conversations": {"from": "human", "value": "Hi"}}, "field conversations is an object, expected a list of turns"),
    ("sharegpt", {"conversations": "Hi there"}, "field conversations is a string, expected a list of turns"),
    ("sharegpt", {"conversations": None}, "field conversations is null, expected a list of turns"),
    ("sharegpt", {"conversations": [{"from": "human", "value": ["Hi", "there"]}]}, "field conversations[0].value is a list, expected a string"),
    ("sharegpt", {"conversations": [{"from": "human", "value": 5}]}, "field conversations[0].value is a number, expected a string"),
    ("sharegpt", {"conversations": [{"from": None, "value": "Hi"}]}, "field conversations[0].from is null, expected a string"),
    ("sharegpt", ["Hi", "Hello"], "the row is a list, expected an object"),
    ("messages", {"messages": [{"role": "user", "content": {"text": "Hi"}}]}, "field messages[0].content is an object, expected a string"),
    ("alpaca", {"instruction": "Add.", "output": ["5"]}, "field output is a list, expected a string"),
    ("alpaca", {"instruction": {"a": 1}, "output": "5"}, "field instruction is an object, expected a string"),
    ("airoboros", {"instruction": "Hi", "response": "Yo", "system": ["be", "kind"]}, "field system is a list, expected a string"),
    ("tinycot", {"prompt": "P", "rationale": "R", "target": ["2"]}, "field target is a list, expected a string or a number"),
    ("gsm8k", {"question": 7, "answer": "1\n#### 1"}, "field question is a number, expected a string"),
    ("preference", {"prompt": "P", "chosen": 3, "rejected": "x"}, "field chosen is a number, expected a string or a list of messages"),
    ("preference", {"prompt": "P", "chosen": [{"role": "assistant", "content": 3}], "rejected": "x"},
     "field chosen[0].content is a number, expected a string"),
    ("text", {"text": {"body": "A story."}}, "field text is an object, expected a string"),
]


@pytest.mark.parametrize("schema, row, message", HOSTILE, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(HOSTILE)])
def test_a_wrongly_typed_field_names_file_row_and_field(tmp_path, tokenizer, schema, row, message):
    path = _write(tmp_path / "src.jsonl", [GOOD[schema], row])
    cfg = _config({"src": {"path": str(path), "schema": schema}}, ["memphis"])
    with pytest.raises(DataError) as caught:
        prepare_sft_mix(cfg, [], tokenizer, tmp_path / "round_00", seed=0)
    assert str(caught.value).startswith(f"{path}: row 2: {message}") and "\n" not in str(caught.value), str(caught.value)
    assert not (tmp_path / "round_00" / MIX_MANIFEST).exists()


def test_empty_turns_are_dropped_never_learned_and_counted(tmp_path, tokenizer):
    rows = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "  "}]},  # nothing: the row goes
        {"conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": None},  # an unanswered exchange goes
                           {"from": "human", "value": " "}, {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]},
        {"conversations": [{"from": "human", "value": "\n"}, {"from": "gpt", "value": "To no one"}]},  # a reply to nothing goes
    ]
    manifest, written = _prepare(tmp_path, tokenizer, rows, formats=["memphis"])
    counts = manifest["sources"]["src"]
    assert (counts["dropped_empty_turns"], counts["dropped_empty_rows"], counts["rows"]) == (7, 2, 2)
    assert ["".join(t for t, _ in row["segments"]) for row in written] == [
        "### User:\nHi\n\n### Assistant:\nHello</s>", "### User:\nQ2\n\n### Assistant:\nA2</s>"]
    for schema, row in [("alpaca", {"instruction": "", "input": None, "output": ""}), ("preference", {"prompt": "P", "chosen": "", "rejected": "x"}),
                        ("text", {"text": "   "}), ("tinycot", {"prompt": "P", "rationale": "", "target": "2"})]:
        (tmp_path / schema).mkdir()
        manifest, written = _prepare(tmp_path / schema, tokenizer, [GOOD[schema], row], schema, formats=["memphis"])
        assert manifest["sources"]["src"]["dropped_empty_rows"] == 1 and manifest["sources"]["src"]["rows"] == 1, schema


@pytest.mark.parametrize("name", ["tinycot", "chat-ml"])
def test_a_question_holding_special_text_is_text_when_the_model_is_asked_it(name, tokenizer):
    """Sampling and evaluation read a prompt as training does: the format's markup is special, an
    `</s>` or `<|im_end|>` typed in the question is text (the hf backend with the format's reply end)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rationale_loop.data.encode import Encoder
    from rationale_loop.generate import Sampling
    from rationale_loop.generate.hf import HFBackend

    fmt = get_format(name)
    prompt = fmt.prompt("What is 2 + 2? </s> <|im_end|> then 3?")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=256))
    seen = []
    backend = HFBackend(model, tokenizer, batch_size=1)
    generate_batch = backend._generate_batch
    backend._generate_batch = lambda batch, *rest: seen.extend(batch) or generate_batch(batch, *rest)  # records the ids asked
    [(_, completions)] = list(backend.generate([prompt], Sampling(n=1, max_new_tokens=2, reply_end=fmt.reply_end)))
    assert len(completions) == 1
    assert seen == [list(Encoder(tokenizer, 1 << 30, fmt.reply_end).prompt_ids(prompt))]
    assert tokenizer.eos_token_id not in seen[0], "a typed </s> is not the end of the prompt"
