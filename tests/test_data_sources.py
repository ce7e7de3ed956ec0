"""Chat and instruction sources: every schema loads through `datasets` from small files written here (and
GSM8K from the real file), dedup keeps the higher-priority copy, a planted held-out question is removed
(by n-gram, by MinHash when reworded, by embedding similarity when its words are shuffled), a malformed line names its file and line and leaves nothing behind, and `data=chat_mix` trains SFT on
the task plus chats in three formats (prepared and previewed first by `make data`), then a round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rationale_loop.data.decontaminate import Contamination
from rationale_loop.data.mixing import mix
from rationale_loop.data.rows import select_rows
from rationale_loop.data.schemas import conversations
from rationale_loop.data.sources import prepare_sft_mix
from rationale_loop.run.run_config import DECONTAMINATION, MIX_MANIFEST, MIX_ROWS
from rationale_loop.config.errors import DataError
from rationale_loop.run.records import Conversation, Turn

ROWS = {
    "sharegpt": {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    "messages": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                              {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye now"}]},
    "alpaca": {"instruction": "Add 2 and 3.", "input": "Show the step.", "output": "2 + 3 = 5."},
    "airoboros": {"instruction": "Name a color.", "response": "Blue.", "system": "Answer briefly."},
    "tinycot": {"prompt": "Ann has 2 pens and finds 3.", "rationale": "2 + 3 = 5.", "target": "5"},
    "gsm8k": {"question": "Ann has 2 pens and finds 3.", "answer": "2 + 3 = <<2+3=5>>5\n#### 5"},
}
EXPECTED = {
    "sharegpt": Conversation((Turn("user", "Hi"), Turn("assistant", "Hello")), "Be kind."),
    "messages": Conversation((Turn("user", "Hi"), Turn("assistant", "Hello"), Turn("user", "Bye"), Turn("assistant", "Bye now"))),
    "alpaca": Conversation((Turn("user", "Add 2 and 3.\n\nShow the step."), Turn("assistant", "2 + 3 = 5."))),
    "airoboros": Conversation((Turn("user", "Name a color."), Turn("assistant", "Blue.")), "Answer briefly."),
    "tinycot": Conversation((Turn("user", "Ann has 2 pens and finds 3."), Turn("assistant", "### Rationale:\n2 + 3 = 5.\n\n### Answer:\n5"))),
    "gsm8k": Conversation((Turn("user", "Ann has 2 pens and finds 3."), Turn("assistant", "### Rationale:\n2 + 3 = 5\n\n### Answer:\n5"))),
}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("schema", sorted(ROWS))
def test_every_schema_maps_onto_a_conversation(schema, tmp_path):
    path = _write(tmp_path / f"{schema}.jsonl", [ROWS[schema]] * 2)
    loaded = conversations("src", select_rows(str(path)), schema)
    assert [(c.turns, c.system) for c in loaded] == [(EXPECTED[schema].turns, EXPECTED[schema].system)] * 2
    assert [c.id for c in loaded] == ["src/000000", "src/000001"]


def test_parquet_csv_and_saved_datasets_load_too(tmp_path):
    import datasets

    table = datasets.Dataset.from_list([ROWS["alpaca"]] * 3)
    table.to_parquet(str(tmp_path / "a.parquet"))
    table.to_csv(str(tmp_path / "a.csv"))
    table.save_to_disk(str(tmp_path / "saved"))
    for path in ("a.parquet", "a.csv", "saved"):
        loaded = conversations("src", select_rows(str(tmp_path / path), max_rows=2), "alpaca")
        assert [c.turns for c in loaded] == [EXPECTED["alpaca"].turns] * 2, path


def test_the_real_gsm8k_train_file_loads(shared_data):
    loaded = conversations("gsm8k", select_rows(str(shared_data / "gsm8k" / "train.jsonl"), max_rows=5), "gsm8k")
    assert len(loaded) == 5 and all(c.turns[1].content.startswith("### Rationale:\n") and "<<" not in c.turns[1].content for c in loaded)


def test_dedup_keeps_the_higher_priority_copy_and_decontamination_drops_a_planted_test_question(shared_data):
    test_question = json.loads((shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[0])["question"]
    low = [Conversation((Turn("user", "Same question?"), Turn("assistant", "low")), id="low/0")]
    high = [Conversation((Turn("user", "  same QUESTION? "), Turn("assistant", "high")), id="high/0"),
            Conversation((Turn("user", f"Please solve: {test_question}"), Turn("assistant", "x")), id="high/1")]
    # Reworded a little (every twelfth word replaced): no 13-gram survives, the near-duplicate path catches it.
    words = test_question.split()
    for i in range(6, len(words), 12):
        words[i] = "something"
    high.append(Conversation((Turn("user", " ".join(words)), Turn("assistant", "y")), id="high/2"))
    merged = mix([("low", 0, low), ("high", 5, high)], Contamination().add([test_question]))
    assert [c.id for c in merged.items] == ["high/0"]
    assert merged.duplicates == {"high": 0, "low": 1} and merged.contaminated == {"high": 1, "low": 0}
    assert merged.near_duplicates == {"high": 1, "low": 0}
    assert [(r["id"], r["reason"], r["held_out"]) for r in merged.removed] == [("high/1", "ngram", test_question[:300]),
                                                                               ("high/2", "near_duplicate", test_question[:300])]


def _data_config(values: dict) -> object:
    """A data= config: DataConfig's defaults with `values` over them."""
    from omegaconf import OmegaConf

    from rationale_loop.config.schema import DataConfig

    return OmegaConf.merge(OmegaConf.structured(DataConfig), values)


