"""scripts/get_nlu.py: GLUE rows as a classification dataset; and the QNLI subset it made."""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

from get_nlu import TASKS, convert, read_rows  # noqa: E402

from extract.tasks.datasets import load_examples  # noqa: E402


def glue_tsv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("index\tquestion\tsentence\tlabel\n" + "".join(f"{i}\t{q}\t{s}\t{l}\n" for i, (q, s, l) in enumerate(rows)))
    return path


def test_convert_names_the_choices_and_keeps_test_rows_apart(tmp_path):
    sentences = [f"Sentence {i} says \"something\"." for i in range(12)]
    rows = [(f"Question {i % 6}?", sentences[i], "entailment" if i % 3 else "not_entailment") for i in range(12)]
    rows.append(("Long?", "x" * 400, "entailment"))  # beyond --max-chars
    rows.append(("Odd?", "A row with an unknown label.", "-"))
    examples = convert(read_rows(glue_tsv(tmp_path / "dev.tsv", rows)), TASKS["qnli"], 4, 2, 300, seed=1)
    train, test = examples[:4], examples[4:]
    assert [e["split"] for e in examples] == ["train"] * 4 + ["test"] * 2
    source = read_rows(tmp_path / "dev.tsv")
    for e in examples:
        row = source[e["source_row"]]
        assert e["question"] == (f"Does the sentence contain the answer to the question?\nThe question: {row['question']}"
                                 f"\nThe sentence: {row['sentence']}\nChoose one: yes, no")
        assert e["answer"] == {"entailment": "yes", "not_entailment": "no"}[row["label"]]
    train_texts = {source[e["source_row"]][c] for e in train for c in ("question", "sentence")}
    assert all(train_texts.isdisjoint({source[e["source_row"]][c] for c in ("question", "sentence")}) for e in test)
    assert convert(source, TASKS["qnli"], 4, 2, 300, seed=1) == examples  # deterministic
    with pytest.raises(SystemExit, match=r"only 4 training and [0-6] test rows fit"):
        convert(source, TASKS["qnli"], 4, 20, 300, seed=1)
    with pytest.raises(SystemExit, match="no column sentence1, sentence2"):
        convert(source, TASKS["rte"], 4, 2, 300, seed=1)


def test_the_qnli_subset_is_a_classification_task_with_disjoint_parts():
    path = REPO / "docs" / "data" / "qnli.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["split"] for r in rows] == ["train"] * 1000 + ["test"] * 200
    assert len({r["source_row"] for r in rows}) == 1200
    _, train = load_examples(str(path), "train[:1000]")
    examples, test = load_examples(str(path), "train[1000:]")
    assert train["labels"] == test["labels"] == ["no", "yes"] and len(examples) == 200
    assert all(e.question.endswith("\nChoose one: yes, no") for e in examples)
