import pytest

from extract.provenance import VERSION_ATTR, Provenance
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
