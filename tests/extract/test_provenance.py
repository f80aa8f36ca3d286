import pytest

from extract.provenance import VERSION_ATTR, DatasetRef, Provenance, Template
from extract.tasks.datasets import load_examples
from featurestore import StoreError

MODEL = {"id": "tiny", "n_layers": 4, "hidden_size": 32, "intermediate_size": 64, "weights_hash": "0" * 64}


def test_provenance_round_trips_through_store_attributes():
    provenance = Provenance(model=MODEL, dataset={"dataset": "arith", "split": "train"},
                            template={"name": "plain"}, max_length=512, long_examples="truncate")
    attrs = {"fingerprint": "f", "complete": True, **provenance.source(), **Provenance.version_attrs()}
    assert Provenance.load(attrs) == provenance
    assert "tokenizer" not in provenance.source()  # unset fields are left out, so old fingerprints hold
    assert provenance.backbone_sizes == {"n_layers": 4, "hidden_size": 32, "intermediate_size": 64}


def test_provenance_refuses_what_it_cannot_vouch_for():
    with pytest.raises(StoreError, match="which backbone"):
        Provenance.load({"dataset": {}})
    with pytest.raises(StoreError, match="upgrade"):
        Provenance.load({"model": MODEL, VERSION_ATTR: 99})
    with pytest.raises(StoreError, match="intermediate_size"):
        _ = Provenance(model={"n_layers": 2, "hidden_size": 8}, dataset={}).backbone_sizes


def test_typed_parts_give_back_exactly_the_json_they_were_read_from():
    """A hub dataset records its config and limit as null, and a part may hold keys it does not
    type: the source, and so the fingerprint, of a store read back is the one it was written with."""
    source = {"model": MODEL | {"rope_scaling": {"type": "linear"}},
              "dataset": {"dataset": "org/data", "config": None, "split": "train", "question_field": "problem",
                          "answer_field": "label", "limit": None, "n_examples": 4, "sha256": "ab"},
              "template": {"name": "chat", "chat_template_sha256": "cd"}, "token_budget": 4096}
    provenance = Provenance.load(source)
    assert provenance.source() == source
    assert provenance.model.id == "tiny" and provenance.dataset.question_field == "problem"
    assert provenance.dataset.config is None and provenance.template.name == "chat"


def test_a_store_without_a_template_used_the_plain_one():
    provenance = Provenance.load({"model": MODEL, "dataset": {"dataset": "arith"}})
    assert provenance.template == Template() and provenance.template.name == "plain"


def test_a_dataset_reference_loads_with_its_recorded_fields(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(f'{{"problem": "q{i}", "label": "#### {i}"}}\n' for i in range(5)))
    _, description = load_examples(str(path), question_field="problem", answer_field="label")
    examples = DatasetRef.from_json(description).load("train", limit=2)
    assert [e.question for e in examples] == ["q0", "q1"] and examples[1].meta["final"] == "1"
    assert [e.question for e in DatasetRef(dataset="arith", seed=3).load("test", 2)] == \
        [e.question for e in load_examples("arith", "test", seed=3, limit=2)[0]]
    with pytest.raises(StoreError, match="which dataset"):
        DatasetRef().load("test")


def test_a_classification_dataset_records_its_labels(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(f'{{"question": "Is {i} even?", "answer": "{"no" if i % 2 else "yes"}"}}\n' for i in range(6)))
    reference = DatasetRef.from_json(load_examples(str(path))[1])
    assert reference.labels == ["no", "yes"] and reference.to_json()["labels"] == ["no", "yes"]
    assert DatasetRef.from_json({"dataset": "arith"}).labels is None
