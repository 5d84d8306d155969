"""What the sync and async drivers share: a run's inputs, its explicit state, the links and the
error-feedback residual store. Each driver adds only its own loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedray.clients.profiles import ProfileModel
from fedray.clients.state_store import ClientStateStore
from fedray.compression import make_codec
from fedray.config import Config
from fedray.errors import UserError
from fedray.execution.layout import FlatLayout
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


def per_row_sum(update_sum: np.ndarray, coverage: np.ndarray, weight_sum: float) -> np.ndarray:
    """Rescale Σ n_k Δ_k so that dividing by Σ n_k (what every linear strategy does) averages
    each coordinate over the clients that uploaded it: row-table rows by the clients holding
    that row (FedE's per-entity average), shared coordinates by everyone (factor 1). Coordinates
    nobody uploaded (private ones, untouched rows) stay 0."""
    scale = np.divide(weight_sum, coverage, out=np.zeros_like(coverage), where=coverage > 0)
    return update_sum * scale


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
        model = workload.build_model()
        segments = tuple(p.numel() for p in model.parameters())
        # (fedray.api has already refused what the layout cannot take, before the pool started)
        self.flat = FlatLayout.of(model, workload.parameter_layout())
        self.links = Links(cfg, segments, self.flat)
        self.state_dir = state_dir
        self.residuals = self.links.residual_store(cfg.execution.client_state_mb, state_dir)
        # Private parameters (user embeddings, local relations) live here between a client's
        # tasks, bounded in memory and spilled like residuals; they never reach the server.
        self.privates, self.privates_dir = None, None
        if self.flat.private_index.size:
            self.privates_dir = None if state_dir is None else Path(state_dir) / "private"
            budget = cfg.execution.client_state_mb * 2**20
            self.privates = ClientStateStore(budget, self.privates_dir)

    def num_client_rows(self, client_ids):
        """Rows each client will upload (None without row tables)."""
        if not self.flat.tables:
            return None
        return np.asarray(self.workload.num_client_rows(client_ids), dtype=np.int64)

    def group_privates(self, tasks) -> dict:
        """The stored private parameters of a group's clients (absent: first participation)."""
        if self.privates is None:
            return {}
        return {t.client_id: p for t in tasks if (p := self.privates.get(t.client_id)) is not None}

    def eval_privates(self) -> dict | None:
        """A snapshot of the eval clients' private parameters, taken on the driver thread (the
        store is not thread-safe; evaluation may run on another thread)."""
        if self.privates is None:
            return None
        ids = self.evaluate.client_ids
        return {int(c): p for c in ids if (p := self.privates.get(int(c))) is not None}

    def close(self) -> None:
        """Delete the run's per-client state (spill files and their folder)."""
        if self.privates is not None:
            close_residual_store(self.privates, self.privates_dir)
        close_residual_store(self.residuals, self.state_dir)


# Downlink codecs whose decoded value of a coordinate does not depend on the others: a client
# that downloads only its rows then starts from exactly the values of the full broadcast.
ELEMENTWISE_DOWNLINKS = ("none", "fp16", "bf16")


def check_layout_support(cfg: Config, workload: Workload, flat: FlatLayout) -> None:
    """What a workload with private parameters or row-sparse tables cannot be combined with."""
    if flat.dense:
        return
    if cfg.strategy.name == "scaffold":
        raise UserError(
            f"scaffold's control variates assume a dense model; workload {workload.name} has "
            "private parameters or row-sparse tables — choose another strategy"
        )
    downlink = cfg.compression.downlink.name
    if flat.download_rows and downlink not in ELEMENTWISE_DOWNLINKS:
        raise UserError(
            f"workload {workload.name} sends each client only its rows, but downlink codec "
            f"{downlink} scales whole tensors; use compression.downlink none, fp16 or bf16"
        )
    uplink = make_codec(cfg.compression.uplink)
    if flat.tables and uplink.uses_error_feedback:
        raise UserError(
            f"error feedback keeps a residual of fixed shape, but workload {workload.name} uploads "
            f"a different row set each time; set compression.uplink.error_feedback: false for "
            f"{uplink.name}"
        )


def check_privacy_support(cfg: Config, workload: Workload, flat: FlatLayout, profiles) -> None:
    """What DP-FedAvg (``privacy``) cannot be combined with, known only once the workload and the
    device trace are loaded (the config refuses the rest)."""
    if cfg.privacy is None:
        return
    if not flat.dense:
        # Per-row averaging divides by how many clients uploaded each row, and private
        # parameters never reach the server: neither fits one clipped, noised, fixed-denominator sum.
        raise UserError(
            f"privacy needs a dense model, but workload {workload.name} has private parameters "
            "or row-sparse tables; remove privacy or choose a dense workload"
        )
    trace = getattr(profiles, "trace", None)
    if trace is not None and "availability" in trace and np.any(trace["availability"] != 1):
        raise UserError(
            "privacy accounting assumes every client is always available, but the device trace's "
            "availability column is below 1; set it to 1, drop the column, or remove privacy"
        )
