"""User data through ``workload.source``: CSV text,label and CoNLL files, and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.config import config_from_dict, load_config
from fedray.errors import ConfigError, UserError
from fedray.workloads import make_workload
from fedray.workloads.ecommerce.loaders import read_conll, read_labelled_csv, read_text


def test_csv_round_trip(tmp_path):
    path = tmp_path / "intents.csv"
    path.write_text('text,label\nwhere is my parcel,shipping\n"refund, please",refund\n\n')
    corpus = read_labelled_csv(path)
    assert corpus.tokens == [["where", "is", "my", "parcel"], ["refund", ",", "please"]]
    assert corpus.label_names == ["refund", "shipping"] and corpus.labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("sentence,intent\na,b\nc,d\n", r"intents.csv: line 1: expected the header 'text,label'"),
        ("text,label\na,b\nc,d,e\n", r"intents.csv: line 3: expected 2 columns text,label, got 3"),
        ("text,label\na,b\n,d\n", r"intents.csv: line 3: empty text"),
        ("text,label\na,b\n", r"intents.csv: only 1 examples"),
    ],
)
def test_malformed_csv_is_a_one_line_error(tmp_path, text, message):
    path = tmp_path / "intents.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        read_labelled_csv(path)
    assert "\n" not in str(err.value)


def test_conll_round_trip_and_errors(tmp_path):
    path = tmp_path / "titles.conll"
    path.write_text("-DOCSTART- O\n\nNorvik B-BRAND\nmug B-TYPE\n\nred B-COLOR\nmug B-TYPE\nXL O\n")
    corpus = read_conll(path)
    assert corpus.tokens == [["Norvik", "mug"], ["red", "mug", "XL"]]
    assert corpus.tags == [["B-BRAND", "B-TYPE"], ["B-COLOR", "B-TYPE", "O"]]
    path.write_text("Norvik B-BRAND\nmug\n\nred B-COLOR\n")
    with pytest.raises(UserError, match=r"titles.conll: line 2: expected 'token tag'"):
        read_conll(path)
    path.write_text("Norvik BRAND\n\nred B-COLOR\n")
    with pytest.raises(UserError, match=r"titles.conll: line 1: tag 'BRAND' is not BIO"):
        read_conll(path)
    with pytest.raises(UserError, match="not found"):
        read_conll(tmp_path / "missing.conll")


def test_source_switches_a_task_to_the_user_file(tmp_path):
    rows = [f"my order {i} is late,shipping" for i in range(12)]
    rows += [f"refund order {i} please,refund" for i in range(12)]
    path = tmp_path / "intents.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    cfg = config_from_dict(
        {
            "workload": {"name": "ecom_intent", "source": str(path), "partition": "iid"},
            "clients": {"num_clients": 4},
            "clients_per_round": 2,
        }
    ).workload
    task = make_workload(cfg, seed=0)
    assert task.corpus.label_names == ["refund", "shipping"]
    assert task.num_train_samples(np.arange(4)).sum() + sum(map(len, task.test_idx)) == 24
    with pytest.raises(ConfigError, match="partition natural needs the generated world"):
        config_from_dict({"workload": {"name": "ecom_intent", "source": str(path)}})


def test_plain_text_round_trip_and_error(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("Norvik rain jacket , navy blue\n\nTazelo coffee mug 350 ml\n")
    corpus = read_text(path)
    assert corpus.tokens == [
        ["<s>", "Norvik", "rain", "jacket", ",", "navy", "blue", "</s>"],
        ["<s>", "Tazelo", "coffee", "mug", "350", "ml", "</s>"],
    ]
    path.write_text("one line\n  \n")
    with pytest.raises(UserError, match=r"corpus.txt: only 1 non-blank lines"):
        read_text(path)
    path.write_text("\n  \n")
    with pytest.raises(UserError, match=r"corpus.txt' is empty"):
        read_text(path)


def test_source_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "docs.txt").write_text("a b\nc d\n")
    config = tmp_path / "cfg.yaml"
    config.write_text(
        "workload: {name: ecom_lm, source: data/docs.txt, partition: iid}\n"
        "clients: {num_clients: 2}\nclients_per_round: 2\n"
    )
    assert load_config(config).workload.source == str(tmp_path / "data" / "docs.txt")
