"""Energy of a client task, from its work and its bytes (all vectorised, pure).

For one task with ``n`` samples trained (``num_samples`` × epochs), ``B↓`` bytes received, ``B↑``
bytes sent and a duration of ``T`` seconds, on a device with profile fields ``compute_j_per_sample``
(e_c), ``down_j_per_mb`` (e↓), ``up_j_per_mb`` (e↑) and ``idle_w`` (P₀)::

    E = e_c · n + e↓ · B↓ / 10⁶ + e↑ · B↑ / 10⁶ + P₀ · T

— the linear model of the mobile-FL energy literature (compute energy proportional to the work,
radio energy proportional to the bytes, plus a baseline power for the time the device is kept
awake; e.g. Tran et al. 2019, "Federated Learning over Wireless Networks: Optimization Model
Design and Analysis", and the per-byte radio figures of Huang et al. 2012, MobiSys). Each phase's
energy is spent at a constant rate over the phase (download, compute, upload, in that order), so
a task stopped part-way (a drop, a round closing on a straggler, an empty battery) has spent the
matching share, and the instant a battery runs out is found exactly (:func:`depletion_s`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.clients.profiles import Profiles
from fedray.sim.costmodel import TaskTimes

MB = 1e6


@dataclass(frozen=True)
class PhaseEnergy:
    """Joules of each phase of a whole task (without the idle baseline), and the idle watts."""

    download_j: np.ndarray
    compute_j: np.ndarray
    upload_j: np.ndarray
    idle_w: np.ndarray


def phase_energy(profiles: Profiles, num_samples, epochs, bytes_down, bytes_up) -> PhaseEnergy:
    """The energy a whole task would take, per phase."""
    work = np.asarray(num_samples, dtype=np.float64) * np.asarray(epochs, dtype=np.float64)
    return PhaseEnergy(
        download_j=profiles.down_j_per_mb * np.asarray(bytes_down, dtype=np.float64) / MB,
        compute_j=profiles.compute_j_per_sample * work,
        upload_j=profiles.up_j_per_mb * np.asarray(bytes_up, dtype=np.float64) / MB,
        idle_w=np.asarray(profiles.idle_w, dtype=np.float64),
    )


def _share(spent: np.ndarray, whole: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(whole > 0, np.clip(spent / whole, 0.0, 1.0), 1.0)


def spent_energy(energy: PhaseEnergy, whole: TaskTimes, spent: TaskTimes) -> np.ndarray:
    """Joules spent by tasks that ran ``spent`` of their ``whole`` phase times."""
    return (
        energy.download_j * _share(spent.download_s, whole.download_s)
        + energy.compute_j * _share(spent.compute_s, whole.compute_s)
        + energy.upload_j * _share(spent.upload_s, whole.upload_s)
        + energy.idle_w * (spent.download_s + spent.compute_s + spent.upload_s)
    )


def depletion_s(energy: PhaseEnergy, whole: TaskTimes, budget_j) -> np.ndarray:
    """Seconds after dispatch at which a task has spent ``budget_j`` joules; inf where the whole
    task costs no more than that."""
    budget = np.asarray(budget_j, dtype=np.float64)
    out = np.full(budget.shape, np.inf)
    elapsed = np.zeros(budget.shape)
    left = budget.copy()
    open_ = np.ones(budget.shape, dtype=bool)
    for seconds, joules in (
        (whole.download_s, energy.download_j),
        (whole.compute_s, energy.compute_j),
        (whole.upload_s, energy.upload_j),
    ):
        phase = joules + energy.idle_w * seconds
        runs_out = open_ & (phase > left)
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(seconds > 0, phase / np.where(seconds > 0, seconds, 1.0), np.inf)
            at = elapsed + np.where(np.isfinite(rate), left / rate, 0.0)
        out = np.where(runs_out, at, out)
        open_ &= ~runs_out
        left = left - phase
        elapsed = elapsed + seconds
    return out
