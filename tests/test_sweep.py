"""Sweeps: grid expansion and trial names, resources, the summary table, bad sweep files, and a
tiny real sweep on Tune (packing, a failing trial, HParams, resume)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fedray.cli import main
from fedray.errors import ConfigError, UserError
from fedray.sweep import (
    check_fits,
    expand,
    grid_points,
    load_sweep,
    run_sweep,
    trial_bundles,
    trial_names,
)
from fedray.sweep_report import SUMMARY_SCHEMA, SweepProgress, summary_table

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "rounds": 2,
    "clients_per_round": 4,
    "workload": {"eval_clients": 8, "max_samples": 200},
    "clients": {"num_clients": 20},
}


def write_sweep(tmp_path, **spec) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "sw", "base": "base.yaml", **spec}, sort_keys=False))
    return path


# --------------------------------------------------------------------------- expansion


def test_grid_points_are_the_product_with_the_last_axis_fastest():
    points = grid_points({"seed": [0, 1], "clients.num_clients": [10, 100, 1000]})
    assert len(points) == 6
    assert points[:3] == [
        {"seed": 0, "clients.num_clients": 10},
        {"seed": 0, "clients.num_clients": 100},
        {"seed": 0, "clients.num_clients": 1000},
    ]
    assert points[3] == {"seed": 1, "clients.num_clients": 10}


def test_trial_names_are_readable_and_unique():
    points = [
        {"variant": "prox", "strategy.name": "fedavg", "workload.name": "synthetic", "seed": 0},
        {"variant": "prox", "strategy.name": "fedavg", "workload.name": "synthetic", "seed": 1},
    ]
    # Both axes end in "name", so they keep their dotted keys; "seed" is unambiguous.
    assert trial_names(points, "variant") == [
        "prox_strategy.name=fedavg_workload.name=synthetic_seed=0",
        "prox_strategy.name=fedavg_workload.name=synthetic_seed=1",
    ]
    codec = [{"compression.uplink": {"name": "topk", "fraction": 0.05}}] * 2
    assert trial_names(codec) == ["uplink=topk-0.05", "uplink=topk-0.05_2"]
    assert trial_names([{"clients.num_clients": 1000000}]) == ["num_clients=1000000"]
    assert trial_names([{"x": "a/b c"}]) == ["x=a-b-c"]  # always a plain folder name


def test_expand_crosses_variants_with_the_grid_and_resolves_configs(tmp_path):
    path = write_sweep(
        tmp_path,
        overrides={"rounds": 3, "seed": 9},
        grid={"seed": [1, 2]},
        variants={"avg": {}, "prox": {"strategy.name": "fedprox", "strategy.mu": 0.1}},
    )
    trials = expand(load_sweep(path), root="rel/out", extra=["clients_per_round=5"])
    assert [t.name for t in trials] == ["avg_seed=1", "avg_seed=2", "prox_seed=1", "prox_seed=2"]
    assert trials[3].params == {"variant": "prox", "seed": 2}
    cfg = trials[3].cfg
    assert (cfg.seed, cfg.rounds, cfg.clients_per_round) == (2, 3, 5)  # axis beats overrides
    assert (cfg.strategy.name, cfg.strategy.mu) == ("fedprox", 0.1)
    assert cfg.output.root == Path("rel/out").resolve() / "sw"
    assert cfg.output.name == "prox_seed=2"
    assert cfg.execution.num_workers == 1  # one actor per trial unless the sweep says otherwise


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_expand_to_valid_trials(path, tmp_path):
    spec = load_sweep(path)
    trials = expand(spec, root=tmp_path)
    assert len({t.name for t in trials}) == len(trials) > 1
    assert all(t.cfg.output.root == tmp_path.resolve() / spec.name for t in trials)
    check_fits(trials, [{"CPU": 2.0}])  # each trial fits the 2-core laptop it is sized for


def test_trial_resources_and_fit_check(tmp_path):
    path = write_sweep(
        tmp_path,
        grid={"execution.num_workers": [1, 3]},
        overrides={"execution.cpus_per_worker": 0.5},
    )
    small, big = expand(load_sweep(path), root=tmp_path)
    assert trial_bundles(small.cfg) == [{}, {"CPU": 0.5}]
    assert trial_bundles(big.cfg) == [{}] + [{"CPU": 0.5}] * 3
    check_fits([small, big], [{"CPU": 1.0}, {"CPU": 0.5}])  # bundles may spread over nodes
    with pytest.raises(UserError, match=r"'num_workers=3' needs 1.5 CPUs \(3 workers × 0.5\)"):
        check_fits([small, big], [{"CPU": 1.0}])
    with pytest.raises(UserError, match="largest node 0.25"):
        check_fits([small], [{"CPU": 0.25}] * 4)  # enough in total, but no node holds a worker


# --------------------------------------------------------------------------- summary


def fake_run(run_dir: Path, status: str, accuracy: list[float] | None = None, **summary):
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": status, **summary}))
    if accuracy is not None:
        n = len(accuracy)
        table = pa.table(
            {
                "round": list(range(1, n + 1)),
                "sim_time_s": [10.0 * r for r in range(1, n + 1)],
                "eval_accuracy": accuracy,
                "eval_loss": [1.0 / r for r in range(1, n + 1)],
            }
        )
        pq.write_table(table, run_dir / "rounds.parquet")


def test_summary_table_schema_and_metrics(tmp_path):
    path = write_sweep(
        tmp_path,
        grid={"compression.uplink": ["none", {"name": "topk", "fraction": 0.1}], "seed": [0, 1, 2]},
    )
    trials = expand(load_sweep(path), root=tmp_path)  # uplink none: seeds 0-2, then topk
    sweep_dir = tmp_path / "sw"
    done = dict(rounds_completed=4, sim_time_s=40.0, total_bytes_up=100, total_bytes_down=50)
    done |= dict(wall_time_s=1.5, startup_s=3.0)
    fake_run(sweep_dir / trials[0].name, "completed", [0.2, 0.55, math.nan, 0.7], **done)
    fake_run(sweep_dir / trials[1].name, "completed", [0.1, 0.2, 0.3, 0.4], **done)
    fake_run(sweep_dir / trials[2].name, "running")  # the sweep was interrupted mid-trial
    errors = {trials[3].name: "UserError: trace file 'x.csv' not found"}  # died before its run
    fake_run(sweep_dir / trials[4].name, "failed", error="RuntimeError: boom")  # its run says why
    errors[trials[4].name] = "RayTaskError: a long wrapped traceback"
    # trials[5] never started: no folder, no error

    table = summary_table(trials, sweep_dir, target=0.5, errors=errors)

    assert table.column_names == ["trial", "compression.uplink", "seed"] + SUMMARY_SCHEMA.names[1:]
    for field in SUMMARY_SCHEMA:
        assert table.schema.field(field.name).type == field.type, field.name
    assert table.schema.field("compression.uplink").type == pa.string()
    rows = table.to_pylist()
    assert rows[0]["compression.uplink"] == "none"
    assert json.loads(rows[3]["compression.uplink"]) == {"fraction": 0.1, "name": "topk"}
    assert [r["seed"] for r in rows] == [0, 1, 2, 0, 1, 2]
    first = rows[0]
    assert first["status"] == "completed" and first["error"] is None
    assert first["final_accuracy"] == 0.7 and first["final_loss"] == 0.25
    assert (first["sim_time_to_target_s"], first["rounds_to_target"]) == (20.0, 2)
    assert first["total_bytes"] == 150 and first["wall_time_s"] == 1.5
    assert rows[1]["sim_time_to_target_s"] is None  # never reached 0.5
    assert rows[2]["status"] == "interrupted" and rows[2]["final_accuracy"] is None
    assert rows[3]["status"] == "failed" and "x.csv" in rows[3]["error"]
    assert (rows[4]["status"], rows[4]["error"]) == ("failed", "RuntimeError: boom")
    assert (rows[5]["status"], rows[5]["error"]) == ("not_run", None)


def test_progress_counts_trials_and_logs_a_line_per_change(capsys):
    bar = SweepProgress(total=4, reused=1, description="sw")
    for event, trial in [("start", "a"), ("start", "b"), ("error", "a"), ("complete", "b")]:
        bar.update(event, trial)
    bar.close()
    assert (bar.done, bar.running, bar.failed) == (2, 0, 1)
    lines = capsys.readouterr().err.splitlines()  # not a terminal: plain lines
    assert lines[2] == "trial a: error  done 1 (reused 1)  running 1  failed 1"
    assert lines[3] == "trial b: complete  done 2 (reused 1)  running 0  failed 1"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {"seed": []}}, "grid: Value error, axis 'seed' has no values"),
        ({"grid": {"seed": 3}}, "grid.seed: Input should be a valid list"),
        ({}, "needs 'grid'"),
        ({"grid": {"seed": [1]}, "axes": {}}, "axes: Extra inputs are not permitted"),
        ({"grid": {"clients.num_clientz": [1]}}, "unknown key 'clients.num_clientz'"),
        ({"grid": {"rounds": [2, 0]}}, "sweep trial 'rounds=0': invalid config '.*': rounds = 0"),
        ({"variants": {"../x": {}}}, "must be a plain folder name"),
        ({"grid": {"seed": [1]}, "target_accuracy": 2}, "target_accuracy"),
    ],
)
def test_bad_sweep_files_are_one_line_errors(tmp_path, spec, message):
    path = write_sweep(tmp_path, **spec)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand(load_sweep(path), root=tmp_path)


def test_cli_bad_sweep_exits_2_without_traceback(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not valid YAML" in err and "Traceback" not in err
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_unreachable_address_fails_fast(tmp_path):
    # A fresh process: Ray must not be initialised already, as it is in this test session.
    path = write_sweep(tmp_path, grid={"seed": [1]})
    cmd = [sys.executable, "-m", "fedray.cli", "sweep", str(path), "--out", str(tmp_path / "r")]
    proc = subprocess.run(
        cmd + ["--address", "127.0.0.1:9"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "no Ray cluster answers at '127.0.0.1:9'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- a real sweep


def hparams_of(logdir: Path) -> dict:
    """The HParams session-start values written into a TensorBoard event directory."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    found = {}
    for events in logdir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
                for key, v in data.session_start_info.hparams.items():
                    found[key] = v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
    return found


