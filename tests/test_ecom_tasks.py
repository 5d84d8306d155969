"""The e-commerce tasks end to end on the shared Ray instance: they learn, their metrics reach the
tables and TensorBoard, and the partition statistics land in the run directory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import fedray
from fedray.config import config_from_dict
from fedray.errors import ConfigError, UserError
from fedray.workloads import make_workload


def task_config(tmp_path, name, **workload):
    return {
        "seed": 1,
        "rounds": 6,
        "clients_per_round": 4,
        "workload": {
            "name": name,
            "world": {
                "num_products": 200,
                "utterances_per_platform": 200,
                "cache_dir": str(tmp_path / "cache"),
            },
            "max_len": 24,
            **workload,
        },
        "clients": {"num_clients": 8},
        "client": {"lr": 0.3, "batch_size": 16, "local_epochs": 2},
        "execution": {"clients_per_task": 2},
        "output": {"root": str(tmp_path / "results"), "name": name},
    }


def majority_accuracy(cfg) -> float:
    """Accuracy of always predicting the most common class of the eval clients' test splits."""
    task = make_workload(cfg.workload, cfg.seed)
    y = np.concatenate([task.client_data(k).y_test.numpy() for k in range(cfg.clients.num_clients)])
    return np.bincount(y).max() / len(y)


@pytest.mark.parametrize(
    "name, partition, metric, floor",
    [
        ("ecom_intent", {"scheme": "dirichlet", "alpha": 0.5}, "eval_macro_f1", 0.6),
        ("ecom_relation", {"scheme": "powerlaw", "exponent": 1.0}, "eval_macro_f1", 0.6),
    ],
)
def test_classification_tasks_learn_far_above_the_majority_class(
    ray_session, tmp_path, name, partition, metric, floor
):
    raw = task_config(tmp_path, name, partition=partition)
    if name == "ecom_intent":  # a linear bag of embeddings wants a larger step and more rounds
        raw.update(rounds=10, eval_every=2)
        raw["client"]["lr"] = 1.0
    cfg = config_from_dict(raw)
    result = fedray.run(cfg, progress=False)
    last = result.rounds.iloc[-1]
    assert last[metric] > floor and last[metric] > result.rounds[metric].dropna().iloc[0]
    if name == "ecom_intent":  # workload metrics are null on rounds without evaluation
        assert result.rounds[metric].isna().tolist() == [True, False] * 5
    assert last["eval_accuracy"] > majority_accuracy(cfg) + 0.3
    assert result.summary["final"][metric] == pytest.approx(last[metric])
    stats = pd.read_parquet(result.path / "partition.parquet")
    assert len(stats) == 8 and stats["num_examples"].sum() == len(
        make_workload(cfg.workload, 1).corpus
    )
    sizes = result.clients.groupby("client_id")["num_samples"].first()
    assert (stats.set_index("client_id").loc[sizes.index, "num_train"] == sizes).all()


def test_ner_learns_entities_with_one_client_per_platform(ray_session, tmp_path):
    raw = task_config(tmp_path, "ecom_ner", partition={"scheme": "natural", "by": "platform"})
    raw.update(rounds=8, clients_per_round=4)
    raw["clients"]["num_clients"] = 4
    raw["client"].update(lr=0.5, local_epochs=2)
    result = fedray.run(config_from_dict(raw), progress=False)
    f1 = result.rounds["eval_entity_f1"]
    assert f1.iloc[-1] > 0.6 and f1.iloc[-1] > f1.iloc[0] + 0.3
    again = fedray.Result.from_path(result.path)
    pd.testing.assert_frame_equal(again.rounds, result.rounds)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(result.tensorboard_dir), size_guidance={"scalars": 0}).Reload()
    assert "eval/entity_f1" in acc.Tags()["scalars"]


