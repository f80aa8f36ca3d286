"""The torch encoders (extract.encode) give the numpy codecs' exact bits: on CPU torch here, on
CUDA in scripts/device_check.py."""

import numpy as np
import pytest
import torch

from extract.encode import encode_rows, to_host
from featurestore import CODECS, get_codec
from tests.featurestore.synth import residual_stream


def _awkward_rows() -> np.ndarray:
    """Massive activations, zero rows, ties, tiny values, bf16 rounding ties."""
    x = residual_stream(300, np.arange(0, 300, 37), layer=4).astype(np.float32)
    x[5] = 0
    x[6] = -0.0
    x[7, :] = 1.0  # every column ties
    x[8, [3, 9, 11]] = 500.0  # tied outliers
    x[9] *= 1e-30  # squares underflow to zero
    x[10] = np.full(x.shape[1], 0x3F808000, np.uint32).view(np.float32)
    return x


SPECS = sorted(CODECS) + ["int8o:outliers=0", "int8o:outliers=1", "int8o:outliers=7,step=0.05"]


@pytest.mark.parametrize("spec", SPECS)
def test_torch_encoder_gives_the_numpy_codecs_bits(spec):
    codec = get_codec(spec)
    x = _awkward_rows()
    if spec.startswith("fp16"):
        x = np.clip(x, -60000, 60000)
    parts, absmax, energy = codec.encode_rows(x.copy())
    host = to_host(codec, {0: torch.from_numpy(x.copy())})
    host.wait()
    got_parts, got_absmax, got_energy = host.encoded[0]
    assert set(got_parts) == set(parts)
    for name, want in parts.items():
        got = got_parts[name]
        assert got.dtype == np.dtype(codec.parts()[name].dtype) and got.shape == want.shape, name
        assert got.tobytes() == want.astype(got.dtype).tobytes(), name
    assert got_absmax.dtype == np.float32 and got_absmax.tobytes() == absmax.tobytes()
    assert got_energy.dtype == np.float64 and got_energy.tobytes() == energy.tobytes()


@pytest.mark.parametrize("width", [1, 2, 3, 5, 576])
def test_row_sums_and_maxima_match_for_any_width(width):
    codec = get_codec("int8o:outliers=2")
    x = np.random.default_rng(width).standard_normal((64, width)).astype(np.float32) * 3
    parts, absmax, energy = codec.encode_rows(x.copy())
    got_parts, got_absmax, got_energy = encode_rows(codec, torch.from_numpy(x.copy()))
    assert got_energy.numpy().tobytes() == energy.tobytes()
    assert got_absmax.numpy().tobytes() == absmax.tobytes()
    assert got_parts["codes"].numpy().tobytes() == parts["codes"].tobytes()


def test_stats_are_the_true_row_statistics():
    x = _awkward_rows()
    for spec in ("fp32", "int8o"):
        _, absmax, energy = get_codec(spec).encode_rows(x.copy())
        assert np.array_equal(absmax, np.abs(x).max(axis=1))
        assert np.allclose(energy, (x.astype(np.float64) ** 2).sum(axis=1), rtol=1e-5)


@pytest.mark.parametrize("codec", ["int8o", "bf16"])
def test_stores_encoded_on_the_device_are_byte_identical(tmp_path, tiny_models, codec):
    """The CUDA path of extract_batches (encode where the backbone ran, copy only the codes), run
    on CPU torch: every chunk, manifest and stat equals the numpy path's."""
    from extract.run import extract
    from featurestore import FeatureStore, verify

    stores = {}
    for where in ("host", "device"):
        result = extract(str(tiny_models["llama"]), limit=24, root=tmp_path / where, codec=codec, token_budget=300,
                         chunk_mb=0.01, encode=where, progress=False)
        stores[where] = result.store
        assert verify(result.store) == []
    host, device = stores["host"], stores["device"]
    files = sorted(p.relative_to(host) for p in host.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(device) for p in device.rglob("*") if p.is_file())
    assert len([f for f in files if f.parts[0] == "layers"]) > 20  # several shards of every layer
    for f in files:
        if f.name == "zarr.json" and len(f.parts) == 1:
            continue  # the root's attributes hold timestamps
        assert (host / f).read_bytes() == (device / f).read_bytes(), f
    a, b = FeatureStore.open(host).attrs, FeatureStore.open(device).attrs
    assert a["stats"]["layers"] == b["stats"]["layers"]
