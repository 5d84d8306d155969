"""Server strategies: plain maths over explicit state."""

from __future__ import annotations

from fedray.strategies.base import ServerState
from fedray.strategies.fedavg import FedAvg
from fedray.strategies.fedprox import FedProx


def make_strategy(cfg):
    """Build the strategy named by a :class:`fedray.config.StrategyConfig`."""
    if cfg.name == "fedavg":
        return FedAvg(server_lr=cfg.server_lr)
    if cfg.name == "fedprox":
        return FedProx(mu=cfg.mu, server_lr=cfg.server_lr)
    raise ValueError(f"unknown strategy {cfg.name!r}")


__all__ = ["FedAvg", "FedProx", "ServerState", "make_strategy"]
