"""Update codecs: wire sizes by hand, golden payloads, error bounds, unbiasedness, error feedback."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest

from fedray.compression import (
    CODECS,
    CodecOptionError,
    encode_with_feedback,
    make_codec,
)
from fedray.errors import ConfigError

# Four tensors, one of them empty (a parameterless layer still gets its scale slot).
SEGMENTS = (600, 0, 360, 40)
D = sum(SEGMENTS)  # 1000


def vector(seed: int = 0, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(d).astype(np.float32)


def blocks(x: np.ndarray, sizes) -> list[np.ndarray]:
    return np.split(x, np.cumsum(sizes)[:-1])


ALL_SPECS = [
    {"name": "none"},
    {"name": "fp16"},
    {"name": "bf16"},
    {"name": "int8"},
    {"name": "int8", "chunk_size": 64},
    {"name": "qsgd"},
    {"name": "qsgd", "levels": 1, "bucket_size": 128},
    {"name": "topk", "fraction": 0.01},
    {"name": "topk", "k": 7, "error_feedback": True},
    {"name": "randk", "k": 10},
    {"name": "signsgd"},
    {"name": "signsgd", "error_feedback": True},
]


def spec_id(spec: dict) -> str:
    return "-".join(f"{v}" for v in spec.values())


# --------------------------------------------------------------------------- byte counts

# d = 1000 values in T = 4 tensors; every payload starts with a 1-byte codec id.
BYTE_COUNTS = [
    ({"name": "none"}, 1 + 4 * 1000),  # float32 each
    ({"name": "fp16"}, 1 + 2 * 1000),
    ({"name": "bf16"}, 1 + 2 * 1000),
    ({"name": "int8"}, 1 + 4 * 4 + 1000),  # a float32 scale per tensor + an int8 per value
    ({"name": "int8", "chunk_size": 64}, 1 + 4 * 16 + 1000),  # ceil(1000 / 64) = 16 chunks
    # s = 15: ceil(log2 16) = 4 level bits + 1 sign bit = 5 bits; 5000 bits = 625 bytes
    ({"name": "qsgd", "levels": 15}, 1 + 4 * 4 + 625),
    # s = 16: ceil(log2 17) = 5 + 1 = 6 bits; 6000 bits = 750 bytes
    ({"name": "qsgd", "levels": 16}, 1 + 4 * 4 + 750),
    # s = 1: 1 + 1 = 2 bits; 8 buckets of <= 128 values; 2000 bits = 250 bytes
    ({"name": "qsgd", "levels": 1, "bucket_size": 128}, 1 + 4 * 8 + 250),
    ({"name": "topk", "fraction": 0.01}, 1 + 10 * 2 + 10 * 4),  # k = 10, uint16 indices
    ({"name": "topk", "k": 7, "error_feedback": True}, 1 + 7 * 2 + 7 * 4),
    ({"name": "randk", "k": 10}, 1 + 8 + 10 * 4),  # the 8-byte seed instead of indices
    ({"name": "signsgd"}, 1 + 4 * 4 + 125),  # 1000 sign bits = 125 bytes
]


@pytest.mark.parametrize(("spec", "expected"), BYTE_COUNTS, ids=lambda v: str(v))
def test_payload_size_matches_the_documented_format(spec, expected):
    codec = make_codec(spec)
    payload = codec.encode(vector(), SEGMENTS, np.random.default_rng(0))
    assert isinstance(payload, bytes)
    assert len(payload) == expected


def test_topk_switches_to_uint32_indices_past_65536_values():
    d = 70_000
    codec = make_codec({"name": "topk", "k": 10})
    assert len(codec.encode(vector(d=d), (d,), None)) == 1 + 10 * 4 + 10 * 4
    assert len(codec.encode(vector(d=2**16), (2**16,), None)) == 1 + 10 * 2 + 10 * 4


def test_qsgd_bits_per_value_pack_without_byte_padding_per_value():
    codec = make_codec({"name": "qsgd", "levels": 3})  # 2 level bits + sign = 3 bits
    x = vector(d=13)
    payload = codec.encode(x, (13,), np.random.default_rng(0))
    assert len(payload) == 1 + 4 + 5  # 39 bits -> 5 bytes
    assert codec.decode(payload, (13,)).shape == (13,)


# --------------------------------------------------------------------------- golden payloads


def test_topk_golden_payload():
    codec = make_codec({"name": "topk", "k": 2})
    x = np.array([0.5, -5.0, 3.0, 0.25, -4.0], np.float32)
    payload = codec.encode(x, (2, 3), None)
    assert payload == bytes([5]) + struct.pack("<2H2f", 1, 4, -5.0, -4.0)
    np.testing.assert_array_equal(codec.decode(payload, (2, 3)), [0, -5, 0, 0, -4])


def test_signsgd_golden_payload():
    codec = make_codec({"name": "signsgd"})
    x = np.array([1.0, -3.0, 0.0, 2.0, -4.0], np.float32)  # means of |v|: 2 and 2
    payload = codec.encode(x, (2, 3), None)
    assert payload == bytes([7]) + struct.pack("<2f", 2.0, 2.0) + bytes([0b01001000])
    np.testing.assert_array_equal(codec.decode(payload, (2, 3)), [2, -2, 2, 2, -2])


def test_int8_golden_payload_rounds_half_to_even():
    codec = make_codec({"name": "int8"})
    x = np.array([127.0, -63.5, 2.5, 0.0, 0.0, 0.0], np.float32)  # scale = 127 / 127 = 1
    payload = codec.encode(x, (4, 2), None)
    q = np.array([127, -64, 2, 0, 0, 0], np.int8)
    assert payload == bytes([3]) + struct.pack("<2f", 1.0, 0.0) + q.tobytes()
    np.testing.assert_array_equal(codec.decode(payload, (4, 2)), q.astype(np.float32))


def test_bf16_golden_bit_patterns_round_to_nearest_even():
    bits = np.array(
        [0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7FFFFF, 0x7FC00001, 0xFF800001],
        dtype=np.uint32,
    )
    codec = make_codec("bf16")
    out = codec.decode(codec.encode(bits.view(np.float32), (7,), None), (7,))
    got = out.view(np.uint32) >> 16
    # tie, even kept -> stays; tie, odd -> up; above the tie -> up; below -> down;
    # max float32 -> inf; NaNs stay NaN (a payload in the dropped half must not become inf)
    np.testing.assert_array_equal(got[:5], [0x3F80, 0x3F82, 0x3F81, 0x3F80, 0x7F80])
    assert np.isnan(out[5:]).all()


def test_bf16_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.concatenate([vector(), vector(1) * 1e-30, vector(2) * 1e30])
    codec = make_codec("bf16")
    ours = codec.decode(codec.encode(x, (len(x),), None), (len(x),))
    theirs = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_randk_payload_carries_its_own_seed():
    codec = make_codec({"name": "randk", "k": 10})
    x = vector()
    payload = codec.encode(x, SEGMENTS, np.random.default_rng(3))
    decoded = codec.decode(payload, SEGMENTS)  # no rng: the indices come from the payload
    kept = np.flatnonzero(decoded)
    assert len(kept) == 10
    np.testing.assert_allclose(decoded[kept], x[kept] * (D / 10), rtol=1e-6)
    np.testing.assert_array_equal(
        np.frombuffer(payload, "<f4", offset=9), x[kept]
    )  # values in index order, unscaled


# --------------------------------------------------------------------------- round trips


def test_none_is_exact():
    x = np.concatenate([vector(), [np.inf, -0.0, np.float32(1e-45)]]).astype(np.float32)
    codec = make_codec("none")
    out = codec.decode(codec.encode(x, (len(x),), None), (len(x),))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.view(np.uint32), x.view(np.uint32))


def test_fp16_relative_error_at_most_2_to_minus_11():
    x = vector() * np.float32(100)
    x = x[np.abs(x) >= 2**-14]  # normal halves; below that fp16 is subnormal (absolute error)
    codec = make_codec("fp16")
    out = codec.decode(codec.encode(x, (len(x),), None), (len(x),))
    assert np.all(np.abs(out - x) <= 2**-11 * np.abs(x))


def test_bf16_relative_error_at_most_2_to_minus_8():
    x = vector() * np.float32(1e-3)
    codec = make_codec("bf16")
    out = codec.decode(codec.encode(x, SEGMENTS, None), SEGMENTS)
    assert np.all(np.abs(out - x) <= 2**-8 * np.abs(x))


@pytest.mark.parametrize("chunk_size", [None, 64])
def test_int8_error_at_most_half_a_step(chunk_size):
    x = vector() * np.float32(0.01)
    x[600:960] *= 100  # tensors of very different scales
    codec = make_codec({"name": "int8", "chunk_size": chunk_size})
    out = codec.decode(codec.encode(x, SEGMENTS, None), SEGMENTS)
    sizes = SEGMENTS if chunk_size is None else [64] * 15 + [40]
    for xb, ob in zip(blocks(x, sizes), blocks(out, sizes), strict=True):
        half_step = np.abs(xb).max(initial=0) / 127 / 2
        assert np.all(np.abs(ob - xb) <= half_step * (1 + 1e-6))


def test_qsgd_values_lie_on_the_level_grid():
    s = 4
    codec = make_codec({"name": "qsgd", "levels": s})
    x = vector()
    out = codec.decode(codec.encode(x, SEGMENTS, np.random.default_rng(0)), SEGMENTS)
    for xb, ob in zip(blocks(x, SEGMENTS), blocks(out, SEGMENTS), strict=True):
        if not len(xb):
            continue
        level = np.abs(ob) / (np.linalg.norm(xb) / s)
        np.testing.assert_allclose(level, np.round(level), atol=1e-4)
        # each value rounds to one of the two levels around s|v|/‖v‖
        assert np.all(np.abs(level - s * np.abs(xb) / np.linalg.norm(xb)) < 1 + 1e-4)
        assert np.all((ob == 0) | (np.sign(ob) == np.sign(xb)))


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_all_zero_and_empty_updates(spec):
    codec = make_codec(spec)
    zeros = np.zeros(D, np.float32)
    out = codec.decode(codec.encode(zeros, SEGMENTS, np.random.default_rng(0)), SEGMENTS)
    assert out.dtype == np.float32 and out.shape == (D,) and not out.any()
    empty = codec.decode(codec.encode(zeros[:0], (), np.random.default_rng(0)), ())
    assert empty.shape == (0,)


# --------------------------------------------------------------------------- unbiasedness


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "qsgd", "levels": 2},
        {"name": "qsgd", "levels": 1, "bucket_size": 16},
        {"name": "randk", "k": 25},
    ],
    ids=spec_id,
)
def test_stochastic_codecs_are_unbiased(spec):
    # Prepare
    codec = make_codec(spec)
    assert codec.unbiased
    segments, trials = (20, 30), 2000
    x = vector(5, d=50)
    rng = np.random.default_rng(2024)
    # Execute
    samples = np.stack(
        [codec.decode(codec.encode(x, segments, rng), segments) for _ in range(trials)]
    )
    # Assert: every coordinate's mean within 5 standard errors of the input ...
    error = samples.mean(axis=0) - x
    variance = samples.var(axis=0)
    assert variance.max() > 0  # really stochastic
    assert np.all(np.abs(error) <= 5 * np.sqrt(variance / trials) + 1e-6)
    # ... and, with far more power against a systematic scale error, the projection onto x too:
    # z = <error, x> / sd(<error, x>) is N(0, 1) for an unbiased codec.
    z = error @ x / np.sqrt(variance @ x**2 / trials)
    assert abs(z) < 5


def test_topk_is_biased_so_the_check_above_would_catch_it():
    codec = make_codec({"name": "topk", "k": 10})
    x = vector(5, d=50)
    assert not codec.unbiased
    assert not np.allclose(codec.decode(codec.encode(x, (50,), None), (50,)), x, atol=0.1)


# --------------------------------------------------------------------------- error feedback


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "topk", "fraction": 0.05, "error_feedback": True},
        {"name": "signsgd", "error_feedback": True},
    ],
    ids=spec_id,
)
def test_error_feedback_loses_nothing_only_delays_it(spec):
    # Prepare
    codec = make_codec(spec)
    assert codec.uses_error_feedback
    rng = np.random.default_rng(11)
    residual, sent, inputs = None, np.zeros(D, np.float64), np.zeros(D, np.float64)
    # Execute
    for round_ in range(8):
        update = vector(100 + round_)
        payload, residual = encode_with_feedback(codec, update, SEGMENTS, rng, residual)
        sent += codec.decode(payload, SEGMENTS)
        inputs += update
    # Assert: Σ decoded + e_T = Σ u_t
    assert np.abs(residual).max() > 0.1  # something really was held back
    np.testing.assert_allclose(sent + residual, inputs, atol=1e-4)


def test_error_feedback_first_round_is_plain_encoding():
    codec = make_codec({"name": "topk", "k": 5, "error_feedback": True})
    x = vector()
    payload, residual = encode_with_feedback(codec, x, SEGMENTS, None, None)
    assert payload == codec.encode(x, SEGMENTS, None)
    np.testing.assert_array_equal(residual, x - codec.decode(payload, SEGMENTS))


def test_codecs_without_error_feedback_keep_no_residual():
    codec = make_codec({"name": "topk", "k": 5})
    payload, residual = encode_with_feedback(codec, vector(), SEGMENTS, None, None)
    assert residual is None and len(payload) == 1 + 5 * 2 + 5 * 4
    with pytest.raises(ValueError, match="does not use error feedback"):
        encode_with_feedback(codec, vector(), SEGMENTS, None, np.zeros(D, np.float32))


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_same_seed_same_bytes(spec):
    codec = make_codec(spec)
    x = vector()
    first = codec.encode(x, SEGMENTS, np.random.default_rng(42))
    assert codec.encode(x, SEGMENTS, np.random.default_rng(42)) == first
    if spec["name"] in ("qsgd", "randk"):
        assert codec.encode(x, SEGMENTS, np.random.default_rng(43)) != first


# --------------------------------------------------------------------------- options and misuse


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "zip"}, r"codec name must be one of none, fp16, .*got 'zip'"),
        ({}, r"codec name must be one of"),
        ({"name": "topk"}, r"topk needs exactly one of fraction \(a number in \(0, 1\]\) or k"),
        ({"name": "topk", "fraction": 0.1, "k": 3}, r"exactly one of fraction"),
        ({"name": "topk", "fraction": 0.0}, r"topk.fraction must be in \(0, 1\], got 0.0"),
        ({"name": "randk", "fraction": 1.5}, r"randk.fraction must be in \(0, 1\], got 1.5"),
        ({"name": "randk", "k": 0}, r"randk.k must be an integer >= 1, got 0"),
        (
            {"name": "randk", "k": 2, "error_feedback": True},
            r"randk has no option 'error_feedback'",
        ),
        ({"name": "qsgd", "levels": 0}, r"qsgd.levels must be an integer in \[1, 65535\], got 0"),
        ({"name": "qsgd", "levels": 2.5}, r"qsgd.levels must be an integer"),
        ({"name": "qsgd", "bucket_size": 0}, r"qsgd.bucket_size must be an integer >= 1"),
        ({"name": "int8", "chunk_size": -4}, r"int8.chunk_size must be an integer >= 1, got -4"),
        ({"name": "int8", "chunk": 4}, r"int8 has no option 'chunk'; accepted: chunk_size"),
        ({"name": "fp16", "levels": 4}, r"fp16 has no option 'levels'; accepted: none"),
        ({"name": "signsgd", "error_feedback": "yes"}, r"signsgd.error_feedback must be true or"),
    ],
    ids=lambda v: str(v),
)
def test_bad_options_raise_a_clear_value_error(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        make_codec(spec)
    assert isinstance(info.value, CodecOptionError | ConfigError)


def test_specs_from_a_name_a_dataclass_or_a_pydantic_model():
    assert make_codec("fp16").name == "fp16"

    @dataclasses.dataclass
    class Spec:  # a config object with every codec's options; None = not given
        name: str
        fraction: float | None = None
        levels: int | None = None

    assert make_codec(Spec("topk", fraction=0.5)).fraction == 0.5

    pydantic = pytest.importorskip("pydantic")
    model = pydantic.create_model("CodecSpec", name=(str, ...), levels=(int | None, None))
    assert make_codec(model(name="qsgd", levels=3)).levels == 3
    assert set(CODECS) == {"none", "fp16", "bf16", "int8", "qsgd", "topk", "randk", "signsgd"}


def test_decoding_with_the_wrong_codec_or_segments_fails_loudly():
    payload = make_codec("fp16").encode(vector(), SEGMENTS, None)
    with pytest.raises(ValueError, match="bf16 decoder was given a payload from fp16"):
        make_codec("bf16").decode(payload, SEGMENTS)
    with pytest.raises(ValueError, match="expected 1998"):
        make_codec("fp16").decode(payload, (999,))
    with pytest.raises(ValueError, match="segments sum to 999 but the update has 1000"):
        make_codec("none").encode(vector(), (999,), None)
    with pytest.raises(ValueError, match="flat vector"):
        make_codec("none").encode(np.zeros((2, 2), np.float32), (4,), None)
