"""``fedray.run``: one simulation from a validated config to a run directory on disk.

    import fedray
    result = fedray.run(fedray.load_config("configs/fedavg_synthetic.yaml", overrides=["rounds=5"]))
    result.rounds  # pandas DataFrame

Owns the lifetime of everything a run needs — Ray (started locally unless an address is given or
Ray is already initialised), the worker pool, the run directory and its sinks — and reports the
start-up cost (Ray, pool, data) apart from the rounds' wall time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from fedray.config import Config, dump_config
from fedray.errors import RunInterrupted, UserError
from fedray.results.result import Result
from fedray.results.writer import CONFIG_FILE, PARTITION_FILE, TB_DIR, RunDirectory

log = logging.getLogger("fedray")


def _default_run_name(cfg: Config) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{cfg.source_name}"
    suffix = 2
    while (cfg.output.root / name).exists():
        name = f"{stamp}-{cfg.source_name}-{suffix}"
        suffix += 1
    return name


def check_address(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast on an unreachable ``host:port`` — ``ray.init`` would retry for minutes."""
    import socket

    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"Ray address {address!r} must look like HOST:PORT, e.g. 127.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise UserError(
            f"no Ray cluster answers at {address!r} ({err.strerror or err}); start one with "
            "'ray start --head' or drop --address to run on a local Ray"
        ) from None


