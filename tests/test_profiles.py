"""Device profiles: named distributions, tiers, trace files — all lazy in the client id."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from fedray.clients.profiles import ProfileModel
from fedray.config import config_from_dict
from fedray.errors import UserError


def model(profile: dict, n=100_000, seed=0) -> ProfileModel:
    cfg = config_from_dict({"clients": {"num_clients": n, "profile": profile}})
    return ProfileModel(cfg.clients.profile, seed)


def test_distributions_have_their_parameters():
    m = model(
        {
            "speed": {"dist": "lognormal", "median": 200, "sigma": 0.5},
            "up_mbps": {"dist": "uniform", "low": 1, "high": 3},
            "latency_ms": 30,
        }
    )
    p = m.lookup(np.arange(50_000))
    assert np.median(p.speed) == pytest.approx(200, rel=0.02)
    assert np.std(np.log(p.speed)) == pytest.approx(0.5, rel=0.02)
    assert (
        p.up_mbps.min() >= 1
        and p.up_mbps.max() <= 3
        and p.up_mbps.mean() == pytest.approx(2, abs=0.02)
    )
    assert np.all(p.latency_ms == 30)


def test_lookup_is_a_pure_function_of_seed_and_id():
    m = model({"speed": {"dist": "lognormal", "median": 10, "sigma": 1}})
    ids = np.array([5, 99_999, 17])
    assert np.array_equal(m.lookup(ids).speed, m.lookup(ids[::-1]).speed[::-1])
    other = model({"speed": {"dist": "lognormal", "median": 10, "sigma": 1}}, seed=1)
    assert not np.array_equal(m.lookup(ids).speed, other.lookup(ids).speed)


def test_lognormal_clipping():
    m = model({"speed": {"dist": "lognormal", "median": 10, "sigma": 2, "min": 1, "max": 50}})
    s = m.lookup(np.arange(10_000)).speed
    assert s.min() == 1 and s.max() == 50


def test_tiers_mix_device_classes():
    m = model(
        {
            "latency_ms": 40,
            "tiers": [
                {"name": "phone", "weight": 3, "speed": 50, "up_mbps": 1},
                {"name": "laptop", "weight": 1, "speed": 400},
            ],
        }
    )
    ids = np.arange(40_000)
    p, tier = m.lookup(ids), m.tier_of(ids)
    assert np.mean(tier == 0) == pytest.approx(0.75, abs=0.01)
    assert np.all(p.speed[tier == 0] == 50) and np.all(p.speed[tier == 1] == 400)
    assert np.all(p.up_mbps[tier == 0] == 1) and np.all(
        p.up_mbps[tier == 1] == 5
    )  # inherited default
    assert np.all(p.latency_ms == 40)


def test_trace_wraps_modulo_and_fills_missing_columns(tmp_path):
    path = tmp_path / "trace.csv"
    pd.DataFrame(
        {"client_id": [2, 0, 1], "speed": [30.0, 10.0, 20.0], "up_mbps": [1.0, 2.0, 3.0]}
    ).to_csv(path, index=False)
    m = model({"trace": str(path), "down_mbps": 7})
    p = m.lookup(np.arange(7))
    assert list(p.speed) == [10, 20, 30, 10, 20, 30, 10]
    assert list(p.up_mbps) == [2, 3, 1, 2, 3, 1, 2]
    assert np.all(p.down_mbps == 7)


def test_trace_parquet(tmp_path):
    path = tmp_path / "trace.parquet"
    pd.DataFrame({"speed": [5.0, 6.0], "dropout": [0.1, 0.2]}).to_parquet(path)
    p = model({"trace": str(path)}).lookup(np.arange(3))
    assert list(p.speed) == [5, 6, 5] and list(p.dropout) == [0.1, 0.2, 0.1]


@pytest.mark.parametrize(
    "frame, message",
    [
        (pd.DataFrame({"sped": [1.0]}), "unknown column(s) ['sped']"),
        (
            pd.DataFrame({"speed": [1.0, -2.0]}),
            "column 'speed' has an invalid value '-2.0' at line 3; speed must be a number > 0",
        ),
        (pd.DataFrame({"dropout": [1.5]}), "column 'dropout' has an invalid value"),
        (pd.DataFrame({"speed": []}), "has no rows"),
        (pd.DataFrame({"speed": [1e308]}), "invalid value '1e+308' at line 2"),
        (
            pd.DataFrame({"speed": [1.0, None], "up_mbps": [1, 2]}),
            "column 'speed' is empty at line 3",
        ),
        # client_id numbers the rows 0..n-1: a repeat or a gap would misassign rows silently
        (pd.DataFrame({"client_id": [0, 0], "speed": [1, 2]}), "client_id 0 appears twice"),
        (pd.DataFrame({"client_id": [0, 2], "speed": [1, 2]}), "client_id 2 at line 3 is outside"),
        (pd.DataFrame({"client_id": ["a"], "speed": [1]}), "client_id 'a' at line 2 is not an"),
        (pd.DataFrame({"client_id": [0]}), "has no profile column"),
    ],
)
def test_bad_trace_is_a_user_error(tmp_path, frame, message):
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(UserError) as err:
        model({"trace": str(path)})
    assert message in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("speed\n1,2,3\n", "line 2 has 3 fields but the header has 1"),  # not an index column
        ("speed,speed\n1,2\n", "column 'speed' appears twice in the header"),
        ('speed\n"1\n', "line 2 is not valid CSV"),
        ("", "is empty"),
    ],
)
def test_malformed_trace_csv_is_refused(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        model({"trace": str(path)})


def test_parquet_trace_columns_must_hold_numbers(tmp_path):
    path = tmp_path / "t.parquet"
    pd.DataFrame({"speed": [True, False]}).to_parquet(path)
    with pytest.raises(UserError, match="column 'speed' holds bool values; store numbers"):
        model({"trace": str(path)})
    # a saved DataFrame's index is its index, not an unknown column
    pd.DataFrame({"speed": [5.0, 6.0]}, index=[7, 3]).to_parquet(path)
    assert list(model({"trace": str(path)}).lookup(np.arange(2)).speed) == [5, 6]


def test_hundred_thousand_clients_cost_nothing_up_front():
    tracemalloc.start()
    m = model({"speed": {"dist": "lognormal", "median": 100, "sigma": 1}}, n=100_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 200_000  # no per-client arrays or objects are built at registration
    assert m.lookup(np.arange(100_000)).speed.nbytes == 800_000  # only what is looked up


def test_compute_in_flops_is_divided_by_the_workloads_flops_per_sample(tmp_path):
    # Prepare: phones in FLOP/s, desktops in FLOP/s, one legacy tier still in samples/s
    cfg = config_from_dict(
        {
            "clients": {
                "num_clients": 3000,
                "profile": {
                    "flops": 1e9,
                    "tiers": [
                        {"name": "phone", "weight": 1},
                        {"name": "desktop", "weight": 1, "flops": 2e10},
                        {"name": "legacy", "weight": 1, "speed": 7.0},
                    ],
                },
            }
        }
    )
    model = ProfileModel(cfg.clients.profile, 0)
    ids = np.arange(3000)
    with pytest.raises(RuntimeError, match="set_flops_per_sample"):
        model.lookup(ids)  # never silently in the wrong unit

    # Execute
    model.set_flops_per_sample(5e6, "ecom_qa_lora")
    speed, tier = model.lookup(ids).speed, model.tier_of(ids)

    # Assert: samples/s = FLOP/s / FLOPs per sample, per tier
    assert set(speed[tier == 0]) == {200.0}
    assert set(speed[tier == 1]) == {4000.0}
    assert set(speed[tier == 2]) == {7.0}

    # a trace's flops column works the same; a workload that measures nothing is refused
    trace = tmp_path / "devices.csv"
    trace.write_text("flops,up_mbps\n1e9,2\n4e9,3\n")
    traced = ProfileModel(config_from_dict({"clients": {"profile": {"trace": str(trace)}}})
                          .clients.profile, 0)  # fmt: skip
    traced.set_flops_per_sample(1e7, "x")
    np.testing.assert_array_equal(traced.lookup([0, 1, 2]).speed, [100.0, 400.0, 100.0])
    with pytest.raises(UserError, match="does not measure its training FLOPs per sample"):
        ProfileModel(cfg.clients.profile, 0).set_flops_per_sample(None, "synthetic")
    ProfileModel(config_from_dict({}).clients.profile, 0).set_flops_per_sample(None, "synthetic")


def test_speed_and_flops_together_are_refused():
    from fedray.errors import ConfigError

    with pytest.raises(ConfigError, match="speed \\(samples/s\\) or flops \\(FLOP/s\\), not both"):
        config_from_dict({"clients": {"profile": {"speed": 10, "flops": 1e9}}})
    with pytest.raises(ConfigError, match="flops must be > 0"):
        config_from_dict({"clients": {"profile": {"flops": 0}}})


def test_memory_decides_who_fits_and_counts_the_rest():
    cfg = config_from_dict(
        {
            "clients": {
                "num_clients": 5000,
                "profile": {
                    "tiers": [
                        {"name": "phone", "weight": 3, "memory_gb": 4},
                        {"name": "desktop", "weight": 1},  # no memory_gb: unlimited
                    ]
                },
            }
        }
    )
    model = ProfileModel(cfg.clients.profile, 0)
    assert model.uses_memory and model.fits(np.arange(10)).all()  # nothing measured yet
    model.set_training_memory(5 * 10**9, "ecom_qa_lora")
    ids = np.arange(5000)
    fits, tier = model.fits(ids), model.tier_of(ids)
    assert not fits[tier == 0].any() and fits[tier == 1].all()
    assert model.count_ineligible(5000, chunk=777) == int((tier == 0).sum())
    with pytest.raises(UserError, match="does not measure its training memory"):
        ProfileModel(cfg.clients.profile, 0).set_training_memory(None, "synthetic")
