"""Soak: does a long run's memory stay flat? 2,000 rounds of the default workload, PSS sampled.

    .venv/bin/python benchmarks/bench_soak.py                                # 2000 rounds
    .venv/bin/python benchmarks/bench_soak.py --rounds 200 --samples 50,100,200   # ~1 min smoke
    .venv/bin/python benchmarks/bench_soak.py --set clients_per_round=100    # another setup

Runs ``fedray.run`` in this process on ``configs/fedavg_synthetic.yaml`` (its own local Ray, the
default two pool actors) with an ``on_round`` hook that, at the sample rounds, reads the
proportional set size (``/proc/<pid>/smaps_rollup``) of the driver (this process) and of each
pool actor (found by their names, ``fedray.worker.*``, and their ``pid()``). PSS splits shared
pages among the processes mapping them, so the numbers add up. The first sample round (100 by
default) is the baseline: everything a run allocates once (imports, the pool, caches filling up)
is in by then, and the target is growth below 5% from there to the last sample, for the driver
and for the actors. Prints a table and PASS/FAIL, and writes ``benchmarks/results/bench_soak.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_JSON = HERE / "results" / "bench_soak.json"
TARGET_GROWTH = 0.05


def pss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss line for pid {pid}")


def actor_pids() -> list[int]:
    import ray

    from fedray.execution.pool import ACTOR_PREFIX

    names = sorted(n for n in ray.util.list_named_actors() if n.startswith(ACTOR_PREFIX))
    return ray.get([ray.get_actor(n).pid.remote() for n in names])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "fedavg_synthetic.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--samples", default="100,1000,2000", help="rounds to sample PSS at")
    parser.add_argument("--json", default=str(RESULTS_JSON), help="'' to skip writing")
    args = parser.parse_args()
    samples = sorted(int(r) for r in args.samples.split(","))
    if samples[-1] > args.rounds:
        parser.error(f"sample round {samples[-1]} is beyond --rounds {args.rounds}")

    import fedray

    with tempfile.TemporaryDirectory(prefix="fedray-soak-") as out:
        overrides = [
            f"rounds={args.rounds}",
            f"output.root={out}",
            "output.name=soak",
            *args.overrides,
        ]
        cfg = fedray.load_config(args.config, overrides=overrides)
        rows: list[dict] = []
        start = time.perf_counter()

        def on_round(row: dict) -> None:
            if row["round"] not in samples:
                return
            actors = {pid: pss_mb(pid) for pid in actor_pids()}
            rows.append(
                {
                    "round": int(row["round"]),
                    "wall_s": time.perf_counter() - start,
                    "driver_mb": pss_mb(os.getpid()),
                    "actors_mb": sum(actors.values()),
                    "per_actor_mb": sorted(actors.values()),
                }
            )
            print(
                f"round {row['round']:>6}: driver {rows[-1]['driver_mb']:7.1f} MB, actors "
                f"{rows[-1]['actors_mb']:7.1f} MB ({', '.join(f'{m:.0f}' for m in actors.values())})",
                flush=True,
            )

        result = fedray.run(cfg, progress=False, on_round=on_round)
        summary = result.summary

    base, last = rows[0], rows[-1]
    growth = {key: (last[key] - base[key]) / base[key] for key in ("driver_mb", "actors_mb")}
    ok = all(g < TARGET_GROWTH for g in growth.values())
    print()
    print(f"{'round':>6} {'driver MB':>10} {'actors MB':>10} {'wall s':>8}")
    for r in rows:
        print(
            f"{r['round']:>6} {r['driver_mb']:>10.1f} {r['actors_mb']:>10.1f} {r['wall_s']:>8.1f}"
        )
    for key, g in growth.items():
        name = key.removesuffix("_mb")
        print(f"growth {name} round {base['round']} -> {last['round']}: {g:+.2%}")
    print(f"{'PASS' if ok else 'FAIL'}: growth < {TARGET_GROWTH:.0%} after round {base['round']}")
    print(f"rounds wall {summary['wall_time_s']:.1f} s, start-up {summary['startup_s']:.1f} s")

    if args.json:
        record = {
            "date": dt.date.today().isoformat(),
            "machine": f"{os.cpu_count()} CPUs, {platform.python_version()}",
            "config": os.path.relpath(args.config, REPO),
            "overrides": args.overrides,
            "rounds": args.rounds,
            "samples": rows,
            "growth": growth,
            "target_growth": TARGET_GROWTH,
            "pass": ok,
            "rounds_wall_s": summary["wall_time_s"],
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
