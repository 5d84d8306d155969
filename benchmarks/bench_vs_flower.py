"""fedray against Flower's Ray simulation on the identical work: same clients, data, model,
optimizer, schedule of client updates and rounds.

    .venv/bin/python benchmarks/bench_vs_flower.py                  # N=1000, K=100, 20 rounds
    .venv/bin/python benchmarks/bench_vs_flower.py --rounds 5       # shorter
    .venv/bin/python benchmarks/bench_vs_flower.py -N 100 -K 10 --rounds 3   # smoke run

Flower (``flwr[simulation]==1.42.0``) is an optional benchmark dependency, never a runtime one, and
it cannot share fedray's venv: it pins ``ray==2.55.1`` and ``rich<15`` against fedray's
``ray==2.60.0`` and ``rich==15.0.0``. ``make bench-flower-env`` installs it (with the same torch
and numpy) into ``.venv-flower/``; this script runs the Flower side with that interpreter
(``--flower-python`` to use another). Both sides run as children of this process, one after the
other, each starting and stopping its own local Ray with 2 CPUs on 127.0.0.1.

The work is the ``bench_vs_loop.py`` setup: Synthetic(1,1) logistic regression (``nn.Linear(60,
10)``), N clients, K per round, plain SGD with lr 0.01, batch size 10, 1 local epoch, FedAvg
weighted by samples, a constant profile with dropout 0 and no deadline, so every selected client
trains and is aggregated.

- **fedray**: ``fedray.run`` in its default execution mode, evaluating only after the last round.
  The final model is read from the run's final checkpoint.
- **Flower**: ``flwr.simulation.run_simulation`` with N virtual SuperNodes on Flower's Ray backend
  (``init_args``: ``num_cpus=2``, ``include_dashboard=False``, ``_node_ip_address=127.0.0.1``;
  each ClientApp gets 1 CPU, so 2 run at once, as fedray's 2 actors). The ServerApp runs Flower's
  ``FedAvg`` (``fraction_evaluate=0``, no federated evaluation) with ``configure_train``
  overridden to send round r to fedray's cohort of round r instead of Flower's own random sample:
  client ``c`` is the c-th SuperNode in sorted node-id order, and the message carries ``c`` so the
  ClientApp trains that client's data. The ClientApp is what a Flower user writes: the model from
  the message's ``ArrayRecord``, ``torch.optim.SGD`` over minibatches in the client's seeded
  shuffle order, the updated ``state_dict`` and ``num-examples`` back (torch threads set to 1 per
  ClientApp process, as fedray's actors do).

The data are fedray's: each client's samples, the shuffle order of every (client, round), the
seeded initial model and the eval clients' test split are generated once by this script (with
fedray's code) into an ``.npz`` the Flower side reads; that generation is not timed. (fedray
generates each client's data on the actor that trains it, inside its timed rounds, so this
favours Flower.) Since data, order and initial model are the same, the final models differ only
by float summation order (fedray aggregates in float64 and trains the logistic regression in a
batched numpy kernel; Flower aggregates in float32 and trains with torch): the script checks that
the largest parameter difference is within ``--tolerance`` and that the accuracies agree.

Times: Flower's rounds are timed from the first ``configure_train`` to the last
``aggregate_train`` in the ServerApp; round 1 of Flower also waits for its actors to start, so
the per-round median of rounds 2..R is reported too. fedray's rounds are ``summary["wall_time_s"]``.
"Whole" is the ``fedray.run`` call against the ``run_simulation`` call (Ray start and stop
included; interpreter start and imports are not, on either side).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_JSON = HERE / "results" / "bench_vs_flower.json"
DEFAULT_FLOWER_PYTHON = REPO / ".venv-flower" / "bin" / "python"
FLOWER_SPEC = "flwr[simulation]==1.42.0"
INSTALL_HINT = (
    f"Flower is not installed for this benchmark: run `make bench-flower-env` (creates "
    f".venv-flower with {FLOWER_SPEC}; it pins ray 2.55.1, so it cannot share fedray's venv) "
    "or pass --flower-python PATH"
)


# --------------------------------------------------------------------------- fedray's side


def _fedray_config(args, workdir: str) -> dict:
    sys.path.insert(0, str(HERE))
    from bench_vs_loop import config_dict  # the same setup as bench_vs_loop.py

    loop_args = argparse.Namespace(
        seed=args.seed, rounds=args.rounds, eval_every=args.rounds, workers=None,
        clients_per_task=None, no_tensorboard=False,
    )  # fmt: skip
    return config_dict(loop_args, args.clients_per_round, args.num_clients, workdir)


def write_data(cfg_dict: dict, path: Path) -> dict:
    """fedray's clients, shuffle orders, initial model and test split, as plain arrays."""
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from bench_vs_loop import cohorts_of, eval_client_ids

    from fedray import seeding
    from fedray.config import config_from_dict
    from fedray.workloads import make_workload

    cfg = config_from_dict(cfg_dict)
    cohorts = cohorts_of(cfg)
    workload = make_workload(cfg.workload, cfg.seed)
    arrays: dict[str, np.ndarray] = {"cohorts": np.stack(cohorts).astype(np.int64)}
    for cid in sorted({int(c) for cohort in cohorts for c in cohort}):
        d = workload.client_data(cid)
        arrays[f"x_{cid}"], arrays[f"y_{cid}"] = d.x_train.numpy(), d.y_train.numpy()
    for round_, cohort in enumerate(cohorts, start=1):
        for cid in cohort.tolist():
            rng = seeding.generator(cfg.seed, "shuffle", cid, round_)
            n = len(arrays[f"y_{cid}"])
            arrays[f"p_{round_}_{cid}"] = np.stack(
                [rng.permutation(n) for _ in range(cfg.client.local_epochs)]
            )
    tests = [workload.client_data(int(c)) for c in eval_client_ids(cfg)]
    arrays["x_test"] = torch.cat([d.x_test for d in tests]).numpy()
    arrays["y_test"] = torch.cat([d.y_test for d in tests]).numpy()
    with torch.random.fork_rng(devices=[]):  # fedray's seeded initial model
        torch.manual_seed(seeding.purpose_code("init") ^ cfg.seed)
        init = torch.nn.Linear(60, 10).state_dict()
    arrays["init_weight"], arrays["init_bias"] = init["weight"].numpy(), init["bias"].numpy()
    np.savez(path, **arrays)
    return {
        "clients": len({int(c) for cohort in cohorts for c in cohort}),
        "updates": int(sum(len(c) for c in cohorts)),
        "samples_trained": int(sum(len(arrays[f"y_{c}"]) for co in cohorts for c in co.tolist())),
    }


