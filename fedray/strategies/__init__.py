"""Server strategies: plain maths over explicit state (one paper per module)."""

from __future__ import annotations

from fedray.strategies.base import ServerState
from fedray.strategies.fedavg import FedAvg
from fedray.strategies.fedavgm import FedAvgM
from fedray.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from fedray.strategies.fedprox import FedProx
from fedray.strategies.robust import RobustAggregation

_FEDOPT = {"fedadagrad": FedAdagrad, "fedadam": FedAdam, "fedyogi": FedYogi}


def make_strategy(cfg):
    """Build the strategy named by a :class:`fedray.config.StrategyConfig`."""
    options = {k: v for k, v in cfg.model_dump(exclude={"name"}).items() if v is not None}
    if cfg.name == "fedavg":
        return FedAvg(**options)
    if cfg.name == "fedprox":
        return FedProx(mu=options.pop("mu", 0.0), **options)
    if cfg.name == "fedavgm":
        return FedAvgM(**options)
    if cfg.name in _FEDOPT:
        return _FEDOPT[cfg.name](**options)
    if cfg.name == "robust":
        return RobustAggregation(**options)
    raise ValueError(f"unknown strategy {cfg.name!r}")


__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "RobustAggregation",
    "ServerState",
    "make_strategy",
]