def _bag_of_words_model(path: Path, texts: list[str]) -> str:
    """A sentence-transformers model built here (no download): bag-of-words counts over the texts' words. It
    is lexical, so it proves the embedding path (encode, faiss search, threshold, report), not how well a
    real encoder catches a paraphrase."""
    import re

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import BoW

    vocab = sorted({word for text in texts for word in re.findall(r"\w+", text.lower())})
    SentenceTransformer(modules=[BoW(vocab=vocab, word_weights={}, unknown_word_weight=1.0, cumulative_term_frequency=True)]).save(str(path))
    return str(path)


@pytest.mark.slow
def test_embedding_decontamination_catches_a_shuffled_test_question_the_other_checks_miss(tmp_path, shared_data):
    """GSM8K's test file named in data.decontaminate_against; one of its questions planted with its words
    shuffled: no 13-gram and few bigrams survive, so only the embedding check (cosine 1 under a bag of words)
    removes it, and the report names the held-out question it matched."""
    import random

    from omegaconf import OmegaConf

    from rationale_loop.models.model import train_tokenizer

    test_file = shared_data / "gsm8k" / "test.jsonl"
    question = json.loads(test_file.read_text().splitlines()[3])["question"]
    shuffled = question.split()
    random.Random(0).shuffle(shuffled)
    rows = [{"instruction": " ".join(shuffled), "output": "x"}, {"instruction": "Tom sells 3 pears at the market. How many are left?", "output": "y"}]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    model = _bag_of_words_model(tmp_path / "bow", [question, rows[1]["instruction"]])
    tokenizer = train_tokenizer([question, rows[1]["instruction"]] * 3, vocab_size=300)
    source = {"chats": {"path": str(path), "schema": "alpaca", "split": "train", "max_rows": 0, "priority": 0}}
    manifests = {}
    for embedding_model in (None, model):
        cfg = _data_config({"sources": source, "formats": ["memphis"], "multi_format": "all", "decontaminate_ngram": 13,
                                "near_duplicate_threshold": 0.7, "embedding_model": embedding_model, "embedding_threshold": 0.9,
                                "decontaminate_against": [str(test_file)]})
        out = tmp_path / f"round_00_{'embedding' if embedding_model else 'plain'}"
        manifests[embedding_model] = prepare_sft_mix(cfg, [], tokenizer, out, seed=0)
    plain, embedded = manifests[None]["sources"]["chats"], manifests[model]["sources"]["chats"]
    assert (plain["contaminated"], plain["near_duplicates"], plain["semantic_duplicates"], plain["kept"]) == (0, 0, 0, 2)
    assert (embedded["contaminated"], embedded["near_duplicates"], embedded["semantic_duplicates"], embedded["kept"]) == (0, 0, 1, 1)
    assert manifests[model]["decontamination"]["held_out_texts"] == len(test_file.read_text().splitlines())
    removed = [json.loads(line) for line in (tmp_path / "round_00_embedding" / DECONTAMINATION).read_text().splitlines()]
    assert len(removed) == 1 and removed[0]["reason"] == "semantic" and removed[0]["score"] > 0.99
    assert removed[0]["held_out"] == question[:300] and removed[0]["text"].startswith(" ".join(shuffled)[:100])


