from featurestore import StoreSpec
from featurestore.fingerprint import fingerprint
from tests.featurestore import synth


def test_fingerprint_ignores_key_order_but_not_values():
    assert fingerprint({"a": 1, "b": {"c": [1, 2]}}) == fingerprint({"b": {"c": [1, 2]}, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_store_fingerprint_covers_everything_that_determines_content():
    tokens = synth.token_table()
    base = synth.spec().fingerprint(tokens)
    assert base == synth.spec().fingerprint(synth.token_table())  # stable across calls
    changed = [
        synth.spec("int8o:max_step=0.05").fingerprint(tokens),
        synth.spec("fp16").fingerprint(tokens),
        synth.spec(layers=(0, 1)).fingerprint(tokens),
        StoreSpec(synth.LAYERS, synth.HIDDEN, "int8o", {"model": {"id": "other"}}).fingerprint(tokens),
        synth.spec().fingerprint(synth.token_table(seed=9)),
    ]
    assert len({base, *changed}) == 6
