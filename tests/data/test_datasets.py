"""Question files: JSONL/JSON/parquet/saved-datasets rows in the DAPO, MATH-500, AIME, GSM8K or plain-column layouts.

Rows load in order; every malformed row is reported as ``location: reason`` (or skipped and listed on request).
"""

import json
from pathlib import Path

import pytest

from ibtpo.data.datasets import DataError, LoadedDataset, Question, load_questions
from ibtpo.data.layouts import LAYOUTS, Columns, RowError, detect_layout


# --- load_questions: math datasets in known layouts ------------------------------------------------------------

FIXTURES = Path(__file__).parents[1] / "fixtures" / "math"
ACCEPTED = "accepted: .jsonl, .json, .parquet, or a directory written by datasets save_to_disk"
BOXED = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{}."


def fixture_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines() if line.strip()]


def as_tuples(loaded):
    return [(q.id, q.prompt, q.answer, q.columns) for q in loaded.questions]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("name, ids, answers, first_prompt", [
    ("math500", ["fixture/prealgebra/1.json", "fixture/algebra/2.json", "fixture/prealgebra/3.json",
                 "fixture/algebra/4.json", "fixture/counting/5.json"],
     ["\\frac{1}{2}", "7", "24", "3", "\\frac{1}{3}"], "Simplify $\\frac{6}{8} - \\frac{1}{4}$."),
    ("aime", ["fx-aime-1", "fx-aime-2", "fx-aime-3", "aime-3"], ["1", "11", "23", "27"],
     "Find the remainder when $7^{4}$ is divided by $100$."),
    ("gsm8k", ["gsm8k-0", "gsm8k-1", "gsm8k-2", "gsm8k-3"], ["14", "1200", "6", "20"],
     "Mia buys 3 notebooks at $4 each and a pen for $2. How much does she spend?"),
    ("dapo", [f"dapo-fx-{i}" for i in range(1, 6)], ["54", "63", "12", "9", "12"],
     ({"role": "user", "content": "A rectangle has a perimeter of 30 and a length of 9. What is its area?"},)),
])
def test_each_layout_loads_from_jsonl(name, ids, answers, first_prompt):
    loaded = load_questions(FIXTURES / f"{name}.jsonl")
    assert (loaded.name, loaded.layout, loaded.skipped) == (name, name, [])
    assert loaded.path == str(FIXTURES / f"{name}.jsonl")
    assert [q.id for q in loaded.questions] == ids
    assert [q.answer for q in loaded.questions] == answers
    assert loaded.questions[0].prompt == first_prompt
    assert load_questions(FIXTURES / f"{name}.jsonl", layout=name).questions == loaded.questions


def test_layouts_keep_the_other_columns():
    dapo = load_questions(FIXTURES / "dapo.jsonl").questions[1]
    assert dapo.prompt == ({"role": "system", "content": "You are a careful mathematician."},
                           {"role": "user", "content": "Find the sum of all integers n with 1 <= n <= 20 that are "
                                                       "divisible by 3."})
    assert dapo.columns == {"data_source": "fixture_dapo", "ability": "MATH", "extra_info": {"index": "dapo-fx-2"}}
    math = load_questions(FIXTURES / "math500.jsonl").questions[4]
    assert (math.columns["subject"], math.columns["level"]) == ("Counting & Probability", 2)
    assert set(math.columns) == {"solution", "subject", "level"}
    assert load_questions(FIXTURES / "aime.jsonl").questions[0].columns == {}


def to_json(rows, tmp_path, name):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(rows))
    return path


def to_parquet(rows, tmp_path, name):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / f"{name}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def to_saved_dataset(rows, tmp_path, name):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / name
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("convert", [to_json, to_parquet, to_saved_dataset])
@pytest.mark.parametrize("name", ["dapo", "math500", "aime", "gsm8k"])
def test_other_formats_load_identically(tmp_path, convert, name):
    expected = load_questions(FIXTURES / f"{name}.jsonl")
    loaded = load_questions(convert(fixture_rows(name), tmp_path, name))
    assert (loaded.name, loaded.layout) == (name, name)
    assert as_tuples(loaded) == as_tuples(expected)
    assert all(isinstance(q.prompt, (str, tuple)) for q in loaded.questions)
    json.dumps([q.columns for q in loaded.questions])