def test_plain_text_is_deduplicated_decontaminated_and_packed_with_every_token_learned(tmp_path):
    from omegaconf import OmegaConf

    from rationale_loop.data.templates import Segment
    from rationale_loop.data.encode import Encoder
    from rationale_loop.models.model import train_tokenizer

    held_out = "Ann has 14 coins and she gets 4 coins from a friend and then she uses 2 of the coins today"
    story = " ".join(f"Chapter {i}: the river ran past the mill and the miller counted {i} sacks of grain." for i in range(40))
    docs = [{"text": story}, {"text": "A short note about apples."}, {"text": "a SHORT note   about apples."},
            {"text": f"Notes. {held_out}. The end."}, {"text": "  "}]
    path = _write(tmp_path / "books.jsonl", docs)
    cfg = _data_config({"sources": {"books": {"path": str(path), "schema": "text", "split": "train", "max_rows": 0, "priority": 0}},
                            "formats": ["memphis"], "multi_format": "all", "decontaminate_ngram": 13, "near_duplicate_threshold": 0.7})
    tokenizer = train_tokenizer([story, "A short note about apples.", held_out] * 3, vocab_size=300)
    manifest = prepare_sft_mix(cfg, [held_out], tokenizer, tmp_path / "round_00", seed=0, max_length=64)
    source = manifest["sources"]["books"]
    assert (source["rows"], source["duplicates"], source["contaminated"], source["kept"]) == (4, 1, 1, 2)
    rows = [json.loads(line) for line in (tmp_path / "round_00" / MIX_ROWS).read_text().splitlines()]
    assert manifest["formats"] == {"memphis": 0, "text": len(rows)} and len(rows) > 5, "the long story fills several rows"
    assert all(row["format"] == "text" and len(row["segments"]) == 1 and row["segments"][0][1] is True for row in rows)
    encoder = Encoder(tokenizer, max_length=64)
    encoded = [encoder.encode_segments([Segment(*row["segments"][0])]) for row in rows]
    assert all(e is not None for e in encoded), "no packed row is over the length"
    assert sum(len(e.input_ids) for e in encoded[:-1]) / (len(encoded) - 1) > 56, "rows are full, not padded"
    joined = "".join(row["segments"][0][0] for row in rows)
    assert " ".join(joined.split()).startswith(" ".join(story.split()[:30])) and "apples" in joined and "miller" in joined
    assert joined.count(tokenizer.eos_token) == 2 and held_out not in joined


def test_a_malformed_line_names_file_and_line_and_leaves_nothing(tmp_path):
    from omegaconf import OmegaConf

    from rationale_loop.models.model import train_tokenizer

    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps(ROWS["sharegpt"]) + "\n" + '{"conversations": [\n')
    cfg = _data_config({"sources": {"chats": {"path": str(path), "schema": "sharegpt", "split": "train", "max_rows": 0, "priority": 0}},
                            "formats": ["memphis"], "multi_format": "all", "decontaminate_ngram": 13})
    tokenizer = train_tokenizer(["Hi Hello"] * 5, vocab_size=300)
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        prepare_sft_mix(cfg, [], tokenizer, tmp_path / "round_00", seed=0)
    assert not (tmp_path / "round_00" / MIX_MANIFEST).exists() and not (tmp_path / "round_00" / MIX_ROWS).exists()


