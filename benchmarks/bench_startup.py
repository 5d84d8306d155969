"""Where the time of a whole ``fedray run`` process goes: start-up, rounds, teardown, exit.

Runs ``fedray run CONFIG [--set ...]`` in a fresh child process (the same ``fedray.cli.main``
the console script calls) with timers wrapped around its phases, and prints seconds per phase
from the moment the kernel created the process to its exit as seen by the parent:

    python benchmarks/bench_startup.py                                   # configs/fedavg_synthetic.yaml
    python benchmarks/bench_startup.py --set rounds=1 --set clients_per_round=10   # fixed cost
    python benchmarks/bench_startup.py --repeats 3 --json benchmarks/results/bench_startup.json

The wrappers only read a clock and go in as each module is imported (nothing is imported
earlier than in a plain ``fedray run``), so the child does the work the command does. Phases:

- ``python + CLI imports``: from process creation to ``fedray.cli.main`` (interpreter start-up,
  site-packages, ``import fedray.cli``);
- ``config``: parsing and validating the YAML (with pydantic's and fedray.config's imports);
- ``run() up to ray.init``: from the config to ``fedray.api.start_ray`` (``fedray.api``'s own
  imports and whatever ``run`` does before starting Ray);
- ``ray.init``: ``fedray.api.start_ray``;
- ``ray.init to pool``: from Ray being up to the actors being spawned (what is left to import,
  the run folder, the driver's workload and model, the layout checks);
- ``pool start``: from spawning the actors to all of them being ready (the driver's own set-up,
  evaluator and TensorBoard writer, overlaps with it);
- ``rounds``: the driver's rounds (``summary.wall_time_s`` is the part inside them);
- ``teardown``: from the last round to ``fedray.api.run`` returning (final checkpoint, tables
  joined, TensorBoard closed, pool and Ray stopped);
- ``exit``: from ``run`` returning to the parent seeing the process end (summary print,
  interpreter shutdown, atexit hooks).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = (
    "python + CLI imports",
    "config",
    "run() up to ray.init",
    "ray.init",
    "ray.init to pool",
    "pool start",
    "rounds",
    "teardown",
    "exit",
)


def _process_start_epoch() -> float:
    """Wall-clock time at which the kernel created this process (10 ms resolution)."""
    ticks = os.sysconf("SC_CLK_TCK")
    start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime + start


class _AfterImport:
    """A meta-path finder that calls ``patch(module)`` right after the named modules load, so
    the timers go in without importing anything earlier than ``fedray run`` would."""

    def __init__(self, patches: dict):
        self.patches = patches

    def find_spec(self, name, path=None, target=None):
        if name not in self.patches:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        exec_module, patch = spec.loader.exec_module, self.patches.pop(name)

        def exec_and_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def child(out_path: str, cli_args: list[str]) -> int:
    born = _process_start_epoch()
    marks: dict[str, float] = {"born": born}

    def mark(name: str) -> None:
        marks.setdefault(name, time.time())

    def timed(obj, attr: str, start: str | None, end: str | None) -> None:
        fn = getattr(obj, attr)

        def wrapper(*a, **kw):
            if start:
                mark(start)
            try:
                return fn(*a, **kw)
            finally:
                if end:
                    mark(end)

        setattr(obj, attr, wrapper)

    def patch_config(m):
        timed(m, "load_config", "config_start", "config_done")

    def patch_api(m):
        timed(m, "start_ray", "ray_init_start", "ray_init_done")
        timed(m, "run", "run_start", "run_done")

    def patch_pool(m):
        timed(m.WorkerPool, "__init__", "pool_start", None)
        timed(m.WorkerPool, "wait_ready", None, "pool_ready")

    def patch_driver(cls_name):
        return lambda m: timed(getattr(m, cls_name), "run", "rounds_start", "rounds_done")

    sys.meta_path.insert(
        0,
        _AfterImport(
            {
                "fedray.config": patch_config,
                "fedray.api": patch_api,
                "fedray.execution.pool": patch_pool,
                "fedray.sim.sync_driver": patch_driver("SyncDriver"),
                "fedray.sim.async_driver": patch_driver("AsyncDriver"),
            }
        ),
    )
    import fedray.cli as cli

    mark("cli_imported")

    def done(code: int) -> None:
        mark("main_done")
        Path(out_path).write_text(json.dumps({"marks": marks, "exit_code": code}))

    if hasattr(cli, "console_main"):  # what the `fedray` command runs
        cli.console_main(cli_args, on_done=done)
    code = cli.main(cli_args)  # before console_main existed
    done(code)
    return code


def phases(marks: dict[str, float], ended: float) -> dict[str, float]:
    order = [
        ("python + CLI imports", "born", "cli_imported"),
        ("config", "cli_imported", "config_done"),
        ("run() up to ray.init", "config_done", "ray_init_start"),
        ("ray.init", "ray_init_start", "ray_init_done"),
        ("ray.init to pool", "ray_init_done", "pool_start"),
        ("pool start", "pool_start", "pool_ready"),
        ("rounds", "pool_ready", "rounds_done"),
        ("teardown", "rounds_done", "run_done"),
    ]
    out = {name: marks[b] - marks[a] for name, a, b in order}
    out["exit"] = ended - marks["run_done"]
    out["exit: CLI after run()"] = marks["main_done"] - marks["run_done"]
    out["total"] = ended - marks["born"]
    return out


def measure(cli_args: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="fedray-startup-") as tmp:
        out = Path(tmp, "marks.json")
        args = ["run", *cli_args, "--out", tmp, "--name", "run", "--quiet"]
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(out), "--", *args]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        ended = time.time()
        data = json.loads(out.read_text())
        summary = json.loads(Path(tmp, "run", "summary.json").read_text())
    res = phases(data["marks"], ended)
    res["summary.wall_time_s"] = summary["wall_time_s"]
    res["summary.startup_s"] = summary["startup_s"]
    return res


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:  # CHILD_OUT -- fedray's arguments
        return child(argv[1], argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", nargs="?", default=str(ROOT / "configs" / "fedavg_synthetic.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--repeats", type=int, default=3, help="runs; the median of each phase")
    p.add_argument("--json", type=Path, default=None, help="merge the figures into this file")
    p.add_argument("--label", default=None, help="entry name in --json (default: the args)")
    args = p.parse_args(argv)
    cli_args = [args.config] + [f"--set={o}" for o in args.overrides]
    runs = []
    for i in range(args.repeats):
        runs.append(measure(cli_args))
        print(f"  run {i + 1}/{args.repeats}: {runs[-1]['total']:.2f} s", flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    label = args.label or " ".join([Path(args.config).name, *args.overrides])
    print(f"\n{label}: median of {args.repeats} runs, seconds")
    for name in (*PHASES, "exit: CLI after run()", "total"):
        every = " ".join(f"{r[name]:.2f}" for r in runs)
        print(f"  {name:<30} {med[name]:6.2f}   ({every})")
    print(f"  {'(summary.startup_s)':<30} {med['summary.startup_s']:6.2f}")
    print(f"  {'(summary.wall_time_s)':<30} {med['summary.wall_time_s']:6.2f}")
    if args.json:
        try:
            doc = json.loads(args.json.read_text())
        except (OSError, ValueError):
            doc = {"benchmark": "bench_startup", "runs": {}}
        prev = doc["runs"].get(label, {}).get("all", [])
        runs = prev + runs
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        doc["runs"][label] = {
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cpus": os.cpu_count(),
            "median": med,
            "all": runs,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