def side_fedray(cfg_path: str, out_path: str) -> None:
    import numpy as np

    import fedray
    from fedray.config import config_from_dict
    from fedray.sim import checkpoint

    cfg = config_from_dict(json.loads(Path(cfg_path).read_text()))
    from fedray.api import keep_local_ray_on_loopback

    keep_local_ray_on_loopback(cfg)  # before ray is imported, as fedray.run would
    import ray  # noqa: F401  (imports are not timed on either side)
    import torch  # noqa: F401

    from fedray.api import run  # noqa: F401

    t0 = time.perf_counter()
    result = fedray.run(cfg, progress=False)
    whole = time.perf_counter() - t0
    server = checkpoint.load(result.path)["server"]
    # FedAvg's ServerState.params: the flat float32 model, weight (10x60) row-major then bias
    model = np.asarray(server["params"], dtype=np.float64)
    summary = result.summary
    out = {
        "rounds_s": float(summary["wall_time_s"]),
        "startup_s": float(summary["startup_s"]),
        "whole_s": whole,
        "num_workers": int(summary["num_workers"]),
        "final_eval_accuracy": float(summary["final"]["eval_accuracy"]),
        "final_eval_loss": float(summary["final"]["eval_loss"]),
        "model": model.tolist(),  # weight (10x60) row-major, then bias (10)
        "completed": int((result.clients["status"] == "completed").sum()),
    }
    shutil.rmtree(result.path, ignore_errors=True)
    Path(out_path).write_text(json.dumps(out))