def test_sft_on_a_chat_mix_in_three_formats_then_a_round(tmp_path):
    from transformers import AutoTokenizer

    from rationale_loop.data.templates import get_template
    from rationale_loop.loop import run_data, run_loop

    from test_config import compose_config
    from test_run_safety import QUICK

    # Over sft.max_length (256; the tiny tokenizer spells chat-ml's tags byte by byte), a chat is cut after its
    # last assistant turn that fits.
    cfg = compose_config(*QUICK, "rounds=1", "data=chat_mix", "objective=sft", "rank.steps=2", "data.too_long=truncate",
                         f"output_root={tmp_path}/runs", f"model.cache_dir={tmp_path}/models", "run=mix")
    # `make data` first: prepared into round 0 and previewed; SFT then reads that preparation, not its own.
    shown = run_data(cfg)
    out = tmp_path / "runs" / "mix" / "round_00"
    prepared = (out / MIX_MANIFEST).stat().st_mtime_ns
    table_rows = [line.split() for line in shown.splitlines()]
    assert ["counting_chats", "sharegpt", "0", "24", "0", "0", "0", "0", "24"] in table_rows
    assert "--- one row in chat-ml" in shown and "⟦Ann starts with 7 apples. 7 + 4 = 11. Ann has 11 apples now.<|im_end|>⟧" in shown
    assert "\n### Assistant:\n⟦" in shown and "<|im_end|>\n<|im_start|>assistant\n⟦Ann starts" in shown, "prompts are shown unmarked"
    assert ["chat-ml", "48", "0", "8"] in table_rows, "the cut chats are counted"
    rows = run_loop(cfg)
    assert [r["round"] for r in rows] == [0, 1]
    assert (out / MIX_MANIFEST).stat().st_mtime_ns == prepared
    assert run_data(cfg).count("--- one row in") == 4, "a finished run's data is read back"
    manifest = json.loads((out / MIX_MANIFEST).read_text())
    assert manifest["sources"]["counting_chats"]["kept"] == 24 and manifest["sources"]["subtraction"]["duplicates"] == 1
    # The worked problems once, in the task's reasoning format; each chat in all three chat formats.
    assert manifest["formats"] == {"memphis": 48, "alpaca": 48, "chat-ml": 48, "tinycot": 16} and manifest["rendered_rows"] == 160
    assert manifest["over_length"] == {"dropped": {"memphis": 0, "alpaca": 0, "chat-ml": 0, "tinycot": 0},
                                       "truncated": {"memphis": 0, "alpaca": 0, "chat-ml": 8, "tinycot": 0}}
    trained = json.loads((out / "train.json").read_text())
    assert trained["train_items"] == 64 + 160 and trained["train_dropped_too_long"] == 0, "what was prepared fits"
    worked = next(row for row in map(json.loads, (out / MIX_ROWS).read_text().splitlines()) if row["format"] == "tinycot")
    # Exactly as the rounds ask: the prompt ends with the rationale header, and the rest is learned.
    assert worked["segments"][0] == ["### User:\nA jar holds 9 marbles, and 5 more are put in. How many marbles are in the jar now?"
                                     "\n\n### Rationale:\n", False]
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "runs" / "mix" / "round_01" / "checkpoint"))
    assert tokenizer.chat_template == get_template("memphis").chat_template()
    assert worked["segments"][1] == ["9 + 5 = 14.\n\n### Answer:\n14" + tokenizer.eos_token, True]


PREFERENCE_ROWS = [
    # orca_dpo_pairs: strings, the prompt under "question", a system prompt
    {"system": "Answer briefly.", "question": "Ann has 2 pens and finds 3. How many?", "chosen": "2 + 3 = 5. She has 5.",
     "rejected": "She has 6."},
    # ultrafeedback_binarized: chosen and rejected as message lists
    {"prompt": "Ben has 9 cards and loses 4. How many?",
     "chosen": [{"role": "user", "content": "Ben has 9 cards and loses 4. How many?"}, {"role": "assistant", "content": "9 - 4 = 5."}],
     "rejected": [{"role": "user", "content": "Ben has 9 cards and loses 4. How many?"}, {"role": "assistant", "content": "9 - 4 = 6."}]},
]


