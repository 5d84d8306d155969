"""Scale: peak memory against registered clients, and round time against clients per round.

Two sweeps of FedAvg runs on Synthetic(1,1) — or, with ``--workload ecom_rec``, on the
recommendation task (one client per user, user embeddings kept in the per-client state store,
row-sparse item uploads) — each run in a fresh process whose whole process tree (driver, Ray
daemons, pool actors; PSS, so shared pages count once) is sampled by pss_tree.py:

* memory — N registered clients in {10k, 100k, 1M, 10M}, 1000 clients per round, 3 rounds;
  the issue's target: 10M registered clients with 1000 per round stays under 4 GB;
* round time — N = 1M, clients per round in {10, 100, 1000, 10000}, 3 rounds; wall seconds per
  round (start-up excluded).

    python benchmarks/bench_scale.py [--quick] [--workload ecom_rec] [--out FILE.json]

``--quick`` stops at 1M registered clients and 1000 per round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def child(spec_json: str) -> None:
    sys.path.insert(0, HERE)
    from pss_tree import TreeSampler

    import fedray
    from fedray.api import keep_local_ray_on_loopback
    from fedray.config import config_from_dict

    cfg = config_from_dict(json.loads(spec_json))
    keep_local_ray_on_loopback(cfg)  # before the sampler's thread imports ray
    sampler = TreeSampler(os.getpid(), 0.2, pss=True)
    sampler.watch_ray()
    t0 = time.perf_counter()
    result = fedray.run(cfg, progress=False)
    total = time.perf_counter() - t0
    memory = sampler.stop()
    rounds = result.rounds
    print(
        json.dumps(
            {
                "peak_pss_mb": memory["peak_mb"],
                "startup_s": result.summary["startup_s"],
                "wall_per_round_s": float(rounds.wall_time_s.iloc[-1]) / len(rounds),
                "total_s": total,
                "clients_trained": int((result.clients.status != "dropped").sum()),
            }
        )
    )


WORKLOADS = {
    "synthetic": {"name": "synthetic", "eval_clients": 100},
    "ecom_rec": {"name": "ecom_rec", "eval_clients": 100},
}


def spec(num_clients: int, per_round: int, root: str, workload: str = "synthetic") -> dict:
    return {
        "seed": 0,
        "rounds": 3,
        "clients_per_round": per_round,
        "eval_every": 3,
        "workload": WORKLOADS[workload],
        "clients": {
            "num_clients": num_clients,
            "profile": {"speed": {"dist": "lognormal", "median": 200, "sigma": 0.5}},
        },
        "execution": {"clients_per_task": 50},
        "output": {
            "root": root,
            "name": f"n{num_clients}_k{per_round}",
            "overwrite": True,  # both sweeps run N = 1M, K = 1000
            "tensorboard": False,
        },
    }


def measure(num_clients: int, per_round: int, root: str, workload: str) -> dict:
    config = spec(num_clients, per_round, root, workload)
    out = (
        subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(config)],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return {"num_clients": num_clients, "clients_per_round": per_round, **json.loads(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="synthetic")
    parser.add_argument("--out", help="results file (default results/bench_scale[_rec].json)")
    args = parser.parse_args()
    if args.out is None:
        suffix = "" if args.workload == "synthetic" else "_rec"
        args.out = os.path.join(HERE, "results", f"bench_scale{suffix}.json")
    if args.child:
        child(args.child)
        return
    populations = [10_000, 100_000, 1_000_000] + ([] if args.quick else [10_000_000])
    cohorts = [10, 100, 1000] + ([] if args.quick else [10_000])
    rows = {"memory": [], "round_time": []}
    with tempfile.TemporaryDirectory() as root:
        print("registered clients -> peak PSS of the process tree (1000 per round)")
        for n in populations:
            m = measure(n, 1000, root, args.workload)
            rows["memory"].append(m)
            print(f"  N={n:>10,}  peak PSS {m['peak_pss_mb']:7.0f} MB", flush=True)
        print("clients per round -> wall seconds per round (N = 1M)")
        for k in cohorts:
            m = measure(1_000_000, k, root, args.workload)
            rows["round_time"].append(m)
            print(
                f"  K={k:>6,}  {m['wall_per_round_s']:7.2f} s/round   "
                f"({m['clients_trained'] / 3 / m['wall_per_round_s']:.0f} client updates/s, "
                f"peak PSS {m['peak_pss_mb']:.0f} MB)",
                flush=True,
            )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
