"""What the sync and async drivers share: a run's inputs, its explicit state, the links and the
error-feedback residual store. Each driver adds only its own loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fedray.clients.profiles import ProfileModel
from fedray.config import Config
from fedray.execution.pool import WorkerPool
from fedray.sim.evaluation import Evaluator, initial_params
from fedray.sim.links import Links, close_residual_store
from fedray.strategies import ServerState, make_strategy
from fedray.workloads import Workload


@dataclass
class DriverState:
    """Everything the driver carries from one server step to the next."""

    server: ServerState
    round: int = 0
    sim_time_s: float = 0.0
    cum_bytes_up: int = 0
    cum_bytes_down: int = 0


def enough_updates(strategy, n: int) -> bool:
    """Whether a robust rule can aggregate ``n`` updates. When dropouts leave too few (Krum needs
    two to compare, Multi-Krum at least m) the step keeps the model rather than failing."""
    rule, m = getattr(strategy, "rule", None), getattr(strategy, "m", None)
    if rule in ("krum", "multi_krum") and n < 2:
        return False
    return not (rule == "multi_krum" and m is not None and m > n)


class Driver:
    """The shared part of a driver; subclasses implement ``run() -> DriverState``."""

    def __init__(
        self,
        cfg: Config,
        workload: Workload,
        profiles: ProfileModel,
        pool: WorkerPool,
        evaluator: Evaluator,
        recorder: Callable[..., None],
        state_dir=None,
    ):
        self.cfg = cfg
        self.workload = workload
        self.profiles = profiles
        self.pool = pool
        self.evaluate = evaluator
        self.record = recorder
        self.strategy = make_strategy(cfg.strategy, cfg.asynchronous)
        params = initial_params(workload, cfg.seed)
        self.state = DriverState(server=self.strategy.init(params))
        segments = tuple(p.numel() for p in workload.build_model().parameters())
        self.links = Links(cfg, segments, params.size)
        self.state_dir = state_dir
        self.residuals = self.links.residual_store(cfg.execution.client_state_mb, state_dir)

    def close(self) -> None:
        """Delete the run's per-client state (spill files and their folder)."""
        close_residual_store(self.residuals, self.state_dir)
