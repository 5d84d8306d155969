"""Energy, batteries and availability over virtual time: closed forms, invariants, and runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedray
from fedray.clients.availability import (
    DAY_S,
    Availability,
    in_window,
    window_end,
    window_seconds,
)
from fedray.clients.availability_trace import load_availability_trace, write_availability_trace
from fedray.clients.battery import BATTERY, Batteries
from fedray.clients.energy import depletion_s, phase_energy, spent_energy
from fedray.clients.profiles import ProfileModel
from fedray.clients.state_store import ClientStates
from fedray.config import config_from_dict
from fedray.errors import UserError
from fedray.sim.costmodel import task_times, truncate_at
from fedray.sim.round_plan import DEPLETED, OFFLINE, plan_round

HOUR = 3600.0


def profile_model(seed=0, **fields):
    cfg = config_from_dict({"clients": {"profile": fields}})
    return ProfileModel(cfg.clients.profile, seed)


# ---------------------------------------------------------------------------- energy


def test_energy_of_a_task_is_the_closed_form():
    # Prepare: 2 clients, 300 samples × 2 epochs, 1 MB down, 0.25 MB up
    p = profile_model(
        speed=100, down_mbps=8, up_mbps=2, latency_ms=0,
        compute_j_per_sample=0.5, up_j_per_mb=4.0, down_j_per_mb=2.0, idle_w=1.5,
    ).lookup([0, 1])  # fmt: skip
    times = task_times(p, [300, 300], [2, 2], 1_000_000, 250_000)
    energy = phase_energy(p, [300, 300], [2, 2], 1_000_000, 250_000)
    # Execute
    joules = spent_energy(energy, times, times)
    # Assert: e_c·n + e↓·MB↓ + e↑·MB↑ + P₀·T, with T = 1 s + 6 s + 1 s
    expected = 0.5 * 600 + 2.0 * 1.0 + 4.0 * 0.25 + 1.5 * (1.0 + 6.0 + 1.0)
    np.testing.assert_allclose(joules, [expected, expected])


def test_a_task_stopped_part_way_spends_the_matching_share():
    p = profile_model(speed=100, latency_ms=0, compute_j_per_sample=1.0, idle_w=2.0).lookup([0])
    whole = task_times(p, [100], [1], 0, 0)  # 1 s of compute, nothing to transfer
    energy = phase_energy(p, [100], [1], 0, 0)
    half = spent_energy(energy, whole, truncate_at(whole, [0.5]))
    assert half[0] == pytest.approx(0.5 * 100 + 2.0 * 0.5)


def test_depletion_instant_is_where_the_cumulative_energy_meets_the_battery():
    p = profile_model(
        speed=10, down_mbps=8, up_mbps=8, latency_ms=0, compute_j_per_sample=2.0,
        down_j_per_mb=10.0, up_j_per_mb=10.0,
    ).lookup([0, 1, 2])  # fmt: skip
    whole = task_times(p, [10, 10, 10], [1, 1, 1], 1_000_000, 1_000_000)  # 1 s, 1 s, 1 s
    energy = phase_energy(p, [10, 10, 10], [1, 1, 1], 1_000_000, 1_000_000)  # 10 J, 20 J, 10 J
    at = depletion_s(energy, whole, [5.0, 20.0, 1000.0])
    assert at[0] == pytest.approx(0.5)  # half-way through the download
    assert at[1] == pytest.approx(1.5)  # 10 J left for a 20 J compute phase of 1 s
    assert at[2] == np.inf  # the task costs 40 J
    spent = spent_energy(energy, whole, truncate_at(whole, np.minimum(at, 3.0)))
    np.testing.assert_allclose(spent, [5.0, 20.0, 40.0])


# ---------------------------------------------------------------------------- windows


def test_window_seconds_closed_form_matches_a_fine_sum():
    for hours in ([8.0, 23.0], [22.0, 7.0], [0.0, 24.0]):
        t0, t1 = np.array([-5000.0, 3 * HOUR]), np.array([2.6 * DAY_S, 9.25 * DAY_S])
        grid = [np.arange(a, b, 10.0) for a, b in zip(t0, t1, strict=True)]
        brute = [10.0 * in_window(g, hours).sum() for g in grid]
        np.testing.assert_allclose(window_seconds(t0, t1, hours), brute, atol=20.0)


def test_diurnal_availability_matches_the_active_hours_over_a_simulated_week():
    cfg = config_from_dict(
        {
            "clients": {
                "profile": {"timezone_h": {"dist": "uniform", "low": -6, "high": 6}},
                "availability": {"diurnal": {"active_hours": [8, 22]}},
            }
        }
    ).clients
    profiles = ProfileModel(cfg.profile, 0)
    model = Availability(cfg.availability, 0, lambda ids: profiles.column("timezone_h", ids))
    ids = np.arange(50)
    tz = profiles.column("timezone_h", ids)
    online_s = np.zeros(50)
    for t in np.arange(0, 7 * DAY_S, 60.0):  # a week, minute by minute
        up = model.online(ids, t)
        online_s += 60.0 * up
        local_h = np.mod(t / HOUR + tz, 24)
        np.testing.assert_array_equal(up, (local_h >= 8) & (local_h < 22))
    np.testing.assert_allclose(online_s, 7 * 14 * HOUR, atol=120.0)  # 14 h a day, every day
    # whoever is online knows when its window closes
    t = 10 * HOUR
    up = model.online(ids, t)
    until = model.online_until(ids[up], t)
    np.testing.assert_allclose(np.mod(until / HOUR + tz[up], 24), 22.0, atol=1e-9)
    assert (window_end(np.array([12 * HOUR]), [0.0, 24.0]) == np.inf).all()


def test_markov_availability_has_the_configured_stationary_share_and_holding_times():
    cfg = config_from_dict(
        {"clients": {"availability": {"markov": {"mean_up_s": 3000, "mean_down_s": 1000}}}}
    ).clients.availability
    model = Availability(cfg, 7, lambda ids: np.zeros(len(ids)))
    ids = np.arange(2000)
    share = model.online(ids, 5e5).mean()
    assert share == pytest.approx(0.75, abs=0.03)
    up = model.online(ids, 5e5)
    remaining = model.online_until(ids[up], 5e5) - 5e5
    assert remaining.mean() == pytest.approx(3000, rel=0.08)  # memoryless: the mean up time
    # a pure function of (seed, client, t): a fresh model, queried backwards, agrees
    fresh = Availability(cfg, 7, lambda ids: np.zeros(len(ids)))
    fresh.online(ids, 9e5)
    np.testing.assert_array_equal(fresh.online(ids, 5e5), up)


def test_a_correlated_outage_takes_the_whole_network_down():
    cfg = config_from_dict(
        {
            "clients": {
                "availability": {
                    "outages": {"groups": 4, "mean_between_s": 5000, "mean_duration_s": 2000}
                }
            }
        }
    ).clients.availability
    model = Availability(cfg, 1, lambda ids: np.zeros(len(ids)))
    ids = np.arange(400)
    network = model.network_of(ids)
    assert set(network) == {0, 1, 2, 3}
    saw_outage = False
    for t in np.arange(0, 50_000, 500.0):
        up = model.online(ids, t)
        for g in range(4):
            members = up[network == g]
            assert members.all() or not members.any()  # together, always
            saw_outage |= not members.any()
    assert saw_outage


# ---------------------------------------------------------------------------- batteries


def battery_setup(tmp_path, plugged=(0, 6), **battery):
    cfg = config_from_dict(
        {
            "clients": {
                "profile": {"battery_j": 1000, "charge_w": 2.0},
                "battery": {"plugged_hours": list(plugged), "initial_level": 0.5, **battery},
            }
        }
    ).clients
    profiles = ProfileModel(cfg.profile, 0)
    return Batteries(cfg.battery, 0, profiles.column, ClientStates(2**20, tmp_path))


def test_battery_charges_only_while_plugged_and_never_beyond_capacity(tmp_path):
    batteries = battery_setup(tmp_path)
    assert batteries.level([0], 0.0)[0] == pytest.approx(500)
    assert batteries.level([0], 1 * HOUR)[0] == pytest.approx(1000)  # 2 W × 3600 s, capped
    batteries.settle([0], 7 * HOUR, [800.0], [False], [300.0], [100.0])  # unplugged task
    assert batteries.level([0], 20 * HOUR)[0] == pytest.approx(500)  # no charging until 24:00
    assert batteries.level([0], 24 * HOUR + 100)[0] == pytest.approx(700)


def test_a_drained_battery_drops_the_task_and_never_goes_negative(tmp_path):
    batteries = battery_setup(tmp_path, plugged=(22, 23), min_level=0.1)
    p = profile_model(speed=10, latency_ms=0, compute_j_per_sample=5.0, battery_j=1000).lookup(
        [0, 1]
    )
    level = batteries.level([0, 1], 1 * HOUR)  # 500 J each, unplugged
    times = task_times(p, [100, 50], [1, 1], 0, 0)  # 10 s, 5 s of compute: 500 J, 250 J
    energy = phase_energy(p, [100, 50], [1, 1], 0, 0)
    empty = depletion_s(energy, times, level - 1.0)
    plan = plan_round(
        seed=0, round_=1, client_ids=np.array([0, 1]), profiles=p, num_samples=np.array([100, 50]),
        local_epochs=1, model_bytes=0, update_bytes=0, clients_per_round=2, deadline_s=None,
        policy="wait",
        limit=lambda t, e: (empty, np.full(2, DEPLETED, dtype=object)),
    )  # fmt: skip
    assert list(plan.status) == [DEPLETED, "completed"]
    spent = np.minimum(spent_energy(energy, times, truncate_at(times, plan.finish_s)), level)
    after = batteries.settle([0, 1], 1 * HOUR, level, [False, False], spent, plan.finish_s)
    assert (after >= 0).all()
    assert after[1] == pytest.approx(250.0)
    assert after[0] == pytest.approx(1.0)  # what was left when the task stopped
    assert not batteries.eligible([0], 8 * HOUR)[0]  # below min_level and unplugged
    assert batteries.eligible([0], 22.5 * HOUR)[0]  # plugged in
    assert batteries.states.get(0, BATTERY) is not None


# ---------------------------------------------------------------------------- traces


def test_availability_trace_round_trips_and_answers_online(tmp_path):
    rows = {
        "client_id": np.array([0, 0, 1, 2]),
        "start_s": np.array([0.0, 7200.0, 100.0, 50.0]),
        "end_s": np.array([3600.0, 9000.0, 50000.0, 60.0]),
        "period_s": np.array([86400.0, 86400.0, np.inf, np.inf]),
    }
    for name in ("a.csv", "a.parquet"):
        write_availability_trace(rows, tmp_path / name)
        trace = load_availability_trace(tmp_path / name)
        back = trace.to_rows()
        for column, values in rows.items():
            np.testing.assert_array_equal(back[column], values)
    up, until = trace.at([0, 0, 1, 1, 3], [86400 + 100, 5000, 200, 60000, 100])
    assert list(up) == [True, False, True, False, True]  # client 3 wraps to client 0
    assert until[0] == 86400 + 3600 and until[2] == 50000


@pytest.mark.parametrize(
    "text, message",
    [
        ("client_id,start_s,end_s\n0,0,10\n1,20,5\n", "line 3; an interval must end after"),
        ("client_id,start_s,end_s\n0,0,10\nx,1,2\n", "'x' at line 3"),
        ("client_id,start_s\n0,0\n", "lacks column(s) end_s"),
        ("client_id,start_s,end_s,extra\n0,0,1,2\n", "unknown column(s) ['extra']"),
        ("client_id,start_s,end_s,period_s\n0,0,10,5\n", "end within one period"),
        ("client_id,start_s,end_s,period_s\n0,0,1,10\n0,2,3,20\n", "give each client one period"),
        ("client_id,start_s,end_s\n", "has no rows"),
    ],
)
def test_a_bad_availability_trace_row_is_one_line_naming_file_and_row(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_availability_trace(path)
    assert message in str(err.value) and "bad.csv" in str(err.value)
    assert "\n" not in str(err.value)


def test_fedscale_import_refuses_pickles_unless_trusted_and_converts(tmp_path):
    import json
    import pickle

    from fedray.cli import main

    device = {"1": {"computation": 20.0, "communication": 5000.0}}
    behaviour = {"1": {"active": [0, 7200], "inactive": [3600, 9000], "finish_time": 86400}}
    (tmp_path / "dev.pkl").write_bytes(pickle.dumps({1: device["1"]}))
    (tmp_path / "beh.json").write_text(json.dumps(behaviour))
    out = tmp_path / "traces"
    assert main(["traces", "import-fedscale", "--device", str(tmp_path / "dev.pkl"),
                 "--out", str(out)]) == 2  # fmt: skip
    assert not out.exists()
    args = ["traces", "import-fedscale", "--device", str(tmp_path / "dev.pkl"), "--behaviour",
            str(tmp_path / "beh.json"), "--out", str(out), "--trust-pickle"]  # fmt: skip
    assert main(args) == 0
    devices = pd.read_csv(out / "devices.csv")
    assert devices.speed[0] == pytest.approx(1000 / 60) and devices.up_mbps[0] == 5.12
    ProfileModel(
        config_from_dict(
            {"clients": {"profile": {"trace": str(out / "devices.csv")}}}
        ).clients.profile,
        0,
    )  # fmt: skip - loads as a device trace
    trace = load_availability_trace(out / "availability.csv")
    assert trace.at([0], [86400 + 8000])[0][0]
    assert main(args) == 2  # never over existing files


def test_fedscale_import_unpickles_no_code_even_when_trusted(tmp_path):
    import os
    import pickle

    from fedray.traces import read_mapping

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({1: Evil()}))
    with pytest.raises(UserError, match="which a trace never needs"):
        read_mapping(tmp_path / "evil.pkl", "device trace", trust_pickle=True)


# ---------------------------------------------------------------------------- runs


def conditions_config(small_config, tmp_path, mode="sync"):
    cfg = {
        **small_config,
        "rounds": 6,
        "clients": {
            "num_clients": 40,
            "profile": {
                "speed": 2.0,
                "compute_j_per_sample": 0.5,
                "up_j_per_mb": 5.0,
                "down_j_per_mb": 2.0,
                "idle_w": 0.5,
                "battery_j": {"dist": "uniform", "low": 20, "high": 400},
                "timezone_h": {"dist": "uniform", "low": -4, "high": 4},
            },
            "availability": {
                "diurnal": {"active_hours": [8, 20]},
                "markov": {"mean_up_s": 4000, "mean_down_s": 1000},
                "outages": {"groups": 3, "mean_between_s": 30000, "mean_duration_s": 3000},
            },
            "battery": {"min_level": 0.2},
        },
    }
    if mode == "async":
        cfg.update(mode="async", rounds=8, asynchronous={"concurrency": 4, "buffer_size": 2})
    return cfg


def run(cfg: dict, name: str, workers: int | None = None):
    cfg = {**cfg, "output": {**cfg["output"], "name": name}}
    cfg["execution"] = {**cfg.get("execution", {}), "num_workers": workers}
    return fedray.run(config_from_dict(cfg), progress=False)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_runs_under_conditions_are_identical_for_1_and_2_workers(
    ray_session, small_config, tmp_path, mode
):
    cfg = conditions_config(small_config, tmp_path, mode)
    one, two = run(cfg, f"{mode}1", workers=1), run(cfg, f"{mode}2", workers=2)
    pd.testing.assert_frame_equal(
        one.rounds.drop(columns="wall_time_s"), two.rounds.drop(columns="wall_time_s")
    )
    pd.testing.assert_frame_equal(one.clients, two.clients)
    events, rounds = one.clients, one.rounds
    # every task started inside its client's active hours, and nobody's battery is negative
    tz = ProfileModel(config_from_dict(cfg).clients.profile, cfg["seed"]).column(
        "timezone_h", events.client_id.to_numpy()
    )
    local_h = np.mod(events.dispatch_time_s / HOUR + tz, 24)
    assert ((local_h >= 8) & (local_h < 20)).all()
    assert (events.battery_j >= 0).all() and (events.energy_j > 0).all()
    assert rounds.energy_j.sum() == pytest.approx(one.summary["total_energy_j"])
    assert rounds.cum_energy_j.iloc[-1] == pytest.approx(one.summary["total_energy_j"])
    assert set(events.status) <= {"completed", "dropped", OFFLINE, DEPLETED, "straggler", "stale"}


def test_a_task_ends_when_its_client_goes_offline(ray_session, small_config, tmp_path):
    # Prepare: tasks of ~100 s, clients online for 30 s out of every 60 (a periodic trace)
    trace = tmp_path / "avail.csv"
    trace.write_text("client_id,start_s,end_s,period_s\n" + "".join(
        f"{c},{c % 3 * 10},{c % 3 * 10 + 30},60\n" for c in range(40)
    ))  # fmt: skip
    cfg = {
        **small_config,
        "clients": {
            "num_clients": 40,
            "profile": {"speed": 0.5},
            "availability": {"trace": str(trace), "retry_s": 5},
        },
    }
    events = run(cfg, "offline").clients
    assert (events.status == OFFLINE).all()
    finish_in_period = np.mod(events.finish_time_s, 60)
    start = events.client_id % 3 * 10
    np.testing.assert_allclose(finish_in_period, start + 30, atol=1e-6)
    finished = run({**cfg, "clients": {**cfg["clients"], "availability": {
        "trace": str(trace), "retry_s": 5, "mid_task": "finish"}}}, "finish").clients  # fmt: skip
    assert (finished.status == "completed").all()


def test_energy_cap_excludes_expensive_clients(ray_session, small_config):
    cfg = {
        **small_config,
        "clients": {
            "num_clients": 40,
            "profile": {"compute_j_per_sample": 1.0},
            "selection": {"max_task_energy_j": 150.0},
        },
    }
    result = run(cfg, "cap")
    events = result.clients
    assert len(events) and (events.energy_j <= 150.0 + 1e-9).all()
    assert (events.num_samples <= 150).all()  # 1 J per sample, one epoch
    uncapped = run({**cfg, "clients": {**cfg["clients"], "selection": {}}}, "uncapped").clients
    assert (uncapped.num_samples > 150).any()
