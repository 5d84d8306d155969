"""Asynchronous rounds: staleness maths, FedAsync / FedBuff golden vectors, the event order on a
hand-built population, dropout, determinism across worker counts, and the heterogeneity ordering
FedBuff < sync FedAvg in simulated time to a target accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedray
from fedray.config import apply_overrides, config_from_dict, load_config
from fedray.errors import ConfigError
from fedray.results.schema import NONDETERMINISTIC_COLUMNS
from fedray.strategies import (
    FedAsync,
    FedAvg,
    FedAvgM,
    FedBuff,
    RobustAggregation,
    StalenessWeight,
)
from fedray.workloads import make_workload

REPO = Path(__file__).parents[1]

# ---------------------------------------------------------------------------- plain maths


def test_staleness_functions_match_their_formulas():
    tau = np.array([0, 1, 2, 3, 7, 12])
    assert np.allclose(StalenessWeight("constant")(tau), 1.0)
    assert np.allclose(StalenessWeight("polynomial", a=0.5)(tau), [1 / np.sqrt(t + 1) for t in tau])
    hinge = StalenessWeight("hinge", a=2.0, b=3.0)(tau)
    assert np.allclose(hinge, [1, 1, 1, 1, 1 / (2 * 4 + 1), 1 / (2 * 9 + 1)])
    with pytest.raises(ValueError, match="unknown"):
        StalenessWeight("exponential")


def test_fedasync_check_vector():
    """α = 0.9, polynomial a = 1, staleness 2: α_t = 0.3; global 10 with client 2 gives 7.6."""
    strategy = FedAsync(alpha=0.9, staleness=StalenessWeight("polynomial", a=1.0))
    assert strategy.mixing_weight(2) == pytest.approx(0.3)
    state = strategy.init(np.array([10.0]))
    buffer = strategy.new_aggregate()
    # the client started from 6.0 and moved by -4.0: its model is 2.0
    strategy.arrival(buffer, np.array([-4.0], np.float32), 7, 2, np.array([6.0]), state.params)
    state = strategy.server_step(state, buffer)
    assert state.params[0] == pytest.approx(7.6) and state.version == 1


def _fedbuff(inner, k, staleness=None, weighting="uniform"):
    return FedBuff(
        inner, buffer_size=k, staleness=staleness or StalenessWeight(), weighting=weighting
    )


def test_fedbuff_step_matches_an_independent_reference():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=5).astype(np.float32)
    deltas = rng.normal(size=(3, 5))
    stalenesses = [0, 3, 8]
    strategy = _fedbuff(FedAvg(server_lr=0.7), 3)
    state, buffer = strategy.init(x0), strategy.new_aggregate()
    for delta, tau in zip(deltas, stalenesses, strict=True):
        strategy.arrival(buffer, delta, 100, tau, x0, state.params)
    assert buffer.count == strategy.buffer_size
    state = strategy.server_step(state, buffer)
    # Nguyen et al. 2022, Alg. 1: x ← x + η_g · (1/K) Σ Δ_i / sqrt(1 + τ_i)
    expected = (
        x0 + 0.7 * sum(d / np.sqrt(1 + t) for d, t in zip(deltas, stalenesses, strict=True)) / 3
    )
    np.testing.assert_allclose(state.params, expected, rtol=1e-6)


def test_fedbuff_sample_weighting_is_a_weighted_mean_of_damped_updates():
    deltas, n, taus = np.array([[1.0], [4.0]]), [10, 30], [0, 3]
    strategy = _fedbuff(FedAvg(), 2, weighting="samples")
    x0 = np.zeros(1, np.float32)
    state, buffer = strategy.init(x0), strategy.new_aggregate()
    for d, k, t in zip(deltas, n, taus, strict=True):
        strategy.arrival(buffer, d, k, t, x0, x0)
    state = strategy.server_step(state, buffer)
    expected = (10 * 1.0 + 30 * 4.0 / 2.0) / 40  # Σ n s(τ) Δ / Σ n, s(3) = 1/2
    np.testing.assert_allclose(state.params, [expected], rtol=1e-6)


def test_fedbuff_with_k1_is_asynchronous_sgd_on_deltas():
    x = np.array([1.0, -2.0], dtype=np.float32)
    delta, tau, lr = np.array([0.5, 0.25]), 3, 0.1
    strategy = _fedbuff(FedAvg(server_lr=lr), 1)
    buffer = strategy.new_aggregate()
    strategy.arrival(buffer, delta, 5, tau, x, x)
    state = strategy.server_step(strategy.init(x), buffer)
    np.testing.assert_allclose(state.params, x + lr * delta / np.sqrt(1 + tau), rtol=1e-6)


def test_fedbuff_step_can_be_a_server_optimizer():
    """The buffered pseudo-gradient feeds FedAvgM like a sync round's average would."""
    x = np.zeros(2, dtype=np.float32)
    strategy = _fedbuff(FedAvgM(server_lr=1.0, momentum=0.9), 2, StalenessWeight("constant"))
    buffer = strategy.new_aggregate()
    strategy.arrival(buffer, np.array([1.0, 0.0]), 1, 0, x, x)
    strategy.arrival(buffer, np.array([0.0, 1.0]), 1, 5, x, x)
    state = strategy.server_step(strategy.init(x), buffer)
    np.testing.assert_allclose(state.params, [0.5, 0.5])


