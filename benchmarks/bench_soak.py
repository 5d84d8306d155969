"""Soak: does a long run's memory stay flat? 2,000 rounds of the default workload, PSS sampled.

    .venv/bin/python benchmarks/bench_soak.py                                      # 2000 rounds
    .venv/bin/python benchmarks/bench_soak.py --rounds 200 --samples 50,100,200    # smoke, < 1 min
    .venv/bin/python benchmarks/bench_soak.py --every 100                  # + a sample every 100
    .venv/bin/python benchmarks/bench_soak.py --set clients_per_round=100  # another setup
    .venv/bin/python benchmarks/bench_soak.py --tracemalloc     # what the driver allocated since

Runs ``fedray.run`` in this process on ``configs/fedavg_synthetic.yaml`` (``--config``/``--set``
to change it; output in a temporary directory) with an ``on_round`` hook that, at the sample
rounds, reads the proportional set size (``/proc/<pid>/smaps_rollup``) of every process of the
run (``pss_tree.tree_snapshot``: this process's tree plus the Ray session's daemons):

* the driver — this process;
* the pool actors — the processes whose title is ``ray::ClientWorker...`` (Ray renames a worker
  after the class of the actor it hosts); at the first sample their pids are checked against the
  pool's named actors (``fedray.worker.*``) as Ray reports them;
* the rest of the Ray tree (gcs_server, raylet with the plasma store, agents, idle workers).

PSS splits shared pages among the processes mapping them, so the numbers add up. The first sample
(round 100 by default) is the baseline, measured in the same run: everything a run allocates once
(imports, the pool, the actors' data caches filling up) is in by then. The target (issue 13,
item 11) is growth below 5% from the baseline to the last sample, for the driver and for the
actors. Prints a table with ratios to the baseline and PASS/FAIL (exit code 0/1), and merges the
run into ``benchmarks/results/bench_soak.json`` (one entry per setup, newest wins).

A reading of the dozen processes takes ~50 ms and three are taken, so the run itself is not
perturbed; a side process (``pss_tree.TreeSampler`` in CPU-only mode) measures the load other
processes put on the machine meanwhile, since a loaded machine slows the run but does not change
its memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_vs_loop import git_revision, source_fingerprint  # noqa: E402
from pss_tree import TreeSampler, tree_snapshot  # noqa: E402

REPO = HERE.parent
RESULTS_JSON = HERE / "results" / "bench_soak.json"
TARGET_GROWTH = 0.05  # issue 13, item 11: < 5% after round 100
ACTOR_TITLE = "ray::ClientWorker"  # fedray.execution.worker.ClientWorker, as Ray titles it


def mb(kb: int) -> float:
    return round(kb / 1024, 2)


def ray_actor_pids() -> dict[int, str]:
    """pid -> name of this run's pool actors, as Ray reports them (one call per actor)."""
    import ray

    from fedray.execution.pool import ACTOR_PREFIX

    names = sorted(n for n in ray.util.list_named_actors() if n.startswith(ACTOR_PREFIX))
    pids = ray.get([ray.get_actor(n).pid.remote() for n in names])
    return dict(zip(pids, names, strict=True))


