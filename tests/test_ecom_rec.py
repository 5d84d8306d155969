"""``ecom_rec``: lazily generated users, the row-sparse layout, ranking metrics, the
``user_id,item_id,timestamp`` loader, and small federated runs."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch

import fedray
from fedray.config import config_from_dict
from fedray.errors import UserError
from fedray.workloads import make_workload
from fedray.workloads.ecommerce.loaders import read_interactions
from fedray.workloads.ecommerce.rec import rank_metrics


def rec_config(tmp_path, num_clients=1000, **workload):
    return config_from_dict(
        {
            "clients_per_round": min(10, num_clients),
            "workload": {
                "name": "ecom_rec",
                "world": {"cache_dir": str(tmp_path / "cache")},
                "eval_clients": 10,
                **workload,
            },
            "clients": {"num_clients": num_clients},
        }
    )


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return make_workload(rec_config(tmp_path_factory.mktemp("rec")).workload, seed=4)


def same_data(a, b) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip(
            (a.x_train, a.y_train, a.x_test, a.y_test),
            (b.x_train, b.y_train, b.x_test, b.y_test),
            strict=True,
        )
    )


# ----------------------------------------------------------------------------- generated users


def test_a_user_is_a_pure_function_of_seed_and_id(tmp_path, rec):
    again = make_workload(rec_config(tmp_path).workload, seed=4)
    for user in (0, 17, 999):
        assert same_data(rec.client_data(user), again.client_data(user))
    assert not same_data(rec.client_data(3), rec.client_data(4))
    other_seed = make_workload(rec_config(tmp_path).workload, seed=5)
    assert not same_data(rec.client_data(3), other_seed.client_data(3))


def test_ten_million_users_cost_nothing_at_build(tmp_path, rec):
    cfg = rec_config(tmp_path, num_clients=10**7).workload
    make_workload(cfg, seed=4)  # the world is cached now; what is left is the workload's own build
    tracemalloc.start()
    start = time.perf_counter()
    big = make_workload(cfg, seed=4)
    data = big.client_data(9_999_999)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 5.0 and peak < 20 * 2**20  # 10⁷ int64s alone would be 80 MB
    assert len(data.x_train) == big.num_train_samples([9_999_999])[0]
    # a user's data does not depend on how many users there are
    assert same_data(
        data, make_workload(rec_config(tmp_path, 10**7 + 5).workload, 4).client_data(9_999_999)
    )
    assert same_data(rec.client_data(999), big.client_data(999))


def test_splits_sizes_and_rows_agree(rec):
    ids = np.arange(60)
    sizes, rows = rec.num_train_samples(ids), rec.num_client_rows(ids)
    for user in ids:
        data = rec.client_data(int(user))
        positives = data.x_train[data.y_train == 1].numpy()
        negatives = data.x_train[data.y_train == 0].numpy()
        candidates = data.x_test[0].numpy()
        assert len(data.x_train) == sizes[user] and len(positives) >= 2
        assert len(negatives) == rec.cfg.negatives * len(positives)
        assert data.x_test.shape == (1, 1 + rec.cfg.eval_negatives) and data.y_test.shape == (1,)
        # the held-out positive is new; negatives are items the user never interacted with
        interacted = np.append(positives, candidates[0])
        assert len(np.unique(interacted)) == len(interacted)
        assert not np.isin(candidates[1:], interacted).any()
        assert not np.isin(negatives, interacted).any() and not np.isin(negatives, candidates).any()
        chosen = rec.client_rows(int(user), data)
        assert np.all(np.diff(chosen) > 0) and len(chosen) == rows[user]
    assert len(np.unique(sizes)) > 5  # users differ in activity


def test_users_prefer_what_their_latent_types_say(rec):
    """Fixed-seed statistical check: a user's positives concentrate on few leaf types (Dir(0.3)),
    far more than uniform draws from the catalogue would."""
    types = rec.users.catalogue.type_of
    top_share = []
    for user in range(200):
        data = rec.client_data(user)
        counts = np.bincount(types[data.x_train[data.y_train == 1].numpy()], minlength=16)
        top_share.append(np.sort(counts)[-2:].sum() / counts.sum())
    assert np.mean(top_share) > 0.6  # uniform over 16 types gives about 0.25


# ----------------------------------------------------------------------------- layout and training


@pytest.mark.parametrize("model", ["mf", "ncf"])
def test_local_training_changes_only_the_touched_rows(tmp_path, model):
    rec = make_workload(rec_config(tmp_path, model=model).workload, seed=4)
    torch.manual_seed(0)
    net = rec.build_model()
    layout = rec.parameter_layout()
    assert layout.private == ("user",) and layout.row_tables == ("item.weight", "item_bias.weight")
    with torch.no_grad():
        net.user.copy_(torch.from_numpy(rec.init_private(7, net.user.detach().numpy())))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    data = rec.client_data(7)
    rec.local_train(
        net, data, epochs=2, lr=0.5, batch_size=16, mu=0.0, rng=np.random.default_rng(0)
    )
    rows = torch.from_numpy(rec.client_rows(7, data))
    untouched = torch.ones(rec.num_items, dtype=torch.bool)
    untouched[rows] = False
    for name in layout.row_tables:
        table = dict(net.named_parameters())[name].detach()
        assert torch.equal(table[untouched], before[name][untouched])  # bit-identical
        assert not torch.equal(table[rows], before[name][rows])
    assert not torch.equal(net.user.detach(), before["user"])
    with pytest.raises(UserError, match="scaffold"):
        rec.local_train(
            net, data, epochs=1, lr=0.5, batch_size=16, mu=0.0,
            rng=np.random.default_rng(0), correction=[torch.zeros_like(p) for p in net.parameters()],
        )  # fmt: skip


def test_private_init_is_per_user_and_seeded(rec):
    initial = np.zeros(rec.cfg.embed_dim, np.float32)
    a, b = rec.init_private(1, initial), rec.init_private(2, initial)
    assert a.dtype == np.float32 and a.shape == initial.shape and not np.array_equal(a, b)
    assert np.array_equal(a, rec.init_private(1, initial))


def test_fold_in_fits_the_user_to_its_train_split(rec):
    torch.manual_seed(0)
    net = rec.build_model()
    data = rec.client_data(11)
    positives = data.x_train[data.y_train == 1]
    # make the user's positives point one way and its negatives the other
    with torch.no_grad():
        net.item.weight[positives, 0] += 1.0
    folded = rec.fold_in(net, data)
    assert folded[0] > 0.5 and torch.isfinite(folded).all()


# ----------------------------------------------------------------------------- metrics


def test_hit_ratio_and_ndcg_golden_values():
    negatives = torch.arange(11, dtype=torch.float64)  # 0..10
    scores = torch.stack(
        [
            torch.cat([torch.tensor([20.0]), negatives]),  # first: rank 0
            torch.cat([torch.tensor([7.5]), negatives]),  # 3 negatives above: rank 3
            torch.cat([torch.tensor([8.0]), negatives]),  # a tie counts against: rank 3
            torch.cat([torch.tensor([0.5]), negatives]),  # 10 above: rank 10, a miss
            torch.full((12,), 1.0, dtype=torch.float64),  # constant scores: a miss
        ]
    )
    hr, ndcg = rank_metrics(scores, k=10)
    assert hr.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    np.testing.assert_allclose(ndcg.numpy(), [1.0, 1 / np.log2(5), 1 / np.log2(5), 0.0, 0.0])


def test_evaluate_client_reports_the_ranking_metrics(rec):
    net = rec.build_model()
    metrics = rec.evaluate_client(net, rec.client_data(5))
    assert set(metrics) >= {"loss", "accuracy", "hr10", "ndcg10"}
    assert metrics["accuracy"] == metrics["hr10"] and 0 <= metrics["ndcg10"] <= metrics["hr10"]


# ----------------------------------------------------------------------------- user files


def test_interactions_csv_and_parquet(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(
        "user_id,item_id,timestamp,rating\n"
        "10,b,3,5\n9,a,1,4\n10,a,2024-01-02,3\n9,c,2,1\n\n10,c,2024-01-01T10:00:00,2\n"
    )
    table = read_interactions(path)
    assert table.user_names.tolist() == [9, 10]  # integer ids sort as numbers
    assert table.item_names.tolist() == ["a", "b", "c"]
    assert table.user.tolist() == [1, 0, 1, 0, 1] and table.item.tolist() == [1, 0, 0, 2, 2]
    assert table.timestamp[2] == pd.Timestamp("2024-01-02", tz="UTC").timestamp()
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u1"],
            "item_id": [5, 6, 7],
            "timestamp": pd.to_datetime([3, 1, 2], unit="s"),
        }
    )
    frame.to_parquet(tmp_path / "events.parquet")
    table = read_interactions(tmp_path / "events.parquet")
    assert table.user.tolist() == [0, 1, 0] and table.timestamp.tolist() == [3.0, 1.0, 2.0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("user,item_id,timestamp\n1,2,3\n", r"events.csv: line 1: missing column 'user_id'"),
        ("user_id,item_id,timestamp\n1,2,3\n1,2\n", r"events.csv: line 3: expected 3 columns"),
        ("user_id,item_id,timestamp\n1,2,3\n ,2,4\n", r"events.csv: line 3: empty user_id"),
        (
            "user_id,item_id,timestamp\n1,2,yesterday\n",
            r"events.csv: line 2: timestamp 'yesterday'",
        ),
        (
            "user_id,item_id,timestamp\n1,2,nan\n",
            r"events.csv: line 2: timestamp 'nan' is not finite",
        ),
        ("user_id,item_id,timestamp\n", r"events.csv: no interaction rows"),
    ],
)
def test_malformed_interactions_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "events.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        read_interactions(path)
    assert "\n" not in str(err.value)


def test_malformed_parquet_is_a_one_line_error(tmp_path):
    path = tmp_path / "events.parquet"
    pd.DataFrame({"user_id": [1], "item": [2], "timestamp": [3]}).to_parquet(path)
    with pytest.raises(UserError, match=r"events.parquet: missing column 'item_id'"):
        read_interactions(path)
    pd.DataFrame({"user_id": [1, None], "item_id": [2, 3], "timestamp": [3, 4]}).to_parquet(path)
    with pytest.raises(UserError, match=r"events.parquet: row 2: empty user_id"):
        read_interactions(path)
    path.write_text("not parquet")
    with pytest.raises(UserError, match=r"events.parquet: not a readable Parquet file") as err:
        read_interactions(path)
    assert "\n" not in str(err.value)


def write_events(path):
    rows = ["user_id,item_id,timestamp"]
    for u in range(3):
        rows += [f"user{u},item{(7 * u + 13 * k) % 30},{k}" for k in range(4 + u)]
    rows.append("user0,item0,99")  # a repeat of item0 becomes user0's latest interaction
    rows += [f"user2,item{i},{100 + i}" for i in range(40, 60)]
    rows += [f"user3,item{i},{i}" for i in range(1, 40)]  # the catalogue: items 0-59
    path.write_text("\n".join(rows) + "\n")


def test_a_file_gives_one_client_per_user(tmp_path):
    path = tmp_path / "events.csv"
    write_events(path)
    cfg = rec_config(tmp_path, num_clients=4, source=str(path), eval_negatives=20)
    rec = make_workload(cfg.workload, seed=0)
    assert rec.num_items == 60
    data = rec.client_data(0)
    assert data.x_test.shape == (1, 21)
    assert data.x_test[0, 0].item() == 0  # item0, held out at its latest time
    assert 0 not in data.x_train[data.y_train == 1].tolist()  # and trained on nowhere
    assert len(data.x_train) == rec.num_train_samples([0])[0]
    assert rec.num_client_rows(np.arange(4)).tolist() == [
        len(rec.client_rows(u, rec.client_data(u))) for u in range(4)
    ]
    cfg = rec_config(tmp_path, num_clients=5, source=str(path), eval_negatives=20)
    with pytest.raises(
        UserError, match=r"4 distinct users but clients.num_clients=5; .* set clients.num_clients=4"
    ):
        make_workload(cfg.workload, seed=0)
    cfg = rec_config(tmp_path, num_clients=4, source=str(path), eval_negatives=30)
    with pytest.raises(UserError, match=r"user 'user3' interacted with 39 of 60 items"):
        make_workload(cfg.workload, seed=0)
    path.write_text("user_id,item_id,timestamp\na,x,1\na,y,2\nb,x,1\n")
    with pytest.raises(UserError, match=r"user 'b' has 1 distinct item"):
        cfg = rec_config(tmp_path, num_clients=2, source=str(path), eval_negatives=1)
        make_workload(cfg.workload, seed=0)


# ----------------------------------------------------------------------------- federated runs


def run_rec(tmp_path, **changes):
    cfg = config_from_dict(
        {
            "seed": 0,
            "rounds": 12,
            "clients_per_round": 40,
            "eval_every": 12,
            "workload": {
                "name": "ecom_rec",
                "world": {"num_products": 600, "cache_dir": str(tmp_path / "cache")},
                "embed_dim": 16,
                "interactions_per_user": 20,
                "eval_clients": 150,
            },
            "clients": {"num_clients": 20000},
            "client": {"lr": 5.0, "batch_size": 32, "local_epochs": 2},
            "execution": {"num_workers": 2, "clients_per_task": 20},
            "output": {"root": str(tmp_path / "results"), "name": "rec"},
        },
        [(k.replace("__", "."), v) for k, v in changes.items()],
    )
    return fedray.run(cfg, progress=False)


def test_federated_mf_learns_and_uploads_only_touched_rows(ray_session, tmp_path):
    result = run_rec(tmp_path)
    last = result.rounds.iloc[-1]
    assert last["eval_hr10"] > 0.25  # a random ranker gets 10/101 ≈ 0.099
    assert 0 < last["eval_ndcg10"] < last["eval_hr10"]
    events = result.clients
    done = events[events["status"] == "completed"]
    dense_table = 600 * (16 + 1) * 4  # item.weight and item_bias.weight as float32
    assert done["bytes_up"].nunique() > 5  # upload size follows each user's activity
    assert done["bytes_up"].median() < 0.25 * dense_table  # a heavy user may touch most of it
    # each upload is the user's rows (ids + values) and nothing else of size
    rows = done["num_samples"].to_numpy()  # generated users: one row per train example
    per_row = done["bytes_up"].to_numpy() / rows
    assert per_row.max() / per_row.min() < 1.5


def test_tables_do_not_depend_on_the_number_of_workers(ray_session, tmp_path):
    runs = [
        run_rec(
            tmp_path,
            rounds=3,
            eval_every=3,
            workload__model="ncf",
            execution__num_workers=workers,
            output__name=f"w{workers}",
        )
        for workers in (1, 2)
    ]
    columns = ["train_loss", "bytes_up", "eval_hr10", "eval_ndcg10", "eval_loss"]
    pd.testing.assert_frame_equal(runs[0].rounds[columns], runs[1].rounds[columns])
    events = [r.clients.sort_values(["round", "client_id"]).reset_index(drop=True) for r in runs]
    pd.testing.assert_frame_equal(
        events[0][["client_id", "bytes_up", "train_loss"]],
        events[1][["client_id", "bytes_up", "train_loss"]],
    )
