"""Async vs sync throughput: client updates trained per wall second, measured in one run.

Same workload for every driver — Synthetic(1,1), N=1000, lognormal speeds, the same number of
client updates — with evaluation only at the end so both drivers measure training throughput:

* sync FedAvg, K = 100 clients per round;
* FedBuff, C = 100 in flight, K = 10 per server step;
* FedAsync, C = 100 in flight, a server step per arrival.

Each driver runs in a fresh process (start-up excluded: throughput is updates / the last row's
``wall_time_s``), ``--repeats`` times alternating; the median is reported with its ratio to sync.
The issue's target: async ≥ 0.85× the sync driver's throughput.

    python benchmarks/bench_async.py [--updates 4000] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

_CHILD = r"""
import json, sys
import fedray
from fedray.config import config_from_dict

spec = json.loads(sys.argv[1])
result = fedray.run(config_from_dict(spec), progress=False)
trained = int((result.clients.status != "dropped").sum())
print(json.dumps({"updates": trained, "wall_s": float(result.rounds.wall_time_s.iloc[-1]),
                  "startup_s": result.summary["startup_s"]}))
"""


def spec(driver: str, updates: int, workers: int, root: str) -> dict:
    base = {
        "seed": 0,
        "workload": {"name": "synthetic", "eval_clients": 50},
        "clients": {
            "num_clients": 1000,
            "profile": {"speed": {"dist": "lognormal", "median": 200, "sigma": 1.0}},
        },
        "eval_every": 10**9,
        "execution": {"num_workers": workers, "clients_per_task": 10},
        "output": {"root": root, "name": driver, "overwrite": True, "tensorboard": True},
    }
    if driver == "sync":
        return {**base, "rounds": updates // 100, "clients_per_round": 100}
    if driver == "fedbuff":
        return {
            **base,
            "mode": "async",
            "rounds": updates // 10,
            "asynchronous": {"concurrency": 100, "buffer_size": 10},
        }
    return {
        **base,
        "mode": "async",
        "rounds": updates,
        "asynchronous": {"concurrency": 100},
        "strategy": {"name": "fedasync", "alpha": 0.6},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    drivers = ("sync", "fedbuff", "fedasync")
    rates: dict[str, list[float]] = {d: [] for d in drivers}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            for driver in drivers:
                out = (
                    subprocess.run(
                        [
                            sys.executable,
                            "-c",
                            _CHILD,
                            json.dumps(spec(driver, args.updates, args.workers, root)),
                        ],
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                    .stdout.strip()
                    .splitlines()[-1]
                )
                m = json.loads(out)
                rates[driver].append(m["updates"] / m["wall_s"])
                print(
                    f"repeat {repeat + 1} {driver:9s} {m['updates']} updates in {m['wall_s']:.2f} s "
                    f"= {rates[driver][-1]:.0f}/s (start-up {m['startup_s']:.1f} s)",
                    flush=True,
                )
    sync = statistics.median(rates["sync"])
    summary = {d: statistics.median(r) for d, r in rates.items()}
    print("\nmedian client updates per wall second:")
    for d in drivers:
        print(f"  {d:9s} {summary[d]:7.0f}/s   {summary[d] / sync:.2f}x sync")
    print(
        json.dumps({"updates_per_s": summary, "vs_sync": {d: summary[d] / sync for d in drivers}})
    )


if __name__ == "__main__":
    main()
