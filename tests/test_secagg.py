"""Simulated secure aggregation (fedray.secagg): exact mask cancellation, dropouts and the
threshold, the closed form of its bytes, and real runs against the plain baseline."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import fedray
from fedray.config import config_from_dict
from fedray.errors import ConfigError, UserError
from fedray.execution.layout import FlatLayout
from fedray.execution.transforms import Pipeline
from fedray.results.schema import NONDETERMINISTIC_COLUMNS
from fedray.secagg import costs, masks, ring
from fedray.secagg.graph import Graph, default_degree
from fedray.secagg.transform import threshold_rule
from fedray.sim import checkpoint
from fedray.sim.driver import check_secure_aggregation_support
from fedray.strategies.aggregate import Aggregate, ClientMessage


def masked_round(bits, ids, survivors, degree=None, length=33, seed=5, round_=7):
    """Random ring inputs of ``ids``; the survivors' masked inputs summed through ring
    aggregates merged in two groups, as workers and the driver would; and the plain sum."""
    rng = np.random.default_rng(bits + len(ids))
    graph = Graph(ids, degree, seed, round_)
    inputs = {
        int(u): ring.reduce(rng.integers(0, 2**63, size=length, dtype=np.uint64) * 2, bits)
        for u in ids
    }
    groups = [Aggregate.ring(bits), Aggregate.ring(bits)]
    for i, u in enumerate(survivors):
        y = masks.mask_input(inputs[u], u, graph, seed=seed, round_=round_, bits=bits)
        groups[i % 2].add(y, 0.0, member=u)
    total = groups[0].merge(groups[1])
    plain = np.zeros(length, dtype=np.uint64)
    for u in survivors:
        plain = ring.add(plain, inputs[u], bits)
    return graph, total, plain


@pytest.mark.parametrize("bits", [16, 32, 48, 64])
@pytest.mark.parametrize("degree", [None, 4])
def test_unmasked_sum_equals_the_plain_sum_exactly(bits, degree):
    ids = [3, 17, 5, 40, 8, 99, 61, 12, 23, 7]
    for survivors in (ids, [3, 17, 40, 8, 99, 61, 12, 7]):  # all, then 2 dropped after sharing
        graph, total, plain = masked_round(bits, ids, survivors, degree)
        assert not np.array_equal(total.total, plain)  # the masks are there ...
        out = masks.unmask(
            total.total,
            total.members,
            graph,
            threshold=threshold_rule(0.5),
            min_survivors=5,
            seed=5,
            round_=7,
            bits=bits,
        )
        assert out.ok and np.array_equal(out.total, plain)  # ... and cancel exactly
        dropped = len(ids) - len(survivors)
        assert (out.survivors, out.dropped, out.self_masks) == (
            len(survivors),
            dropped,
            len(survivors),
        )
        assert out.dropped_keys == dropped


def test_a_masked_input_alone_reveals_nothing_of_the_input():
    """With a self mask, one client's masked vector is not its input plus a known quantity:
    two clients with the same input send unrelated vectors."""
    graph = Graph([1, 2, 3], None, 0, 1)
    x = np.arange(8, dtype=np.uint64)
    y1 = masks.mask_input(x, 1, graph, seed=0, round_=1, bits=32)
    y2 = masks.mask_input(x, 2, graph, seed=0, round_=1, bits=32)
    assert not np.array_equal(y1, x) and not np.array_equal(y1, y2)


def test_too_few_survivors_fail_the_round():
    ids = list(range(10))
    graph, total, _ = masked_round(32, ids, [0, 1, 2, 3])
    out = masks.unmask(
        total.total, total.members, graph, threshold=threshold_rule(0.5), min_survivors=5,
        seed=5, round_=7, bits=32,
    )  # fmt: skip
    assert not out.ok and out.total is None and out.pair_masks == 0
    # SecAgg+: enough survivors overall, but one client's whole neighbourhood is gone
    ids = list(range(20))
    graph = Graph(ids, 4, 5, 7)
    lost = [int(v) for v in graph.neighbours(0)] + [0]
    survivors = [u for u in ids if u not in lost]
    assert not masks.reconstructible(graph, survivors, threshold_rule(0.5)).all()


def test_harary_graph_is_k_regular_symmetric_and_seeded():
    ids = np.arange(100, 200)
    graph = Graph(ids, 6, 1, 3)
    for u in ids:
        nb = graph.neighbours(int(u))
        assert len(nb) == 6 and int(u) not in nb
        assert all(int(u) in graph.neighbours(int(v)) for v in nb)
    assert np.array_equal(Graph(ids, 6, 1, 3).neighbours(150), graph.neighbours(150))
    assert not np.array_equal(Graph(ids, 6, 1, 4).neighbours(150), graph.neighbours(150))
    assert Graph(ids[:5], 6, 1, 3).complete  # k >= n - 1
    assert default_degree(100) == 14


@pytest.mark.parametrize("bits", [8, 32, 48, 64])
def test_ring_quantisation_and_wire_format(bits):
    x = np.array([-2.5, 0.0, 1.25, 3.0, -3.0, 100.0])
    q, clipped = ring.quantise(x, scale=4.0, clip_range=3.0, bits=bits)
    assert clipped == 1
    assert np.array_equal(ring.dequantise(q, scale=4.0, bits=bits), [-2.5, 0, 1.25, 3, -3, 3])
    payload = ring.pack(q, bits)
    assert len(payload) == ring.element_bytes(bits) * len(x)
    assert np.array_equal(ring.unpack(payload, bits), q)


def test_secagg_bytes_closed_form():
    up, down = costs.client_bytes(9, key_bytes=32, share_bytes=64, bits=32, num_params=610)
    assert up == 2 * 32 + 2 * 64 * 9 + 4 * 611
    assert down == 2 * 32 * 9 + 64 * 9 + 4 * 9


def test_distributed_dp_noise_sums_to_at_least_the_central_noise():
    """Fixed-seed statistical check: n clients with zero updates each add N(0, (zC)²/t); the
    unmasked sum of the |U_2| survivors has std zC·sqrt(|U_2|/t) per coordinate."""
    cfg = config_from_dict(
        {
            "clients_per_round": 40,
            "privacy": {"clip_norm": 0.5, "noise_multiplier": 2.0},
            "secure_aggregation": {"threshold": 0.5, "scale": 2.0**16, "clip_range": 20.0},
        }
    )
    none = np.zeros(0, np.int64)
    flat = FlatLayout(4000, none, np.arange(4000), (4000,), tables=(), num_rows=0)
    pipeline = Pipeline.of(cfg, flat, (4000,), "test")
    cohort = np.arange(100, 140)
    context = pipeline.downlink(3, cohort)
    aggregate = pipeline.new_aggregate(Aggregate.linear())
    survivors = cohort[:30]  # 10 dropped; t = 20
    for u in survivors:
        message = ClientMessage(update=np.zeros(4000, np.float32), weight=57.0)
        up = pipeline.deliver(message, int(u), 3, {}, received=context)
        assert up.weight == 0.0 and up.update.dtype == np.uint64  # the server sees no weight
        aggregate.add(up.update, up.weight, member=int(u))
    columns = pipeline.finalize(aggregate, 3, context)
    assert not columns["secagg_failed"] and columns["secagg_dropped"] == 10
    assert aggregate.weight == 40  # DP-FedAvg's fixed denominator K
    expected = 2.0 * 0.5 * np.sqrt(30 / 20)
    assert abs(aggregate.total.std() / expected - 1) < 0.05  # 4000 draws: ±2.2% at 2σ
    assert abs(aggregate.total.mean()) < 4 * expected / np.sqrt(4000)


# ---------------------------------------------------------------------- real runs


def secagg_config(small_config, **changes):
    small_config.update(rounds=4, clients_per_round=8)
    small_config["clients"]["profile"] = {"dropout": 0.2}
    small_config["secure_aggregation"] = {"protocol": "secagg", "threshold": 0.5}
    overrides = [(k.replace("__", "."), v) for k, v in changes.items()]
    return config_from_dict(small_config, overrides)


def final_params(result) -> np.ndarray:
    return np.asarray(checkpoint.load(result.path)["server"]["params"])


def test_run_matches_the_plain_run_within_quantisation(ray_session, small_config):
    masked = fedray.run(secagg_config(small_config, output__name="sa"), progress=False)
    plain_cfg = secagg_config(small_config, output__name="plain", secure_aggregation=None)
    plain = fedray.run(plain_cfg, progress=False)
    r, p = masked.rounds, plain.rounds
    assert r["secagg_dropped"].sum() > 0 and (r["secagg_dropped_keys"] == r["secagg_dropped"]).all()
    assert not r["secagg_failed"].any() and (r["secagg_clipped"] == 0).all()
    assert (r["num_aggregated"] == p["num_aggregated"]).all()
    # Rounding at scale s moves each weighted coordinate by ≤ 1/(2s); the weights (sample
    # counts) are exact, so the mean moves by ≤ n/(2s) / Σw per round: < 1e-5 here.
    np.testing.assert_allclose(final_params(masked), final_params(plain), atol=1e-5)
    np.testing.assert_allclose(r["eval_loss"], p["eval_loss"], rtol=1e-4)
    # the protocol costs bytes and time, charged to the round and to each client
    assert (r["bytes_up"] == p["bytes_up"] + r["secagg_bytes_up"] + 3 * r["num_completed"]).all()
    assert (r["bytes_down"] == p["bytes_down"] + r["secagg_bytes_down"]).all()
    extra = r["secagg_setup_s"] + r["secagg_unmask_s"]
    # (and the masked upload is 3 bytes longer than float32's: 4·(d+1) against 4·d + 1)
    slower = 3 * 8 / 5e6  # at the default 5 Mbit/s uplink
    np.testing.assert_allclose(r["round_duration_s"], p["round_duration_s"] + extra + slower)
    assert r["sim_time_s"].iloc[-1] > p["sim_time_s"].iloc[-1]


def test_client_bytes_follow_the_closed_form(ray_session, small_config):
    cfg = secagg_config(small_config, output__name="bytes")
    result = fedray.run(cfg, progress=False)
    events, rounds = result.clients, result.rounds
    sa, d = cfg.secure_aggregation, 610  # Synthetic logreg: 60 × 10 + 10 parameters
    degree = cfg.num_selected - 1
    model = 4 * d + 1  # codec none: float32 and its one-byte header
    up, down = costs.client_bytes(
        degree, key_bytes=sa.key_bytes, share_bytes=sa.share_bytes, bits=sa.bits, num_params=d
    )
    done = events[events.status == "completed"]
    assert len(done) and (done.bytes_up == up).all() and (done.bytes_down == model + down).all()
    dropped = events[events.status == "dropped"]
    setup_up, setup_down = costs.setup_bytes(degree, sa.key_bytes, sa.share_bytes)
    assert len(dropped) and (dropped.bytes_up == setup_up).all()
    assert (dropped.bytes_down <= model + setup_down).all()
    assert (rounds.secagg_neighbours == degree).all()


def test_one_and_two_workers_give_identical_tables(ray_session, small_config):
    one = fedray.run(
        secagg_config(small_config, output__name="w1", execution__num_workers=1,
                      secure_aggregation__protocol="secagg_plus", secure_aggregation__neighbours=4),
        progress=False,
    )  # fmt: skip
    two = fedray.run(
        secagg_config(small_config, output__name="w2", execution__num_workers=2,
                      secure_aggregation__protocol="secagg_plus", secure_aggregation__neighbours=4),
        progress=False,
    )  # fmt: skip
    cols = [c for c in one.rounds.columns if c not in NONDETERMINISTIC_COLUMNS]
    pd.testing.assert_frame_equal(one.rounds[cols], two.rounds[cols], check_exact=True)
    pd.testing.assert_frame_equal(one.clients, two.clients, check_exact=True)
    assert (one.rounds.secagg_neighbours == 4).all()
    np.testing.assert_array_equal(final_params(one), final_params(two))


def test_a_round_below_the_threshold_fails_and_leaves_the_model(ray_session, small_config):
    cfg = secagg_config(small_config, output__name="fail", secure_aggregation__threshold=1.0)
    r = fedray.run(cfg, progress=False).rounds
    failed = r.secagg_failed.to_numpy()
    assert failed.any() and (r.secagg_dropped[failed] > 0).all()
    assert (r.num_aggregated[failed] == 0).all() and (r.secagg_pair_masks[failed] == 0).all()
    assert (r.secagg_unmask_s[failed] == 0).all() and (r.round_duration_s[failed] > 0).all()
    version = r.model_version.to_numpy()
    previous = np.concatenate([[0], version[:-1]])
    assert (version[failed] == previous[failed]).all()  # the model did not move
    assert (version[~failed] == previous[~failed] + 1).all()
    assert np.all(np.diff(r.sim_time_s) > 0)  # time still passes


# ---------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"strategy": {"name": "robust", "rule": "median"}},
            "cannot be combined with strategy robust",
        ),
        ({"strategy": {"name": "scaffold"}}, "cannot be combined with strategy scaffold"),
        ({"mode": "async"}, "synchronous rounds only"),
        (
            {"privacy": {"clip_norm": 1.0, "noise_multiplier": 1.0, "sampling": "poisson"}},
            "privacy.sampling poisson draws a random one",
        ),
        (
            {
                "privacy": {"clip_norm": 1.0, "noise_multiplier": 1.0},
                "secure_aggregation": {"clip_range": 2.0},
            },
            "would clip the clients' noisy updates",
        ),  # fmt: skip
        ({"compression": {"uplink": {"name": "topk", "fraction": 0.1}}}, "uplink codec topk"),
        ({"compression": {"uplink": "int8"}}, "uplink codec int8"),
        ({"robustness": {"max_update_norm": 5.0}}, "max_update_norm needs each update"),
        (
            {"secure_aggregation": {"neighbours": 4}},
            "neighbours is an option of protocol secagg_plus",
        ),
        ({"secure_aggregation": {"scale": 1e7}}, "can overflow a 32-bit ring"),
        ({"secure_aggregation": {"threshold": 50}}, "exceeds the 6 clients sampled"),
        ({"secure_aggregation": {"threshold": 1.5}}, "fraction of the cohort must lie in"),
        ({"secure_aggregation": {"protocol": "secaggg"}}, "secure_aggregation.protocol"),
        ({"secure_aggregation": {"key_size": 3}}, "unknown key 'secure_aggregation.key_size'"),
    ],
)
def test_refusals_are_one_line(small_config, changes, message):
    small_config["secure_aggregation"] = {}
    changes = dict(changes)
    small_config["secure_aggregation"].update(changes.pop("secure_aggregation", {}))
    for key, value in changes.items():
        small_config[key] = value
    with pytest.raises(ConfigError, match=message) as err:
        config_from_dict(small_config)
    assert "\n" not in str(err.value)


def test_row_sparse_workloads_are_refused():
    class Flat:
        dense = False

    class Workload:
        name = "ecom_rec"

    cfg = config_from_dict({"secure_aggregation": {}})
    with pytest.raises(UserError, match="secure_aggregation needs a dense model") as err:
        check_secure_aggregation_support(cfg, Workload(), Flat())
    assert "\n" not in str(err.value)


def test_cli_refusal_has_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("mode: async\nsecure_aggregation: {protocol: secagg}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fedray.cli", "run", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "secure_aggregation supports synchronous rounds only" in lines[0]


def test_with_privacy_the_accountant_is_dp_fedavgs(ray_session, small_config):
    privacy = {"clip_norm": 0.5, "noise_multiplier": 1.0}
    small_config["privacy"] = privacy
    masked = fedray.run(secagg_config(small_config, output__name="dp_sa"), progress=False)
    central = fedray.run(
        secagg_config(small_config, output__name="dp", secure_aggregation=None), progress=False
    )
    r, c = masked.rounds, central.rounds
    np.testing.assert_array_equal(r.dp_epsilon, c.dp_epsilon)
    assert not r.secagg_failed.any() and np.isfinite(r.eval_loss).all()
    # the noise differs (shares on the clients, not one draw on the server): so do the models
    assert not np.array_equal(final_params(masked), final_params(central))


def test_the_cli_warns_when_clip_range_clipped_uploads(ray_session, small_config, tmp_path, capsys):
    import yaml

    from fedray.cli import main

    # weights n_k of 10–400 samples cannot fit a clip_range of 5: the sums change, say so
    small_config.update(rounds=1, secure_aggregation={"clip_range": 5.0})
    path = tmp_path / "clipped.yaml"
    path.write_text(yaml.safe_dump(small_config))
    assert main(["run", str(path), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: secure aggregation clipped" in err and "raise clip_range" in err
    wide = {**small_config, "secure_aggregation": {"clip_range": 1000.0}}
    wide["output"] = {**small_config["output"], "name": "wide"}
    path.write_text(yaml.safe_dump(wide))
    assert main(["run", str(path), "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err
