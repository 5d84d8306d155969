"""Server strategies: plain maths over explicit state (one paper per module)."""

from __future__ import annotations

from fedray.strategies.base import ServerState
from fedray.strategies.fedasync import FedAsync
from fedray.strategies.fedavg import FedAvg
from fedray.strategies.fedavgm import FedAvgM
from fedray.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from fedray.strategies.fedprox import FedProx
from fedray.strategies.robust import RobustAggregation
from fedray.strategies.scaffold import Scaffold, ScaffoldState
from fedray.strategies.staleness import StalenessWeight

_FEDOPT = {"fedadagrad": FedAdagrad, "fedadam": FedAdam, "fedyogi": FedYogi}


def staleness_weight(async_cfg) -> StalenessWeight:
    """s(τ) as configured in :class:`fedray.config.AsyncConfig`."""
    return StalenessWeight(async_cfg.staleness, async_cfg.staleness_a, async_cfg.staleness_b)


def make_strategy(cfg, async_cfg=None):
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
    if cfg.name == "scaffold":
        return Scaffold(**options)
    if cfg.name == "fedasync":
        options.pop("server_lr", None)  # FedAsync's step size is alpha
        weight = staleness_weight(async_cfg) if async_cfg is not None else StalenessWeight()
        return FedAsync(staleness=weight, **options)
    raise ValueError(f"unknown strategy {cfg.name!r}")


__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedAsync",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "RobustAggregation",
    "Scaffold",
    "ScaffoldState",
    "ServerState",
    "StalenessWeight",
    "make_strategy",
    "staleness_weight",
]
