"""Strategies: plain maths over explicit state (one paper per module; the contract is in
:mod:`fedray.strategies.base`)."""

from __future__ import annotations

from fedray.strategies.aggregate import Aggregate, ClientMessage
from fedray.strategies.base import ClientTask, LocalResult, ServerState, Strategy
from fedray.strategies.fedasync import FedAsync
from fedray.strategies.fedavg import FedAvg
from fedray.strategies.fedavgm import FedAvgM
from fedray.strategies.fedbuff import FedBuff
from fedray.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from fedray.strategies.fedprox import FedProx
from fedray.strategies.robust import RobustAggregation
from fedray.strategies.scaffold import Scaffold, ScaffoldState
from fedray.strategies.staleness import StalenessWeight

_FEDOPT = {"fedadagrad": FedAdagrad, "fedadam": FedAdam, "fedyogi": FedYogi}


def staleness_weight(async_cfg) -> StalenessWeight:
    """s(τ) as configured in :class:`fedray.config.AsyncConfig`."""
    return StalenessWeight(async_cfg.staleness, async_cfg.staleness_a, async_cfg.staleness_b)


def make_server_strategy(cfg, num_clients: int = 1, async_cfg=None) -> Strategy:
    """The strategy named by a :class:`fedray.config.StrategyConfig` (its server step)."""
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
        return Scaffold(num_clients=num_clients, **options)
    if cfg.name == "fedasync":
        options.pop("server_lr", None)  # FedAsync's step size is alpha
        weight = staleness_weight(async_cfg) if async_cfg is not None else StalenessWeight()
        return FedAsync(staleness=weight, **options)
    raise ValueError(f"unknown strategy {cfg.name!r}")


def make_strategy(cfg) -> Strategy:
    """The run's strategy for a whole :class:`fedray.config.Config`: in asynchronous runs any
    strategy but FedAsync is FedBuff's server step."""
    strategy = make_server_strategy(cfg.strategy, cfg.clients.num_clients, cfg.asynchronous)
    if cfg.mode == "async" and not isinstance(strategy, FedAsync):
        acfg = cfg.asynchronous
        return FedBuff(
            inner=strategy,
            buffer_size=acfg.buffer_size or 10,
            staleness=staleness_weight(acfg),
            weighting=acfg.weighting,
        )
    return strategy


__all__ = [
    "Aggregate",
    "ClientMessage",
    "ClientTask",
    "FedBuff",
    "LocalResult",
    "Strategy",
    "make_server_strategy",
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
