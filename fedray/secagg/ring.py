"""Fixed-point vectors in the ring Z_{2^b} and their wire format.

A client's real vector x (its weighted update and its weight, Bonawitz et al. 2017 §3: inputs
are vectors over Z_R) is clipped to [−c, c] and rounded to the integer grid of step 1/s,

    q_i = round(s · clip(x_i, −c, c))  (mod 2^b),

negative values in two's complement. A sum of n such vectors decodes exactly (as the sum of the
q_i, read back as a signed integer and divided by s) as long as n · c · s < 2^(b−1): the config
refuses a ring too small for the cohort (:class:`fedray.config.SecureAggregationConfig`).
Arithmetic is numpy uint64, whose wraparound is arithmetic mod 2^64; b < 64 masks the top bits.

On the wire each element takes ⌈b/8⌉ bytes, little-endian: a masked vector of D coordinates is
exactly ⌈b/8⌉ · D bytes (nothing else travels: D, b and s are known to both ends).
"""

from __future__ import annotations

import numpy as np


def ring_mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def element_bytes(bits: int) -> int:
    return -(-bits // 8)


def reduce(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` (uint64) mod 2^b."""
    return values if bits == 64 else values & ring_mask(bits)


def quantise(
    values: np.ndarray, *, scale: float, clip_range: float, bits: int
) -> tuple[np.ndarray, int]:
    """x as ring elements, and how many coordinates were clipped to [−c, c]."""
    x = np.asarray(values, dtype=np.float64)
    clipped = int(np.count_nonzero(np.abs(x) > clip_range))
    q = np.rint(np.clip(x, -clip_range, clip_range) * scale).astype(np.int64)
    return reduce(q.astype(np.uint64), bits), clipped


def to_signed(values: np.ndarray, bits: int) -> np.ndarray:
    """Ring elements read as integers in [−2^(b−1), 2^(b−1)), as int64."""
    v = reduce(np.asarray(values, dtype=np.uint64), bits)
    if bits < 64:
        # sign-extend bit b−1 into the top bits, then reinterpret
        high = v >= np.uint64(1 << (bits - 1))
        v = np.where(high, v | ~ring_mask(bits), v)
    return v.view(np.int64)


def dequantise(values: np.ndarray, *, scale: float, bits: int) -> np.ndarray:
    """The real vector (float64) a ring sum stands for."""
    return to_signed(values, bits).astype(np.float64) / scale


def add(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return reduce(a + b, bits)


def subtract(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return reduce(a - b, bits)


def pack(values: np.ndarray, bits: int) -> bytes:
    """The wire bytes: ⌈b/8⌉ little-endian bytes per element."""
    width = element_bytes(bits)
    raw = np.ascontiguousarray(values, dtype="<u8").view(np.uint8).reshape(-1, 8)
    return raw[:, :width].tobytes()


def unpack(payload: bytes, bits: int) -> np.ndarray:
    width = element_bytes(bits)
    narrow = np.frombuffer(payload, dtype=np.uint8).reshape(-1, width)
    wide = np.zeros((len(narrow), 8), dtype=np.uint8)
    wide[:, :width] = narrow
    return wide.reshape(-1).view("<u8").astype(np.uint64)
