"""The cost model: how long a client task takes in simulated seconds.

    download = bytes_down · 8 / (down_mbps · 10⁶) + latency_ms / 1000
    compute  = num_samples · epochs / speed
    upload   = bytes_up · 8 / (up_mbps · 10⁶) + latency_ms / 1000

All functions are vectorised over arrays of clients and pure: no clocks, no Ray, no sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedray.clients.profiles import Profiles


@dataclass(frozen=True)
class TaskTimes:
    download_s: np.ndarray
    compute_s: np.ndarray
    upload_s: np.ndarray

    @property
    def total_s(self) -> np.ndarray:
        return self.download_s + self.compute_s + self.upload_s


def transfer_seconds(num_bytes, mbps, latency_ms) -> np.ndarray:
    return np.asarray(num_bytes, dtype=np.float64) * 8.0 / (np.asarray(mbps) * 1e6) + (
        np.asarray(latency_ms) / 1000.0
    )


def task_times(profiles: Profiles, num_samples, epochs, bytes_down, bytes_up) -> TaskTimes:
    """Phase durations of one task per client."""
    compute = np.asarray(num_samples, dtype=np.float64) * np.asarray(epochs) / profiles.speed
    return TaskTimes(
        download_s=transfer_seconds(bytes_down, profiles.down_mbps, profiles.latency_ms),
        compute_s=compute,
        upload_s=transfer_seconds(bytes_up, profiles.up_mbps, profiles.latency_ms),
    )


def epochs_within(
    deadline_s: float, profiles: Profiles, num_samples, max_epochs: int, times: TaskTimes
) -> np.ndarray:
    """Whole local epochs that fit the deadline after transfers, clipped to [1, max_epochs].

    The floor of one epoch is FedProx's "partial work" contract: a straggler always contributes
    something, even if a single epoch overruns the deadline.
    """
    budget = deadline_s - times.download_s - times.upload_s
    per_epoch = np.asarray(num_samples, dtype=np.float64) / profiles.speed
    fit = np.floor(np.maximum(budget, 0.0) / per_epoch + 1e-9)
    return np.clip(fit, 1, max_epochs).astype(np.int64)


def truncate_at(times: TaskTimes, stop_s) -> TaskTimes:
    """Phase durations actually spent when a task stops at ``stop_s`` seconds after dispatch."""
    stop = np.asarray(stop_s, dtype=np.float64)
    download = np.minimum(times.download_s, stop)
    compute = np.clip(stop - times.download_s, 0.0, times.compute_s)
    upload = np.clip(stop - times.download_s - times.compute_s, 0.0, times.upload_s)
    return TaskTimes(download, compute, upload)
