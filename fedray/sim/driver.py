"""What the sync and async drivers share: a run's inputs, its explicit state (one dataclass,
checkpointed), the links, the client-state store and the server-side transforms. Each driver adds
only its own loop."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedray.clients.profiles import ProfileModel
from fedray.clients.state_store import ClientStates
from fedray.compression import make_codec
from fedray.config import Config
from fedray.errors import UserError
from fedray.execution.layout import FlatLayout
from fedray.execution.pool import WorkerPool
from fedray.execution.transforms import Pipeline
from fedray.execution.worker import PRIVATE
from fedray.sim import checkpoint
from fedray.sim.conditions import Conditions
from fedray.sim.evaluation import Evaluator, initial_params
from fedray.sim.links import Links, remove_if_empty
from fedray.strategies import make_strategy
from fedray.workloads import Workload


@dataclass
class DriverState:
    """Everything the driver carries from one server step to the next. The async driver keeps
    its event queue in ``queue`` (plain containers); the client-state store is saved beside it."""

    server: object  # the strategy's state (model, optimizer moments, control variate, ...)
    round: int = 0
    sim_time_s: float = 0.0
    cum_bytes_up: int = 0
    cum_bytes_down: int = 0
    cum_energy_j: float = 0.0
    queue: dict = field(default_factory=dict)


class Stop(Exception):  # noqa: N818 - a request, not an error
    """A signal asked the run to stop; the driver checkpointed first."""

    def __init__(self, signum: int, round_: int):
        super().__init__(f"stopped by signal {signum} after round {round_}")
        self.signum, self.round = signum, round_


class Driver:
    """The shared part of a driver; subclasses implement ``run() -> DriverState``.

    ``checkpoint_every``: server steps between checkpoints (0: none), also written at the end and
    when ``stop_requested()`` returns a signal number."""

    def __init__(
        self,
        cfg: Config,
        workload: Workload,
        profiles: ProfileModel,
        pool: WorkerPool,
        evaluator: Evaluator,
        recorder: Callable[..., None],
        state_dir=None,
        *,
        run_path: Path | None = None,
        checkpoint_every: int = 0,
        stop_requested: Callable[[], int | None] = lambda: None,
        on_checkpoint: Callable[[], dict] = dict,
    ):
        self.cfg = cfg
        self.workload = workload
        self.profiles = profiles
        self.pool = pool
        self.evaluate = evaluator
        self.record = recorder
        self.strategy = make_strategy(cfg)
        params = initial_params(workload, cfg.seed)
        self.state = DriverState(server=self.strategy.init(params))
        model = workload.build_model()
        segments = tuple(p.numel() for p in model.parameters())
        # (fedray.api has already refused what the layout cannot take, before the pool started)
        self.flat = FlatLayout.of(model, workload.parameter_layout())
        self.links = Links(cfg, segments, self.flat)
        self.pipeline = Pipeline.of(
            cfg, self.flat, segments, workload.name, getattr(workload, "num_classes", None)
        )
        self.state_dir = None if state_dir is None else Path(state_dir)
        # Everything clients remember between tasks (residuals, private parameters, control
        # variates), bounded in memory and spilled to the run's folder.
        self.client_states = ClientStates(cfg.execution.client_state_mb * 2**20, self.state_dir)
        # Availability over virtual time, batteries and energy (their state is in client_states)
        self.conditions = Conditions(cfg, profiles, self.client_states)
        self.run_path = run_path
        self.checkpoint_every = checkpoint_every
        self.stop_requested = stop_requested
        self.on_checkpoint = on_checkpoint  # the sinks' positions, saved with the state

    def num_client_rows(self, client_ids):
        """Rows each client will upload (None without row tables)."""
        if not self.flat.tables:
            return None
        return np.asarray(self.workload.num_client_rows(client_ids), dtype=np.int64)

    def broadcast(self, key: int) -> tuple[dict, int]:
        """What clients receive — the model and the strategy's downlink extras, each as decoded
        from the downlink codec — and the payload bytes; ``key``: the round or model version."""
        received, nbytes = {}, 0
        arrays = {"params": self.state.server.params, **self.strategy.downlink(self.state.server)}
        for name, value in arrays.items():
            received[name], size = self.links.broadcast(value, key)
            nbytes += size
        return received, nbytes

    def eval_privates(self) -> dict | None:
        """A snapshot of the eval clients' private parameters, taken on the driver thread (the
        store is not thread-safe; evaluation may run on another thread)."""
        if not self.flat.private_index.size:
            return None
        ids = self.evaluate.client_ids
        return {
            int(c): p for c in ids if (p := self.client_states.get(int(c), PRIVATE)) is not None
        }

    # ------------------------------------------------------------------ checkpoints

    def after_step(self) -> None:
        """Checkpoint when due, and stop (after checkpointing) when a signal asked to."""
        signum = self.stop_requested()
        due = self.checkpoint_every and self.state.round % self.checkpoint_every == 0
        if self.run_path is not None and (due or signum is not None):
            self.save_checkpoint()
        if signum is not None:
            raise Stop(signum, self.state.round)

    def save_checkpoint(self) -> None:
        state = self.state
        saved = {
            "server": checkpoint.dataclass_fields(state.server),
            "round": state.round,
            "sim_time_s": state.sim_time_s,
            "cum_bytes_up": state.cum_bytes_up,
            "cum_bytes_down": state.cum_bytes_down,
            "cum_energy_j": state.cum_energy_j,
            "queue": state.queue,
            "transforms": self.pipeline.server_state(),  # adaptive clipping's C
            "sinks": self.on_checkpoint(),
        }
        checkpoint.save(self.run_path, saved, self.client_states)

    def restore(self, saved: dict) -> None:
        """Continue from a checkpoint's state (:func:`fedray.sim.checkpoint.load`)."""
        server = checkpoint.rebuild(self.state.server, saved["server"])
        self.state = DriverState(
            server=server,
            round=int(saved["round"]),
            sim_time_s=float(saved["sim_time_s"]),
            cum_bytes_up=int(saved["cum_bytes_up"]),
            cum_bytes_down=int(saved["cum_bytes_down"]),
            cum_energy_j=float(saved.get("cum_energy_j", 0.0)),
            queue=saved.get("queue") or {},
        )
        self.pipeline.load_server_state(saved.get("transforms") or {})
        if self.state_dir is not None:  # spill files a killed process left behind
            self.client_states.close()
            shutil.rmtree(self.state_dir, ignore_errors=True)
            budget = self.cfg.execution.client_state_mb * 2**20
            self.client_states = ClientStates(budget, self.state_dir)
            self.conditions.use_states(self.client_states)
        self.client_states.load(checkpoint.client_state_path(self.run_path))

    def close(self) -> None:
        """Delete the run's per-client spill files (and their folder if then empty)."""
        self.client_states.close()
        remove_if_empty(self.state_dir)


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


def check_secure_aggregation_support(cfg: Config, workload: Workload, flat: FlatLayout) -> None:
    """What secure aggregation cannot be combined with, known once the workload is loaded."""
    if cfg.secure_aggregation is not None and not flat.dense:
        # Row-sparse uploads differ in their coordinates per client, and per-row averaging needs
        # each row's uploader count: neither survives summing masked dense vectors.
        raise UserError(
            f"secure_aggregation needs a dense model, but workload {workload.name} has private "
            "parameters or row-sparse tables; remove secure_aggregation or choose a dense workload"
        )
