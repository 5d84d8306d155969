"""`fedray report` and `fedray ls`: every figure of a small real sync run (device tiers,
dropout, a deadline, DP-FedAvg) and a real async run, the data behind them checked against the
tables, the TensorBoard custom-scalars layout, sweep reports, listing and the one-line errors."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import fedray
from fedray.cli import main
from fedray.config import config_from_dict
from fedray.report import data
from fedray.report.build import run_report
from fedray.report.runs import config_labels
from fedray.report.sweep import sweep_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# conftest's small_config, with the features every figure needs
BASE = {
    "seed": 3,
    "rounds": 4,
    "clients_per_round": 6,
    "workload": {"name": "synthetic", "eval_clients": 10, "max_samples": 400},
    "clients": {"num_clients": 40},
    "client": {"lr": 0.01, "batch_size": 10, "local_epochs": 1},
    "execution": {"clients_per_task": 2},
}
SYNC = {
    **BASE,
    "over_selection": 1.5,
    "deadline_s": 4.0,
    "clients": {
        "num_clients": 40,
        "profile": {
            "dropout": 0.15,
            "tiers": [
                {"name": "phone", "weight": 0.6, "speed": 60},
                {"name": "laptop", "weight": 0.4, "speed": 600},
            ],
        },
    },
    "privacy": {"clip_norm": 1.0, "noise_multiplier": 0.3},
}
ASYNC = {
    **BASE,
    "rounds": 12,
    "mode": "async",
    "strategy": {"name": "fedasync"},
    "asynchronous": {"concurrency": 5},
    "clients": {"num_clients": 30, "profile": {"dropout": 0.1}},
}


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def root(ray_session, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    for name, cfg in (("sync", SYNC), ("async", ASYNC)):
        out = {"root": str(root / "results"), "name": name}
        fedray.run(config_from_dict({**cfg, "output": out}), progress=False)
    return root / "results"


@pytest.fixture(scope="module")
def report(root):
    return run_report([root / "sync", root / "async"], out=root.parent / "report", target=0.2)


def test_every_figure_is_a_sane_png(report):
    expected = {
        "eval_accuracy_vs_round",
        "eval_accuracy_vs_sim_time",
        "eval_accuracy_vs_bytes",
        "timeline_sync",
        "timeline_async",
        "participation_sync",
        "participation_async",
        "staleness",
        "epsilon",
    }
    assert set(report.figures) == expected
    for path in report.figures.values():
        width, height = png_size(path)
        assert 500 <= width <= 1400 and 300 <= height <= 1400, (path.name, width, height)


def test_html_is_self_contained_and_md_links_every_figure(report):
    page = report.html.read_text()
    assert page.count('src="data:image/png;base64,') == len(report.figures)
    assert "http://" not in page and "https://" not in page  # nothing fetched
    md = report.markdown.read_text()
    for path in report.figures.values():
        assert f"({path.name})" in md
    # the time-to-target table and the config-difference legend
    assert "time to eval accuracy 0.2" in md
    assert "mode=async" in md and "mode=sync" in md


def test_timeline_busy_time_equals_client_events(report, root):
    events = pd.read_parquet(root / "sync" / "client_events.parquet")
    info = report.timelines["sync"]
    segments = info["segments"]
    busy = segments.groupby("client_id").duration_s.sum()
    sampled = events[events.client_id.isin(info["clients"])]
    expected = (
        (sampled.download_s + sampled.compute_s + sampled.upload_s).groupby(sampled.client_id).sum()
    )
    pd.testing.assert_series_equal(busy.sort_index(), expected.sort_index(), check_names=False)
    # every sampled client appears; dropped tasks are drawn as "dropped" intervals
    assert set(info["clients"]) == set(segments.client_id)
    n_dropped = int((sampled.status == "dropped").sum())
    assert n_dropped > 0 and (segments.phase == "dropped").sum() == n_dropped
    # tiers come from the config: phones and laptops, matching the profile's own draw
    assert info["tiers"] == ["phone", "laptop"]
    from fedray.clients.profiles import ProfileModel
    from fedray.config import load_config

    cfg = load_config(root / "sync" / "config.yaml")
    tier_of = ProfileModel(cfg.clients.profile, cfg.seed).tier_of(info["clients"])
    assert sorted(tier_of) == sorted(info["tier_of"])
    assert set(info["tier_of"]) == {0, 1}


def test_participation_counts_equal_the_tables(report, root):
    for name in ("sync", "async"):
        events = pd.read_parquet(root / name / "client_events.parquet")
        table = report.participation[name]["table"]
        aggregated = events[events.status.isin(["completed", "partial"])].client_id.value_counts()
        got = table.aggregated[table.aggregated > 0]
        pd.testing.assert_series_equal(got.sort_index(), aggregated.sort_index(), check_names=False)
        assert (table.selected == events.client_id.value_counts().sort_index()).all()
        assert report.participation[name]["population"] == {"sync": 40, "async": 30}[name]


def test_staleness_and_epsilon_data(root):
    events = pd.read_parquet(root / "async" / "client_events.parquet")
    counts = data.staleness_counts(events)
    received = events[events.staleness >= 0].staleness.value_counts()
    assert {i: int(c) for i, c in enumerate(counts) if c} == received.to_dict()
    assert counts[1:].sum() > 0  # the async run really had stale updates
    rounds = pd.read_parquet(root / "sync" / "rounds.parquet")
    eps = data.epsilon(rounds)
    assert len(eps) == 4 and np.all(np.diff(eps.epsilon) > 0)  # ε only grows


def test_time_to_target_matches_the_first_row_reaching_it(report, root):
    rounds = pd.read_parquet(root / "sync" / "rounds.parquet")
    first = data.first_reaching(rounds, "eval_accuracy", 0.2)
    reached = rounds[rounds.eval_accuracy >= 0.2]
    assert (first is None) == reached.empty
    if first is not None:
        assert first["round"] == reached["round"].iloc[0]
    # loss-like metrics count down
    loss = data.first_reaching(rounds, "eval_loss", float(rounds.eval_loss.max()))
    assert loss is not None and loss["round"] == 1


def test_gini_against_a_direct_computation():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 10, size=30)
    full = np.concatenate([counts, np.zeros(20)])
    # mean absolute difference over all pairs / (2 · mean): the textbook definition
    direct = np.abs(full[:, None] - full[None, :]).mean() / (2 * full.mean())
    assert data.gini(counts, 50) == pytest.approx(direct)
    assert data.gini(np.full(5, 3), 5) == pytest.approx(0.0)


def test_config_labels_name_the_differing_keys():
    a = {"rounds": 5, "compression": {"uplink": {"name": "none", "fraction": None}}}
    b = {"rounds": 5, "compression": {"uplink": {"name": "topk", "fraction": 0.01}}}
    c = {**b, "output": {"name": "elsewhere"}}  # where a run wrote is not a difference
    labels = config_labels({"a": a, "b": b, "c": c})
    assert labels["a"] == "compression.uplink.name=none"
    assert labels["b"] == "b: compression.uplink.name=topk fraction=0.01"
    assert labels["c"] == "c: compression.uplink.name=topk fraction=0.01"  # same config as b
    assert config_labels({"a": a, "b": b})["b"] == "compression.uplink.name=topk fraction=0.01"
    assert config_labels({"x": a, "y": a}) == {"x": "x", "y": "y"}


def test_tensorboard_custom_scalars_layout(root):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.custom_scalar import layout_pb2

    for name in ("sync", "async"):
        layouts, scalars = [], set()
        for events_file in sorted((root / name / "tb").glob("events.out.tfevents.*")):
            for event in EventFileLoader(str(events_file)).Load():
                for value in event.summary.value:
                    if value.tag == "custom_scalars__config__":
                        layouts.append(layout_pb2.Layout.FromString(value.tensor.string_val[0]))
                    else:
                        scalars.add(value.tag)
        assert len(layouts) == 1
        categories = {c.title: c for c in layouts[0].category}
        charted = {t for c in categories.values() for ch in c.chart for t in ch.multiline.tag}
        assert charted and charted <= scalars  # every charted tag was logged
        assert "by_sim_time/eval/accuracy" in charted and "comm/cum_MB_up" in charted
        assert ("fedray: privacy" in categories) == (name == "sync")
        assert ("fedray: async" in categories) == (name == "async")


def test_report_cli_and_ls(root, tmp_path, capsys):
    assert main(["report", str(root / "sync"), "--metric", "loss", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "eval_loss_vs_round.png").is_file() and (tmp_path / "report.html").is_file()
    capsys.readouterr()
    # ls: newest first; a not-completed run with a checkpoint is resumable
    copy = root.parent / "ls" / "stopped"
    shutil.copytree(root / "sync", copy)
    shutil.copytree(root / "async", root.parent / "ls" / "async")
    summary = json.loads((copy / "summary.json").read_text())
    summary.update(status="interrupted", started_at="2099-01-01T00:00:00+00:00")
    (copy / "summary.json").write_text(json.dumps(summary))
    assert main(["ls", str(root.parent / "ls")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["started", "name", "workload"]
    assert "stopped" in lines[1] and "interrupted, resumable" in lines[1]
    assert "async" in lines[2] and "fedasync" in lines[2] and "12/12" in lines[2]
    assert main(["ls", str(tmp_path / "nowhere")]) == 2


def test_sweep_report_from_sweep_parquet(root, tmp_path):
    from fedray.sweep import Trial
    from fedray.sweep_report import write_summary

    sweep = tmp_path / "sw"
    trials = []
    for name, cfg in (("sync", SYNC), ("async", ASYNC)):
        shutil.copytree(root / name, sweep / name)
        params = {
            "strategy.name": (cfg.get("strategy") or {}).get("name", "fedavg"),
            "clients.num_clients": cfg["clients"]["num_clients"],
        }
        trials.append(Trial(name, params, None))
    write_summary(trials, sweep, 0.2, {})
    folder, figures = sweep_report(sweep)
    assert set(figures) >= {"final_accuracy", "frontier"}
    for path in figures.values():
        png_size(path)
    md = (folder / "report.md").read_text()
    assert "fedasync" in md and "clients.num_clients" in md
    assert main(["report", str(sweep), str(root / "sync")]) == 2  # a sweep is reported alone


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_table_is_one_line_exit_2(root, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(root / "async", run)
    table = run / "client_events.parquet"
    if damage == "missing":
        table.unlink()
    else:
        table.write_bytes(table.read_bytes()[: len(table.read_bytes()) // 2])
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "client_events.parquet" in err and "Traceback" not in err


def test_a_table_without_a_needed_column_is_one_line_exit_2(root, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(root / "sync", run)
    rounds = pq.read_table(run / "rounds.parquet").drop_columns(["sim_time_s"])
    pq.write_table(rounds, run / "rounds.parquet")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "rounds.parquet" in err and "sim_time_s" in err and err.count("\n") == 1