def test_preference_pairs_load_from_string_and_message_list_rows(tmp_path):
    from rationale_loop.data.rows import select_rows
    from rationale_loop.data.schemas import preference_pairs

    orca = _write(tmp_path / "orca.jsonl", PREFERENCE_ROWS[:1])
    ultra = _write(tmp_path / "ultra.jsonl", PREFERENCE_ROWS[1:])
    [(first, rejected)] = preference_pairs("orca", select_rows(str(orca)))
    assert first == Conversation((Turn("user", "Ann has 2 pens and finds 3. How many?"), Turn("assistant", "2 + 3 = 5. She has 5.")),
                                 "Answer briefly.", id="orca/000000") and rejected == "She has 6."
    [(second, rejected)] = preference_pairs("ultra", select_rows(str(ultra)))
    assert second.turns[1].content == "9 - 4 = 5." and second.system is None and rejected == "9 - 4 = 6."
    with pytest.raises(DataError, match=r"schema preference needs column\(s\) \['rejected'\]"):
        preference_pairs("bad", select_rows(str(_write(tmp_path / "bad.jsonl", [{"prompt": "x", "chosen": "y"}]))))


@pytest.mark.slow
def test_a_round_ranks_preference_pairs_beside_its_mined_pairs(tmp_path):
    from rationale_loop.config.errors import ConfigError
    from rationale_loop.preflight.config_checks import validate
    from rationale_loop.run.run_config import PREFERENCE_ROWS as PREFERENCE_FILE
    from rationale_loop.loop import run_data, run_loop

    from test_config import compose_config
    from test_run_safety import QUICK

    path = _write(tmp_path / "prefs.jsonl", PREFERENCE_ROWS)
    overrides = [*QUICK, "rounds=1", "objective=memphis", "objective.anchor=chosen", "rank.steps=2", "data.formats=[chat-ml]",
                 f"+data.sources.prefs={{path:'{path}',schema:preference}}",
                 f"output_root={tmp_path}/runs", f"model.cache_dir={tmp_path}/models", "run=prefs"]
    with pytest.raises(ConfigError, match="data.sources.prefs holds preference pairs, which only a pair objective"):
        validate(compose_config(*overrides, "objective=star"))
    cfg = compose_config(*overrides)
    assert "Preference pairs for the rounds' rank stage: 2" in run_data(cfg)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "prefs" / "round_00" / PREFERENCE_FILE).read_text().splitlines()]
    # In the task's format (tinycot), as the mined pairs are; the replies bare (the encoder adds EOS).
    assert rows[0] == {"id": "prefs/000000",
                       "prompt": "### System:\nAnswer briefly.\n\n### User:\nAnn has 2 pens and finds 3. How many?\n\n",
                       "chosen": "2 + 3 = 5. She has 5.", "rejected": "She has 6."}
    run_loop(cfg)
    round_one = tmp_path / "runs" / "prefs" / "round_01"
    mined = json.loads((round_one / "stats.json").read_text())["pairs"]
    assert json.loads((round_one / "train.json").read_text())["train_items"] == mined + 2


def test_column_renames_and_the_recipes_exclusion_filter_apply_before_the_row_cap(tmp_path):
    """The recipe's reddit-instruct subset: 5,000 rows whose title has no brackets, from a file whose columns
    are not alpaca's; here 2 rows of 4 clean ones, after 2 bracketed titles are dropped and counted."""
    rows = [{"post_title": "[Serious] Why is the sky blue?", "comment": "Scattering."},
            {"post_title": "How do magnets work?", "comment": "Aligned spins."},
            {"post_title": "What is [this]?", "comment": "A thing."},
            {"post_title": "Why do cats purr?", "comment": "Contentment, mostly."},
            {"post_title": "Why is ice slippery?", "comment": "A thin water layer."}]
    path = _write(tmp_path / "reddit.jsonl", rows)
    selected = select_rows(str(path), max_rows=2, columns={"instruction": "post_title", "output": "comment"},
                           exclude={"instruction": r"\[|\]"})
    loaded = conversations("reddit", selected, "alpaca")
    assert [c.turns[0].content for c in loaded] == ["How do magnets work?", "Why do cats purr?"]
    assert [c.id for c in loaded] == ["reddit/000001", "reddit/000003"] and selected.excluded == 2
    with pytest.raises(DataError, match=r"columns \['title'\] \(named in the source's `columns`\) are not in the file"):
        select_rows(str(path), columns={"instruction": "title"})


