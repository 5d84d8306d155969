"""Sparsification: send k of the d entries, chosen by magnitude (top-k) or at random (rand-k).

k is ``min(k, d)`` when ``k`` is given, else ``max(1, round(fraction · d))``; selection is over
the whole flat vector, not per tensor.

**top-k** (Aji & Heafield 2017, "Sparse Communication for Distributed Gradient Descent"; with
error feedback, Stich, Cordonnier & Jaggi 2018, "Sparsified SGD with Memory"): keep the k entries
of largest |v_i|, ties broken deterministically by ``numpy.argpartition``. Biased; use
``error_feedback=True`` to carry what was dropped into the next round. Wire format, indices in
ascending order::

    header (1) | k × index | k × float32 value       → 1 + (2 or 4)·k + 4k bytes
    index is uint16 when d ≤ 65536 (every index fits 16 bits), else uint32

**rand-k** (Stich, Cordonnier & Jaggi 2018, the rand_k operator): keep k entries chosen uniformly
without replacement and scale them by d/k, so E[v̂] = v (each entry is kept with probability k/d).
The indices are not sent: the encoder draws a 64-bit seed from its ``rng``, picks the indices
with a fresh generator on that seed, and ships the seed; the decoder regenerates them from the
payload alone. This is the shared-randomness trick of the rand-k literature, and it assumes both
ends run the same numpy (``Generator(PCG64(seed)).choice(d, k, replace=False, shuffle=False)``,
then sorted). Wire format::

    header (1) | uint64 seed (8) | k × float32 value (unscaled; the decoder multiplies by d/k)
                                                      → 9 + 4k bytes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedray.compression.base import (
    as_update,
    body,
    check_bool,
    check_fraction_or_k,
    check_segments,
    header,
    kept_count,
)


def index_dtype(d: int) -> str:
    return "<u2" if d <= 2**16 else "<u4"


@dataclass(frozen=True)
class TopKCodec:
    """Keep the ``k`` (or ``fraction`` of the) largest-magnitude entries."""

    fraction: float | None = None
    k: int | None = None
    error_feedback: bool = False

    name: ClassVar[str] = "topk"
    unbiased: ClassVar[bool] = False

    def __post_init__(self):
        check_fraction_or_k(self.name, self.fraction, self.k)
        check_bool(self.name, "error_feedback", self.error_feedback)

    @property
    def uses_error_feedback(self) -> bool:
        return self.error_feedback

    def encode(self, update, segments, rng=None) -> bytes:
        x = as_update(update)
        d = len(x)
        check_segments(segments, d)
        k = kept_count(self.fraction, self.k, d)
        if k == d:
            idx = np.arange(d)
        else:
            idx = np.argpartition(np.abs(x), d - k)[d - k :]
            idx.sort()  # ascending indices: a canonical payload, and a cache-friendly scatter
        return (
            header(self.name)
            + idx.astype(index_dtype(d)).tobytes()
            + x[idx].astype("<f4", copy=False).tobytes()
        )

    def decode(self, payload, segments) -> np.ndarray:
        d = int(check_segments(segments).sum())
        k, dtype = kept_count(self.fraction, self.k, d), index_dtype(d)
        width = np.dtype(dtype).itemsize
        view = body(payload, self.name, (width + 4) * k)
        out = np.zeros(d, dtype=np.float32)
        out[np.frombuffer(view, dtype=dtype, count=k)] = np.frombuffer(
            view, dtype="<f4", offset=width * k
        )
        return out


def random_indices(seed: int, d: int, k: int) -> np.ndarray:
    """The k sorted indices rand-k keeps for a given seed; both ends call this."""
    chosen = np.random.Generator(np.random.PCG64(seed)).choice(d, k, replace=False, shuffle=False)
    chosen.sort()
    return chosen


@dataclass(frozen=True)
class RandKCodec:
    """Keep ``k`` (or ``fraction`` of the) entries chosen at random, rescaled by d/k."""

    fraction: float | None = None
    k: int | None = None

    name: ClassVar[str] = "randk"
    unbiased: ClassVar[bool] = True
    uses_error_feedback: ClassVar[bool] = False

    def __post_init__(self):
        check_fraction_or_k(self.name, self.fraction, self.k)

    def encode(self, update, segments, rng) -> bytes:
        x = as_update(update)
        d = len(x)
        check_segments(segments, d)
        k = kept_count(self.fraction, self.k, d)
        seed = rng.integers(0, 2**64, dtype=np.uint64)
        idx = random_indices(int(seed), d, k)
        return (
            header(self.name)
            + np.asarray(seed, dtype="<u8").tobytes()
            + x[idx].astype("<f4", copy=False).tobytes()
        )

    def decode(self, payload, segments) -> np.ndarray:
        d = int(check_segments(segments).sum())
        k = kept_count(self.fraction, self.k, d)
        view = body(payload, self.name, 8 + 4 * k)
        seed = int(np.frombuffer(view, dtype="<u8", count=1)[0])
        out = np.zeros(d, dtype=np.float32)
        if k:
            out[random_indices(seed, d, k)] = np.frombuffer(
                view, dtype="<f4", offset=8
            ) * np.float32(d / k)
        return out
