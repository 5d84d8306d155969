"""The codec contract, the one-byte header every payload starts with, and the helpers codecs share.

A codec turns a client's model update — a flat float32 vector ``update`` plus ``segments``, the
sizes of the model's tensors in order (``sum(segments) == len(update)``) — into the bytes that
would travel on the wire, and back. The network is charged ``len(payload)``: the real size,
header included, never a formula.

Wire conventions shared by every codec:

* byte 0 is the codec id (:data:`CODEC_IDS`), so a payload handed to the wrong decoder fails loudly
  instead of decoding into garbage;
* nothing else is self-describing: the vector length, the tensor sizes and the codec's options are
  known to both ends from the model and the config, so sending them would only inflate the count;
* multi-byte numbers are little-endian; bit fields are packed most-significant bit first
  (``numpy.packbits`` order) and the last byte is zero-padded.

"Blocks" are the groups of values that share one scale or norm: the tensors themselves, or
fixed-size chunks of the flat vector when a codec is given a ``chunk_size``/``bucket_size``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from fedray.errors import ConfigError

CODEC_IDS: dict[str, int] = {
    "none": 0,
    "fp16": 1,
    "bf16": 2,
    "int8": 3,
    "qsgd": 4,
    "topk": 5,
    "randk": 6,
    "signsgd": 7,
}
HEADER_BYTES = 1


@runtime_checkable
class Codec(Protocol):
    """Encodes a flat float32 update into wire bytes and decodes it back.

    ``unbiased``: E[decode(encode(v))] = v over the encoder's randomness.
    ``uses_error_feedback``: the caller should route encodes through
    :func:`fedray.compression.encode_with_feedback` and keep a per-client residual.
    """

    name: str
    unbiased: bool
    uses_error_feedback: bool

    def encode(
        self, update: np.ndarray, segments: tuple[int, ...], rng: np.random.Generator
    ) -> bytes: ...

    def decode(self, payload: bytes, segments: tuple[int, ...]) -> np.ndarray: ...


class CodecOptionError(ConfigError, ValueError):
    """A codec option is missing, unknown or out of range.

    A ``ValueError`` so it reads naturally to callers (and pydantic validators), and a
    :class:`~fedray.errors.ConfigError` so the CLI prints it on one line without a traceback.
    """


# --------------------------------------------------------------------------- option checks


def check_int(codec: str, option: str, value, *, minimum: int, maximum: int | None = None) -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and value >= minimum and (maximum is None or value <= maximum):
        return int(value)
    accepted = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    raise CodecOptionError(f"{codec}.{option} must be an integer {accepted}, got {value!r}")


def check_bool(codec: str, option: str, value) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise CodecOptionError(f"{codec}.{option} must be true or false, got {value!r}")


def check_fraction_or_k(codec: str, fraction, k) -> None:
    """Exactly one of ``fraction`` in (0, 1] or ``k`` >= 1."""
    if (fraction is None) == (k is None):
        raise CodecOptionError(
            f"{codec} needs exactly one of fraction (a number in (0, 1]) or k (an integer >= 1), "
            f"got fraction={fraction!r}, k={k!r}"
        )
    if k is not None:
        check_int(codec, "k", k, minimum=1)
        return
    ok = isinstance(fraction, numbers.Real) and not isinstance(fraction, bool)
    if not (ok and 0.0 < fraction <= 1.0):
        raise CodecOptionError(f"{codec}.fraction must be in (0, 1], got {fraction!r}")


def kept_count(fraction: float | None, k: int | None, d: int) -> int:
    """How many of d entries a sparsifier keeps: ``min(k, d)``, or ``max(1, round(fraction·d))``.

    Rounded rather than ceiled so that 0.07 · 100 (= 7.000000000000001 in floating point) keeps 7.
    """
    if d == 0:
        return 0
    if k is not None:
        return min(k, d)
    return min(d, max(1, round(fraction * d)))


# --------------------------------------------------------------------------- vectors and payloads


def check_segments(segments: Sequence[int], d: int | None = None) -> np.ndarray:
    """The segment sizes as an int64 array, checked to be non-negative and to sum to ``d``."""
    sizes = np.asarray(segments, dtype=np.int64).reshape(-1)
    if sizes.size and sizes.min() < 0:
        raise ValueError(f"segments must be non-negative sizes, got {tuple(segments)}")
    if d is not None and int(sizes.sum()) != d:
        raise ValueError(f"segments sum to {int(sizes.sum())} but the update has {d} values")
    return sizes


def as_update(update: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(update, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"an update must be a flat vector, got shape {x.shape}")
    return x


def header(name: str) -> bytes:
    return bytes((CODEC_IDS[name],))


def body(payload: bytes, name: str, expected: int) -> memoryview:
    """The payload after its header, checked to come from codec ``name`` and to be the right size.

    ``expected`` is the body size the decoder derives from its options and the segments; a
    mismatch means the payload was encoded for another model or with other options.
    """
    view = memoryview(payload).cast("B")
    if len(view) < HEADER_BYTES or view[0] != CODEC_IDS[name]:
        ids = {v: k for k, v in CODEC_IDS.items()}
        got = ids.get(view[0], f"unknown id {view[0]}") if len(view) else "an empty payload"
        raise ValueError(f"{name} decoder was given a payload from {got}")
    if len(view) - HEADER_BYTES != expected:
        raise ValueError(
            f"{name} payload body has {len(view) - HEADER_BYTES} bytes, expected {expected} for "
            "these segments and options"
        )
    return view[HEADER_BYTES:]


# --------------------------------------------------------------------------- blocks


def block_sizes(segments: np.ndarray, chunk: int | None) -> np.ndarray:
    """Sizes of the blocks sharing one scale: the segments, or chunks of ``chunk`` flat values
    (the last one shorter). Chunks ignore tensor boundaries, as QSGD's buckets do."""
    if chunk is None:
        return segments
    d = int(segments.sum())
    full, rest = divmod(d, chunk)
    return np.array([chunk] * full + ([rest] if rest else []), dtype=np.int64)


def reduce_blocks(ufunc: np.ufunc, values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``ufunc`` reduced over each block, 0 for empty blocks (the identity of + and of max |·|)."""
    out = np.zeros(len(sizes), dtype=values.dtype)
    nonempty = sizes > 0
    if nonempty.any():
        # reduceat over the non-empty starts only: an empty block has no width, so each kept start
        # still runs to the next kept one.
        starts = np.cumsum(sizes) - sizes
        out[nonempty] = ufunc.reduceat(values, starts[nonempty])
    return out


# --------------------------------------------------------------------------- bit packing


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Unsigned integer codes (< 2**bits) written back to back, ``bits`` each, MSB first."""
    matrix = np.empty((len(codes), bits), dtype=np.uint8)
    for j in range(bits):
        matrix[:, j] = (codes >> (bits - 1 - j)) & 1
    return np.packbits(matrix.reshape(-1)).tobytes()


def unpack_codes(buffer, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``count`` codes of ``bits`` bits as uint32."""
    matrix = np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), count=count * bits)
    matrix = matrix.reshape(count, bits)
    codes = np.zeros(count, dtype=np.uint32)
    for j in range(bits):
        codes <<= 1
        codes |= matrix[:, j]
    return codes


def packed_bytes(count: int, bits: int) -> int:
    return -(-count * bits // 8)