def test_robust_buffers_keep_rows():
    strategy = _fedbuff(RobustAggregation("median"), 2, StalenessWeight("constant"))
    buffer = strategy.new_aggregate()
    strategy.arrival(buffer, np.array([1.0]), 1, 0, np.zeros(1), np.zeros(1))
    strategy.arrival(buffer, np.array([3.0]), 1, 1, np.zeros(1), np.zeros(1))
    rows, weights = buffer.matrix()
    assert rows.shape == (2, 1) and list(weights) == [1.0, 1.0]


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "data, message",
    [
        ({"strategy": {"name": "fedasync"}}, "set mode: async"),
        ({"mode": "async", "deadline_s": 5}, "deadline_s applies to synchronous"),
        ({"mode": "async", "over_selection": 1.3}, "over_selection applies"),
        ({"mode": "async", "asynchronous": {"concurrency": 5000}}, "exceeds clients.num_clients"),
        (
            {"mode": "async", "strategy": {"name": "fedasync"}, "asynchronous": {"buffer_size": 4}},
            "remove asynchronous.buffer_size",
        ),
        ({"mode": "async", "asynchronous": {"staleness": "cubic"}}, "asynchronous.staleness"),
        ({"mode": "asynchronous"}, "mode"),
        (
            {"mode": "async", "strategy": {"name": "fedasync", "server_lr": 0.5}},
            "step size is strategy.alpha",
        ),
    ],
)
def test_async_config_errors_name_the_fix(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


# ---------------------------------------------------------------------------- real runs


def with_changes(cfg: dict, changes: dict) -> dict:
    """``section__key=value`` keyword changes applied as config overrides."""
    return apply_overrides(cfg, [(k.replace("__", "."), v) for k, v in changes.items()])


def hand_built(tmp_path, durations, **changes) -> dict:
    """N = C clients whose task takes exactly ``durations[k]`` simulated seconds (transfers are
    made negligible): with every client always in flight, each slot is refilled by the client
    that just freed it, so the whole event sequence can be written out by hand."""
    n = len(durations)
    workload = {"name": "synthetic", "eval_clients": n, "max_samples": 200}
    samples = make_workload(config_from_dict({"workload": workload}).workload, 5).num_train_samples(
        np.arange(n)
    )
    trace = tmp_path / "trace.csv"
    pd.DataFrame(
        {
            "client_id": np.arange(n),
            "speed": samples / np.asarray(durations),
            "down_mbps": 1e12,
            "up_mbps": 1e12,
            "latency_ms": 0.0,
        }
    ).to_csv(trace, index=False)
    cfg = {
        "seed": 5,
        "mode": "async",
        "rounds": 8,
        "workload": workload,
        "clients": {"num_clients": n, "profile": {"trace": str(trace)}},
        "asynchronous": {"concurrency": n, "buffer_size": 1},
        "execution": {"clients_per_task": 2},
        "output": {"root": str(tmp_path / "results"), "name": "hand"},
    }
    return with_changes(cfg, changes)


def test_event_order_and_staleness_on_a_hand_built_population(ray_session, tmp_path):
    # Durations 1, 2.6 and 3.7 s; FedBuff with K = 1, so every arrival is a server step:
    #   t=1    client 0 (from v0) staleness 0 -> v1     t=3.7 client 2 (from v0) staleness 4 -> v5
    #   t=2    client 0 (from v1) staleness 0 -> v2     t=4   client 0 (from v4) staleness 1 -> v6
    #   t=2.6  client 1 (from v0) staleness 2 -> v3     t=5   client 0 (from v6) staleness 0 -> v7
    #   t=3    client 0 (from v2) staleness 1 -> v4     t=5.2 client 1 (from v3) staleness 4 -> v8
    result = fedray.run(config_from_dict(hand_built(tmp_path, [1.0, 2.6, 3.7])), progress=False)
    events = result.clients
    assert list(events["status"]) == ["completed"] * 8
    expected = [
        (1.0, 0, 0, 0),
        (2.0, 0, 1, 0),
        (2.6, 1, 0, 2),
        (3.0, 0, 2, 1),
        (3.7, 2, 0, 4),
        (4.0, 0, 4, 1),
        (5.0, 0, 6, 0),
        (5.2, 1, 3, 4),
    ]
    got = list(
        zip(
            events["finish_time_s"].round(6),
            events["client_id"],
            events["model_version"],
            events["staleness"],
            strict=True,
        )
    )
    assert got == expected
    rounds = result.rounds
    assert list(rounds["round"]) == list(range(1, 9))
    assert list(rounds["model_version"]) == list(range(1, 9))
    assert list(rounds["staleness_max"]) == [s for *_, s in expected]
    np.testing.assert_allclose(rounds["sim_time_s"], [t for t, *_ in expected], atol=1e-6)
    assert (rounds["num_aggregated"] == 1).all()


def test_max_staleness_discards_old_updates(ray_session, tmp_path):
    cfg = hand_built(tmp_path, [1.0, 2.6, 3.7], asynchronous__max_staleness=3)
    events = fedray.run(config_from_dict(cfg), progress=False).clients
    late = events[(events.client_id == 2)].iloc[0]
    assert late.status == "stale" and late.staleness == 4 and late.bytes_up > 0
    kept = events[events.status == "completed"]
    assert (kept.staleness <= 3).all()


def test_dropped_clients_free_their_slot_when_they_drop(ray_session, tmp_path):
    cfg = hand_built(tmp_path, [1.0, 1.5, 2.0], rounds=15)
    trace = Path(cfg["clients"]["profile"]["trace"])
    table = pd.read_csv(trace).assign(dropout=0.4)
    table.to_csv(trace, index=False)
    events = fedray.run(config_from_dict(cfg), progress=False).clients
    dropped = events[events.status == "dropped"]
    assert len(dropped) > 0 and (dropped.staleness == -1).all() and (dropped.bytes_up == 0).all()
    # Each dropped task ends before its full duration, after the phases it did spend...
    spent = dropped.finish_time_s - dropped.dispatch_time_s
    full = dropped.client_id.map({0: 1.0, 1: 1.5, 2: 2.0})
    assert (spent < full).all()
    np.testing.assert_allclose(spent, dropped.download_s + dropped.compute_s + dropped.upload_s)
    # ...and its client (N = C) is redispatched at that instant.
    for _, task in dropped.iterrows():
        later = events[(events.client_id == task.client_id) & (events.index > task.name)]
        if len(later):
            assert later.iloc[0].dispatch_time_s == pytest.approx(task.finish_time_s)


def async_config(tmp_path, **changes) -> dict:
    cfg = {
        "seed": 11,
        "mode": "async",
        "rounds": 12,
        "eval_every": 4,
        "workload": {"name": "synthetic", "eval_clients": 10, "max_samples": 300},
        "clients": {
            "num_clients": 60,
            "profile": {
                "speed": {"dist": "lognormal", "median": 150, "sigma": 1.0},
                "dropout": 0.1,
            },
        },
        "asynchronous": {"concurrency": 12, "buffer_size": 3, "max_staleness": 6},
        "compression": {"uplink": {"name": "topk", "fraction": 0.2, "error_feedback": True}},
        "execution": {"clients_per_task": 3},
        "output": {"root": str(tmp_path / "results")},
    }
    return with_changes(cfg, changes)


def test_async_tables_are_identical_for_one_two_and_four_workers(ray_session, tmp_path):
    runs = [
        fedray.run(
            config_from_dict(
                async_config(
                    tmp_path,
                    execution__num_workers=w,
                    execution__cpus_per_worker=0.5,
                    output__name=f"w{w}",
                )
            ),
            progress=False,
        )
        for w in (1, 2, 4)
    ]
    assert [r.summary["num_workers"] for r in runs] == [1, 2, 4]
    cols = [c for c in runs[0].rounds.columns if c not in NONDETERMINISTIC_COLUMNS]
    for other in runs[1:]:
        pd.testing.assert_frame_equal(runs[0].rounds[cols], other.rounds[cols], check_exact=True)
        pd.testing.assert_frame_equal(runs[0].clients, other.clients, check_exact=True)
    rounds, events = runs[0].rounds, runs[0].clients
    assert rounds["num_dropped"].sum() > 0 and rounds["staleness_max"].max() > 0
    # bookkeeping adds up per row
    per_row = events.groupby("round")
    np.testing.assert_array_equal(per_row["bytes_up"].sum(), rounds["bytes_up"])
    assert (rounds["num_aggregated"] == 3).all()
    assert (events.loc[events.status == "completed", "staleness"] <= 6).all()


def test_fedasync_runs_and_logs_staleness_to_tensorboard(ray_session, tmp_path):
    cfg = async_config(
        tmp_path,
        rounds=20,
        strategy={"name": "fedasync", "alpha": 0.6},
        asynchronous={"concurrency": 8},
        output__name="fa",
    )
    cfg["compression"] = {}
    result = fedray.run(config_from_dict(cfg), progress=False)
    assert (result.rounds["num_aggregated"] == 1).all()
    assert result.rounds["eval_accuracy"].notna().sum() == 5  # every 4th update
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(result.path / "tb"), size_guidance={"histograms": 0}).Reload()
    assert "async/staleness" in acc.Tags()["histograms"]
    assert [e.step for e in acc.Scalars("eval/accuracy")] == [4, 8, 12, 16, 20]


