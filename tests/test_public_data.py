"""Loaders for the public sets: counts, the shape of what they produce, and their errors."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from rationale_loop.data.public import LOADERS, load_aqua, load_gsm8k, load_svamp, load_svamp_worked
from rationale_loop.run.records import Problem


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def loaded(shared_data: Path) -> dict[str, list[Problem]]:
    files = {
        "gsm8k_train": shared_data / "gsm8k" / "train.jsonl",
        "gsm8k_test": shared_data / "gsm8k" / "test.jsonl",
        "svamp": shared_data / "svamp" / "SVAMP.json",
        "aqua_dev": shared_data / "aqua_rat" / "dev.json",
        "aqua_test": shared_data / "aqua_rat" / "test.json",
    }
    before = {name: _sha256(path) for name, path in files.items()}
    result = {
        "gsm8k_train": load_gsm8k(files["gsm8k_train"]),
        "gsm8k_test": load_gsm8k(files["gsm8k_test"]),
        "svamp": load_svamp(files["svamp"]),
        "aqua_dev": load_aqua(files["aqua_dev"]),
        "aqua_test": load_aqua(files["aqua_test"]),
    }
    after = {name: _sha256(path) for name, path in files.items()}
    assert after == before, "a loader changed its input"
    return result


def test_loaders_registry() -> None:
    assert dict(LOADERS.items()) == {"gsm8k": load_gsm8k, "svamp": load_svamp, "svamp_worked": load_svamp_worked, "aqua": load_aqua}


def test_counts(loaded: dict[str, list[Problem]]) -> None:
    counts = {name: len(problems) for name, problems in loaded.items()}
    assert counts == {
        "gsm8k_train": 7473,
        "gsm8k_test": 1319,
        "svamp": 1000,
        "aqua_dev": 254,
        "aqua_test": 254,
    }


def test_ids_unique_readable_and_stable(
    loaded: dict[str, list[Problem]], shared_data: Path
) -> None:
    ids = [problem.id for problems in loaded.values() for problem in problems]
    assert len(ids) == len(set(ids))
    assert loaded["gsm8k_test"][12].id == "gsm8k/test/00012"
    assert loaded["gsm8k_train"][0].id == "gsm8k/train/00000"
    assert loaded["svamp"][999].id == "svamp/SVAMP/00999"
    assert loaded["aqua_dev"][0].id == "aqua/dev/00000"
    again = load_aqua(shared_data / "aqua_rat" / "dev.json")
    assert [p.id for p in again] == [p.id for p in loaded["aqua_dev"]]


def test_gsm8k_rationale_and_answer(loaded: dict[str, list[Problem]]) -> None:
    for problem in loaded["gsm8k_train"] + loaded["gsm8k_test"]:
        assert "<<" not in problem.rationale and ">>" not in problem.rationale, problem.id
        assert "####" not in problem.rationale, problem.id
        assert problem.rationale and problem.question, problem.id
        assert re.fullmatch(r"-?\d+", problem.answer), (problem.id, problem.answer)
    first = loaded["gsm8k_test"][0]
    assert first.answer == "18"
    assert first.rationale.startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.")
    assert "$18 every day" in first.rationale  # the result after the calculator mark stays
    answers = [p.answer for p in loaded["gsm8k_test"]]
    assert sum(a.startswith("-") for a in answers) == 2  # SOURCES.md: 2 negative test answers
    assert sum(len(a.lstrip("-")) >= 4 for a in answers) >= 14  # the 14 comma answers, commas gone


def test_svamp_questions_and_answers(loaded: dict[str, list[Problem]], shared_data: Path) -> None:
    raw = json.loads((shared_data / "svamp" / "SVAMP.json").read_text(encoding="utf-8"))
    for problem, item in zip(loaded["svamp"], raw):
        assert problem.question == " ".join(f"{item['Body']} {item['Question']}".split())
        assert "  " not in problem.question
        assert problem.rationale == ""
        assert float(problem.answer) == item["Answer"]
        assert re.fullmatch(r"-?\d+(\.\d+)?", problem.answer), problem.answer
        if float(item["Answer"]).is_integer():
            assert "." not in problem.answer
    assert loaded["svamp"][0].answer == "51"


def test_aqua_options_in_question(loaded: dict[str, list[Problem]], shared_data: Path) -> None:
    for split in ("dev", "test"):
        path = shared_data / "aqua_rat" / f"{split}.json"
        lines = path.read_text(encoding="utf-8").splitlines()
        raw = [json.loads(line) for line in lines if line.strip()]
        for problem, item in zip(loaded[f"aqua_{split}"], raw):
            question_lines = problem.question.split("\n")
            assert problem.question.startswith(item["question"].strip())
            option_lines = question_lines[-len(item["options"]) :]
            for option, line in zip(item["options"], option_lines):
                expected = f"{option[0]}) {option[2:].strip()}".rstrip()
                assert line == expected, (problem.id, option, line)
            assert problem.answer in option_lines
            assert problem.answer.startswith(f"{item['correct']}) ")
            assert problem.rationale == item["rationale"].strip()
    assert loaded["aqua_dev"][0].answer == "A) 32400"


# ------------------------------------------------------------------------------------------------
# errors name the file and the line (or the array index)
# ------------------------------------------------------------------------------------------------

GOOD_GSM8K = {"question": "What is 1 + 1?", "answer": "1 + 1 = <<1+1=2>>2\n#### 2"}
GOOD_AQUA = {
    "question": "Pick one.",
    "options": ["A)1", "B)2"],
    "rationale": "Because.",
    "correct": "B",
}
GOOD_SVAMP = {
    "Body": "Tom has 3 apples.",
    "Question": "How many?",
    "Equation": "( 3.0 )",
    "Answer": 3.0,
}


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_gsm8k_broken_line_names_file_and_line(tmp_path: Path) -> None:
    good = json.dumps(GOOD_GSM8K)
    path = _write_lines(tmp_path / "mini.jsonl", [good, '{"question": "cut off', good])
    with pytest.raises(ValueError) as info:
        load_gsm8k(path)
    assert f"{path}:2:" in str(info.value)


def test_gsm8k_missing_field_and_marker(tmp_path: Path) -> None:
    lines = [json.dumps(GOOD_GSM8K), "", json.dumps({"question": "Q"})]  # blank line 2 is skipped
    path = _write_lines(tmp_path / "a.jsonl", lines)
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: missing field 'answer'")):
        load_gsm8k(path)
    line = json.dumps({"question": "Q", "answer": "no marker"})
    path = _write_lines(tmp_path / "b.jsonl", [line])
    with pytest.raises(ValueError, match=re.escape(f"{path}:1:") + ".*####"):
        load_gsm8k(path)
    line = json.dumps({"question": "Q", "answer": "x\n#### lots"})
    path = _write_lines(tmp_path / "c.jsonl", [line])
    with pytest.raises(ValueError, match=re.escape(f"{path}:1:") + ".*not a number"):
        load_gsm8k(path)


def test_gsm8k_small_file(tmp_path: Path) -> None:
    item = {"question": " Q? ", "answer": "a <<2*3=6>>6 and <<6-7=-1>>-1\n#### -1,234"}
    path = _write_lines(tmp_path / "mini.jsonl", [json.dumps(item), json.dumps(GOOD_GSM8K)])
    problems = load_gsm8k(path)
    assert problems[0] == Problem(
        id="gsm8k/mini/00000", question="Q?", rationale="a 6 and -1", answer="-1234"
    )
    assert problems[1].rationale == "1 + 1 = 2" and problems[1].answer == "2"


def test_svamp_errors_name_file_and_index(tmp_path: Path) -> None:
    good = GOOD_SVAMP
    path = tmp_path / "svamp.json"
    path.write_text(json.dumps([good, {"Body": "b", "Question": "q"}]), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}[1]: missing field 'Answer'")):
        load_svamp(path)
    path.write_text(json.dumps([good, dict(good, Answer="3")]), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}[1]: field 'Answer'")):
        load_svamp(path)
    path.write_text('[\n{"Body": "b",\n', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:")):
        load_svamp(path)
    path.write_text(json.dumps([good, dict(good, Answer=2.5)]), encoding="utf-8")
    problems = load_svamp(path)
    assert [p.answer for p in problems] == ["3", "2.5"]
    assert problems[0].question == "Tom has 3 apples. How many?"


def test_aqua_errors_name_file_and_line(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "dev.json", [json.dumps(GOOD_AQUA), "not json"])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2:")):
        load_aqua(path)
    lines = [json.dumps(GOOD_AQUA), json.dumps(dict(GOOD_AQUA, correct="E"))]
    path = _write_lines(tmp_path / "dev.json", lines)
    with pytest.raises(ValueError, match=re.escape(f"{path}:2:") + ".*'E'"):
        load_aqua(path)
    missing = {k: v for k, v in GOOD_AQUA.items() if k != "rationale"}
    path = _write_lines(tmp_path / "dev.json", [json.dumps(missing)])
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: missing field 'rationale'")):
        load_aqua(path)
    path = _write_lines(tmp_path / "dev.json", [json.dumps(dict(GOOD_AQUA, options=["A)1", "2"]))])
    with pytest.raises(ValueError, match=re.escape(f"{path}:1:") + ".*option"):
        load_aqua(path)
    problem = load_aqua(_write_lines(tmp_path / "dev.json", [json.dumps(GOOD_AQUA)]))[0]
    assert problem == Problem(
        id="aqua/dev/00000", question="Pick one.\nA) 1\nB) 2", rationale="Because.", answer="B) 2"
    )


def test_svamp_worked_writes_each_published_equation_as_checked_steps(shared_data: Path, tmp_path: Path) -> None:
    """svamp_worked: the Equation "( ( 7.0 + 3.0 ) * 2.0 )" as "7 + 3 = 10\\n10 * 2 = 20", every step right
    arithmetic ending in the answer; an item whose equation is a bare number, misses its answer or passes
    through a repeating decimal has none."""
    from rationale_loop.judging.chain import check_chain
    from rationale_loop.config.errors import DataError

    plain, worked = load_svamp(shared_data / "svamp" / "SVAMP.json"), load_svamp_worked(shared_data / "svamp" / "SVAMP.json")
    assert [(p.id, p.question, p.answer) for p in plain] == [(p.id, p.question, p.answer) for p in worked]
    assert worked[0].rationale == "76 - 25 = 51"
    without = [index for index, p in enumerate(worked) if not p.rationale]
    # a bare number (554), an upstream slip (679: the steps give 5, the answer is 1), 55 / 15 on the way to 220 (997)
    assert without == [554, 679, 997]
    for problem in worked:
        if problem.rationale:
            chain = check_chain(problem.rationale)
            assert chain.checked == problem.rationale.count("\n") + 1 and not chain.wrong, problem
            assert float(problem.rationale.rsplit("= ", 1)[1]) == pytest.approx(float(problem.answer))
    bad = tmp_path / "SVAMP.json"
    bad.write_text(json.dumps([{"Body": "x", "Question": "y", "Equation": "__import__('os')", "Answer": 1.0}]))
    with pytest.raises(DataError, match=r"SVAMP.json\[0\]: field 'Equation' is not plain arithmetic"):
        load_svamp_worked(bad)
