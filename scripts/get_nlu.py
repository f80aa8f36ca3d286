"""A GLUE-style classification file as the question/answer JSONL that `extract --dataset` reads.

    python scripts/get_nlu.py qnli QNLI/dev.tsv docs/data/qnli.jsonl      # how docs/data/qnli.jsonl was made
    python scripts/get_nlu.py sst2 SST-2/dev.tsv sst2.jsonl --train 600 --test 200

Each row's text columns go into a question that names the choices ("... Choose one: yes, no"),
and its label, mapped to a word, is the answer: a dataset of a few label words, which `extract`
records as a classification task and evaluation scores on the label generated. The rows are
shuffled (``--seed``), rows longer than ``--max-chars`` are dropped (short inputs keep a QLoRA run
cheap), and the first ``--train`` rows are followed by ``--test`` rows that share no text with
them, so ``--train-split 'train[:N]'`` and ``--test-split 'train[N:]'`` read disjoint sets.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import string
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Task:
    """A GLUE task as a question: its text columns in ``prompt`` and its labels as words."""

    prompt: str  # str.format'ed with the row's columns
    labels: dict[str, str]  # the file's label -> the answer word
    label_column: str = "label"

    @property
    def columns(self) -> list[str]:
        return [name for _, name, _, _ in string.Formatter().parse(self.prompt) if name]

    def question(self, row: dict) -> str:
        return self.prompt.format(**row) + "\nChoose one: " + ", ".join(self.labels.values())


TASKS = {
    "qnli": Task("Does the sentence contain the answer to the question?\nThe question: {question}\n"
                 "The sentence: {sentence}", {"entailment": "yes", "not_entailment": "no"}),
    "rte": Task("Does the first text imply the second?\nThe first: {sentence1}\nThe second: {sentence2}",
                {"entailment": "yes", "not_entailment": "no"}),
    "sst2": Task("What is the sentiment of this movie review?\nThe review: {sentence}",
                 {"0": "negative", "1": "positive"}),
}


def read_rows(path: Path) -> list[dict]:
    """The rows of a GLUE .tsv (a header line, tab-separated, no quoting) or a .jsonl file."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def convert(rows: list[dict], task: Task, n_train: int, n_test: int, max_chars: int, seed: int) -> list[dict]:
    """``n_train`` then ``n_test`` examples ({question, answer, split, source_row}); no test row
    shares a text (a question or a sentence) with a training row."""
    missing = [c for c in [*task.columns, task.label_column] if rows and c not in rows[0]]
    if missing:
        raise SystemExit(f"the file has no column {', '.join(missing)}; its columns: {', '.join(rows[0])}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    usable = [i for i in order if str(rows[i][task.label_column]) in task.labels
              and sum(len(str(rows[i][c])) for c in task.columns) <= max_chars]
    train = usable[:n_train]
    seen = {str(rows[i][c]) for i in train for c in task.columns}
    test = [i for i in usable[n_train:] if seen.isdisjoint(str(rows[i][c]) for c in task.columns)][:n_test]
    if len(train) < n_train or len(test) < n_test:
        raise SystemExit(f"only {len(train)} training and {len(test)} test rows fit; lower --train/--test or "
                         "raise --max-chars")
    return [{"question": task.question(rows[i]), "answer": task.labels[str(rows[i][task.label_column])],
             "split": split, "source_row": i}
            for split, chosen in (("train", train), ("test", test)) for i in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("source", type=Path, help="The task's GLUE .tsv (or a .jsonl with the same columns).")
    parser.add_argument("out", type=Path, help="The JSONL to write.")
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--max-chars", type=int, default=300, help="Drop rows whose text columns are longer.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    examples = convert(read_rows(args.source), TASKS[args.task], args.train, args.test, args.max_chars, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    counts = {s: {w: sum(e["split"] == s and e["answer"] == w for e in examples) for w in TASKS[args.task].labels.values()}
              for s in ("train", "test")}
    print(f"wrote {len(examples)} examples to {args.out}: {counts}", file=sys.stderr)


if __name__ == "__main__":
    main()
