"""Plain floating-point codecs: float32 (``none``), IEEE half precision (``fp16``) and bfloat16.

Wire formats (d = number of values, header = 1 byte codec id):

* ``none``: header + d × float32            → 1 + 4d bytes, exact.
* ``fp16``: header + d × IEEE binary16      → 1 + 2d bytes. Round to nearest, ties to even:
  relative error ≤ 2^-11 for normal halves (|v| ≥ 2^-14); below that the halves are subnormal and
  the error is absolute, ≤ 2^-25; |v| ≥ 65520 overflows to ±inf, as on real hardware.
* ``bf16``: header + d × bfloat16           → 1 + 2d bytes. The upper 16 bits of the float32
  after round to nearest, ties to even (Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep
  Learning Training"): float32's exponent range, relative error ≤ 2^-8 (8 significant bits);
  float32 subnormals (|v| < 2^-126) keep an absolute error ≤ 2^-134.

None of them uses randomness; ``rng`` is accepted for the common interface and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedray.compression.base import as_update, body, check_segments, header


@dataclass(frozen=True)
class NoneCodec:
    """The update as float32, unchanged: the baseline every compression ratio is measured from."""

    name: ClassVar[str] = "none"
    unbiased: ClassVar[bool] = True
    uses_error_feedback: ClassVar[bool] = False

    def encode(self, update, segments, rng=None) -> bytes:
        x = as_update(update)
        check_segments(segments, len(x))
        return header(self.name) + x.astype("<f4", copy=False).tobytes()

    def decode(self, payload, segments) -> np.ndarray:
        d = int(check_segments(segments).sum())
        return np.frombuffer(body(payload, self.name, 4 * d), dtype="<f4").astype(np.float32)


@dataclass(frozen=True)
class Fp16Codec:
    """IEEE binary16, numpy's round-to-nearest-even conversion."""

    name: ClassVar[str] = "fp16"
    unbiased: ClassVar[bool] = False
    uses_error_feedback: ClassVar[bool] = False

    def encode(self, update, segments, rng=None) -> bytes:
        x = as_update(update)
        check_segments(segments, len(x))
        with np.errstate(over="ignore"):  # overflow to ±inf is the format's documented behaviour
            return header(self.name) + x.astype("<f2").tobytes()

    def decode(self, payload, segments) -> np.ndarray:
        d = int(check_segments(segments).sum())
        return np.frombuffer(body(payload, self.name, 2 * d), dtype="<f2").astype(np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """The bfloat16 bit patterns (uint16) nearest to float32 ``x``, ties to even."""
    bits = x.view(np.uint32)
    # Adding 0x7FFF + (lowest kept bit) carries into the kept half exactly when the dropped half is
    # above 0x8000, or equal to it with an odd kept half: round to nearest, ties to even. A carry
    # out of the mantissa bumps the exponent, which is also correct (up to ±inf at the top).
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        # A NaN whose payload sits in the dropped half would round to ±inf; keep it a quiet NaN.
        rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class Bf16Codec:
    """bfloat16: float32 with the mantissa rounded to 7 bits, computed in numpy (no torch)."""

    name: ClassVar[str] = "bf16"
    unbiased: ClassVar[bool] = False
    uses_error_feedback: ClassVar[bool] = False

    def encode(self, update, segments, rng=None) -> bytes:
        x = as_update(update)
        check_segments(segments, len(x))
        return header(self.name) + float32_to_bf16_bits(x).astype("<u2", copy=False).tobytes()

    def decode(self, payload, segments) -> np.ndarray:
        d = int(check_segments(segments).sum())
        return bf16_bits_to_float32(np.frombuffer(body(payload, self.name, 2 * d), dtype="<u2"))
