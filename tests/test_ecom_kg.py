"""``ecom_kg``: FedE over the platforms' product subgraphs — row sets, untouched rows, filtered
ranking (golden numbers and a brute-force reference), the TSV loader, and an end-to-end run that
beats a random ranker."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedray
from fedray import seeding
from fedray.config import config_from_dict
from fedray.errors import ConfigError, UserError
from fedray.workloads import make_workload
from fedray.workloads.ecommerce.kg_models import KGEModel, random_mrr, rank_metrics
from fedray.workloads.ecommerce.loaders import read_triples


def kg_config(tmp_path, num_clients=4, **workload):
    return {
        "seed": 2,
        "rounds": 10,
        "clients_per_round": num_clients,
        "workload": {
            "name": "ecom_kg",
            "world": {"num_products": 150, "cache_dir": str(tmp_path / "cache")},
            "eval_clients": num_clients,
            **workload,
        },
        "clients": {"num_clients": num_clients},
        "client": {"lr": 10.0, "batch_size": 64, "local_epochs": 2},
        "execution": {"clients_per_task": 2},
        "output": {"root": str(tmp_path / "results"), "name": "kg"},
    }


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    cfg = config_from_dict(kg_config(tmp_path_factory.mktemp("kg")))
    return make_workload(cfg.workload, cfg.seed)


# --------------------------------------------------------------------------- data and rows


def test_row_sets_are_the_train_entities_and_counted_on_the_driver(workload):
    ids = np.arange(4)
    counts = workload.num_client_rows(ids)
    for c in ids:
        data = workload.client_data(int(c))
        rows = workload.client_rows(int(c), data)
        assert len(rows) == counts[c] and np.all(np.diff(rows) > 0)
        train, test = data.x_train.numpy(), data.x_test.numpy()
        assert set(rows) == set(train[:, 0]) | set(train[:, 2])
        # every test triple's entities and relation were trained on locally
        assert set(test[:, [0, 2]].ravel()) <= set(rows)
        assert set(test[:, 1]) <= set(train[:, 1])
    # the same product on several platforms is one entity: the row sets overlap
    rows0 = set(workload.client_rows(0, workload.client_data(0)))
    rows1 = set(workload.client_rows(1, workload.client_data(1)))
    assert len(rows0 & rows1) > 0.2 * min(len(rows0), len(rows1))
    stats = workload.client_statistics()
    assert stats["num_entities"] == counts.tolist()
    assert stats["num_train"] == workload.num_train_samples(ids).tolist()


@pytest.mark.parametrize("model, mu", [("distmult", 0.0), ("complex", 0.1), ("transe", 0.0)])
def test_local_training_changes_only_the_local_rows(tmp_path, model, mu):
    cfg = config_from_dict(kg_config(tmp_path, model=model))
    task = make_workload(cfg.workload, cfg.seed)
    net = task.build_model()
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    data = task.client_data(1)
    rng = seeding.generator(0, "test", 1)
    stats = task.local_train(
        net, data, epochs=1, lr=1.0, batch_size=32, mu=mu, rng=rng, correction=None
    )
    assert stats.steps == math.ceil(len(data.x_train) / 32) and np.isfinite(stats.loss)
    rows = torch.from_numpy(task.client_rows(1, data))
    others = torch.ones(len(task.entity_names), dtype=torch.bool)
    others[rows] = False
    after = net.entity.weight.detach()
    assert torch.equal(after[others], before["entity.weight"][others])  # bit-identical
    assert (after[rows] != before["entity.weight"][rows]).any(dim=1).all()
    assert not torch.equal(net.relation.weight, before["relation.weight"])
    with pytest.raises(UserError, match="SCAFFOLD"):
        task.local_train(net, data, epochs=1, lr=1.0, batch_size=32, mu=0.0, rng=rng, correction=[])


# --------------------------------------------------------------------------- ranking


def test_filtered_ranking_golden_numbers():
    # Prepare: DistMult in one dimension, entities 3, 2, 1, 0 and one relation r = 1, so
    # s(h, r, t) = h·t. Test (0, r, 2); known (0, r, 1) and (3, r, 2).
    model = KGEModel("distmult", 4, 1, 1, init_std=1.0)
    with torch.no_grad():
        model.entity.weight.copy_(torch.tensor([[3.0], [2.0], [1.0], [0.0]]))
        model.relation.weight.fill_(1.0)
    test = torch.tensor([[0, 0, 2]])
    known = torch.tensor([[0, 0, 1], [3, 0, 2], [0, 0, 2]])
    # Execute
    m = rank_metrics(model, model.relation.weight, torch.arange(4), test, known)
    # Assert. Tail query (0, r, ?): scores 9, 6, 3, 0; entity 1 is filtered, entity 0 beats the
    # truth: rank 2. Head query (?, r, 2): scores 3, 2, 1, 0; entity 3 is filtered; nobody beats
    # entity 0: rank 1.
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    assert m["hits10"] == 1.0
    tail_nll = -math.log(math.exp(3) / (math.exp(9) + math.exp(3) + math.exp(0)))
    head_nll = -math.log(math.exp(3) / (math.exp(3) + math.exp(2) + math.exp(1)))
    assert m["loss"] == pytest.approx((tail_nll + head_nll) / 2)
    # 3 candidates left for each query: H_3 / 3
    assert m["random_mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)

    # ties count half: all scores equal among 4 candidates without filtering -> rank 2.5
    with torch.no_grad():
        model.entity.weight.fill_(1.0)
    m = rank_metrics(model, model.relation.weight, torch.arange(4), test, test)
    assert m["mrr"] == pytest.approx(1 / 2.5)
    assert random_mrr(np.array([1, 2])) == pytest.approx((1 + 0.75) / 2)


def brute_force_mrr(model, relations, cand, test, known):
    """Filtered MRR by loops over candidates: the independent reference."""
    true = {tuple(t) for t in known.tolist()}
    reciprocal = []
    with torch.no_grad():
        emb = model.entity.weight[cand]
        for h, r, t in test.tolist():
            for side in ("tail", "head"):
                scores = {}
                for c in range(len(cand)):
                    trip = (h, r, c) if side == "tail" else (c, r, t)
                    if trip in true and c != (t if side == "tail" else h):
                        continue
                    scores[c] = model.score(emb[trip[0]], relations[r], emb[trip[2]]).item()
                s = scores[t if side == "tail" else h]
                better = sum(v > s for v in scores.values())
                tied = sum(v == s for v in scores.values()) - 1
                reciprocal.append(1.0 / (1 + better + tied / 2))
    return float(np.mean(reciprocal))


@pytest.mark.parametrize("kind", ["distmult", "complex", "transe"])
def test_vectorised_ranking_matches_a_brute_force_reference(kind):
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = KGEModel(kind, 30, 3, 6, init_std=0.5)
    cand = torch.from_numpy(np.sort(rng.choice(30, 12, replace=False)))
    known = torch.from_numpy(
        np.unique(
            np.stack(
                [rng.integers(12, size=60), rng.integers(3, size=60), rng.integers(12, size=60)], 1
            ),
            axis=0,
        )  # fmt: skip
    )
    test = known[rng.choice(len(known), 10, replace=False)]
    got = rank_metrics(model, model.relation.weight, cand, test, known)["mrr"]
    assert got == pytest.approx(brute_force_mrr(model, model.relation.weight, cand, test, known))


# --------------------------------------------------------------------------- files and config


def test_tsv_triples_drive_a_natural_or_drawn_partition(tmp_path):
    lines = ["head\trelation\ttail\tclient", "# a comment", ""]
    for i in range(12):
        shop = "north" if i % 2 else "south"
        lines += [f"p{i}\thasBrand\tb{i % 3}\t{shop}", f"p{i}\thasColor\tc{i % 4}\t{shop}"]
    lines.append("b0\toriginCountry\tItaly\tnorth")
    lines.append("b0\toriginCountry\tItaly\tsouth")  # a triple both clients hold
    path = tmp_path / "kg.tsv"
    path.write_text("\n".join(lines) + "\n")
    file = read_triples(path)
    assert file.triples[0] == ("p0", "hasBrand", "b0") and file.clients[:2] == ["south"] * 2
    assert len(file.triples) == 26

    raw = kg_config(tmp_path, num_clients=2, source=str(path))
    task = make_workload(config_from_dict(raw).workload, 2)
    # names in sorted order: client 0 is "north"
    assert [len(p) for p in task.parts] == [13, 13]
    assert len(task.entity_names) == 12 + 3 + 4 + 1 and len(task.relation_names) == 3

    raw["workload"]["partition"] = {"scheme": "iid"}
    task = make_workload(config_from_dict(raw).workload, 2)
    assert sum(len(p) for p in task.parts) == 25  # drawn over the distinct triples

    raw["workload"]["partition"] = {"scheme": "natural"}
    raw["clients"]["num_clients"] = 3
    with pytest.raises(UserError, match="names 2 clients but clients.num_clients=3"):
        make_workload(config_from_dict(raw).workload, 2)
    path.write_text("\n".join(line.rsplit("\t", 1)[0] for line in lines[3:]) + "\n")
    with pytest.raises(UserError, match="partition natural needs a 4th column client"):
        make_workload(config_from_dict(raw).workload, 2)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a\tr\tb\nc r d\n", r"kg.tsv: line 2: expected 3 tab-separated columns .* got 1"),
        ("a\tr\tb\nc\tr\t\n", r"kg.tsv: line 2: empty tail"),
        ("a\tr\tb\n\nc\tr\td\tx\n", r"kg.tsv: line 3: 4 columns, but earlier lines have 3"),
        ("a\tr\tb\tc\td\n", r"kg.tsv: line 1: expected 3 .* got 5"),
        ("a\tr\tb\n", r"kg.tsv: only 1 triples"),
        (b"a\tr\tb\n\xff\tr\tc\n", r"kg.tsv' is not UTF-8 text"),
    ],
)
def test_malformed_tsv_is_a_one_line_error(tmp_path, text, message):
    path = tmp_path / "kg.tsv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError, match=message) as err:
        read_triples(path)
    assert "\n" not in str(err.value)


def test_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="embed_dim=33 must be even"):
        config_from_dict(kg_config(tmp_path, model="complex", embed_dim=33))
    with pytest.raises(ConfigError, match="file's client column"):
        config_from_dict(
            kg_config(tmp_path, source="kg.tsv", partition={"scheme": "natural", "by": "shop"})
        )
    # one client per shop: 4 platforms x 5 shops
    raw = kg_config(tmp_path, num_clients=20, partition={"scheme": "natural", "by": "shop"})
    task = make_workload(config_from_dict(raw).workload, 2)
    assert len(task.parts) == 20 and all(len(p) > 10 for p in task.parts)
    with pytest.raises(ConfigError, match="gives 20 clients"):
        config_from_dict({**raw, "clients": {"num_clients": 4}, "clients_per_round": 4})
    raw = kg_config(tmp_path, num_clients=6, partition={"scheme": "dirichlet", "alpha": 1.0})
    task = make_workload(config_from_dict(raw).workload, 2)
    assert sum(len(p) for p in task.parts) == len(task.triples)


# --------------------------------------------------------------------------- end to end


def test_fede_beats_a_random_ranker_end_to_end(ray_session, tmp_path):
    cfg = config_from_dict(kg_config(tmp_path))
    result = fedray.run(cfg, progress=False)
    rounds = result.rounds
    task = make_workload(cfg.workload, cfg.seed)
    # the random ranker's filtered MRR on the same queries, weighted like the engine's metrics
    net = task.build_model()
    sizes = [len(task.client_data(c).y_test) for c in range(4)]
    baseline = np.average(
        [task.evaluate_client(net, task.client_data(c))["random_mrr"] for c in range(4)],
        weights=sizes,
    )
    last = rounds.iloc[-1]
    assert last["eval_mrr"] > baseline + 0.3 and last["eval_mrr"] > 10 * baseline
    assert last["eval_hits10"] == last["eval_accuracy"] > 0.5
    assert last["eval_mrr"] > rounds["eval_mrr"].iloc[0]
    # uploads carry the client's entity rows (ids + values), never the relations or other rows
    events = result.clients
    rows = task.num_client_rows(events["client_id"].to_numpy())
    width = cfg.workload.embed_dim
    assert (events["bytes_up"] >= rows * (width * 4 + 4)).all()
    assert (events["bytes_up"] < rows * (width * 4 + 4) + 64).all()
