"""Scaled signSGD: one bit per value plus one float32 magnitude per tensor.

Bernstein et al. 2018, "signSGD: Compression for Non-Convex Problems", send sgn(v); Karimireddy
et al. 2019, "Error Feedback Fixes SignSGD and other Gradient Compression Schemes", scale it by
the mean magnitude so the compressor keeps the update's size, and add error feedback
(``error_feedback=True``) to make it converge where plain signSGD does not. Per tensor t::

    scale_t = ‖v_t‖₁ / |t|,   v̂_i = scale_t · sgn(v_i),   with sgn(0) = +1

Biased; no randomness. Wire format (T = number of segments)::

    header (1) | T × float32 scale | ceil(d / 8) bytes of sign bits (1 = negative), MSB first
                                                      → 1 + 4T + ceil(d/8) bytes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedray.compression.base import (
    as_update,
    body,
    check_bool,
    check_segments,
    header,
    packed_bytes,
    reduce_blocks,
)


@dataclass(frozen=True)
class SignSgdCodec:
    error_feedback: bool = False

    name: ClassVar[str] = "signsgd"
    unbiased: ClassVar[bool] = False

    def __post_init__(self):
        check_bool(self.name, "error_feedback", self.error_feedback)

    @property
    def uses_error_feedback(self) -> bool:
        return self.error_feedback

    def encode(self, update, segments, rng=None) -> bytes:
        x = as_update(update)
        sizes = check_segments(segments, len(x))
        # Summed in float64 so the scale does not drift with the tensor's size.
        l1 = reduce_blocks(np.add, np.abs(x).astype(np.float64), sizes)
        scale = np.divide(l1, sizes, out=np.zeros_like(l1), where=sizes > 0)
        return header(self.name) + scale.astype("<f4").tobytes() + np.packbits(x < 0).tobytes()

    def decode(self, payload, segments) -> np.ndarray:
        sizes = check_segments(segments)
        d, tensors = int(sizes.sum()), len(sizes)
        view = body(payload, self.name, 4 * tensors + packed_bytes(d, 1))
        scale = np.frombuffer(view, dtype="<f4", count=tensors).astype(np.float32)
        negative = np.unpackbits(np.frombuffer(view[4 * tensors :], dtype=np.uint8), count=d)
        out = np.repeat(scale, sizes)
        out.view(np.uint32)[:] |= negative.astype(np.uint32) << 31  # set the float sign bit
        return out
