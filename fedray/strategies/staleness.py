"""Staleness weighting functions s(τ) of asynchronous aggregation.

Xie, Koyejo, Gupta. "Asynchronous Federated Optimization" (FedAsync), OPT workshop 2020
(arXiv:1903.03934), Sec. 5.2. With staleness τ = (server version at arrival) − (version the client
was dispatched with):

    constant:    s(τ) = 1
    polynomial:  s(τ) = (τ + 1)^(−a)
    hinge:       s(τ) = 1                       if τ ≤ b
                        1 / (a · (τ − b) + 1)   otherwise

FedBuff (Nguyen et al. 2022) weights each buffered update by 1/sqrt(1 + τ): the polynomial with
a = 1/2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FUNCTIONS = ("constant", "polynomial", "hinge")


@dataclass(frozen=True)
class StalenessWeight:
    function: str = "polynomial"
    a: float = 0.5
    b: float = 4.0

    def __post_init__(self):
        if self.function not in FUNCTIONS:
            raise ValueError(
                f"staleness function {self.function!r} is unknown; use one of {', '.join(FUNCTIONS)}"
            )
        if self.a < 0 or self.b < 0:
            raise ValueError(f"staleness a and b must be >= 0, got a={self.a}, b={self.b}")

    def __call__(self, staleness) -> np.ndarray | float:
        tau = np.asarray(staleness, dtype=np.float64)
        if np.any(tau < 0):
            raise ValueError("staleness cannot be negative")
        if self.function == "constant":
            s = np.ones_like(tau)
        elif self.function == "polynomial":
            s = (tau + 1.0) ** (-self.a)
        else:
            s = np.where(tau <= self.b, 1.0, 1.0 / (self.a * (tau - self.b) + 1.0))
        return float(s) if s.ndim == 0 else s
