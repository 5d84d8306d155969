"""Symmetric uniform 8-bit quantisation with one float32 scale per block, deterministic rounding.

For a block b (a tensor, or a chunk of ``chunk_size`` flat values)::

    scale_b = max_{i∈b} |v_i| / 127,   q_i = rint(v_i / scale_b) ∈ [−127, 127],   v̂_i = q_i · scale_b

so |v_i − v̂_i| ≤ scale_b / 2. The code −128 is never used, which keeps the grid symmetric around
zero (as in Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", with the zero point fixed at 0). An all-zero block has scale 0
and decodes to zeros. Rounding is half to even and uses no randomness, so the codec is biased.

Wire format (B blocks: the number of segments, or ceil(d / chunk_size))::

    header (1) | B × float32 scale | d × int8 q          → 1 + 4B + d bytes
"""

from __future__ import annotations

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
    reduce_blocks,
)


@dataclass(frozen=True)
class Int8Codec:
    """``chunk_size``: values per scale; ``None`` (default) means one scale per tensor."""

    chunk_size: int | None = None

    name: ClassVar[str] = "int8"
    unbiased: ClassVar[bool] = False
    uses_error_feedback: ClassVar[bool] = False

    def __post_init__(self):
        if self.chunk_size is not None:
            check_int(self.name, "chunk_size", self.chunk_size, minimum=1)

    def encode(self, update, segments, rng=None) -> bytes:
        x = as_update(update)
        sizes = block_sizes(check_segments(segments, len(x)), self.chunk_size)
        scale = (reduce_blocks(np.maximum, np.abs(x), sizes) / np.float32(127)).astype(np.float32)
        per_value = np.repeat(scale, sizes)
        q = np.divide(x, per_value, out=np.zeros_like(x), where=per_value > 0)
        # The scale is rounded to float32, so max|v| / scale can land a hair above 127.
        q = np.clip(np.rint(q), -127, 127).astype(np.int8)
        return header(self.name) + scale.astype("<f4", copy=False).tobytes() + q.tobytes()

    def decode(self, payload, segments) -> np.ndarray:
        sizes = block_sizes(check_segments(segments), self.chunk_size)
        d, blocks = int(sizes.sum()), len(sizes)
        view = body(payload, self.name, 4 * blocks + d)
        scale = np.frombuffer(view, dtype="<f4", count=blocks)
        q = np.frombuffer(view, dtype=np.int8, offset=4 * blocks)
        return q.astype(np.float32) * np.repeat(scale.astype(np.float32), sizes)