def test_sweep_packs_trials_records_failures_and_resumes(ray_session, tmp_path, capsys):
    # Prepare: two good trials and one whose trace file does not exist yet.
    path = write_sweep(
        tmp_path,
        variants={
            "s1": {"seed": 1},
            "s2": {"seed": 2},
            "late": {"clients.profile.trace": "devices.csv"},
        },
        target_accuracy=0.05,
        time_budget_s=150,  # a failure rather than a hang if the pools escaped their groups
    )
    out = tmp_path / "res"

    # Execute: the failing trial must not stop the good ones.
    sweep_dir = run_sweep(path, root=out, progress=False)

    # Assert
    table = pq.read_table(sweep_dir / "sweep.parquet").to_pandas().set_index("trial")
    assert list(table.index) == ["s1", "s2", "late"] and list(table.variant) == list(table.index)
    ok, late = table.loc[["s1", "s2"]], table.loc["late"]
    assert (ok.status == "completed").all() and ok.error.isna().all()
    assert ok.final_accuracy.between(0, 1).all() and (ok.rounds_completed == 2).all()
    assert (ok.total_bytes > 0).all() and (ok.sim_time_to_target_s > 0).all()
    assert late.status == "failed" and "devices.csv' not found" in late.error
    assert not (sweep_dir / "late").exists()  # it failed before creating its run directory
    # Each good trial has its own run directory, and they ran at the same time. Their placement
    # groups held both CPUs of the session Ray, so that is only possible because each pool's
    # actor was created inside its trial's group (outside, it would never have been scheduled).
    spans = [json.loads((sweep_dir / name / "summary.json").read_text()) for name in ("s1", "s2")]
    assert all(s["num_workers"] == 1 and s["seed"] == i + 1 for i, s in enumerate(spans))
    assert max(s["started_at"] for s in spans) < min(s["finished_at"] for s in spans)
    assert (sweep_dir / ".tune").is_dir()  # Tune's storage stays inside the sweep
    assert hparams_of(sweep_dir / "tb" / "s2") == {"variant": "s2", "status": "completed"}
    assert hparams_of(sweep_dir / "tb" / "late") == {"variant": "late", "status": "failed"}

    with pytest.raises(UserError, match="--resume"):
        run_sweep(path, root=out, progress=False)

    # Resume once the trace exists: the failed trial runs, the finished ones are untouched.
    shutil.copy(REPO / "configs" / "traces" / "devices.csv", tmp_path / "devices.csv")
    stamps = {
        name: (sweep_dir / name / "rounds.parquet").stat().st_mtime_ns for name in ("s1", "s2")
    }
    run_sweep(path, root=out, resume=True, progress=False)
    table = pq.read_table(sweep_dir / "sweep.parquet").to_pandas().set_index("trial")
    assert (table.status == "completed").all()
    for span, (name, stamp) in zip(spans, stamps.items(), strict=True):
        assert (sweep_dir / name / "rounds.parquet").stat().st_mtime_ns == stamp
        summary = json.loads((sweep_dir / name / "summary.json").read_text())
        assert summary["started_at"] == span["started_at"]

    # The command on a finished sweep: nothing to run, exit 0, the table's counts.
    assert main(["sweep", str(path), "--out", str(out), "--resume", "--quiet"]) == 0
    assert "sweep done (3 completed)" in capsys.readouterr().out
