"""JSONL question files: rows load in order; every malformed row is reported as file:line with the reason."""

import pytest

from ibtpo.data import DataError, load_jsonl_questions


def test_rows_load_with_ids(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"id": "a", "prompt": "Q:1+2+3\\n\\n", "answer": 6}\n\n{"prompt": "Q:4+5\\n\\n", "answer": "9"}\n')
    qs = load_jsonl_questions(f)
    assert [(q.id, q.answer) for q in qs] == [("a", "6"), ("line-3", "9")]


@pytest.mark.parametrize("body, where, reason", [
    ('{"prompt": "p", "answer": 1}\n{"prompt": "p",\n', ":2:", "not valid JSON"),
    ('{"prompt": "p", "answer": 1}\n[1, 2]\n', ":2:", "expected a JSON object"),
    ('{"question": "p", "answer": 1}\n', ":1:", "missing field 'prompt' (fields: answer, question)"),
    ('\n{"prompt": "", "answer": 1}\n', ":2:", "'prompt' must be a non-empty string"),
    ('\n\n', "", "no questions"),
])
def test_bad_rows_name_file_and_line(tmp_path, body, where, reason):
    f = tmp_path / "bad.jsonl"
    f.write_text(body)
    with pytest.raises(DataError) as err:
        load_jsonl_questions(f)
    msg = str(err.value)
    assert msg.startswith(str(f) + where) and reason in msg and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        load_jsonl_questions(tmp_path / "nope.jsonl")