def test_fedbuff_with_a_robust_step(ray_session, tmp_path):
    cfg = async_config(
        tmp_path, strategy={"name": "robust", "rule": "median"}, output__name="median"
    )
    cfg["compression"] = {}
    rounds = fedray.run(config_from_dict(cfg), progress=False).rounds
    assert list(rounds["model_version"]) == list(range(1, 13))
    assert rounds["eval_loss"].notna().sum() == 3


@pytest.mark.slow
def test_fedbuff_reaches_the_target_before_sync_fedavg_in_simulated_time(ray_session, tmp_path):
    """A small version of configs/studies/async_vs_sync.yaml: on a long-tailed population, sync
    FedAvg waits for the slowest of its cohort every round, FedBuff never waits."""
    base = REPO / "configs/async_heterogeneity.yaml"
    common = [
        ("clients.num_clients", 200),
        ("workload.eval_clients", 100),
        ("execution.clients_per_task", 10),
        ("output.root", str(tmp_path)),
    ]
    target = 0.3
    sync = fedray.run(
        load_config(base, [*common, ("rounds", 40), ("clients_per_round", 20)]), progress=False
    )
    buff = fedray.run(
        load_config(
            base,
            [
                *common,
                ("mode", "async"),
                ("rounds", 100),
                ("eval_every", 2),
                ("asynchronous", {"concurrency": 20, "buffer_size": 5}),
            ],
        ),
        progress=False,
    )

    def time_to_target(rounds):
        reached = rounds[rounds.eval_accuracy >= target]
        assert len(reached), f"target {target} never reached: {rounds.eval_accuracy.max():.3f}"
        return reached.sim_time_s.iloc[0]

    # measured: FedBuff ~29 s, sync FedAvg ~215 s of simulated time
    assert time_to_target(buff.rounds) < 0.5 * time_to_target(sync.rounds)