def test_dataset_dict_split_choice(tmp_path):
    datasets = pytest.importorskip("datasets")
    both = tmp_path / "both"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(fixture_rows("gsm8k")),
                          "test": datasets.Dataset.from_list(fixture_rows("aime"))}).save_to_disk(str(both))
    default = load_questions(both)
    assert (default.name, default.layout, [q.answer for q in default.questions]) == ("both", "aime",
                                                                                     ["1", "11", "23", "27"])
    assert default.questions[3].id == "both-3"
    train = load_questions(both, split="train")
    assert (train.layout, [q.answer for q in train.questions]) == ("gsm8k", ["14", "1200", "6", "20"])
    with pytest.raises(DataError) as err:
        load_questions(both, split="train", layout="math500")
    assert str(err.value) == f"{both}[train]:row 1: missing field 'problem' (fields: answer, question)"
    with pytest.raises(DataError) as err:
        load_questions(both, split="validation")
    assert str(err.value) == f"{both}: split 'validation' not found; set split= one of train, test"
    only_val = tmp_path / "only_val"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(fixture_rows("aime"))}).save_to_disk(str(only_val))
    with pytest.raises(DataError) as err:
        load_questions(only_val)
    assert str(err.value) == f"{only_val}: no 'test' or 'train' split; set split= one of validation"


@pytest.mark.parametrize("row, layout", [
    ({"prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": "1"}}, "dapo"),
    ({"question": "q", "answer": "so 2 + 2 = 4\n#### 4"}, "gsm8k"),
    ({"problem": "q", "answer": "7", "unique_id": "u"}, "math500"),
    ({"problem": "q", "answer": "\\frac{1}{2}", "level": 3}, "math500"),
    ({"problem": "q", "answer": 7}, "aime"),
    ({"question": "q", "answer": " 070 "}, "aime"),
    ({"problem": "q", "answer": "\\sqrt{2}"}, "math500"),
    ({"prompt": "q", "answer": "x"}, "columns"),
    ({"question": "q", "answer": "x"}, None),
    ({"text": "q"}, None),
])
def test_detect_layout(row, layout):
    assert detect_layout(row) == layout


def test_auto_detects_each_layout_and_overrides_mean_columns(tmp_path):
    assert {name: load_questions(FIXTURES / f"{name}.jsonl").layout for name in ("dapo", "math500", "aime", "gsm8k")} \
        == {"dapo": "dapo", "math500": "math500", "aime": "aime", "gsm8k": "gsm8k"}
    assert detect_layout({"problem": "q", "answer": 1}, Columns(prompt="problem", answer="answer")) == "columns"
    rows = [{"problem": "no answer yet"}, {"problem": "What is 1+1?", "answer": 2}]
    loaded = load_questions(write_jsonl(tmp_path / "late.jsonl", rows), skip_bad_rows=True)
    assert (loaded.layout, [q.id for q in loaded.questions]) == ("aime", ["late-1"])


def test_unknown_layout_and_undetectable_columns(tmp_path):
    f = write_jsonl(tmp_path / "odd.jsonl", [{"text": "q", "label": 1}, {"text": "r", "label": 2}])
    with pytest.raises(DataError) as err:
        load_questions(f)
    assert str(err.value) == (f"{f}: cannot tell the dataset layout from its columns (label, text); "
                              "set dataset_layout= one of dapo, math500, aime, gsm8k, columns "
                              "(with prompt_column= and answer_column=)")
    with pytest.raises(DataError, match="unknown dataset layout 'mmlu'; use auto or one of dapo, math500"):
        load_questions(f, layout="mmlu")
    assert [(q.prompt, q.answer) for q in load_questions(f, prompt_column="text", answer_column="label").questions] \
        == [("q", "1"), ("r", "2")]