# --------------------------------------------------------------------------- Flower's side
# Runs under the Flower venv's interpreter: only the standard library at module level.


def _client_data(path: str):
    """The data file, opened once per ClientApp process (NpzFile reads each array on access)."""
    import types

    import numpy as np

    cache = sys.modules.setdefault("_bench_vs_flower_cache", types.ModuleType("cache"))
    if getattr(cache, "path", None) != path:
        cache.path, cache.data = path, np.load(path)
    return cache.data


def side_flower(data_path: str, out_path: str, cpus: int, lr: float, batch_size: int) -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on loopback only
    import numpy as np
    import torch
    import torch.nn.functional as F
    from flwr.app import (
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MessageType,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)  # no INFO line per round
    data = np.load(data_path)
    cohorts = data["cohorts"]
    rounds, num_clients = len(cohorts), int(os.environ["BENCH_NUM_CLIENTS"])
    marks: dict[str, list[float]] = {"configure": [], "aggregate": []}
    final: dict = {}

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        config = msg.content["config"]
        cid, round_ = int(config["cid"]), int(config["server-round"])
        d = _client_data(str(config["data"]))
        x, y = torch.from_numpy(d[f"x_{cid}"]), torch.from_numpy(d[f"y_{cid}"])
        model = torch.nn.Linear(x.shape[1], 10)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        optimizer = torch.optim.SGD(model.parameters(), lr=float(config["lr"]))
        bs = int(config["batch-size"])
        for order in d[f"p_{round_}_{cid}"]:
            order = torch.from_numpy(order)
            xs, ys = x[order], y[order]
            for start in range(0, len(y), bs):
                optimizer.zero_grad()
                F.cross_entropy(model(xs[start : start + bs]), ys[start : start + bs]).backward()
                optimizer.step()
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord({"num-examples": len(y)}),
            }
        )
        return Message(content=content, reply_to=msg)

    class FedraysCohorts(FedAvg):
        """Flower's FedAvg, sending round r to fedray's cohort of round r."""

        def configure_train(self, server_round, arrays, config, grid):
            marks["configure"].append(time.perf_counter())
            nodes = sorted(grid.get_node_ids())
            while len(nodes) < num_clients:  # round 1: the SuperNodes are still registering
                time.sleep(0.05)
                nodes = sorted(grid.get_node_ids())
            messages = []
            for cid in cohorts[server_round - 1].tolist():
                train_config = ConfigRecord(
                    {
                        "server-round": server_round,
                        "cid": cid,
                        "data": data_path,
                        "lr": lr,
                        "batch-size": batch_size,
                    }
                )
                content = RecordDict({"arrays": arrays, "config": train_config})
                messages.append(
                    Message(content=content, message_type=MessageType.TRAIN, dst_node_id=nodes[cid])
                )
            return messages

        def aggregate_train(self, server_round, replies):
            out = super().aggregate_train(server_round, replies)
            marks["aggregate"].append(time.perf_counter())
            return out

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedraysCohorts(
            fraction_train=len(cohorts[0]) / num_clients,
            fraction_evaluate=0.0,
            min_available_nodes=num_clients,
        )
        init = {
            "weight": torch.from_numpy(data["init_weight"]),
            "bias": torch.from_numpy(data["init_bias"]),
        }
        result = strategy.start(
            grid=grid, initial_arrays=ArrayRecord(init), num_rounds=rounds, timeout=3600
        )
        final["state"] = result.arrays.to_torch_state_dict()

    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config={
            "init_args": {
                "num_cpus": cpus,
                "include_dashboard": False,
                "_node_ip_address": "127.0.0.1",
                "log_to_driver": False,
            },
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        },
    )
    whole = time.perf_counter() - t0
    state = final["state"]
    model = torch.nn.Linear(60, 10)
    model.load_state_dict(state)
    with torch.no_grad():
        x_test, y_test = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
        logits = model(x_test)
        loss = F.cross_entropy(logits, y_test).item()
        acc = (logits.argmax(1) == y_test).float().mean().item()
    configure, aggregate = marks["configure"], marks["aggregate"]
    per_round = [b - a for a, b in zip(configure, aggregate, strict=True)]
    import flwr

    out = {
        "flwr": flwr.__version__,
        "whole_s": whole,
        "rounds_s": aggregate[-1] - configure[0],
        "round_s": per_round,
        "final_eval_accuracy": acc,
        "final_eval_loss": loss,
        "model": np.concatenate(
            [state["weight"].double().numpy().ravel(), state["bias"].double().numpy()]
        ).tolist(),
    }
    Path(out_path).write_text(json.dumps(out))


