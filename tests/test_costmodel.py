"""Cost model, round planning and selection: golden numbers and invariants."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.clients.profiles import ProfileModel, Profiles
from fedray.config import ENERGY_FIELDS, config_from_dict
from fedray.sim.costmodel import epochs_within, task_times
from fedray.sim.round_plan import COMPLETED, DROPPED, PARTIAL, STRAGGLER, plan_round
from fedray.sim.selection import select_clients


def profiles(n, speed=100.0, down=8.0, up=2.0, latency=50.0, dropout=0.0):
    full = lambda v: np.full(n, float(v))  # noqa: E731
    energy = {f: full(0.0) for f in ENERGY_FIELDS}
    return Profiles(
        np.arange(n), full(speed), full(down), full(up), full(latency), full(dropout), full(1.0),
        **energy, timezone_h=full(0.0),
    )  # fmt: skip


def test_task_times_golden():
    # 1 MB down at 8 Mbit/s = 1 s (+50 ms), 200 samples × 2 epochs at 100/s = 4 s,
    # 0.5 MB up at 2 Mbit/s = 2 s (+50 ms).
    t = task_times(
        profiles(1), num_samples=[200], epochs=[2], bytes_down=1_000_000, bytes_up=500_000
    )
    assert t.download_s[0] == pytest.approx(1.05)
    assert t.compute_s[0] == pytest.approx(4.0)
    assert t.upload_s[0] == pytest.approx(2.05)
    assert t.total_s[0] == pytest.approx(7.1)


def test_epochs_within_deadline_floor_one():
    p = profiles(3, speed=100.0)
    t = task_times(p, num_samples=[100, 100, 1000], epochs=[5, 5, 5], bytes_down=0, bytes_up=0)
    # budget = 3.0 - 0.1 latency = 2.9 s; 1 s/epoch -> 2; 10 s/epoch -> 0 -> floored to 1.
    e = epochs_within(3.0, p, [100, 100, 1000], 5, t)
    assert list(e) == [2, 2, 1]


def plan(policy, deadline, n=6, k=None, dropout=0.0, samples=None, seed=0):
    samples = np.array(samples if samples is not None else [100, 200, 300, 400, 500, 600])
    return plan_round(
        seed=seed,
        round_=1,
        client_ids=np.arange(n),
        profiles=profiles(n, dropout=dropout),
        num_samples=samples,
        local_epochs=2,
        model_bytes=1000,
        update_bytes=1000,
        clients_per_round=k or n,
        deadline_s=deadline,
        policy=policy,
    )


def test_drop_policy_cuts_late_clients_and_ends_at_deadline():
    p = plan("drop", deadline=7.0)  # compute = 2·n/100 s: 2,4,6,8,10,12 (+~0.1 s transfers)
    assert list(p.status) == [COMPLETED] * 3 + [STRAGGLER] * 3
    assert p.duration_s == pytest.approx(7.0)
    assert list(p.bytes_up) == [1000] * 3 + [0] * 3


def test_wait_policy_waits_for_everyone():
    p = plan("wait", deadline=7.0)
    assert all(p.status == COMPLETED)
    assert p.duration_s == pytest.approx(12.0 + 2 * (1000 * 8 / 8e6 + 0.05), rel=1e-3)


def test_partial_policy_runs_fewer_epochs():
    p = plan("partial", deadline=7.0)
    assert list(p.local_epochs) == [2, 2, 2, 1, 1, 1]
    assert list(p.status) == [COMPLETED] * 3 + [PARTIAL] * 3
    # the 1-epoch floor can overrun: 600 samples take 6 s + transfers, still within 7 s here
    assert p.duration_s <= 7.0


def test_over_selection_closes_at_kth_arrival():
    p = plan("wait", deadline=None, k=2)
    assert list(p.status) == [COMPLETED, COMPLETED] + [STRAGGLER] * 4
    assert p.duration_s == pytest.approx(p.finish_s[1])


def test_dropout_loses_work_but_time_passes():
    p = plan("wait", deadline=None, dropout=1.0)
    assert all(p.status == DROPPED)
    assert not p.accepted.any()
    assert p.duration_s == pytest.approx(p.finish_s.max())
    full = task_times(profiles(6), [100, 200, 300, 400, 500, 600], 2, 1000, 1000).total_s
    assert np.all(p.finish_s <= full) and np.all(p.finish_s > 0)
    assert np.all(p.bytes_up == 0)


def test_dropout_rate_matches_probability():
    p = plan_round(
        seed=1,
        round_=3,
        client_ids=np.arange(20000),
        profiles=profiles(20000, dropout=0.3),
        num_samples=np.full(20000, 10),
        local_epochs=1,
        model_bytes=10,
        update_bytes=10,
        clients_per_round=20000,
        deadline_s=None,
        policy="wait",
    )
    assert np.mean(p.status == DROPPED) == pytest.approx(0.3, abs=0.015)


def population(n=1000, availability=1.0):
    cfg = config_from_dict(
        {"clients": {"num_clients": n, "profile": {"availability": availability}}}
    )
    return ProfileModel(cfg.clients.profile, seed=7)


def test_selection_is_seeded_distinct_and_varies_by_round():
    prof = population()
    a = select_clients(seed=7, round_=1, num_clients=1000, count=50, profiles=prof)
    b = select_clients(seed=7, round_=1, num_clients=1000, count=50, profiles=prof)
    c = select_clients(seed=7, round_=2, num_clients=1000, count=50, profiles=prof)
    assert np.array_equal(a, b)
    assert len(set(a.tolist())) == 50 and a.min() >= 0 and a.max() < 1000
    assert not np.array_equal(np.sort(a), np.sort(c))


def test_selection_respects_availability():
    prof = population(availability=0.25)
    picked = select_clients(seed=7, round_=4, num_clients=1000, count=100, profiles=prof)
    assert len(picked) == 100
    from fedray.sim.selection import is_available

    assert is_available(prof, 7, picked, 4).all()
    # only ~250 clients are online: asking for 400 returns those that are
    online = select_clients(seed=7, round_=4, num_clients=1000, count=400, profiles=prof)
    assert 200 < len(online) < 300


def test_selection_is_uniform():
    prof = population(n=20)
    counts = np.zeros(20)
    for r in range(2000):
        counts[select_clients(seed=1, round_=r, num_clients=20, count=5, profiles=prof)] += 1
    assert counts.min() > 0.8 * 500 and counts.max() < 1.2 * 500
