"""QSGD: stochastic quantisation to s levels of the block norm, unbiased.

Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via Gradient Quantization and Encoding",
eq. (1)-(2). For a block v (a tensor, or a bucket of ``bucket_size`` flat values) with s levels::

    r_i = s·|v_i| / ‖v‖₂ ∈ [0, s],   l_i = ⌊r_i⌋,
    ξ_i = (l_i + 1) / s with probability r_i − l_i, else l_i / s,
    Q(v_i) = ‖v‖₂ · sgn(v_i) · ξ_i,   so   E[Q(v_i)] = v_i.

The norm used for r_i is the float32 one sent on the wire, so encoder and decoder agree exactly and
the estimator stays unbiased up to float32 rounding; r_i is clipped at s because that rounding can
push a dominant entry a hair above it. The paper's Elias coding of the levels is left out: every
value costs the same, minimal whole number of bits.

Wire format (B blocks: the number of segments, or ceil(d / bucket_size);
L = ceil(log2(s + 1)) level bits, so b = L + 1 bits per value)::

    header (1) | B × float32 norm | ceil(d·b / 8) bytes of codes
    code_i = sign_i · 2^L + level_i   (sign 1 = negative), codes back to back, MSB first

e.g. s = 1 → 2 bits, s = 7 → 4 bits, s = 15 → 5 bits, s = 127 → 8 bits per value.
Randomness: one ``rng.random(d, dtype=float32)`` draw per encode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedray.compression.base import (
    as_update,
    block_sizes,
    body,
    check_int,
    check_segments,
    header,
    pack_codes,
    packed_bytes,
    reduce_blocks,
    unpack_codes,
)

MAX_LEVELS = 2**16 - 1


@dataclass(frozen=True)
class QsgdCodec:
    """``levels``: s ≥ 1; ``bucket_size``: values per norm, ``None`` (default) = one per tensor."""

    levels: int = 15
    bucket_size: int | None = None

    name: ClassVar[str] = "qsgd"
    unbiased: ClassVar[bool] = True
    uses_error_feedback: ClassVar[bool] = False

    def __post_init__(self):
        check_int(self.name, "levels", self.levels, minimum=1, maximum=MAX_LEVELS)
        if self.bucket_size is not None:
            check_int(self.name, "bucket_size", self.bucket_size, minimum=1)

    @property
    def level_bits(self) -> int:
        return math.ceil(math.log2(self.levels + 1))

    def encode(self, update, segments, rng) -> bytes:
        x = as_update(update)
        sizes = block_sizes(check_segments(segments, len(x)), self.bucket_size)
        s, level_bits = self.levels, self.level_bits
        # Summed in float64: a float32 running sum over a million squares loses digits.
        norm = np.sqrt(reduce_blocks(np.add, np.square(x, dtype=np.float64), sizes))
        norm = norm.astype(np.float32)
        factor = np.divide(s, norm, out=np.zeros_like(norm), where=norm > 0)
        r = np.minimum(np.abs(x) * np.repeat(factor, sizes), np.float32(s))
        level = np.floor(r)
        level += rng.random(len(x), dtype=np.float32) < (r - level)
        codes = level.astype(np.uint32) | (np.signbit(x).astype(np.uint32) << level_bits)
        return (
            header(self.name)
            + norm.astype("<f4", copy=False).tobytes()
            + pack_codes(codes, level_bits + 1)
        )

    def decode(self, payload, segments) -> np.ndarray:
        sizes = block_sizes(check_segments(segments), self.bucket_size)
        d, blocks, level_bits = int(sizes.sum()), len(sizes), self.level_bits
        view = body(payload, self.name, 4 * blocks + packed_bytes(d, level_bits + 1))
        norm = np.frombuffer(view, dtype="<f4", count=blocks).astype(np.float32)
        codes = unpack_codes(view[4 * blocks :], d, level_bits + 1)
        step = np.repeat(norm / np.float32(self.levels), sizes)
        out = (codes & ((1 << level_bits) - 1)).astype(np.float32) * step
        out.view(np.uint32)[:] |= (codes >> level_bits) << 31  # the sign bit, as a float's
        return out
