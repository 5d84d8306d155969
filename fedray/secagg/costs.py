"""What secure aggregation adds to a round: its messages' bytes (a closed form) and time.

Bonawitz et al. 2017, Figure 4, per client u of the n clients that shared keys (U_1), with d_u
neighbours (n − 1 in SecAgg, k in SecAgg+), public keys of P bytes (``key_bytes``), one
encrypted or plain share message of S bytes (``share_bytes``), 4-byte client ids and a model of D
parameters in the ring Z_{2^b}:

==================  ============================  ===========================
round               client → server               server → client
==================  ============================  ===========================
0 AdvertiseKeys     2P  (c_u^PK, s_u^PK)          2P · d_u  (its neighbours' keys)
1 ShareKeys         S · d_u  (encrypted shares)   S · d_u   (the shares sent to it)
2 MaskedInput       ⌈b/8⌉ · (D + 1)               —
4 Unmasking         S · d_u  (one share per       4 · d_u   (which neighbours
                    neighbour: b_v or s_v^SK)               survived)
==================  ============================  ===========================

Round 2 replaces the plain upload (the extra coordinate is the client's weight, masked too);
round 3 (ConsistencyCheck, against an actively malicious server) is not modelled. Every member of
U_1 pays rounds 0–1; round 2 is the training task's upload, charged by the round plan as usual;
only the survivors pay round 4, and nobody does when the round failed (the server aborts after
round 2). So a client that completes a successful round sends
``2P + 2·S·d_u + ⌈b/8⌉·(D+1)`` bytes and receives ``2P·d_u + S·d_u + 4·d_u`` besides the model
(:func:`client_bytes`).

Time: each protocol round is a barrier — the server needs every message before it answers — so
a phase lasts as long as its slowest client's transfer (bytes · 8 / bandwidth + latency). Rounds
0–1 (two round trips) run before the training task, which every client starts together when
they end; round 4 (one round trip) runs after the collection of masked inputs closes:

    setup_s  = max_u t_up(2P) + max_u t_down(2P·d_u) + max_u t_up(S·d_u) + max_u t_down(S·d_u)
    unmask_s = max_{u ∈ U_2} t_down(4·d_u) + max_{u ∈ U_2} t_up(S·d_u)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.secagg import ring
from fedray.sim.costmodel import transfer_seconds

ID_BYTES = 4


def masked_upload_bytes(bits: int, num_params: int) -> int:
    """Round 2's payload: every parameter and the weight, ⌈b/8⌉ bytes each."""
    return ring.element_bytes(bits) * (num_params + 1)


def setup_bytes(degree, key_bytes: int, share_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(up, down) bytes of rounds 0–1 per client with ``degree`` neighbours."""
    d = np.asarray(degree, dtype=np.int64)
    return 2 * key_bytes + share_bytes * d, 2 * key_bytes * d + share_bytes * d


def unmask_bytes(degree, share_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(up, down) bytes of round 4 per surviving client with ``degree`` neighbours."""
    d = np.asarray(degree, dtype=np.int64)
    return share_bytes * d, ID_BYTES * d


def client_bytes(degree: int, *, key_bytes: int, share_bytes: int, bits: int, num_params: int):
    """(up, down) bytes of one client's successful round, the model download excluded."""
    up0, down0 = setup_bytes(degree, key_bytes, share_bytes)
    up4, down4 = unmask_bytes(degree, share_bytes)
    return (
        int(up0 + up4) + masked_upload_bytes(bits, num_params),
        int(down0 + down4),
    )


@dataclass(frozen=True)
class Overhead:
    """The protocol's messages in one round: per cohort client the extra bytes each way, the
    seconds before the training task (rounds 0–1) and after the collection (round 4)."""

    up: np.ndarray
    down: np.ndarray
    setup_s: float
    unmask_s: float

    @classmethod
    def none(cls, n: int) -> Overhead:
        return cls(np.zeros(n, np.int64), np.zeros(n, np.int64), 0.0, 0.0)

    @property
    def seconds(self) -> float:
        return self.setup_s + self.unmask_s


def _slowest(num_bytes, mbps, latency_ms, who=None) -> float:
    t = transfer_seconds(num_bytes, mbps, latency_ms)
    t = t if who is None else t[who]
    return float(t.max(initial=0.0))


def round_overhead(
    degree: np.ndarray, survived: np.ndarray | None, profiles, *, key_bytes: int, share_bytes: int
) -> Overhead:
    """The overhead of a round whose cohort has ``degree`` neighbours each; ``survived`` marks
    U_2 for a successful round, None for a failed one (no unmasking round)."""
    up, down = setup_bytes(degree, key_bytes, share_bytes)
    up_mbps, down_mbps, latency = profiles.up_mbps, profiles.down_mbps, profiles.latency_ms
    n = len(up)
    setup_s = (
        _slowest(np.full(n, 2 * key_bytes), up_mbps, latency)
        + _slowest(2 * key_bytes * np.asarray(degree), down_mbps, latency)
        + _slowest(share_bytes * np.asarray(degree), up_mbps, latency)
        + _slowest(share_bytes * np.asarray(degree), down_mbps, latency)
    )
    unmask_s = 0.0
    if survived is not None and survived.any():
        up4, down4 = unmask_bytes(degree, share_bytes)
        up, down = up + np.where(survived, up4, 0), down + np.where(survived, down4, 0)
        unmask_s = _slowest(down4, down_mbps, latency, survived) + _slowest(
            up4, up_mbps, latency, survived
        )
    return Overhead(up.astype(np.int64), down.astype(np.int64), setup_s, unmask_s)
