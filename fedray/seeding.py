"""Derived randomness: every draw in fedray comes from (seed, purpose, client id, round).

Two flavours:

* :func:`generator` gives a full ``numpy.random.Generator`` for one (seed, purpose, client, round)
  tuple — used where a client needs a stream (its data, its batch shuffling).
* :func:`uniform` / :func:`normal` are counter-based: a vectorised SplitMix64 hash of the tuple,
  so one call draws for a whole array of client ids without materialising per-client state.
  This is what lets a million registered clients cost nothing until they are looked at.

Nothing here touches a global RNG, and no draw depends on which worker asked for it.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def purpose_code(purpose: str) -> int:
    """A stable 32-bit code for a purpose string (``hash()`` is salted per process)."""
    return zlib.crc32(purpose.encode("utf-8"))


def generator(seed: int, purpose: str, client_id: int = 0, round_: int = 0) -> np.random.Generator:
    """A fresh numpy Generator derived from (seed, purpose, client id, round)."""
    entropy = [int(seed) & 0xFFFFFFFF, purpose_code(purpose), int(client_id), int(round_)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # SplitMix64 finaliser (Steele et al. 2014): a bijective avalanche mix of 64-bit words.
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _derive_key(seed: int, purpose: str, round_, stream: int) -> np.ndarray:
    key = _splitmix64(np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF))
    key = _splitmix64(key ^ np.uint64(purpose_code(purpose)))
    # ``round_`` may be an array aligned with (or broadcastable to) the client ids.
    key = _splitmix64(key ^ np.asarray(round_, dtype=np.int64).astype(np.uint64))
    return _splitmix64(key ^ np.uint64(stream))


# Scalar rounds repeat (one key per purpose and round): deriving the key is four numpy hashes,
# ~80 µs, which dominated a one-client draw such as a worker sizing the client it generates.
_scalar_key = functools.lru_cache(maxsize=4096)(_derive_key)


def _hash(seed: int, purpose: str, client_ids, round_: int, stream: int) -> np.ndarray:
    ids = np.asarray(client_ids, dtype=np.uint64)
    if isinstance(round_, int | np.integer):
        key = _scalar_key(int(seed), purpose, int(round_), int(stream))
    else:
        key = _derive_key(seed, purpose, round_, stream)
    return _splitmix64(ids ^ key)


def uniform(seed: int, purpose: str, client_ids, round_: int = 0, stream: int = 0) -> np.ndarray:
    """Uniform draws in the open interval (0, 1), one per client id, as float64."""
    bits = _hash(seed, purpose, client_ids, round_, stream) >> np.uint64(11)  # 53 mantissa bits
    return (bits.astype(np.float64) + 0.5) / float(1 << 53)


def normal(seed: int, purpose: str, client_ids, round_: int = 0) -> np.ndarray:
    """Standard normal draws, one per client id (Box–Muller on two derived uniforms)."""
    u1 = uniform(seed, purpose, client_ids, round_, stream=1)
    u2 = uniform(seed, purpose, client_ids, round_, stream=2)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