class Soak:
    """The ``on_round`` hook: PSS readings of the run's processes at the wanted rounds."""

    def __init__(self, rounds: set[int], exclude: int, tracemalloc_on: bool):
        self.rounds, self.exclude, self.trace = rounds, exclude, tracemalloc_on
        self.samples: list[dict] = []
        self.actor_names: dict[int, str] = {}
        self.start = time.perf_counter()
        self.trace_base = None

    def __call__(self, row: dict) -> None:
        r = int(row["round"])
        if r not in self.rounds:
            return
        import ray

        t0 = time.perf_counter()
        session = ray.get_runtime_context().get_session_name()
        procs = tree_snapshot(os.getpid(), session, exclude=self.exclude)
        driver = [p for p in procs if p["pid"] == os.getpid()]
        actors = [p for p in procs if p["title"].startswith(ACTOR_TITLE)]
        if not self.samples:  # the titles must find exactly the actors Ray knows
            self.actor_names = ray_actor_pids()
            if {p["pid"] for p in actors} != set(self.actor_names):
                sys.exit(
                    f"bench_soak: processes titled {ACTOR_TITLE} {[p['pid'] for p in actors]} "
                    f"are not the pool's actors {self.actor_names}; fix the actor lookup"
                )
        actors.sort(key=lambda p: self.actor_names.get(p["pid"], str(p["pid"])))  # by slot

        def role(p: dict) -> str:
            if p["pid"] == os.getpid():
                return "driver"
            if p["pid"] in actor_pids:
                return self.actor_names.get(p["pid"], f"actor pid {p['pid']}")
            return p["title"]

        actor_pids = {p["pid"] for p in actors}
        sample = {
            "round": r,
            "wall_s": round(t0 - self.start, 2),
            "driver_mb": mb(driver[0]["Pss"]),
            "driver_anon_mb": mb(driver[0]["Pss_Anon"]),
            "actors_mb": mb(sum(p["Pss"] for p in actors)),
            "per_actor_mb": {role(p): mb(p["Pss"]) for p in actors},
            "tree_mb": mb(sum(p["Pss"] for p in procs)),
            "processes": [
                {"role": role(p), **{k: v for k, v in p.items() if not k.startswith("Pss")}}
                | {k.lower() + "_mb": mb(v) for k, v in p.items() if k.startswith("Pss")}
                for p in procs
            ],
        }
        sample["others_mb"] = round(
            sample["tree_mb"] - sample["driver_mb"] - sample["actors_mb"], 2
        )
        if self.trace:
            self._trace(sample)
        sample["reading_s"] = round(time.perf_counter() - t0, 3)
        self.samples.append(sample)
        print(
            f"round {r:>6}: driver {sample['driver_mb']:7.1f} MB, actors "
            f"{sample['actors_mb']:7.1f} MB ({', '.join(f'{m:.0f}' for m in sample['per_actor_mb'].values())}), "
            f"whole tree {sample['tree_mb']:7.1f} MB  [{sample['wall_s']:.0f} s]",
            flush=True,
        )

    def _trace(self, sample: dict) -> None:
        """tracemalloc from the first sample on: what the driver allocated since, still alive."""
        import tracemalloc

        if self.trace_base is None:
            tracemalloc.start(1)
            self.trace_base = tracemalloc.take_snapshot()
            return
        snap = tracemalloc.take_snapshot()
        sample["traced_mb"] = mb(tracemalloc.get_traced_memory()[0] // 1024)
        sample["traced_top"] = [
            {
                "where": str(s.traceback[0]),
                "size_kb": round(s.size_diff / 1024, 1),
                "count": s.count_diff,
            }
            for s in snap.compare_to(self.trace_base, "lineno")[:15]
        ]


def growth(base: float, last: float) -> float:
    return (last - base) / base


def short(role: str) -> str:
    """``fedray.worker.<pool>.<slot>.<generation>`` -> ``actor <slot>`` (``.<generation>`` if
    the actor was restarted); a daemon's title -> its base name."""
    parts = role.split(".")
    if role.startswith("fedray.worker.") and len(parts) == 5:
        return f"actor {parts[3]}" + (f".{parts[4]}" if parts[4] != "0" else "")
    return role.split("/")[-1]


def report(run: dict) -> bool:
    samples = run["samples"]
    base, last = samples[0], samples[-1]
    actors = list(base["per_actor_mb"])
    head = f"{'round':>6} {'wall s':>7} {'driver':>8} " + " ".join(f"{short(a):>8}" for a in actors)
    head += (
        f" {'actors':>8} {'others':>8} {'tree':>8}  {'driver x':>8} {'actors x':>8} {'tree x':>7}"
    )
    print()
    print(f"PSS in MB; x: ratio to the baseline (round {base['round']}); others: Ray's daemons")
    print(head)
    for s in samples:
        per = " ".join(f"{s['per_actor_mb'].get(a, float('nan')):>8.1f}" for a in actors)
        print(
            f"{s['round']:>6} {s['wall_s']:>7.1f} {s['driver_mb']:>8.1f} {per} "
            f"{s['actors_mb']:>8.1f} {s['others_mb']:>8.1f} {s['tree_mb']:>8.1f}  "
            f"{s['driver_mb'] / base['driver_mb']:>8.4f} "
            f"{s['actors_mb'] / base['actors_mb']:>8.4f} {s['tree_mb'] / base['tree_mb']:>7.4f}"
        )
    for key, g in run["growth"].items():
        print(f"growth {short(key):<8} round {base['round']} -> {last['round']}: {g:+.2%}")
    # which processes moved, largest change first (the JSON keeps every process)
    before = {p["pid"]: p for p in base["processes"]}
    moved = sorted(
        (
            (p["pss_mb"] - before[p["pid"]]["pss_mb"], p)
            for p in last["processes"]
            if p["pid"] in before
        ),
        key=lambda d: -abs(d[0]),
    )
    print("largest changes: " + ", ".join(f"{short(p['role'])} {d:+.1f} MB" for d, p in moved[:5]))
    if set(last["per_actor_mb"]) != set(actors):
        print("WARNING: an actor was replaced during the run; the actors' growth is not meaningful")
    if run["tracemalloc"]:
        print("(--tracemalloc: the driver's figures include tracemalloc's own bookkeeping)")
        print(
            f"driver: {last['traced_mb']:.1f} MB allocated since round {base['round']} and alive; top:"
        )
        for t in last["traced_top"][:10]:
            print(f"  {t['size_kb']:>9.1f} kB {t['count']:>8} blocks  {t['where']}")
    load = run["load"]
    print(
        f"load: other processes kept {load['other_load_cpus']:.2f} of {os.cpu_count()} CPUs busy "
        f"(this run's tree {load['tree_cpus']:.2f}); load average {load['loadavg_before']:.2f} before, "
        f"{load['loadavg_after']:.2f} after"
    )
    print(
        f"rounds {run['rounds_wall_s']:.1f} s ({run['rounds'] / run['rounds_wall_s']:.0f} rounds/s), "
        f"start-up {run['startup_s']:.1f} s; PSS readings took {run['reading_s']:.2f} s in all"
    )
    g = run["growth"]
    ok = g["driver"] < TARGET_GROWTH and g["actors"] < TARGET_GROWTH
    print(
        f"{'PASS' if ok else 'FAIL'}: growth after round {base['round']} driver "
        f"{g['driver']:+.2%}, actors {g['actors']:+.2%} (target < {TARGET_GROWTH:.0%} each)"
    )
    return ok


def save(label: str, run: dict, path: Path) -> None:
    """Merge into the JSON file: one entry per setup label, newest wins."""
    import ray
    import torch

    import fedray

    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError):
        existing = {}
    runs = existing.get("runs", {}) if existing.get("benchmark") == "bench_soak" else {}
    runs[label] = {"measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **run}
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
    doc = {
        "benchmark": "bench_soak",
        "target_growth": TARGET_GROWTH,
        "machine": {
            "cpus": os.cpu_count(),
            "mem_total_gib": round(int(meminfo[1]) / 2**20, 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "fedray": fedray.__version__,
        },
        "runs": dict(sorted(runs.items())),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results written to {path}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "fedavg_synthetic.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE")
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument(
        "--samples", default="100,1000,2000",
        help="rounds to read PSS at; the first is the baseline (default 100,1000,2000)",
    )  # fmt: skip
    p.add_argument("--every", type=int, default=0, help="also read PSS every N rounds after it")
    p.add_argument("--tracemalloc", action="store_true", help="trace the driver's allocations")
    p.add_argument("--load-interval", type=float, default=1.0, help="CPU accounting period (s)")
    p.add_argument("--json", default=str(RESULTS_JSON), help="results file (merged); '' to skip")
    args = p.parse_args(argv)
    try:
        samples = {int(r) for r in args.samples.split(",")}
    except ValueError:
        p.error(f"--samples {args.samples!r}: give round numbers separated by commas")
    if args.every > 0:
        samples |= set(range(min(samples), args.rounds + 1, args.every))
    args.samples = sorted(samples)
    if len(args.samples) < 2 or args.samples[0] < 1 or args.samples[-1] > args.rounds:
        p.error(f"--samples: need two or more rounds within 1..{args.rounds} (--rounds)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import fedray

    loadavg_before = os.getloadavg()[0]
    print(
        f"{os.cpu_count()} CPUs, python {platform.python_version()}, load average "
        f"{loadavg_before:.2f}; {args.rounds} rounds, PSS at rounds {args.samples}",
        flush=True,
    )
    code_before = source_fingerprint()
    with tempfile.TemporaryDirectory(prefix="fedray-soak-") as out:
        overrides = [
            *args.overrides,
            f"rounds={args.rounds}",
            f"output.root={out}",
            "output.name=soak",
        ]
        cfg = fedray.load_config(args.config, overrides=overrides)
        sampler = TreeSampler(os.getpid(), args.load_interval, pss=False)
        sampler.watch_ray()
        soak = Soak(set(args.samples), sampler.pid, args.tracemalloc)
        try:
            result = fedray.run(cfg, progress=False, on_round=soak)
        finally:
            load = sampler.stop()
        summary = result.summary  # read lazily from the run directory, which goes next
    base, last = soak.samples[0], soak.samples[-1]
    growths = {k: growth(base[f"{k}_mb"], last[f"{k}_mb"]) for k in ("driver", "actors", "tree")}
    for name, pss in base["per_actor_mb"].items():
        if name in last["per_actor_mb"]:
            growths[name] = growth(pss, last["per_actor_mb"][name])
    run = {
        "config": os.path.relpath(args.config, REPO),
        "overrides": args.overrides,
        "rounds": args.rounds,
        "clients_per_round": cfg.clients_per_round,
        "num_clients": cfg.clients.num_clients,
        "data_cache_mb": cfg.execution.data_cache_mb,
        "tensorboard": cfg.output.tensorboard,
        "checkpoint_every": cfg.output.checkpoint_interval(cfg.mode),
        "num_workers": summary["num_workers"],
        "actor_names": {str(pid): name for pid, name in soak.actor_names.items()},
        "samples": soak.samples,
        "growth": growths,
        "pass": growths["driver"] < TARGET_GROWTH and growths["actors"] < TARGET_GROWTH,
        "rounds_wall_s": summary["wall_time_s"],
        "startup_s": summary["startup_s"],
        "reading_s": round(sum(s["reading_s"] for s in soak.samples), 3),
        "tracemalloc": args.tracemalloc,
        "load": {
            "other_load_cpus": load["other_load_cpus"],
            "tree_cpus": load["tree_cpus"],
            "loadavg_before": loadavg_before,
            "loadavg_after": os.getloadavg()[0],
        },
        "fedray_revision": git_revision(),
        "fedray_sources": code_before,
        "sources_changed_during_run": source_fingerprint() != code_before,
    }
    ok = report(run)
    if run["sources_changed_during_run"]:
        print("WARNING: fedray's sources changed during the run; rerun it")
    if len(soak.actor_names) != summary["num_workers"]:
        print(
            f"WARNING: {len(soak.actor_names)} actors found, the pool had {summary['num_workers']}"
        )
    if args.json:
        label = f"R={args.rounds}"
        if run["config"] != "configs/fedavg_synthetic.yaml" or args.overrides:
            label += f",{run['config']}" + "".join(f",{o}" for o in args.overrides)
        label += ",tracemalloc" if args.tracemalloc else ""
        save(label, run, Path(args.json))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
