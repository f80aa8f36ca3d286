import numpy as np
import pytest

from featurestore import CODECS, CodecError, get_codec
from tests.featurestore.synth import residual_stream

ROWS = residual_stream(2000, np.arange(0, 2000, 100), layer=4)


@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16"])
def test_lossless_codecs_are_bit_exact_on_their_dtype(name):
    codec = get_codec(name)
    x = ROWS.copy()
    if name == "fp16":
        x = x.astype(np.float16).astype(np.float32)
    if name == "bf16":  # values a bf16 model produces: the low 16 bits are zero
        x = (x.view(np.uint32) & 0xFFFF0000).view(np.float32)
    assert np.array_equal(codec.roundtrip(x).view(np.uint32), x.view(np.uint32))


def test_bf16_rounds_to_nearest_even():
    one = np.float32(1.0).view(np.uint32)
    halfway_even = np.array([one + 0x8000], np.uint32).view(np.float32)  # ties to 1.0 (even)
    halfway_odd = np.array([one + 0x18000], np.uint32).view(np.float32)  # ties up to 1 + 2^-6
    above = np.array([one + 0x8001], np.uint32).view(np.float32)
    got = get_codec("bf16").roundtrip(np.stack([halfway_even, halfway_odd, above], axis=1))[0]
    assert got.tolist() == [1.0, 1.0 + 2**-6, 1.0 + 2**-7]


def test_int8o_error_bound_holds_for_every_token_despite_massive_activations():
    codec = get_codec("int8o")
    y = codec.roundtrip(ROWS)
    per_token = np.linalg.norm(ROWS - y, axis=1) / np.linalg.norm(ROWS, axis=1)
    assert per_token.max() <= codec.max_step / np.sqrt(12) * 1.05  # 2.0% by construction
    massive = np.arange(0, 2000, 100)
    assert np.allclose(y[massive, 3], ROWS[massive, 3], rtol=2**-11, atol=0)  # outliers: float16 precision
    assert np.linalg.norm(ROWS - y) / np.linalg.norm(ROWS) < 0.01


def test_naive_int8_meets_its_elementwise_bound_but_loses_ordinary_channels():
    codec = get_codec("int8")
    y = codec.roundtrip(ROWS)
    bound = np.abs(ROWS).max(axis=1, keepdims=True) / 254
    assert (np.abs(ROWS - y) <= bound * (1 + 1e-5)).all()
    per_token = np.linalg.norm(ROWS - y, axis=1) / np.linalg.norm(ROWS, axis=1)
    int8o = get_codec("int8o").roundtrip(ROWS)
    per_token_o = np.linalg.norm(ROWS - int8o, axis=1) / np.linalg.norm(ROWS, axis=1)
    assert per_token.mean() > 2 * per_token_o.mean()  # why int8o exists


@pytest.mark.parametrize("name", sorted(CODECS))
def test_codecs_are_row_independent(name):
    """Encoding a block equals encoding its tokens one by one: the basis of resume and parity."""
    codec = get_codec(name)
    block = codec.roundtrip(ROWS[:50])
    single = np.concatenate([codec.roundtrip(ROWS[i : i + 1]) for i in range(50)])
    assert np.array_equal(block, single)


def test_int8o_handles_zero_rows_and_tiny_widths():
    codec = get_codec("int8o:outliers=2")
    x = np.zeros((3, 4), np.float32)
    x[1] = [1, -2, 3, -4]
    y = codec.roundtrip(x)
    assert np.array_equal(y[[0, 2]], x[[0, 2]])
    assert np.allclose(y[1, 2:], [3, -4], rtol=2**-11, atol=0)  # the two outliers
    assert np.linalg.norm(y[1] - x[1]) / np.linalg.norm(x[1]) <= codec.max_step / np.sqrt(12)


def test_registry_errors_list_valid_names_and_parse_params():
    with pytest.raises(CodecError, match="valid codecs: fp32, fp16, bf16, int8, int8o"):
        get_codec("zfp")
    codec = get_codec("int8o:outliers=2,max_step=0.05")
    assert codec.params == {"outliers": 2, "step": 0.12, "max_step": 0.05}
    assert get_codec(codec.spec).params == codec.params
    with pytest.raises(CodecError, match="bad parameters"):
        get_codec("fp16:level=3")
