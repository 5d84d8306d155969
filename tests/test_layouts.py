"""Parameter layouts: private parameters stay on the client, row tables travel row-sparse, and the
server averages each row over the clients that sent it (fedray/execution/layout.py, the worker,
Links and the sync driver's per-row sum)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedray.workloads as workloads
from fedray.config import config_from_dict
from fedray.execution.layout import FlatLayout, pack_upload, unpack_upload
from fedray.execution.worker import PRIVATE, ClientWorker, GroupJob, Task
from fedray.sim.links import Links
from fedray.strategies.aggregate import Aggregate
from fedray.training import TrainStats, flat_params
from fedray.workloads.base import ClientData, ParameterLayout, Workload

ITEMS, DIM = 12, 3


class ToyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.user = torch.nn.Parameter(torch.full((DIM,), 0.5))
        self.item = torch.nn.Embedding(ITEMS, DIM)
        self.head = torch.nn.Linear(DIM, 1)

    def forward(self, items):
        return self.head(self.user * self.item(items)).squeeze(-1)


class ToyRec(Workload):
    """Client k likes items k mod 12 and (k + 5) mod 12; ``leaky`` forgets one of them in
    ``client_rows``, which the engine must catch."""

    name = "toy"

    def __init__(self, leaky: bool = False):
        self.leaky = leaky

    def rows(self, client_id: int) -> np.ndarray:
        return np.unique([client_id % ITEMS, (client_id + 5) % ITEMS])

    def num_train_samples(self, client_ids):
        return np.full(len(client_ids), 4, dtype=np.int64)

    def client_data(self, client_id: int) -> ClientData:
        x = torch.from_numpy(np.repeat(self.rows(client_id), 2))
        y = torch.ones(len(x))
        return ClientData(x, y, x[:1], y[:1])

    def build_model(self):
        return ToyModel()

    def parameter_layout(self):
        return ParameterLayout(private=("user",), row_tables=("item.weight",))

    def client_rows(self, client_id, data):
        rows = self.rows(client_id)
        return rows[:1] if self.leaky else rows

    def num_client_rows(self, client_ids):
        return np.array([len(self.rows(int(c))) for c in client_ids])

    def init_private(self, client_id, initial):
        return np.full_like(initial, 0.1 * (client_id + 1))

    def local_train(self, model, data, *, epochs, lr, batch_size, mu, rng, correction=None):
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for _ in range(epochs):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(data.x_train), data.y_train
            )
            loss.backward()
            opt.step()
        return TrainStats(float(loss.detach()), epochs)

    def evaluate(self, model, x, y):
        return {"loss": 0.0, "accuracy": 0.0}


def toy_worker(monkeypatch, codec="none", leaky=False, **options) -> ClientWorker:
    monkeypatch.setattr(workloads, "make_workload", lambda cfg, seed: ToyRec(leaky))
    cfg = config_from_dict({"compression": {"uplink": codec}, **options})
    return ClientWorker(cfg)


def run_tasks(worker, base, tasks, states=None):
    return worker.run_group(GroupJob(0, 1, tasks, [{"params": base}], states or {}))


def test_flat_layout_places_private_rows_and_shared_coordinates():
    flat = FlatLayout.of(ToyModel(), ToyRec().parameter_layout())
    # model order: user [3] | item.weight [12, 3] | head.weight [1, 3] | head.bias [1]
    assert flat.size == 3 + 36 + 3 + 1
    assert flat.private_index.tolist() == [0, 1, 2]
    assert flat.shared_index.tolist() == [39, 40, 41, 42]
    assert flat.shared_segments == (3, 1)
    assert flat.num_rows == ITEMS and flat.row_width == DIM
    # rows 1 and 4 of the item table, then the shared head
    expected = [6, 7, 8, 15, 16, 17, 39, 40, 41, 42]
    assert flat.upload_index(np.array([1, 4])).tolist() == expected
    assert flat.upload_segments(2) == (6, 3, 1)
    with pytest.raises(ValueError, match="sorted unique"):
        flat.check_rows(np.array([4, 1]), "toy")
    with pytest.raises(ValueError, match="not one of the model's parameters"):
        FlatLayout.of(ToyModel(), ParameterLayout(private=("nope",)))
    with pytest.raises(ValueError, match="both private and a row table"):
        FlatLayout.of(ToyModel(), ParameterLayout(private=("user",), row_tables=("user",)))


def test_upload_wire_format_round_trips():
    payload = b"\x00abc"
    rows = np.array([2, 7, 11])
    wire = pack_upload(rows, payload)
    assert len(wire) == 4 + 3 * 4 + len(payload)
    got_rows, got_payload = unpack_upload(wire, has_tables=True)
    assert got_rows.tolist() == [2, 7, 11] and got_payload == payload
    assert unpack_upload(payload, has_tables=False) == (None, payload)


@pytest.mark.parametrize("codec", ["none", "fp16", "int8"])
def test_worker_uploads_only_its_rows_and_keeps_private_parameters(monkeypatch, codec):
    worker = toy_worker(monkeypatch, codec)
    flat = worker.flat
    base = flat_params(ToyModel())
    tasks = [Task(1, 2), Task(6, 2)]  # rows {1, 6} and {6, 11}: row 6 is shared
    result = run_tasks(worker, base, tasks, {6: {PRIVATE: np.full(3, -2.0)}})
    privates = {cid: state[PRIVATE] for cid, state in result.states.items()}
    total, coverage = result.aggregate.total, result.aggregate.coverage

    # private parameters: trained from init_private (client 1) or the stored value (client 6),
    # returned to the driver, never part of the upload
    assert set(privates) == {1, 6}
    assert not np.allclose(privates[1], 0.2) and not np.allclose(privates[6], -2.0)
    assert np.all(total[flat.private_index] == 0)

    # only touched rows (and the shared head) carry updates
    table = total[3:39].reshape(ITEMS, DIM)
    touched = np.flatnonzero(np.abs(table).sum(axis=1))
    assert touched.tolist() == [1, 6, 11]
    # coverage: each row weighted by the clients that sent it, the head by everyone
    cover = coverage[3:39].reshape(ITEMS, DIM)[:, 0]
    assert cover[[1, 6, 11]].tolist() == [4, 8, 4] and cover.sum() == 16
    assert np.all(coverage[flat.shared_index] == 8)

    # the real wire length is what Links charges at dispatch
    cfg = config_from_dict({"compression": {"uplink": codec}})
    segments = tuple(p.numel() for p in ToyModel().parameters())
    planned, raw = Links(cfg, segments, flat).upload_bytes(np.array([2, 2]), 2)
    assert result.bytes_up.tolist() == planned.tolist()
    assert raw.tolist() == [4 + 2 * 4 + 1 + 4 * (2 * DIM + 4)] * 2


def test_row_downloads_carry_ids_rows_and_shared_parameters_only():
    class RowDownloads(ToyRec):
        def parameter_layout(self):
            return ParameterLayout(("user",), ("item.weight",), download_rows=True)

    segments = tuple(p.numel() for p in ToyModel().parameters())
    for codec, value_bytes in (("none", 4), ("fp16", 2)):
        cfg = config_from_dict({"compression": {"downlink": codec}})
        dense = Links(cfg, segments, FlatLayout.of(ToyModel(), ToyRec().parameter_layout()))
        assert dense.download_bytes(np.array([2, 5]), 2, 999)[0].tolist() == [999, 999]
        flat = FlatLayout.of(ToyModel(), RowDownloads().parameter_layout())
        down, raw = Links(cfg, segments, flat).download_bytes(np.array([2, 5]), 2, 999)
        # header + row count + ids + (rows × 3 + head 4) values
        expected = [1 + 4 + 4 * r + value_bytes * (DIM * r + 4) for r in (2, 5)]
        assert down.tolist() == expected
        assert raw.tolist() == [1 + 4 + 4 * r + 4 * (DIM * r + 4) for r in (2, 5)]


def test_training_outside_client_rows_is_caught(monkeypatch):
    worker = toy_worker(monkeypatch, leaky=True)
    with pytest.raises(RuntimeError, match="outside its client_rows"):
        run_tasks(worker, flat_params(ToyModel()), [Task(1, 1)])


def test_per_row_sum_averages_each_row_over_its_senders():
    # two clients: n=1 sends rows {0, 1}, n=3 sends row {1}; coordinate 2 is shared
    delta_a, delta_b = np.array([1.0, 1.0, 1.0]), np.array([0.0, 5.0, 2.0])
    update_sum = 1 * delta_a + 3 * delta_b
    coverage = np.array([1.0, 4.0, 4.0])
    weight_sum = 4.0
    mean = Aggregate(total=update_sum, weight=weight_sum, coverage=coverage, count=2).mean()
    assert mean.tolist() == [1.0, (1 * 1 + 3 * 5) / 4, (1 + 3 * 2) / 4]
    # a row nobody sent stays put
    nobody = Aggregate(total=np.zeros(2), weight=4.0, coverage=np.zeros(2), count=1)
    assert nobody.mean().tolist() == [0.0, 0.0]


def test_fedbuff_buffer_averages_rows_over_their_senders():
    from fedray.strategies import FedAvg, FedBuff
    from fedray.strategies.staleness import StalenessWeight

    strategy = FedBuff(FedAvg(), buffer_size=2, staleness=StalenessWeight("constant"))
    buffer, x = strategy.new_aggregate(), np.zeros(3)
    strategy.arrival(buffer, np.array([1.0, 1.0, 0.0]), 1, 0, x, x, index=np.array([0, 1]))
    strategy.arrival(buffer, np.array([0.0, 5.0, 2.0]), 3, 0, x, x, index=np.array([1, 2]))
    assert buffer.weight == 4.0 and buffer.coverage.tolist() == [1.0, 4.0, 3.0]
    assert buffer.mean().tolist() == [1.0, 4.0, 2.0]


def kg_base(tmp_path) -> dict:
    return {
        "seed": 3,
        "rounds": 6,
        "clients_per_round": 4,
        "workload": {
            "name": "ecom_kg",
            "world": {"num_products": 120, "cache_dir": str(tmp_path / "cache")},
            "partition": {"scheme": "natural", "by": "shop"},
            "eval_clients": 6,
        },
        "clients": {"num_clients": 20},
        "client": {"lr": 10.0, "batch_size": 64, "local_epochs": 1},
        "compression": {"uplink": "int8"},
        "execution": {"clients_per_task": 3},
    }


def kg_run(tmp_path, name: str, workers: int, **overrides):
    import fedray

    raw = kg_base(tmp_path)
    raw["execution"]["num_workers"] = workers
    raw.update(output={"root": str(tmp_path / "results"), "name": name}, **overrides)
    return fedray.run(config_from_dict(raw), progress=False)


@pytest.mark.parametrize(
    "mode",
    [
        {},
        {"mode": "async", "asynchronous": {"concurrency": 5, "buffer_size": 3}},
        {"mode": "async", "strategy": {"name": "fedasync"}, "asynchronous": {"concurrency": 4}},
    ],
    ids=["sync", "fedbuff", "fedasync"],
)
def test_row_sparse_runs_give_the_same_tables_for_any_number_of_workers(
    ray_session, tmp_path, mode
):
    import pandas as pd

    one = kg_run(tmp_path, "one", 1, **mode)
    two = kg_run(tmp_path, "two", 2, **mode)
    cols = [c for c in one.rounds.columns if c != "wall_time_s"]
    pd.testing.assert_frame_equal(one.rounds[cols], two.rounds[cols], check_exact=True)
    pd.testing.assert_frame_equal(one.clients, two.clients, check_exact=True)
    # uploads and (FedE) downloads are row-sparse: their sizes differ between clients, and a
    # download is far smaller than the whole model's entity table
    arrived = one.clients[one.clients["bytes_up"] > 0]
    assert arrived["bytes_up"].nunique() > 1
    assert one.clients["bytes_down"].nunique() > 1
    task = workloads.make_workload(config_from_dict(kg_base(tmp_path)).workload, 3)
    entity_table = task.build_model().entity.weight.numel() * 4
    assert one.clients["bytes_down"].max() < entity_table / 2
    if mode.get("strategy") is None:  # six FedAsync mixes of single shops are too few to learn
        assert one.rounds["eval_mrr"].iloc[-1] > one.rounds["eval_mrr"].iloc[0]


def test_a_diverged_client_is_a_one_line_user_error(monkeypatch, ray_session, tmp_path):
    from fedray.errors import UserError

    class Diverging(ToyRec):
        def local_train(self, model, data, **kwargs):
            with torch.no_grad():
                model.user[0] = float("nan")  # a private parameter: never uploaded, still caught
            return TrainStats(float("nan"), 1)

    cfg = config_from_dict({"robustness": {"nonfinite": "error"}})
    with monkeypatch.context() as patch:
        patch.setattr(workloads, "make_workload", lambda cfg, seed: Diverging())
        worker = ClientWorker(cfg)
        quarantining = ClientWorker(config_from_dict({}))
    with pytest.raises(UserError, match="diverged .* lower client.lr"):
        run_tasks(worker, flat_params(ToyModel()), [Task(1, 1)])
    # by default the client is quarantined instead: no upload, no state kept
    result = run_tasks(quarantining, flat_params(ToyModel()), [Task(1, 1)])
    assert result.quarantined.tolist() == [True] and result.aggregate.count == 0
    assert result.states == {}
    # raised on a pool actor, it reaches the caller as itself: one line, no remote traceback
    with pytest.raises(UserError) as caught:
        kg_run(
            tmp_path,
            "diverged",
            1,
            client={"lr": 1e30, "batch_size": 64},
            robustness={"nonfinite": "error"},
        )
    assert "\n" not in str(caught.value) and "lower client.lr" in str(caught.value)


def test_the_data_cache_counts_each_entry_beyond_its_tensor_bytes(monkeypatch):
    from fedray.execution.worker import CACHE_ENTRY_OVERHEAD

    monkeypatch.setattr(workloads, "make_workload", lambda cfg, seed: ToyRec())
    worker = ClientWorker(config_from_dict({"execution": {"data_cache_mb": 1}}))
    for client in range(200):  # tiny clients (~50 B of tensors each)
        worker._data(client)
    # counted by tensor bytes alone, all 200 would stay; each costs kilobytes of heap in truth
    assert len(worker._cache) == 2**20 // (CACHE_ENTRY_OVERHEAD + worker._data(199).nbytes)
    assert worker._cache_bytes <= 2**20


def test_row_downloads_refuse_a_tensor_scaled_downlink(ray_session, tmp_path):
    from fedray.errors import UserError

    with pytest.raises(UserError, match="downlink codec int8 scales whole tensors"):
        kg_run(tmp_path, "int8", 1, compression={"uplink": "none", "downlink": "int8"})