# --------------------------------------------------------------------------- the benchmark


def flower_python(path: Path) -> str:
    if not path.exists():
        raise SystemExit(f"bench_vs_flower: {INSTALL_HINT}")
    check = subprocess.run(
        [str(path), "-c", "import flwr.simulation, torch, numpy; print(flwr.__version__)"],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        raise SystemExit(f"bench_vs_flower: {INSTALL_HINT}")
    return check.stdout.strip()


def _tree(root: int) -> set[int]:
    """``root`` and its descendants (Ray's daemons are children of the process that starts it)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def _listeners(pids: set[int]) -> set[str]:
    """TCP listeners of ``pids`` that are not on loopback (all must be on 127.0.0.1)."""
    try:
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    except OSError:
        return set()
    found = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[3].startswith(("127.", "[::1]", "[::ffff:127.")):
            continue
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            names = ", ".join(re.findall(r'[(]"([^"]+)"', line))
            found.add(f"{parts[3]} ({names})")
    return found


def run_child(cmd: list[str], env: dict | None = None) -> list[str]:
    """Run a side; return the listeners beyond loopback its process tree opened."""
    seen: set[str] = set()
    proc = subprocess.Popen(cmd, env=env)
    while proc.poll() is None:
        seen |= _listeners(_tree(proc.pid))
        time.sleep(0.5)
    if proc.returncode:
        raise SystemExit(f"bench_vs_flower: the {cmd[3]} side failed (exit code {proc.returncode})")
    return sorted(seen)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-N", "--num-clients", type=int, default=1000)
    p.add_argument("-K", "--clients-per-round", type=int, default=100)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of Flower's Ray (fedray: 2 actors)")
    p.add_argument("--flower-python", type=Path, default=DEFAULT_FLOWER_PYTHON)
    p.add_argument(
        "--tolerance", type=float, default=1e-4,
        help="largest allowed |fedray - Flower| over the final model's parameters",
    )  # fmt: skip
    p.add_argument("--json", default=str(RESULTS_JSON), help="results file (merged; '': none)")
    p.add_argument("--side", nargs=3, metavar=("SIDE", "IN", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:
        side, src, out = args.side
        if side == "fedray":
            side_fedray(src, out)
        else:
            side_flower(src, out, args.cpus, 0.01, 10)
        return 0
    if args.clients_per_round > args.num_clients:
        p.error("--clients-per-round exceeds --num-clients")
    version = flower_python(args.flower_python)
    label = f"N={args.num_clients},K={args.clients_per_round},R={args.rounds}"
    print(f"== {label}: Synthetic(1,1) logreg, SGD lr 0.01, batch 10, 1 epoch, FedAvg; "
          f"{os.cpu_count()} CPUs, flwr {version}", flush=True)  # fmt: skip
    workdir = tempfile.mkdtemp(prefix="fedray-vs-flower-")
    try:
        cfg = _fedray_config(args, workdir)
        cfg_path, data_path = Path(workdir, "config.json"), Path(workdir, "data.npz")
        cfg_path.write_text(json.dumps(cfg))
        t0 = time.perf_counter()
        work = write_data(cfg, data_path)
        print(f"  data: {work['clients']} clients, {work['updates']} client updates, "
              f"{work['samples_trained']} samples trained ({time.perf_counter() - t0:.1f} s, untimed)",
              flush=True)  # fmt: skip
        me = os.path.abspath(__file__)
        print("  fedray.run ...", flush=True)
        fed_out = Path(workdir, "fedray.json")
        fed_listen = run_child(
            [sys.executable, me, "--side", "fedray", str(cfg_path), str(fed_out)]
        )
        fed = json.loads(fed_out.read_text())
        if fed["completed"] != work["updates"]:
            raise SystemExit("bench_vs_flower: fedray did not complete every client update")
        print("  Flower run_simulation ...", flush=True)
        flo_out = Path(workdir, "flower.json")
        env = {**os.environ, "BENCH_NUM_CLIENTS": str(args.num_clients)}
        cmd = [str(args.flower_python), me, "--side", "flower", str(data_path), str(flo_out)]
        flo_listen = run_child([*cmd, "--cpus", str(args.cpus)], env=env)
        flo = json.loads(flo_out.read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    diff = max(abs(a - b) for a, b in zip(fed["model"], flo["model"], strict=True))
    steady = sorted(flo["round_s"][1:] or flo["round_s"])
    flo_round_median = steady[len(steady) // 2]
    res = {
        "label": label,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "flwr": flo["flwr"],
        "work": work,
        "fedray": {k: v for k, v in fed.items() if k != "model"},
        "flower": {k: v for k, v in flo.items() if k != "model"},
        "max_param_diff": diff,
        "tolerance": args.tolerance,
        "ratio_rounds": fed["rounds_s"] / flo["rounds_s"],
        "ratio_rounds_steady": (fed["rounds_s"] / args.rounds) / flo_round_median,
        "ratio_whole": fed["whole_s"] / flo["whole_s"],
        "non_loopback_listeners": {"fedray": fed_listen, "flower": flo_listen},
    }
    rows = [
        ("rounds (s)", f"{fed['rounds_s']:.2f}", f"{flo['rounds_s']:.2f}"),
        ("per round, median (s)", f"{fed['rounds_s'] / args.rounds:.3f}", f"{flo_round_median:.3f}"),
        ("whole call (s)", f"{fed['whole_s']:.2f}", f"{flo['whole_s']:.2f}"),
        ("final eval accuracy", f"{fed['final_eval_accuracy']:.4f}", f"{flo['final_eval_accuracy']:.4f}"),
        ("final eval loss", f"{fed['final_eval_loss']:.4f}", f"{flo['final_eval_loss']:.4f}"),
    ]  # fmt: skip
    print(f"  {'':<24} {'fedray':>10} {'Flower':>10}")
    for name, a, b in rows:
        print(f"  {name:<24} {a:>10} {b:>10}")
    agree = diff <= args.tolerance
    print(f"final models: max |fedray - Flower| = {diff:.2e} "
          f"({'within' if agree else 'OUTSIDE'} tolerance {args.tolerance:g})")  # fmt: skip
    print(f"ratio fedray / Flower, rounds = {res['ratio_rounds']:.4f}  "
          f"({1 / res['ratio_rounds']:.0f}x faster; target >= 100x)")  # fmt: skip
    print(f"ratio fedray / Flower, per round (Flower rounds 2..R) = {res['ratio_rounds_steady']:.4f}  "
          f"({1 / res['ratio_rounds_steady']:.0f}x)")  # fmt: skip
    print(f"ratio fedray / Flower, whole call = {res['ratio_whole']:.3f}  "
          f"({1 / res['ratio_whole']:.1f}x)")  # fmt: skip
    if fed_listen or flo_listen:
        print(f"WARNING: listeners beyond loopback: {res['non_loopback_listeners']}")
    else:
        print("listeners: all of both process trees' TCP listeners were on 127.0.0.1")
    if args.json:
        args.json = Path(args.json)
        try:
            doc = json.loads(args.json.read_text())
        except (OSError, ValueError):
            doc = {"benchmark": "bench_vs_flower", "runs": {}}
        doc["runs"][label] = res
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
