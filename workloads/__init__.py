"""Federated workloads (installed as ``fedray.workloads``)."""

from __future__ import annotations

from fedray.workloads.base import ClientData, Workload


def make_workload(cfg, seed: int) -> Workload:
    """Build the workload named by a :class:`fedray.config.WorkloadConfig`."""
    if cfg.name == "synthetic":
        from fedray.workloads.synthetic import Synthetic

        return Synthetic(cfg, seed)
    raise ValueError(f"unknown workload {cfg.name!r}")


__all__ = ["ClientData", "Workload", "make_workload"]
