"""The ``fedray`` command as a user runs it: its own Ray, the engine imported while Ray starts,
Ray's monitor stopped before ``ray.shutdown``, and the exit that skips the interpreter's
teardown — tables, summary and exit codes must be those of ``fedray.cli.main``."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

CONFIG = """
seed: 1
rounds: 2
clients_per_round: 4
workload: {name: synthetic, eval_clients: 5, max_samples: 200}
clients: {num_clients: 20}
output: {tensorboard: false}
"""


def _fedray(*args: str) -> subprocess.CompletedProcess:
    code = "from fedray.cli import console_main; console_main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_the_command_writes_its_tables_and_exits_with_main_s_codes(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    args = ("run", str(config), "--out", str(tmp_path), "--name", "tiny", "--quiet")
    done = _fedray(*args)
    assert done.returncode == 0, done.stderr
    assert "2 rounds" in done.stdout
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert len(pd.read_parquet(tmp_path / "tiny" / "rounds.parquet")) == 2
    assert len(pd.read_parquet(tmp_path / "tiny" / "client_events.parquet")) == 8
    # Refused after Ray has started (the run folder is made once Ray is up): one line, code 2,
    # and the first run's tables untouched.
    again = _fedray(*args)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr
    assert len(pd.read_parquet(tmp_path / "tiny" / "rounds.parquet")) == 2