@pytest.mark.parametrize("too_long", ["drop", "truncate"])
def test_an_over_long_conversation_is_dropped_or_cut_after_an_assistant_turn_and_counted(tmp_path, too_long):
    from rationale_loop.data.templates import Segment
    from rationale_loop.data.encode import Encoder
    from rationale_loop.models.model import train_tokenizer

    long_reply = " ".join(["the river ran past the mill"] * 20)
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
                          {"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": long_reply}]},
            {"messages": [{"role": "user", "content": "A story?"}, {"role": "assistant", "content": long_reply}]},
            {"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye now"}]}]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tokenizer = train_tokenizer([long_reply, "Hi Hello there Tell me a story A story? Bye now"] * 3, vocab_size=300)
    cfg = _data_config({"sources": {"chats": {"path": str(path), "schema": "messages"}}, "formats": ["memphis", "chat-ml"],
                        "too_long": too_long})
    manifest = prepare_sft_mix(cfg, [], tokenizer, tmp_path / "round_00", seed=0, max_length=96)
    written = [json.loads(line) for line in (tmp_path / "round_00" / MIX_ROWS).read_text().splitlines()]
    encoder = Encoder(tokenizer, 96)
    assert all(encoder.encode_segments([Segment(text, learned) for text, learned in row["segments"]]) is not None for row in written)
    cut = 1 if too_long == "truncate" else 0
    assert manifest["over_length"] == {"dropped": {"memphis": 2 - cut, "chat-ml": 2 - cut}, "truncated": {"memphis": cut, "chat-ml": cut}}
    assert manifest["formats"] == {"memphis": 1 + cut, "chat-ml": 1 + cut}
    if cut:
        first = next(row for row in written if row["id"].endswith("/000000") and row["format"] == "chat-ml")
        assert first["segments"][-1] == ["Hello there<|im_end|>", True], "cut right after the first assistant turn"