def keep_local_ray_on_loopback(cfg: Config) -> None:
    """Make a Ray that this process will start itself listen on 127.0.0.1 only.

    On Linux, Ray replaces a 127.0.0.1 node address with the host's network address and binds its
    servers (GCS, raylet, workers) on every interface; with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
    (read once, when ``ray`` is imported) it keeps a local instance on loopback. Not for a driver
    joining a cluster (``execution.address``): the cluster must be able to reach it.
    """
    if not cfg.execution.address and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def start_ray(cfg: Config, verbose: bool) -> bool:
    """Connect to or start Ray. Returns True if this call started it (and must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    level = logging.INFO if verbose else logging.ERROR
    common = dict(logging_level=level, log_to_driver=verbose, configure_logging=True)
    if cfg.execution.address:
        try:
            ray.init(address=cfg.execution.address, **common)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise UserError(
                f"cannot connect to a Ray cluster at {cfg.execution.address!r} ({err}); "
                "check the address, or drop --address to start a local Ray"
            ) from None
        return True
    needed = cfg.execution.cpus_per_worker * (cfg.execution.num_workers or 1)
    ray.init(
        num_cpus=max(os.cpu_count() or 1, int(np.ceil(needed)))
        if cfg.execution.num_workers
        else None,
        num_gpus=None,
        include_dashboard=False,
        # A local simulator has no business listening beyond this machine.
        _node_ip_address="127.0.0.1",
        object_store_memory=cfg.execution.object_store_mb * 2**20,
        **common,
    )
    return True


def stop_ray() -> None:
    """``ray.shutdown()`` without its idle second. Ray stops its daemons one by one, the GCS
    before the autoscaler monitor, whose SIGTERM handler then reports to the GCS that is gone
    and hangs until Ray kills it a second later. A local Ray has no autoscaler to tell, so the
    monitor is killed first (if Ray's internals moved, this is plain ``ray.shutdown()``)."""
    import ray

    with contextlib.suppress(Exception):
        node = ray._private.worker._global_node
        for info in node.all_processes.get(ray._private.ray_constants.PROCESS_TYPE_MONITOR, []):
            info.process.kill()
            info.process.wait(timeout=1)
    ray.shutdown()


# What run() needs once Ray is up: imported on a thread while ray.init waits for its daemons,
# since torch alone takes ~1.2 s and ray.init ~2.5 s of mostly waiting.
_ENGINE_MODULES = (
    "torch",
    "fedray.workloads",
    "fedray.execution.pool",
    "fedray.sim.sync_driver",
    "fedray.sim.async_driver",
    "fedray.sim.evaluation",
    "fedray.results.tensorboard",
    "fedray.attacks",
    "fedray.progress",
)


def _import_engine(workload: str) -> threading.Thread:
    """Start importing the engine (and the run's workload module) on a daemon thread."""

    def work() -> None:
        import importlib

        try:
            for name in _ENGINE_MODULES:
                importlib.import_module(name)
            from fedray.workloads import workload_class

            workload_class(workload)
        except BaseException:  # noqa: BLE001 - the main thread's own import raises it again
            return

    thread = threading.Thread(target=work, name="fedray-imports", daemon=True)
    thread.start()
    return thread


def check_memory_eligibility(cfg: Config, needed: int, too_small: int) -> None:
    """Refuse what clients too small for the training footprint make impossible."""
    n = cfg.clients.num_clients
    if too_small == n:
        raise UserError(
            f"no client's memory_gb holds the workload's training footprint of "
            f"{needed / 1e9:.3g} GB; raise clients.profile.memory_gb or shrink the model or "
            "batch size"
        )
    if too_small and cfg.privacy is not None:
        raise UserError(
            f"{too_small} of {n} clients cannot hold the training footprint, but privacy "
            "accounting assumes every client can be sampled; raise memory_gb or remove privacy"
        )


def _privacy_summary(cfg: Config, rounds: int) -> dict | None:
    """The run's DP-FedAvg guarantee after ``rounds`` rounds (None without ``privacy``)."""
    from fedray.privacy import Accountant

    accountant = Accountant.of(cfg)
    if accountant is None:
        return None
    return {
        "epsilon": accountant.epsilon(rounds),
        "delta": accountant.delta,
        "noise_multiplier": accountant.noise_multiplier,
        "clip_norm": cfg.privacy.clip_norm,
        "sample_rate": accountant.sample_rate,
        "accountant": accountant.name,
        "sampling": accountant.sampling,
        "kind": cfg.privacy.kind,
        "adaptive_clipping": cfg.privacy.adaptive_clipping is not None,
    }


@contextlib.contextmanager
def stop_on_signals():
    """While the driver runs, SIGINT and SIGTERM ask it to checkpoint and stop at the next
    server step instead of dying mid-round; yields the function the driver polls. (Only the
    main thread can install handlers; elsewhere signals keep their default behaviour.)"""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def request(signum, frame):
        received.append(signum)

    previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(
    cfg: Config,
    *,
    progress: bool = True,
    verbose: bool = False,
    on_round: Callable[[dict], None] | None = None,
    resume: bool = False,
) -> Result:
    """Run the simulation described by ``cfg`` and return its :class:`Result`.

    ``on_round``, if given, is called in the driver process with each row of ``rounds.parquet``
    (a dict) once it is recorded: a hook for live monitoring (e.g. ``benchmarks/bench_soak.py``
    samples memory at given rounds). It must not modify the row.

    Checkpoints go to ``<run>/checkpoint/`` every ``output.checkpoint_every`` server steps, at
    the end, and when SIGINT or SIGTERM arrives (the run then stops with
    :class:`~fedray.errors.RunInterrupted`). ``resume=True`` continues the checkpointed run in
    ``output.root / output.name`` to the tables an uninterrupted run writes (see
    :func:`resume_config` for the checks a resumed config passes)."""
    keep_local_ray_on_loopback(cfg)
    import ray

    from fedray.clients.availability_trace import load_availability_trace
    from fedray.clients.profiles import ProfileModel
    from fedray.sim import checkpoint

    importer = _import_engine(cfg.workload.name)

    started_at = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    profiles = ProfileModel(cfg.clients.profile, cfg.seed)  # fails fast on a bad trace file
    if cfg.clients.availability.trace is not None:  # so does an availability trace
        load_availability_trace(cfg.clients.availability.trace)
    if cfg.execution.address and not ray.is_initialized():
        check_address(cfg.execution.address)
    # Ray first: its daemons start while the thread above imports torch and the engine.
    owns_ray = start_ray(cfg, verbose)
    try:
        importer.join()
        import torch

        from fedray.attacks import check_attack_support
        from fedray.execution.batched import resolve_mode
        from fedray.execution.layout import FlatLayout
        from fedray.execution.pool import WorkerPool, default_num_workers
        from fedray.progress import RoundProgress
        from fedray.results.tensorboard import TensorBoardSink
        from fedray.sim.async_driver import AsyncDriver
        from fedray.sim.driver import (
            Stop,
            check_layout_support,
            check_privacy_support,
            check_secure_aggregation_support,
        )
        from fedray.sim.evaluation import Evaluator
        from fedray.sim.sync_driver import SyncDriver
        from fedray.workloads import make_workload, metric_names

        saved = None
        if resume:
            saved = checkpoint.load(cfg.output.root / cfg.output.name)
        run_dir = RunDirectory(
            cfg.output.root,
            cfg.output.name or _default_run_name(cfg),
            cfg.output.overwrite,
            metric_names=metric_names(cfg.workload),
            resume_parts=None if saved is None else saved["sinks"],
        )
    except BaseException:
        if owns_ray:
            stop_ray()
        raise
    summary: dict = {
        "status": "running",
        "started_at": started_at.isoformat(),
        "config_name": cfg.source_name,
        "seed": cfg.seed,
        "rounds_planned": cfg.rounds,
    }
    if saved is None:
        run_dir.write_text(CONFIG_FILE, dump_config(cfg))
    else:
        summary = {**run_dir.read_summary(), "status": "running"}
        summary.setdefault("resumed_from_round", []).append(int(saved["round"]))
    run_dir.write_summary(summary)
    pool, tb, bar = None, None, None
    success = False
    try:
        num_workers = cfg.execution.num_workers or default_num_workers(
            cfg.execution.cpus_per_worker, cfg.execution.gpus_per_worker
        )
        available = ray.cluster_resources().get("CPU", 0)
        if num_workers * cfg.execution.cpus_per_worker > available:
            raise UserError(
                f"execution.num_workers={num_workers} × cpus_per_worker={cfg.execution.cpus_per_worker:g} "
                f"needs more than the {available:g} CPUs Ray has; lower either"
            )
        # Built before the pool: a workload that generates or pre-trains something caches it,
        # so the actors load it instead of each building it at once; bad input fails here too.
        workload = make_workload(cfg.workload, cfg.seed)
        resolve_mode(cfg.execution.vectorize, workload)  # a one-line error if forced on in vain
        # ...and so is a strategy or codec the workload's parameter layout cannot take
        model = workload.build_model()
        flat = FlatLayout.of(model, workload.parameter_layout())
        check_layout_support(cfg, workload, flat)
        check_privacy_support(cfg, workload, flat, profiles)
        check_secure_aggregation_support(cfg, workload, flat)
        check_attack_support(cfg, workload, flat)
        pool = WorkerPool(
            num_workers,
            cpus_per_worker=cfg.execution.cpus_per_worker,
            gpus_per_worker=cfg.execution.gpus_per_worker,
            cfg=cfg,
        )
        # The driver prepares its side while the actors import torch.
        flops = workload.train_flops_per_sample()
        if flops is not None:
            summary["train_flops_per_sample"] = flops
        profiles.set_flops_per_sample(flops, cfg.workload.name)  # FLOP/s → samples/s
        if profiles.uses_memory:  # memory_gb: who can hold the training footprint at all
            needed = workload.train_memory_bytes(cfg.client.batch_size)
            profiles.set_training_memory(needed, cfg.workload.name)
            too_small = profiles.count_ineligible(cfg.clients.num_clients)
            summary.update(train_memory_bytes=needed, ineligible_clients=too_small)
            check_memory_eligibility(cfg, needed, too_small)
        partition = workload.client_statistics()
        if partition is not None:
            run_dir.write_table(PARTITION_FILE, partition)
        artifacts = workload.save_artifacts(run_dir.path)  # e.g. a locally trained tokenizer
        if artifacts:
            summary["artifacts"] = artifacts
        evaluator = Evaluator(
            workload, cfg.seed, cfg.clients.num_clients, cfg.workload.eval_clients
        )
        if cfg.output.tensorboard:
            purge = None if saved is None else int(saved["round"]) + 1
            tb = TensorBoardSink(run_dir.path / TB_DIR, purge_step=purge)
        pool.wait_ready()
        startup_s = time.perf_counter() - t0
        summary.update(startup_s=startup_s, num_workers=pool.size)

        bar = RoundProgress(cfg.rounds, run_dir.path.name, enabled=progress)
        last: dict = {}

        # Async runs take a server step per arrival or buffer: TensorBoard samples every
        # eval_every-th step there, with histograms covering every step since the last sample.
        tb_every = cfg.eval_every if cfg.mode == "async" else 1
        pending_hist: dict[str, list] = {"durations": [], "staleness": []}

        def record(row: dict, events: dict, durations: np.ndarray) -> None:
            run_dir.rounds.append({k: [v] for k, v in row.items()})
            run_dir.clients.append(events)
            if tb is not None:
                staleness = np.asarray(events["staleness"])
                pending_hist["durations"].append(durations)
                pending_hist["staleness"].append(staleness[staleness >= 0])
                if row["round"] % tb_every == 0 or row["round"] == cfg.rounds:
                    tb.log_round(
                        row,
                        np.concatenate(pending_hist["durations"]),
                        np.concatenate(pending_hist["staleness"]),
                    )
                    pending_hist["durations"], pending_hist["staleness"] = [], []
            bar.update(row["round"], row["sim_time_s"], row["eval_accuracy"])
            last.update(row)
            if on_round is not None:
                on_round(row)

        driver_class = AsyncDriver if cfg.mode == "async" else SyncDriver
        with stop_on_signals() as stop_requested:
            driver = driver_class(
                cfg,
                workload,
                profiles,
                pool,
                evaluator,
                record,
                run_dir.path / ".client_state",
                run_path=run_dir.path,
                checkpoint_every=cfg.output.checkpoint_interval(cfg.mode),
                stop_requested=stop_requested,
                on_checkpoint=run_dir.checkpoint,
            )
            try:
                if saved is not None:
                    driver.restore(saved)
                state = driver.run()
                if driver.checkpoint_every:
                    # at the end too: the final state (model, optimizer, client state) stays
                    # on disk beside the tables
                    driver.save_checkpoint()
            except Stop as stop:
                summary.update(status="interrupted", checkpoint_round=stop.round)
                raise RunInterrupted(stop.signum, stop.round, run_dir.path) from None
            finally:
                driver.close()
                summary["worker_restarts"] = summary.get("worker_restarts", 0) + pool.restarts
        success = True
        summary.update(
            status="completed",
            rounds_completed=state.round,
            sim_time_s=state.sim_time_s,
            wall_time_s=last.get("wall_time_s"),
            total_bytes_up=state.cum_bytes_up,
            total_bytes_down=state.cum_bytes_down,
            total_energy_j=state.cum_energy_j,
            final={
                k: last.get(k)
                for k in ("eval_accuracy", "eval_loss", "global_train_loss", "train_loss")
                + tuple(f"eval_{m}" for m in metric_names(cfg.workload))
            },
            privacy=_privacy_summary(cfg, state.round),
        )
    except (KeyboardInterrupt, RunInterrupted):
        summary["status"] = "interrupted"
        raise
    except BaseException as err:
        summary.update(status="failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()
        summary.update(
            finished_at=dt.datetime.now(dt.UTC).isoformat(),
            versions={
                "python": platform.python_version(),
                "torch": torch.__version__,
                "ray": ray.__version__,
            },
        )
        if success or not run_dir.replaces_existing:
            if run_dir.path.is_dir():
                run_dir.write_summary(summary)
        run_dir.close(success)
        if pool is not None:
            pool.shutdown()
        if owns_ray:
            stop_ray()
    return Result.from_path(run_dir.path)
