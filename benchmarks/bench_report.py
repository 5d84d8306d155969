"""How long `fedray report` and `fedray ls` take on a large run: 10^5 registered clients in three
device tiers, 10^3 synchronous rounds of 1000 clients (10^6 client tasks).

Training such a run takes hours on a laptop, and the report reads only the tables, so this writes
a run folder whose tables have the real schemas (fedray.results.schema) and plausible contents —
lognormal phase times, 5% dropped and 10% straggling tasks, rounds closing at their slowest
accepted client, a rising accuracy — then times the report in a fresh process (imports
included, as a user sees it).

    python benchmarks/bench_report.py [--clients 100000] [--rounds 1000] [--per-round 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fedray.config import config_from_dict, dump_config
from fedray.results.schema import CLIENT_EVENTS_SCHEMA, rounds_schema


def synthesise(run: Path, clients: int, rounds: int, per_round: int) -> int:
    rng = np.random.default_rng(0)
    cfg = config_from_dict(
        {
            "rounds": rounds,
            "clients_per_round": per_round,
            "clients": {
                "num_clients": clients,
                "profile": {
                    "tiers": [
                        {"name": "low-end phone", "weight": 0.5, "speed": 40},
                        {"name": "high-end phone", "weight": 0.35, "speed": 150},
                        {"name": "laptop", "weight": 0.15, "speed": 800},
                    ]
                },
            },
            "output": {"root": str(run.parent), "name": run.name},
        }
    )
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(cfg))
    n = rounds * per_round
    round_of = np.repeat(np.arange(1, rounds + 1), per_round)
    ids = np.concatenate([rng.choice(clients, per_round, replace=False) for _ in range(rounds)])
    down, comp, up = (rng.lognormal(m, 0.8, n) for m in (-1.0, 1.0, -0.5))
    status = np.where(rng.random(n) < 0.05, "dropped", "completed").astype(object)
    status[(status == "completed") & (rng.random(n) < 0.1)] = "straggler"
    cut = rng.random(n)
    dropped = status == "dropped"
    comp[dropped] *= cut[dropped]
    up[dropped] = 0.0
    total = down + comp + up
    accepted = status == "completed"
    duration = np.zeros(rounds)
    np.maximum.at(duration, round_of[accepted] - 1, total[accepted])
    start = np.concatenate([[0.0], np.cumsum(duration)[:-1]])
    dispatch = start[round_of - 1]
    model_bytes = 2441
    events = {
        "round": round_of,
        "client_id": ids,
        "status": status,
        "model_version": round_of - 1,
        "staleness": np.where(dropped, -1, 0),
        "dispatch_time_s": dispatch,
        "finish_time_s": dispatch + total,
        "download_s": down,
        "compute_s": comp,
        "upload_s": up,
        "num_samples": rng.integers(50, 500, n),
        "local_epochs": np.ones(n, dtype=np.int64),
        "bytes_up": np.where(accepted, model_bytes, 0),
        "bytes_down": np.full(n, model_bytes),
        "train_loss": np.where(accepted, rng.lognormal(0.0, 0.4, n), np.nan),
    }
    table = pa.Table.from_pydict(
        {f.name: pa.array(events[f.name], type=f.type) for f in CLIENT_EVENTS_SCHEMA},
        schema=CLIENT_EVENTS_SCHEMA,
    )
    pq.write_table(table, run / "client_events.parquet")
    per = np.bincount(round_of - 1, minlength=rounds)
    up_bytes = np.bincount(round_of - 1, weights=events["bytes_up"], minlength=rounds).astype(int)
    down_bytes = per * model_bytes
    r = np.arange(1, rounds + 1)
    acc = 0.8 - 0.7 * np.exp(-r / (rounds / 5)) + rng.normal(0, 0.01, rounds)
    schema = rounds_schema()
    rows = {name: np.zeros(rounds) for name in schema.names}
    rows.update(
        round=r,
        sim_time_s=np.cumsum(duration),
        round_duration_s=duration,
        wall_time_s=r * 0.3,
        model_version=r,
        num_selected=per,
        num_completed=np.bincount(round_of[accepted] - 1, minlength=rounds),
        num_dropped=np.bincount(round_of[dropped] - 1, minlength=rounds),
        num_aggregated=np.bincount(round_of[accepted] - 1, minlength=rounds),
        bytes_up=up_bytes,
        bytes_down=down_bytes,
        bytes_up_raw=up_bytes,
        bytes_down_raw=down_bytes,
        compression_ratio=np.ones(rounds),
        cum_bytes_up=np.cumsum(up_bytes),
        cum_bytes_down=np.cumsum(down_bytes),
        eval_accuracy=acc,
        eval_loss=2.5 - 2 * acc,
        dp_epsilon=np.full(rounds, np.nan),
        dp_clipped_fraction=np.full(rounds, np.nan),
    )
    pq.write_table(
        pa.Table.from_pydict(
            {f.name: pa.array(rows[f.name], type=f.type) for f in schema}, schema=schema
        ),
        run / "rounds.parquet",
    )
    summary = {
        "status": "completed",
        "started_at": "2026-01-01T00:00:00+00:00",
        "rounds_planned": rounds,
        "rounds_completed": rounds,
        "sim_time_s": float(duration.sum()),
        "wall_time_s": rounds * 0.3,
        "total_bytes_up": int(up_bytes.sum()),
        "total_bytes_down": int(down_bytes.sum()),
        "final": {"eval_accuracy": float(acc[-1]), "eval_loss": float(2.5 - 2 * acc[-1])},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return n


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fedray.cli", *argv], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "results" / "large"
        t0 = time.perf_counter()
        tasks = synthesise(run, args.clients, args.rounds, args.per_round)
        made = time.perf_counter() - t0
        size = (run / "client_events.parquet").stat().st_size / 1e6
        print(f"synthesised {tasks:,} client tasks ({size:.0f} MB Parquet) in {made:.1f} s")
        print(
            f"fedray report: {timed(['report', str(run)]):.1f} s (fresh process, imports included)"
        )
        print(f"fedray ls:     {timed(['ls', str(run.parent)]):.1f} s")
        baseline = timed(["report", "--help"])
        print(f"(python + fedray.cli start-up alone: {baseline:.1f} s)")


if __name__ == "__main__":
    main()
