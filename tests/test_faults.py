"""Faults survived: a driver killed with SIGKILL (or stopped by SIGTERM) resumes to the tables of
an uninterrupted run; a worker actor killed mid-run is replaced and its clients rerun; poisoned
updates are quarantined; resume refuses what it cannot continue. Real processes, no mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import fedray
from fedray.config import config_from_dict
from fedray.errors import UserError
from fedray.results.schema import NONDETERMINISTIC_COLUMNS
from fedray.resume import resume_config

REPO = Path(__file__).resolve().parents[1]


def base_config(root: Path, **changes) -> dict:
    cfg = {
        "seed": 4,
        "rounds": 150,
        "clients_per_round": 6,
        "workload": {"name": "synthetic", "eval_clients": 10, "max_samples": 200},
        "clients": {"num_clients": 40, "profile": {"dropout": 0.1}},
        "execution": {"clients_per_task": 2, "num_workers": 2},
        "output": {"root": str(root), "checkpoint_every": 5},
        "eval_every": 5,
    }
    for key, value in changes.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key in cfg else value
    return cfg


def assert_same_tables(a: Path, b: Path) -> None:
    for table in ("rounds.parquet", "client_events.parquet"):
        x = pd.read_parquet(a / table).drop(columns=list(NONDETERMINISTIC_COLUMNS), errors="ignore")
        y = pd.read_parquet(b / table).drop(columns=list(NONDETERMINISTIC_COLUMNS), errors="ignore")
        assert len(x) > 0
        pd.testing.assert_frame_equal(x, y, check_exact=True)


def start_cli(config: Path, name: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fedray.cli", "run", str(config), "--name", name, "--quiet"]
    # its own session: the Ray it starts goes down with it, and we signal only what we started
    return subprocess.Popen(
        cmd, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while not (run_dir / "checkpoint" / "state.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.02)


# Availability over virtual time, batteries and energy: the battery levels live in the client-state
# store, the async retries in the event queue; both must survive a kill.
CONDITIONS = {
    "num_clients": 40,
    "profile": {
        "dropout": 0.1,
        "compute_j_per_sample": 2.0,
        "idle_w": 1.0,
        "battery_j": {"dist": "uniform", "low": 300, "high": 3000},
        "timezone_h": {"dist": "uniform", "low": -3, "high": 3},
    },
    "availability": {
        "diurnal": {"active_hours": [6, 20]},
        "markov": {"mean_up_s": 600, "mean_down_s": 200},
        "retry_s": 120,
    },
    "battery": {"min_level": 0.3},
}

CASES = {
    "sync-topk-ef": {"compression": {"uplink": {"name": "topk", "fraction": 0.1}}},
    "sync-scaffold": {"strategy": {"name": "scaffold"}},
    "sync-fedadam": {"strategy": {"name": "fedadam"}},
    "sync-dp": {
        "privacy": {"clip_norm": 0.5, "noise_multiplier": 1.0},
        "clients": {"num_clients": 40},
    },
    "sync-dp-adaptive": {
        "privacy": {
            "clip_norm": 2.0,
            "noise_multiplier": 1.0,
            "adaptive_clipping": {"count_noise_multiplier": 2.0},
        },
    },
    "async-dp-fedbuff": {
        "mode": "async",
        "rounds": 300,
        "asynchronous": {"concurrency": 6, "buffer_size": 3},
        "privacy": {"clip_norm": 0.5, "noise_multiplier": 1.0},
        "output": {"checkpoint_every": 20},
    },
    "async-fedbuff-topk-ef": {
        "mode": "async",
        "rounds": 400,
        "asynchronous": {"concurrency": 6, "buffer_size": 3},
        "compression": {"uplink": {"name": "topk", "fraction": 0.1}},
        "output": {"checkpoint_every": 20},
    },
    "sync-conditions": {"clients": CONDITIONS},
    "async-conditions": {
        "mode": "async",
        "rounds": 300,
        "asynchronous": {"concurrency": 6, "buffer_size": 3},
        "clients": CONDITIONS,
        "output": {"checkpoint_every": 20},
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_killed_driver_resumes_to_the_uninterrupted_tables(ray_session, tmp_path, case):
    # Prepare: the same config run straight through, in this process's Ray.
    cfg = base_config(tmp_path, **CASES[case])
    fedray.run(
        config_from_dict({**cfg, "output": {**cfg["output"], "name": "full"}}), progress=False
    )
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))

    # Execute: a driver process killed outright once it has checkpointed, then resumed
    proc = start_cli(config, "cut")
    wait_for_checkpoint(tmp_path / "cut", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert not (tmp_path / "cut" / "rounds.parquet").exists()  # killed mid-run, no torn table
    resumed, finished = resume_config(tmp_path / "cut", None, [])
    assert not finished
    result = fedray.run(resumed, progress=False, resume=True)

    # Assert
    assert result.summary["status"] == "completed" and result.summary["resumed_from_round"]
    assert_same_tables(tmp_path / "full", tmp_path / "cut")


@pytest.mark.slow
def test_sigterm_checkpoints_exits_143_and_says_how_to_resume(ray_session, tmp_path):
    cfg = base_config(tmp_path, rounds=3000, output={"checkpoint_every": 50})
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = start_cli(config, "stopped")
    run_dir = tmp_path / "stopped"
    wait_for_checkpoint(run_dir, proc)  # into the rounds
    os.kill(proc.pid, signal.SIGTERM)  # the driver only, as `kill PID` would
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err.decode()[-2000:]
    message = err.decode().strip().splitlines()[-1]
    assert f"fedray run --resume {run_dir}" in message
    summary = fedray.Result.from_path(run_dir).summary
    assert summary["status"] == "interrupted" and 50 <= summary["checkpoint_round"] < 3000
    # the tables of a stopped run are whole, up to its checkpoint
    rounds = pd.read_parquet(run_dir / "rounds.parquet")
    assert rounds["round"].tolist() == list(range(1, summary["checkpoint_round"] + 1))


def test_a_killed_worker_is_replaced_and_its_clients_rerun(ray_session, tmp_path):
    import ray

    from fedray.execution.pool import ACTOR_PREFIX

    cfg = base_config(tmp_path, rounds=30, output={"checkpoint_every": 0})
    plain = fedray.run(config_from_dict({**cfg, "output": {**cfg["output"], "name": "plain"}}))

    def kill_one_worker(row):
        if row["round"] != 5:
            return
        names = sorted(n for n in ray.util.list_named_actors() if n.startswith(ACTOR_PREFIX))
        pid = ray.get(ray.get_actor(names[0]).pid.remote())
        # a moment later, so the kill lands while the next rounds' groups are in flight
        threading.Timer(0.01, os.kill, (pid, signal.SIGKILL)).start()

    hit = fedray.run(
        config_from_dict({**cfg, "output": {**cfg["output"], "name": "hit"}}),
        progress=False,
        on_round=kill_one_worker,
    )
    assert hit.summary["worker_restarts"] >= 1 and plain.summary["worker_restarts"] == 0
    assert_same_tables(plain.path, hit.path)


def test_poisoned_updates_are_quarantined_and_never_reach_the_model(ray_session, tmp_path):
    # A norm bound between the clients' update norms: some are withheld, each round.
    cfg = base_config(tmp_path, rounds=4, output={"checkpoint_every": 0, "name": "bounded"})
    cfg["robustness"] = {"max_update_norm": 0.35}
    bounded = fedray.run(config_from_dict(cfg), progress=False)
    events, rounds = bounded.clients, bounded.rounds
    quarantined = events[events.status == "quarantined"]
    assert 0 < len(quarantined) < (events.status != "dropped").sum()
    assert rounds["num_quarantined"].sum() == len(quarantined)
    assert (rounds["num_aggregated"] == rounds["num_completed"] - rounds["num_quarantined"]).all()
    assert (quarantined.staleness == -1).all()

    # Diverging clients (NaN updates): all quarantined, the model never moves.
    cfg = base_config(tmp_path, rounds=3, output={"checkpoint_every": 0, "name": "nan"})
    cfg["client"] = {"lr": 1e38, "local_epochs": 3}
    diverged = fedray.run(config_from_dict(cfg), progress=False)
    assert (diverged.rounds["model_version"] == 0).all()
    assert (diverged.rounds["num_aggregated"] == 0).all()
    evaluated = diverged.rounds["eval_loss"].dropna()
    assert len(evaluated) and np.isfinite(evaluated).all()
    # ... or, with nonfinite: error, stop the run with one line
    cfg["robustness"] = {"nonfinite": "error"}
    cfg["output"] = {**cfg["output"], "name": "nan-error"}
    with pytest.raises(UserError, match="diverged.*robustness.nonfinite"):
        fedray.run(config_from_dict(cfg), progress=False)


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fedray.cli", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_resume_refuses_what_it_cannot_continue(ray_session, tmp_path):
    cfg = base_config(tmp_path, rounds=6, output={"checkpoint_every": 2, "name": "done"})
    fedray.run(config_from_dict(cfg), progress=False)
    run_dir = tmp_path / "done"

    finished = run_cli(["run", "--resume", str(run_dir)])
    assert finished.returncode == 0 and "already finished" in finished.stdout

    # an unfinished run resumed with another strategy: refused, keys named
    (run_dir / "summary.json").write_text('{"status": "interrupted"}')
    changed = run_cli(["run", "--resume", str(run_dir), "--set", "strategy.name=fedavgm"])
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1
    assert "(strategy.name)" in changed.stderr
    # ...while how it executes may change (the tables are the same for any worker count)
    cfg_ok, _ = resume_config(run_dir, None, ["execution.num_workers=1"])
    assert cfg_ok.execution.num_workers == 1

    (run_dir / "checkpoint" / "state.pt").write_bytes(b"\x80\x04not a checkpoint")
    corrupt = run_cli(["run", "--resume", str(run_dir)])
    assert corrupt.returncode == 2 and "unreadable" in corrupt.stderr
    assert len(corrupt.stderr.strip().splitlines()) == 1

    nowhere = run_cli(["run", "--resume", str(tmp_path / "nope")])
    assert nowhere.returncode == 2 and "not a fedray run folder" in nowhere.stderr