def test_fedprox_mu_reaches_the_tagger(tmp_path):
    raw = task_config(tmp_path, "ecom_ner", partition="iid")
    raw["clients"]["num_clients"] = 4
    task = make_workload(config_from_dict(raw).workload, 0)
    data = task.client_data(0)

    def drift(mu):
        import torch

        from fedray.training import flat_params

        torch.manual_seed(0)
        model = task.build_model()
        start = flat_params(model)
        task.local_train(
            model, data, epochs=3, lr=0.5, batch_size=8, mu=mu, rng=np.random.default_rng(0)
        )
        return np.linalg.norm(flat_params(model) - start)

    assert drift(1.0) < 0.8 * drift(0.0)  # the proximal term pulls the tagger back to w^t


def test_client_count_must_match_the_natural_partition():
    with pytest.raises(
        ConfigError, match=r"partition natural by shop gives 20 clients; set clients.num_clients=20"
    ):
        config_from_dict(
            {
                "workload": {
                    "name": "ecom_intent",
                    "partition": {"scheme": "natural", "by": "shop"},
                },
                "clients": {"num_clients": 12},
            }
        )
    with pytest.raises(
        ConfigError, match=r"unknown key 'workload.alpha'; accepted keys here: world"
    ):
        config_from_dict({"workload": {"name": "ecom_ner", "alpha": 0.5}})
    with pytest.raises(ConfigError, match="partition.alpha is an option of the dirichlet scheme"):
        config_from_dict(
            {"workload": {"name": "ecom_ner", "partition": {"scheme": "iid", "alpha": 1}}}
        )


@pytest.mark.parametrize("name", ["ecom_intent", "ecom_relation", "ecom_ner", "ecom_lm"])
def test_client_data_is_a_pure_function_of_seed_and_client(tmp_path, name):
    raw = task_config(tmp_path, name, partition={"scheme": "dirichlet", "alpha": 1.0})
    cfg = config_from_dict(raw).workload
    a, b = make_workload(cfg, 3), make_workload(cfg, 3)  # as the driver and a worker build it
    assert a.vocab.itos == b.vocab.itos
    for k in (0, 5):
        da, db = a.client_data(k), b.client_data(k)
        for x, y in zip(
            (da.x_train, da.y_train, da.x_test, da.y_test),
            (db.x_train, db.y_train, db.x_test, db.y_test),
            strict=True,
        ):
            assert torch.equal(x, y)
    other = make_workload(cfg, 4)
    assert not torch.equal(other.client_data(0).x_train[:5], a.client_data(0).x_train[:5])


def test_cli_lists_the_workloads(capsys):
    from fedray.cli import main

    assert main(["workloads"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [
        "synthetic",
        "ecom_intent",
        "ecom_relation",
        "ecom_ner",
        "ecom_lm",
        "ecom_kg",
        "ecom_rec",
        "ecom_qa_lora",
    ]
    # each has a one-sentence description
    assert all(len(line.split(maxsplit=1)[1]) > 20 for line in lines)
    assert all(line.endswith(".") for line in lines)


def test_more_clients_than_the_data_can_fill_is_a_one_line_error(tmp_path):
    raw = task_config(tmp_path, "ecom_relation", partition={"scheme": "dirichlet", "alpha": 0.5})
    raw["clients"]["num_clients"] = 5000
    with pytest.raises(
        UserError, match=r"workload ecom_relation: \d+ examples cannot give 5000"
    ) as err:
        make_workload(config_from_dict(raw).workload, 0)
    assert "\n" not in str(err.value)


def test_same_tables_for_one_and_two_workers(ray_session, tmp_path):
    from fedray.results.schema import NONDETERMINISTIC_COLUMNS

    raw = task_config(tmp_path, "ecom_relation", partition={"scheme": "dirichlet", "alpha": 0.5})
    raw.update(rounds=2)
    runs = []
    for workers in (1, 2):
        raw["execution"]["num_workers"] = workers
        raw["output"]["name"] = f"w{workers}"
        runs.append(fedray.run(config_from_dict(raw), progress=False))
    one, two = runs
    cols = [c for c in one.rounds.columns if c not in NONDETERMINISTIC_COLUMNS]
    pd.testing.assert_frame_equal(one.rounds[cols], two.rounds[cols], check_exact=True)
    pd.testing.assert_frame_equal(one.clients, two.clients, check_exact=True)
