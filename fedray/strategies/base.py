"""What every server strategy shares: an explicit, immutable server state.

A strategy is plain maths (see shared/STYLE.md): ``init(params) -> state`` and
``apply(state, update_sum, weight_sum) -> state`` over numpy arrays. The driver owns the loop,
scheduling and I/O, so a strategy is testable on a handful of numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ServerState:
    params: np.ndarray  # flat float32 model parameters
    version: int = 0  # number of server updates applied


def mean_update(update_sum: np.ndarray, weight_sum: float) -> np.ndarray:
    """Δ = (Σ_k n_k Δ_k) / (Σ_k n_k), in float64: the averaged pseudo-gradient every linear
    strategy starts from."""
    return np.asarray(update_sum, dtype=np.float64) / float(weight_sum)


def weighted_mean_step(
    params: np.ndarray, update_sum: np.ndarray, weight_sum: float, server_lr: float
) -> np.ndarray:
    """x + η_s · (Σ_k n_k Δ_k) / (Σ_k n_k), computed in float64 and returned as float32."""
    return (params.astype(np.float64) + server_lr * mean_update(update_sum, weight_sum)).astype(
        np.float32
    )
