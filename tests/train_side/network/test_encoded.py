import numpy as np
import pytest
import torch

from featurestore import FeatureStore, get_codec
from tests.featurestore import synth
from tests.train_side.tiny_store import write_tiny_store
from train_side.config import DataConfig
from train_side.data import read_batch
from train_side.network.encoded import DECODERS, Encoded, roundtrip
from train_side.training.sweep import configs
from train_side.training.train import Run, RunSpec, backbone_dims


def tiny_run(store: FeatureStore, out) -> Run:
    side, optim = configs({"kind": "ladder", "reduction": 4}, {}, {}, backbone_dims(store))
    return Run.for_store(store, RunSpec.at(out, side, optim), data=DataConfig(), total_steps=10)


@pytest.mark.parametrize("codec", sorted(DECODERS))
def test_torch_decoders_are_bit_identical_to_the_store_codecs(codec):
    tokens = synth.token_table(n_examples=20)
    x = synth.states(tokens, layers=[1])[1]
    codec_ = get_codec(codec)
    parts = codec_.encode(x)
    encoded = Encoded(codec, {name: torch.from_numpy(p) for name, p in parts.items()})
    assert np.array_equal(encoded.decode().numpy(), codec_.decode(parts))


@pytest.mark.parametrize("codec", ["fp32", "fp16", "bf16", "int8", "int8o"])
def test_roundtrip_where_the_states_are_gives_the_stores_bits(codec):
    """Generation on a GPU round-trips hidden states on the device: the bits the host codec gives."""
    x = synth.states(synth.token_table(n_examples=20), layers=[1])[1]
    x[:, 3] *= 300  # massive activations: int8o's outliers
    codec_ = get_codec(codec)
    assert np.array_equal(roundtrip(codec_, torch.from_numpy(x)).numpy(), codec_.roundtrip(x))


def test_an_int8o_batch_stays_encoded_and_trains_exactly_as_its_decoding(tmp_path):
    store = FeatureStore.open(write_tiny_store(tmp_path / "s.zarr", codec="int8o"))
    indices = np.arange(8)
    batch = read_batch(store, indices, layers=store.layers)
    assert all(isinstance(h, Encoded) for h in batch.hidden.values())
    assert batch.hidden[0].parts["codes"].dtype == torch.int8
    padded = store.padded(indices, store.layers)
    decoded = read_batch(store, indices, layers=store.layers)
    decoded.hidden = {k: torch.from_numpy(h) for k, h in padded.hidden.items()}
    assert all(torch.equal(batch.hidden[k].decode(), decoded.hidden[k]) for k in store.layers)

    runs = [tiny_run(store, tmp_path / name) for name in ("encoded", "decoded")]
    for _ in range(3):
        losses = [run.train_step(b) for run, b in zip(runs, (batch, decoded))]
        assert losses[0] == losses[1]
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        assert torch.equal(a, b)
