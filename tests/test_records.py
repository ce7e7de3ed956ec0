import json

import pytest

from rationale_loop.run.records import JsonlRecords, Problem, group_by, read_jsonl, sort_jsonl, write_jsonl_atomic


def test_sort_jsonl_orders_rows_without_changing_them(tmp_path):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"q": q, "i": i, "text": f"{q}-{i} ü"} for q, i in [("b", 1), ("a", 2), ("b", 0), ("a", 0), ("a", 1)]]
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    assert sort_jsonl(source, target, key=lambda r: (r["q"], r["i"])) == 5
    assert [(r["q"], r["i"]) for r in read_jsonl(target)] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    assert sorted(json.dumps(r) for r in read_jsonl(target)) == sorted(json.dumps(r) for r in rows)


def test_group_by_yields_consecutive_runs(tmp_path):
    path = tmp_path / "p.jsonl"
    write_jsonl_atomic(path, [Problem("1", "q", "r", "a"), Problem("1", "q2", "r", "a"), Problem("2", "q", "r", "a")])
    groups = list(group_by(JsonlRecords(path, Problem), "id"))
    assert [[p.question for p in g] for g in groups] == [["q", "q2"], ["q"]]


def test_broken_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "1", "question": "q", "rationale": "", "answer": "1"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        list(JsonlRecords(path, Problem))
    path.write_text('{"id": "1", "question": "q"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field"):
        list(JsonlRecords(path, Problem))


def test_record_errors_count_file_lines_blank_ones_included(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"id": "1", "question": "q", "rationale": "", "answer": "1"}\n\n{"id": "2"}\n')
    with pytest.raises(ValueError, match=r"gaps.jsonl:3: missing field"):
        list(JsonlRecords(path, Problem))
