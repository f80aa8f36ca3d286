"""Examples to extract: (question, answer) pairs from ``arith``, a local file or the Hugging Face hub."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from . import arith
from .examples import Example, examples_sha256, make_example
from .labels import label_set

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}  # datasets builders


def load_examples(
    dataset: str,
    split: str = "train",
    *,
    question_field: str = "question",
    answer_field: str = "answer",
    config: str | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> tuple[list[Example], dict]:
    """Load the examples of ``dataset`` and a JSON-able description of them for the store's fingerprint.

    ``dataset`` is ``"arith"`` (the built-in generator; ``seed`` and ``limit`` set its content, its
    default size is ``arith.SIZES[split]``), a local .json/.jsonl/.parquet/.csv file (one ``"train"``
    split; slices such as ``"train[:90%]"`` work), or a Hugging Face hub id, optionally with its config
    after a colon (``"openai/gsm8k:main"``). ``limit`` keeps the first ``limit`` examples. A dataset
    whose answers are a few label words is a classification task: its description lists them
    under ``"labels"`` (see :mod:`.labels`).
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of examples, not {limit}")
    if dataset == "arith":
        if split not in arith.SPLITS:
            raise DataError(f"arith has splits {', '.join(arith.SPLITS)}, not {split!r}")
        examples = arith.generate(limit or arith.SIZES[split], seed=seed, split=split)
        description = {"dataset": "arith", "split": split, "seed": seed,
                       "params": {"steps": list(arith.STEPS), "max_operand": arith.MAX_OPERAND}}
    else:
        rows, description = _load_rows(dataset, split, config)
        examples = _examples(rows, question_field, answer_field, limit, dataset)
        description |= {"question_field": question_field, "answer_field": answer_field, "limit": limit}
        labels = label_set(e.answer for e in examples)
        if labels:  # a classification task (recorded only then: the fingerprints of other datasets are unchanged)
            description["labels"] = labels
    if not examples:
        raise DataError(f"dataset {dataset!r} split {split!r} has no examples; check the file or split")
    return examples, description | {"n_examples": len(examples), "sha256": examples_sha256(examples)}


def _load_rows(dataset: str, split: str, config: str | None):
    """The ``datasets.Dataset`` of a local file or hub id, and its description."""
    import datasets

    path = Path(dataset)
    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None and path.is_file():  # a file, but of no format we read: not a hub id either
        raise DataError(f"{dataset} is a {path.suffix or 'extension-less'} file; datasets are read from "
                        f"{', '.join(FILE_BUILDERS)} files (or a hub id)")
    if builder:
        if not path.is_file():
            raise DataError(f"no such file: {dataset}")
        if path.stat().st_size == 0:  # datasets fails obscurely on some empty files
            raise DataError(f"could not read {dataset}: it has no examples")
        if builder != "parquet":
            _check_utf8(path)
        try:
            rows = datasets.load_dataset(builder, data_files=str(path), split=split)
        except Exception as error:  # datasets raises many types for unreadable, empty or unsplit files
            message = _first_line(error)
            if "Unknown split" in message:
                message = (f"a single file has only the 'train' split, not {split!r}; "
                           "use 'train' or a slice such as 'train[:90%]'")
            elif "corresponds to no data" in message:
                message = "it has no examples"
            raise DataError(f"could not read {dataset}: {message}") from error
        return rows, {"dataset": dataset, "split": split}

    name, _, suffix_config = dataset.partition(":")
    if config and suffix_config and config != suffix_config:
        raise DataError(f"two configs given for {name}: {suffix_config!r} and {config!r}; pass one")
    config = config or suffix_config or None
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as error:  # offline, unknown id, missing config, unknown split, ...
        raise DataError(f"could not load dataset {dataset!r} from the hub (offline?): {_first_line(error)}; "
                        "pass a local .json/.jsonl/.parquet/.csv file instead") from error
    return rows, {"dataset": name, "config": config, "split": split}


def _examples(rows, question_field: str, answer_field: str, limit: int | None, dataset: str) -> list[Example]:
    """Map the rows' fields to examples; missing columns or empty values are errors."""
    for field in (question_field, answer_field):
        if field not in rows.column_names:
            raise DataError(f"dataset {dataset!r} has no column {field!r}; choose the question and answer "
                            f"fields among its columns: {', '.join(rows.column_names)}")
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    examples = []
    for i, (question, answer) in enumerate(zip(rows[question_field], rows[answer_field], strict=True)):
        if question is None or answer is None:
            missing = question_field if question is None else answer_field
            raise DataError(f"example {i} of {dataset!r} has no {missing}; fix or drop it")
        examples.append(make_example(str(question), str(answer), i))
    return examples


def _check_utf8(path: Path, block: int = 1 << 20) -> None:
    """Text files must be UTF-8: pyarrow would fail deep inside a later conversion otherwise."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as f:
        offset = 0
        while data := f.read(block):
            try:
                decoder.decode(data)
            except UnicodeDecodeError as e:
                raise DataError(f"could not read {path}: it is not UTF-8 text (byte {offset + e.start}); "
                                "convert it to UTF-8") from None
            offset += len(data)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"could not read {path}: it is not UTF-8 text (it ends mid-character)") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
