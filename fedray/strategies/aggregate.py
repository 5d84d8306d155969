"""What clients send and what the server sums: :class:`ClientMessage` and the mergeable
:class:`Aggregate`.

An aggregate is either *linear* — a weighted sum Σ_k w_k s_k u_k with its weight Σ_k w_k, the
per-coordinate weight of row-sparse uploads (coverage) and unweighted sums of named side uploads
(SCAFFOLD's Δc) — or *stacked*: the rows s_k u_k themselves with their weights, for rules that are
not sums (median, Krum). A *ring* aggregate is the linear sum as secure aggregation sees it
(:mod:`fedray.secagg`): masked integer vectors summed mod 2^b, with the ids of the clients in it
and no weight (the weight travels masked inside the vector), until the server-side unmasking
turns it into a linear sum (:meth:`Aggregate.unmasked`). All three merge associatively, so workers pre-sum the clients of their group
and the driver merges the groups in a fixed order (the group order fixed by config and seed), which
keeps floating-point sums identical for any number of workers (pfl-research's aggregator and
fedjax's running mean are the models). A strategy chooses the kind with ``new_aggregate``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ClientMessage:
    """One client's upload as the strategy sees it: its update, its weight in a linear sum, side
    uploads summed unweighted (``extras``), and what the client keeps for its next task
    (``state``: names in the client-state store)."""

    update: np.ndarray
    weight: float
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    state: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Aggregate:
    keep_rows: bool = False
    total: np.ndarray | None = None  # Σ w_k s_k u_k, float64 (linear)
    weight: float = 0.0  # Σ w_k
    coverage: np.ndarray | None = None  # Σ w_k over the clients that uploaded each coordinate
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # Σ_k extra_k, float64
    rows: list[np.ndarray] = field(default_factory=list)  # s_k u_k (stacked)
    row_weights: list[float] = field(default_factory=list)
    row_index: list[np.ndarray | None] = field(default_factory=list)  # coordinates of each row
    count: int = 0  # messages added
    ring_bits: int | None = None  # ring aggregate: total is uint64, Σ_k y_k mod 2^ring_bits
    members: list[int] = field(default_factory=list)  # ring aggregate: who is in the sum

    @classmethod
    def linear(cls) -> Aggregate:
        return cls(keep_rows=False)

    @classmethod
    def stacked(cls) -> Aggregate:
        return cls(keep_rows=True)

    @classmethod
    def ring(cls, bits: int) -> Aggregate:
        """Masked integer vectors summed mod 2^bits (secure aggregation's server view)."""
        if not 1 <= bits <= 64:
            raise ValueError(f"a ring aggregate needs 1 <= bits <= 64, got {bits}")
        return cls(keep_rows=False, ring_bits=bits)

    @classmethod
    def of_sum(cls, total: np.ndarray, weight: float, **extras: np.ndarray) -> Aggregate:
        """A linear aggregate from a known sum Σ w_k u_k and weight Σ w_k (golden tests)."""
        extras = {k: np.asarray(v, dtype=np.float64) for k, v in extras.items()}
        total = np.asarray(total, dtype=np.float64)
        return cls(total=total, weight=float(weight), extras=extras, count=1)

    @classmethod
    def of_rows(cls, rows: np.ndarray, weights: np.ndarray) -> Aggregate:
        """A stacked aggregate of the rows of ``rows`` ([n, d]) with their weights."""
        rows = np.asarray(rows)
        return cls(
            keep_rows=True,
            rows=list(rows),
            row_weights=[float(w) for w in weights],
            row_index=[None] * len(rows),
            count=len(rows),
        )

    def add(
        self,
        update: np.ndarray,
        weight: float,
        *,
        scale: float = 1.0,
        index: np.ndarray | None = None,
        extras: Mapping[str, np.ndarray] | None = None,
        member: int | None = None,
    ) -> None:
        """Add one update with weight ``weight`` (and a factor ``scale`` that, unlike the weight,
        does not count in Σ w_k: FedBuff's staleness damping). ``index``: the coordinates a
        row-sparse upload carries. A ring aggregate takes a masked uint64 vector (weight,
        scale, index and extras do not apply) and records ``member``, the sender's id."""
        self.count += 1
        if self.ring_bits is not None:
            if weight != 0 or scale != 1.0 or index is not None or extras:
                raise ValueError("a ring aggregate sums masked vectors only, without weights")
            masked = np.asarray(update, dtype=np.uint64)
            self.total = masked.copy() if self.total is None else self._ring_sum(masked)
            self.members.append(int(member))
            return
        if self.keep_rows:
            self.rows.append(update if scale == 1.0 else np.asarray(update, np.float64) * scale)
            self.row_weights.append(float(weight))
            self.row_index.append(index)
        else:
            weighted = np.asarray(update, dtype=np.float64) * (scale * weight)
            self.total = weighted if self.total is None else self.total + weighted
            self.weight += weight
            if index is not None:
                if self.coverage is None:
                    self.coverage = np.zeros(len(weighted), dtype=np.float64)
                self.coverage[index] += weight
        for name, value in (extras or {}).items():
            value = np.asarray(value, dtype=np.float64)
            self.extras[name] = value if name not in self.extras else self.extras[name] + value

    def merge(self, other: Aggregate) -> Aggregate:
        """Fold ``other`` into this aggregate (in place) and return it. Associative; merge in a
        fixed order for bit-identical sums."""
        if other.keep_rows != self.keep_rows:
            raise ValueError("cannot merge a stacked aggregate with a linear one")
        if other.ring_bits != self.ring_bits:
            raise ValueError(
                "cannot merge ring aggregates of different rings, or with a linear one"
            )
        if self.ring_bits is not None:
            self.count += other.count
            self.members += other.members
            if other.total is not None:
                self.total = (
                    other.total.copy() if self.total is None else self._ring_sum(other.total)
                )
            return self
        self.count += other.count
        self.rows += other.rows
        self.row_weights += other.row_weights
        self.row_index += other.row_index
        if other.total is not None:
            self.total = other.total.copy() if self.total is None else self.total + other.total
        self.weight += other.weight
        if other.coverage is not None:
            self.coverage = (
                other.coverage.copy() if self.coverage is None else self.coverage + other.coverage
            )
        for name, value in other.extras.items():
            self.extras[name] = (
                value.copy() if name not in self.extras else self.extras[name] + value
            )
        return self

    def _ring_sum(self, masked: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # uint64 wraps around: arithmetic mod 2^64
            total = self.total + masked
        return total if self.ring_bits == 64 else total & np.uint64((1 << self.ring_bits) - 1)

    def unmasked(self, total: np.ndarray | None, weight: float) -> None:
        """Turn a ring aggregate into the linear sum the unmasking recovered (in place): Σ w_k u_k
        and Σ w_k; ``total`` None leaves it empty (the round failed: nothing to step with).
        ``members`` stays, for the record."""
        self.ring_bits = None
        if total is None:
            self.total, self.weight, self.count = None, 0.0, 0
        else:
            self.total, self.weight = np.asarray(total, dtype=np.float64), float(weight)

    def mean(self) -> np.ndarray:
        """Σ w_k s_k u_k / Σ w_k in float64 — per coordinate over the clients that uploaded it when
        uploads were row-sparse (FedE's per-entity average); coordinates nobody uploaded are 0."""
        if self.ring_bits is not None:
            raise ValueError("a ring aggregate is masked: unmask it before taking its mean")
        total = self.total
        if self.coverage is not None:
            # Rescaled so that dividing by Σ w_k averages each coordinate over its uploaders.
            scale = np.divide(
                self.weight,
                self.coverage,
                out=np.zeros_like(self.coverage),
                where=self.coverage > 0,
            )
            total = total * scale
        return np.asarray(total, dtype=np.float64) / float(self.weight)

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """The stacked rows as an [n, d] matrix and their weights."""
        return np.stack(self.rows), np.asarray(self.row_weights, dtype=np.float64)

    @property
    def empty(self) -> bool:
        if self.ring_bits is not None:
            return self.count == 0
        return self.count == 0 or (not self.keep_rows and self.weight <= 0)
