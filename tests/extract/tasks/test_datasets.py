import json

import datasets
import pytest

from extract.tasks import arith
from extract.errors import DataError
from extract.tasks.answers import final_answer, last_number
from extract.tasks.datasets import load_examples
from extract.tasks.examples import Example, make_example

ROWS = [
    {"question": "Tom has 3 cats and gets 2 more. How many?", "answer": "3 + 2 = 5.\n#### 5"},
    {"question": "A shop sells 1200 pens and 34 more.", "answer": "1200 + 34 = 1234.\n#### 1,234"},
    {"question": "Is the sky blue?", "answer": " yes "},
]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Keep the datasets library's cache of loaded files out of the user's home."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def write(path, rows):
    """Write ``rows`` in the format named by ``path``'s suffix; return the path as a str."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        table = datasets.Dataset.from_list(rows)
        table.to_csv(path, index=False) if path.suffix == ".csv" else table.to_parquet(path)
    return str(path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3 + 2 = 5.\n#### 5", "5"),
        ("#### 1,234", "1234"),
        ("#### 1,234,567 apples", "1234567"),
        ("She owes 3.\n#### -7", "-7"),
        ("#### 3.75", "3.75"),
        ("#### $12", "12"),
        ("The answer is 14.\n#### 14.", "14"),
        ("#### 5\nQuestion: next one\n#### 9", "5"),
        ("no final line, just 42", None),
        ("#### none", None),
    ],
)
def test_final_answer(text, expected):
    assert final_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("17 - 3 = 14. So she has 14 apples.", "14"),
        ("10-5=5", "5"),
        ("the total is -3.", "-3"),
        ("about 1,234,567 then 2.5 more", "2.5"),
        ("pairs 5,6", "6"),
        ("no digits here", None),
    ],
)
def test_last_number(text, expected):
    assert last_number(text) == expected


def test_make_example_final_is_the_gsm8k_number_or_the_label():
    assert make_example("q", "1000 + 234 = 1234.\n#### 1,234", 7).meta == {"id": 7, "final": "1234"}
    assert make_example("q", "  positive\n", 0).meta["final"] == "positive"


def test_arith_examples_and_description():
    examples, description = load_examples("arith", "test", seed=3, limit=25)
    assert examples == arith.generate(25, seed=3, split="test")
    assert description["n_examples"] == 25 and description["split"] == "test" and description["seed"] == 3
    assert json.loads(json.dumps(description)) == description
    assert load_examples("arith", "test", seed=3, limit=25)[1] == description
    assert load_examples("arith", "test", seed=4, limit=25)[1]["sha256"] != description["sha256"]
    assert len(load_examples("arith", "test")[0]) == arith.SIZES["test"]
    with pytest.raises(DataError, match="splits train, test"):
        load_examples("arith", "validation")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_local_files(tmp_path, suffix):
    path = write(tmp_path / f"data{suffix}", ROWS)
    examples, description = load_examples(path)
    assert [(e.question, e.answer) for e in examples] == [(r["question"], r["answer"]) for r in ROWS]
    assert [e.meta for e in examples] == [{"id": 0, "final": "5"}, {"id": 1, "final": "1234"},
                                          {"id": 2, "final": "yes"}]
    reference = load_examples(write(tmp_path / "reference.jsonl", ROWS))[1]
    assert description["sha256"] == reference["sha256"], "the content fingerprint ignores the file format"
    assert description["n_examples"] == 3 and description["dataset"] == path
    assert json.loads(json.dumps(description)) == description


def test_field_mapping_limit_and_labels(tmp_path):
    rows = [{"problem": f"Is {i} even?", "label": i % 2 == 0, "other": i} for i in range(10)]
    path = write(tmp_path / "labels.csv", rows)
    examples, description = load_examples(path, question_field="problem", answer_field="label", limit=4)
    assert [e.answer for e in examples] == ["True", "False", "True", "False"]
    assert [e.meta["final"] for e in examples] == ["True", "False", "True", "False"]
    assert description["question_field"] == "problem" and description["n_examples"] == 4
    assert description["labels"] == ["False", "True"]  # a classification task, recorded as one


def test_only_a_classification_task_records_labels(tmp_path):
    assert "labels" not in load_examples(write(tmp_path / "data.jsonl", ROWS * 4))[1]  # worked answers
    one_each = [{"question": f"Capital {i}?", "answer": city} for i, city in enumerate(["Paris", "Rome", "Oslo"])]
    assert "labels" not in load_examples(write(tmp_path / "qa.jsonl", one_each))[1]  # answers that never repeat
    assert "labels" not in load_examples("arith", limit=4)[1]


def test_split_slices_and_missing_splits(tmp_path):
    path = write(tmp_path / "data.jsonl", ROWS * 4)
    assert len(load_examples(path, "train[:50%]")[0]) == 6
    with pytest.raises(DataError, match=r"only the 'train' split.*train\[:90%\]"):
        load_examples(path, "test")


def test_missing_field_lists_the_columns(tmp_path):
    path = write(tmp_path / "data.jsonl", [{"problem": "q", "solution": "#### 1"}])
    with pytest.raises(DataError, match="no column 'question'; .* its columns: problem, solution"):
        load_examples(path)
    with pytest.raises(DataError, match="no column 'answer'"):
        load_examples(path, question_field="problem")


def test_empty_dataset_and_bad_input(tmp_path):
    (tmp_path / "empty.csv").write_text("question,answer\n")
    (tmp_path / "empty.jsonl").write_text("")
    for empty in ("empty.csv", "empty.jsonl"):
        with pytest.raises(DataError, match="no examples"):
            load_examples(str(tmp_path / empty))
    with pytest.raises(DataError, match="no examples"):
        load_examples(write(tmp_path / "data.jsonl", ROWS), "train[:0%]")
    with pytest.raises(DataError, match="no such file"):
        load_examples(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="positive"):
        load_examples("arith", limit=0)
    with pytest.raises(DataError, match="has no answer"):
        load_examples(write(tmp_path / "holes.jsonl", [{"question": "q", "answer": None}]))
    (tmp_path / "notes.txt").write_text("What is 2 + 2?\n")
    with pytest.raises(DataError, match=r"notes.txt is a .txt file; datasets are read from .json, .jsonl"):
        load_examples(str(tmp_path / "notes.txt"))  # named as such, not taken for a hub id


def test_hub_ids_fail_clearly_offline():
    offline = r"could not load dataset 'openai/gsm8k:main' from the hub \(offline\?\).*local"
    with pytest.raises(DataError, match=offline):
        load_examples("openai/gsm8k:main", "test")
    with pytest.raises(DataError, match="two configs"):
        load_examples("openai/gsm8k:main", config="socratic")


def test_examples_are_immutable():
    example = Example("q", "a", {"id": 0, "final": "a"})
    with pytest.raises(AttributeError):
        example.answer = "b"