@pytest.mark.parametrize("too_long", ["drop", "truncate"])
def test_a_huge_row_is_dropped_or_cut_by_its_length_without_being_read_whole(tmp_path, monkeypatch, too_long):
    """A row of megabytes (one of 45 MB cost 106 s and 10 GB, tokenized and n-grammed whole before it was
    dropped): no more of it than max_length tokens can hold is rendered, tokenized or n-gram checked, and
    memory stays within a few copies of the row as it is read (three: bytes, line, parsed JSON)."""
    import tracemalloc

    from rationale_loop.data.mixing import row_reach
    from rationale_loop.data.encode import Encoder
    from rationale_loop.models.model import train_tokenizer

    huge = "the river ran past the mill " * 150_000  # 4.2 MB
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
                          {"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": huge}]},
            {"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye now"}]}]
    tokenizer = train_tokenizer(["the river ran past the mill", "Hi Hello there Tell me a story Bye now"] * 3, vocab_size=300)
    held_out = ["what is the sum of all the numbers that the farmer wrote on the board today"]  # the n-gram check on

    def prepare(name: str, rows: list[dict]) -> dict:
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        cfg = _data_config({"sources": {"chats": {"path": str(path), "schema": "messages"}}, "formats": ["memphis"], "too_long": too_long})
        return prepare_sft_mix(cfg, held_out, tokenizer, tmp_path / name, seed=0, max_length=96)

    prepare("warm", rows[1:])  # the modules a preparation imports, loaded before memory is traced
    read: list[int] = []  # characters of each text tokenized or n-gram checked
    encode, match = Encoder.encode_segments, Contamination.match
    monkeypatch.setattr(Encoder, "encode_segments", lambda self, segments: read.append(sum(len(s.text) for s in segments)) or encode(self, segments))
    monkeypatch.setattr(Contamination, "match", lambda self, text, instruction=None: read.append(len(text)) or match(self, text, instruction))
    tracemalloc.start()
    try:
        manifest = prepare("huge", rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    cut = 1 if too_long == "truncate" else 0
    assert manifest["over_length"] == {"dropped": {"memphis": 1 - cut}, "truncated": {"memphis": cut}}
    assert manifest["formats"] == {"memphis": 1 + cut} and manifest["sources"]["chats"]["kept"] == 2
    assert max(read) <= row_reach(tokenizer, 96) + 200 < len(huge) // 100, "never read whole"
    assert peak < 5 * len(huge), f"{peak / 1e6:.1f} MB traced for a {len(huge) / 1e6:.1f} MB row"


def test_the_recipe_mix_config_reads_files_shaped_like_its_hub_sources(tmp_path, shared_data):
    """data=memphis_mix with each hub id pointed at a small local file of the same columns: TinyCoT in
    the reasoning layout, reddit-instruct's bracketed titles excluded through the config's own columns,
    oasst2's messages; GSM8K's test split (a folder laid out like openai/gsm8k, read as `id:main`) keeps a
    planted test question out."""
    from omegaconf import OmegaConf

    from rationale_loop.preflight.config_checks import validate
    from rationale_loop.models.model import train_tokenizer

    from test_config import compose_config
    from test_tasks import _hub_layout

    cfg = compose_config("experiment=memphis_cot_3b", "data=memphis_mix")
    validate(cfg)
    assert {name: s["path"] for name, s in cfg.data.sources.items()} == {
        "tinycot": "euclaise/TinyCoT", "reddit_instruct": "euclaise/reddit-instruct", "oasst2_curated": "sablo/oasst2_curated"}
    test_question = json.loads((shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[7])["question"]
    files = {
        "tinycot": [{"prompt": "Ann has 2 pens and finds 3.", "rationale": "2 + 3 = 5.", "target": "5", "source": "x"}],
        "reddit_instruct": [{"post_title": "How do tides work?", "post_text": "", "comment_text": "The moon pulls the sea."},
                            {"post_title": "[Serious] Why is the sky blue?", "post_text": "", "comment_text": "Scattering."}],
        "oasst2_curated": [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
                           {"messages": [{"role": "user", "content": test_question}, {"role": "assistant", "content": "18"}]}],
    }
    for name, rows in files.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        cfg.data.sources[name].path = str(path)
    (tmp_path / "gsm8k" / "main").mkdir(parents=True)
    cfg.data.decontaminate_against = [f"{_hub_layout(shared_data, tmp_path / 'gsm8k')}:main"]
    tokenizer = train_tokenizer(["Ann has 2 pens. How do tides work? The moon pulls the sea. Hi Hello", test_question] * 3, vocab_size=300)
    manifest = prepare_sft_mix(cfg.data, [], tokenizer, tmp_path / "round_00", seed=0, max_length=512)
    kept = {name: s["kept"] for name, s in manifest["sources"].items()}
    assert kept == {"tinycot": 1, "reddit_instruct": 1, "oasst2_curated": 1}
    assert manifest["sources"]["reddit_instruct"]["excluded"] == 1 and manifest["sources"]["oasst2_curated"]["contaminated"] == 1
    rows = {row["id"].split("/")[0]: "".join(text for text, _ in row["segments"])
            for row in map(json.loads, (tmp_path / "round_00" / MIX_ROWS).read_text().splitlines())}
    # TinyCoT in the task's reasoning format (tinycot, as the recipe trained it), chat data in the chat format.
    assert rows["tinycot"] == "### User:\nAnn has 2 pens and finds 3.\n\n### Rationale:\n2 + 3 = 5.\n\n### Answer:\n5" + tokenizer.eos_token
    assert manifest["formats"] == {"memphis": 2, "tinycot": 1}
    assert "### User:\nHow do tides work?\n\n### Assistant:\nThe moon pulls the sea." in rows["reddit_instruct"]
