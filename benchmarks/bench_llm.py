"""Federated LoRA fine-tuning: fedray (2 workers) against a plain transformers + peft loop.

    .venv/bin/python benchmarks/bench_llm.py             # 16 shops, 8 a round, 4 rounds
    .venv/bin/python benchmarks/bench_llm.py --quick     # 2 rounds

Both sides train the same clients (fedray's own seeded cohorts, as in ``bench_vs_loop.py``) on
the same ``ecom_qa_lora`` data (the workload's ``client_data``: product QA and customer-service
instructions per shop) for the same epochs, with the same tiny Llama (``model.config``, random
base) and the same LoRA adapters, batch size and learning rate.

Loop side: what a researcher writes with the libraries alone, in one process with torch's
default threads: ``AutoModelForCausalLM.from_config`` + ``peft.get_peft_model``, then per round
and client: copy the global adapter in, ``torch.optim.SGD`` over seeded minibatches with the
answer-token cross-entropy, and a sample-weighted average of the adapters (FedAvg).

fedray side: ``fedray.run`` with ``execution.num_workers=2`` (one torch thread per actor), in a
fresh child process. Its time is ``summary["wall_time_s"]`` (the rounds, which include one
evaluation at the end; the loop evaluates nothing); start-up is reported apart. Peak memory per
worker is the peak RSS (``VmHWM``) of each pool actor, polled from ``/proc`` during the run.

Tokens are the non-padding input tokens every trained client processes (× local epochs), the
same count on both sides. Prints tokens/s of each side, the ratio fedray / loop, and the peak
RSS of each fedray worker and of the loop process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def config_dict(args, root: str) -> dict:
    return {
        "seed": 0,
        "rounds": args.rounds,
        "clients_per_round": 8,
        "eval_every": args.rounds,
        "deadline_s": None,
        "workload": {
            "name": "ecom_qa_lora",
            "world": {
                "num_platforms": 4,
                "shops_per_platform": 4,
                "num_products": 160,
                "utterances_per_platform": 120,
                "cache_dir": str(Path(root) / "cache"),
            },
            "partition": {"scheme": "natural", "by": "shop"},
            "model": {
                "config": {
                    "architecture": "llama",
                    "hidden_size": 128,
                    "num_layers": 2,
                    "num_heads": 4,
                },
                "vocab_size": 1024,
            },
            "lora": {
                "r": 8,
                "alpha": 16,
                "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"],
            },
            "max_len": 96,
            "eval_clients": 1,
            "decode_examples": 0,
        },
        "clients": {"num_clients": 16, "profile": {"dropout": 0.0, "availability": 1.0}},
        "strategy": {"name": "fedavg"},
        "client": {"lr": 0.5, "batch_size": 8, "local_epochs": 2},
        "execution": {"num_workers": 2, "clients_per_task": 2},
        "output": {"root": str(Path(root) / "results"), "tensorboard": False},
    }


def cohorts_and_tokens(cfg, task):
    sys.path.insert(0, str(HERE))
    from bench_vs_loop import cohorts_of

    cohorts = [list(map(int, c)) for c in cohorts_of(cfg)]
    pad = task.tokens.pad
    tokens = sum(
        int((task.client_data(c).x_train != pad).sum()) * cfg.client.local_epochs
        for cohort in cohorts
        for c in cohort
    )
    return cohorts, tokens


def peak_rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def side_loop(cfg, threads: int | None = None) -> dict:
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from fedray import seeding
    from fedray.workloads import make_workload
    from fedray.workloads.ecommerce.hf_lm import _architecture

    task = make_workload(cfg.workload, cfg.seed)
    cohorts, tokens = cohorts_and_tokens(cfg, task)
    data = {c: task.client_data(c) for cohort in cohorts for c in cohort}  # not timed
    lora = cfg.workload.lora
    model = AutoModelForCausalLM.from_config(_architecture(cfg.workload.model.config, task.tokens))
    model = get_peft_model(
        model,
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                   target_modules=lora.target_modules),
    )  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    global_ = [p.detach().clone() for p in params]
    c = cfg.client
    t0 = time.perf_counter()
    model.train()
    for r, cohort in enumerate(cohorts, start=1):
        total, weight = [torch.zeros_like(p) for p in params], 0
        for cid in cohort:
            d = data[cid]
            with torch.no_grad():
                for p, g in zip(params, global_, strict=True):
                    p.copy_(g)
            opt = torch.optim.SGD(params, lr=c.lr)
            rng = seeding.generator(cfg.seed, "shuffle", cid, r)
            for _ in range(c.local_epochs):
                order = torch.from_numpy(rng.permutation(len(d.x_train)))
                for idx in torch.split(order, c.batch_size):
                    logits = model(input_ids=d.x_train[idx]).logits
                    loss = F.cross_entropy(
                        logits.transpose(1, 2), d.y_train[idx], ignore_index=-100
                    )
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            n = len(d.x_train)
            with torch.no_grad():
                for t, p in zip(total, params, strict=True):
                    t.add_(p, alpha=n)
            weight += n
        global_ = [t / weight for t in total]
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "tokens": tokens, "peak_rss_mb": peak_rss_mb(),
            "threads": torch.get_num_threads(), "check": float(np.mean([g.abs().mean() for g in global_]))}  # fmt: skip


def _actor_pids() -> list[int]:
    """This process's pool actors: descendants (through Ray's raylet) named ClientWorker."""
    sys.path.insert(0, str(HERE))
    from pss_tree import process_table

    table = process_table()
    mine, grew = {os.getpid()}, True
    while grew:
        new = {pid for pid, (ppid, _) in table.items() if ppid in mine} - mine
        mine |= new
        grew = bool(new)
    pids = []
    for pid in mine:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ClientWorker" in cmd:
            pids.append(pid)
    return pids


def side_fedray(cfg) -> dict:
    import fedray
    from fedray.workloads import make_workload

    task = make_workload(cfg.workload, cfg.seed)  # also trains the tokenizer the actors retrain
    _, tokens = cohorts_and_tokens(cfg, task)
    peaks: dict[int, float] = {}
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            for pid in _actor_pids():
                try:
                    peaks[pid] = max(peaks.get(pid, 0.0), peak_rss_mb(pid))
                except OSError:
                    pass
            stop.wait(0.5)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    result = fedray.run(cfg, progress=False)
    total = time.perf_counter() - t0
    stop.set()
    watcher.join()
    s = result.summary
    return {"seconds": s["wall_time_s"], "startup_s": s.get("startup_s"), "total_s": total,
            "tokens": tokens, "worker_peak_rss_mb": sorted(peaks.values()),
            "driver_peak_rss_mb": peak_rss_mb()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--side", choices=["loop", "loop1", "fedray"])
    ap.add_argument("paths", nargs="*")
    args = ap.parse_args()
    if args.side:
        from fedray.config import config_from_dict

        cfg = config_from_dict(json.loads(Path(args.paths[0]).read_text()))
        if args.side == "fedray":
            out = side_fedray(cfg)
        else:
            out = side_loop(cfg, 1 if args.side == "loop1" else None)
        Path(args.paths[1]).write_text(json.dumps(out))
        return
    if args.quick:
        args.rounds = 2
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as root:
        cfg_path = Path(root) / "config.json"
        cfg_path.write_text(json.dumps(config_dict(args, root)))
        res = {}
        for side in ("loop", "loop1", "fedray"):
            out = Path(root) / f"{side}.json"
            subprocess.run(
                [sys.executable, __file__, "--side", side, str(cfg_path), str(out)],
                check=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
            res[side] = json.loads(out.read_text())
    fed = res["fedray"]
    fed_tps = fed["tokens"] / fed["seconds"]
    print(f"tokens trained: {fed['tokens']} ({args.rounds} rounds × 8 clients); "
          f"load average before: {load:.2f}")  # fmt: skip
    for name in ("loop", "loop1"):
        loop = res[name]
        assert loop["tokens"] == fed["tokens"]
        loop["tps"] = loop["tokens"] / loop["seconds"]
        print(f"loop   (1 process, {loop['threads']} torch threads): {loop['seconds']:.1f} s, "
              f"{loop['tps']:,.0f} tokens/s, peak RSS {loop['peak_rss_mb']:.0f} MB")  # fmt: skip
    workers = ", ".join(f"{m:.0f}" for m in fed["worker_peak_rss_mb"]) or "n/a"
    print(f"fedray (2 workers): rounds {fed['seconds']:.1f} s (+{fed['startup_s']:.1f} s start-up), "
          f"{fed_tps:,.0f} tokens/s; peak RSS per worker {workers} MB, driver "
          f"{fed['driver_peak_rss_mb']:.0f} MB")  # fmt: skip
    for name in ("loop", "loop1"):
        loop = res[name]
        print(f"ratio fedray / loop({loop['threads']} threads) tokens/s: "
              f"{fed_tps / loop['tps']:.2f} (incl. fedray start-up: "
              f"{fed['tokens'] / fed['total_s'] / loop['tps']:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