def test_column_overrides(tmp_path):
    rows = [{"q": "What is 3 * 4?", "sol": 12, "key": "k1", "src": "mine"}, {"q": "Half of 9?", "sol": "9/2", "key": 2}]
    loaded = load_questions(write_jsonl(tmp_path / "custom.jsonl", rows), prompt_column="q", answer_column="sol",
                            id_column="key")
    assert loaded.layout == "columns"
    assert as_tuples(loaded) == [("k1", "What is 3 * 4?", "12", {"src": "mine"}), ("2", "Half of 9?", "9/2", {})]
    by_subject = load_questions(FIXTURES / "math500.jsonl", id_column="subject").questions
    assert [q.id for q in by_subject] == ["Prealgebra", "Algebra", "Prealgebra#2", "Algebra#2",
                                          "Counting & Probability"]
    assert by_subject[0].columns["unique_id"] == "fixture/prealgebra/1.json"
    subjects = load_questions(FIXTURES / "math500.jsonl", layout="math500", answer_column="subject").questions
    assert [q.answer for q in subjects][:2] == ["Prealgebra", "Algebra"]
    dapo = load_questions(FIXTURES / "dapo.jsonl", id_column="data_source").questions
    assert [q.id for q in dapo][:3] == ["fixture_dapo", "fixture_dapo#2", "fixture_dapo#3"]


def test_duplicate_ids_get_suffixes(tmp_path):
    rows = [{"id": "a", "problem": "1+1?", "answer": 2}, {"id": "a", "problem": "2+2?", "answer": 4},
            {"id": "a#2", "problem": "3+3?", "answer": 6}, {"id": "a", "problem": "4+4?", "answer": 8}]
    qs = load_questions(write_jsonl(tmp_path / "dup.jsonl", rows)).questions
    assert [(q.id, q.answer) for q in qs] == [("a", "2"), ("a#2", "4"), ("a#2#2", "6"), ("a#3", "8")]


def test_prompt_template_on_strings_and_messages():
    math = load_questions(FIXTURES / "math500.jsonl", prompt_template=BOXED).questions[1]
    assert math.prompt == ("What is the positive solution of $x^2 = 49$?\n"
                           "Please reason step by step, and put your final answer within \\boxed{}.")
    dapo = load_questions(FIXTURES / "dapo.jsonl", prompt_template="Q: {prompt} {x}").questions
    assert dapo[1].prompt[0] == {"role": "system", "content": "You are a careful mathematician."}
    assert dapo[1].prompt[1]["content"] == ("Q: Find the sum of all integers n with 1 <= n <= 20 that are divisible "
                                            "by 3. {x}")
    assert load_questions(FIXTURES / "dapo.jsonl").questions[1].prompt[1]["content"].startswith("Find the sum")
    with pytest.raises(DataError) as err:
        load_questions(FIXTURES / "dapo.jsonl", prompt_template="Solve: \\boxed{}")
    assert str(err.value) == "prompt_template 'Solve: \\\\boxed{}' has no {prompt} placeholder and is not a preset (boxed, answer_line)"


def test_template_needs_a_user_message(tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "be brief"}], "reward_model": {"ground_truth": "1"}}]
    f = write_jsonl(tmp_path / "sys.jsonl", rows)
    assert load_questions(f).questions[0].prompt == ({"role": "system", "content": "be brief"},)
    with pytest.raises(DataError, match=r"sys.jsonl:1: chat prompt has no user message for prompt_template$"):
        load_questions(f, prompt_template="{prompt}!")


BAD = str(FIXTURES / "bad_rows.jsonl")
BAD_SKIPPED = [f"{BAD}:2: missing field 'answer' (fields: level, problem, unique_id)",
               f"{BAD}:3: not valid JSON (Expecting value)",
               f"{BAD}:6: expected a JSON object, got list",
               f"{BAD}:7: field 'problem' must be a non-empty string",
               f"{BAD}:8: field 'answer' is empty (null)"]


def test_bad_rows_fail_at_the_first_by_default():
    with pytest.raises(DataError) as err:
        load_questions(BAD)
    assert str(err.value) == BAD_SKIPPED[0]


def test_skip_bad_rows_keeps_the_good_ones():
    loaded = load_questions(BAD, skip_bad_rows=True)
    assert loaded.skipped == BAD_SKIPPED
    assert [(q.id, q.answer) for q in loaded.questions] == [("bad/1", "30"), ("bad/4", "\\frac{1}{2}"),
                                                            ("bad/8", "7")]


@pytest.mark.parametrize("row, reason", [
    ({"prompt": "hi", "reward_model": {"ground_truth": "1"}}, None),
    ({"prompt": [{"role": "user"}], "reward_model": {"ground_truth": "1"}},
     "field 'prompt': expected chat messages [{role, content}, ...]"),
    ({"prompt": [], "reward_model": {"ground_truth": "1"}},
     "field 'prompt': expected chat messages [{role, content}, ...]"),
    ({"prompt": 5, "reward_model": {"ground_truth": "1"}}, "field 'prompt' must be a non-empty string"),
    ({"prompt": [{"role": "user", "content": "q"}], "reward_model": {"style": "rule"}},
     "field 'reward_model' has no 'ground_truth' (keys: style)"),
    ({"prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": " "}},
     "field 'reward_model.ground_truth' is empty"),
])
def test_dapo_row_reasons(row, reason):
    if reason is None:
        assert LAYOUTS["dapo"](row, Columns()).prompt == "hi"
        return
    with pytest.raises(RowError) as err:
        LAYOUTS["dapo"](row, Columns())
    assert str(err.value) == reason


def test_dapo_accepts_numpy_messages():
    np = pytest.importorskip("numpy")
    row = {"prompt": np.array([{"role": "user", "content": "q", "name": None}], dtype=object),
           "reward_model": {"ground_truth": 3.0}, "extra_info": {"index": 17}}
    parsed = LAYOUTS["dapo"](row, Columns())
    assert (parsed.prompt, parsed.answer, parsed.id) == (({"role": "user", "content": "q"},), "3", "17")


def test_gsm8k_without_marker_is_a_bad_row(tmp_path):
    rows = fixture_rows("gsm8k")[:2] + [{"question": "How many?", "answer": "Three, I think."}]
    f = write_jsonl(tmp_path / "g.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_questions(f, layout="gsm8k")
    assert str(err.value) == f"{f}:3: field 'answer' has no '#### <answer>' line (GSM8K layout)"
    assert [q.answer for q in load_questions(f, skip_bad_rows=True).questions] == ["14", "1200"]


def test_no_questions_messages(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty.jsonl: no questions \(empty file\)$"):
        load_questions(empty)
    allbad = write_jsonl(tmp_path / "allbad.jsonl", [{"problem": "", "answer": 1, "level": 1}])
    with pytest.raises(DataError) as err:
        load_questions(allbad, skip_bad_rows=True)
    assert str(err.value) == (f"{allbad}: no questions (all 1 rows skipped; first: {allbad}:1: field 'problem' "
                              "must be a non-empty string)")


def test_json_rows_are_located_by_row_number(tmp_path):
    f = tmp_path / "set.json"
    f.write_text(json.dumps([{"problem": "1+1?", "answer": 2}, ["x"], {"problem": "2+3?", "answer": None}]))
    loaded = load_questions(f, skip_bad_rows=True)
    assert loaded.skipped == [f"{f}:row 2: expected a JSON object, got list",
                              f"{f}:row 3: field 'answer' is empty (null)"]
    assert [q.id for q in loaded.questions] == ["set-0"]
    f.write_text('{"problem": "1+1?"}')
    with pytest.raises(DataError, match=r"set.json: expected a JSON list of objects, got dict$"):
        load_questions(f)


def test_missing_path_and_unknown_extension(tmp_path):
    with pytest.raises(DataError) as err:
        load_questions(tmp_path / "nope.parquet")
    assert str(err.value) == f"dataset file not found: {tmp_path / 'nope.parquet'} ({ACCEPTED})"
    csv = tmp_path / "rows.csv"
    csv.write_text("problem,answer\n1+1,2\n")
    with pytest.raises(DataError) as err:
        load_questions(csv)
    assert str(err.value) == f"{csv}: unknown dataset file type '.csv' ({ACCEPTED})"
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match=r"not a directory written by datasets save_to_disk \("):
        load_questions(tmp_path)


def test_question_shape():
    q = Question("a", "p", "1")
    assert q.columns == {} and q == Question("a", "p", "1", {"x": 1}) and hash(q) == hash(Question("a", "p", "1"))
    loaded = load_questions(FIXTURES / "aime.jsonl")
    assert isinstance(loaded, LoadedDataset) and len(loaded.questions) == 4
