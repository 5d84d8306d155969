"""Config validation: every bad input gets a one-line message naming the key, and exit code 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

from fedray.cli import main
from fedray.config import config_from_dict, dump_config, load_config
from fedray.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


def test_shipped_configs_validate():
    from pathlib import Path

    configs = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml"))
    assert configs, "configs/ should ship example configs"
    for path in configs:
        load_config(path)


def test_overrides_are_dotted_and_typed(tmp_path):
    cfg = load_config(
        write(tmp_path, "rounds: 3\n"),
        overrides=[
            "clients.num_clients=1000",
            "rounds=50",
            "strategy.name=fedprox",
            "strategy.mu=0.1",
        ],
    )
    assert cfg.clients.num_clients == 1000 and cfg.rounds == 50
    assert cfg.strategy.name == "fedprox" and cfg.strategy.mu == pytest.approx(0.1)


def test_number_in_profile_means_constant():
    cfg = config_from_dict({"clients": {"profile": {"speed": 50}}})
    assert cfg.clients.profile.speed.dist == "constant" and cfg.clients.profile.speed.value == 50


@pytest.mark.parametrize(
    "yaml_text, overrides, expected",
    [
        ("rounds: 3\nbogus: 1\n", [], "unknown key 'bogus'"),
        (
            "clients:\n  num_clientz: 5\n",
            [],
            "unknown key 'clients.num_clientz'; accepted keys here: num_clients, profile",
        ),
        ("rounds: many\n", [], "rounds = 'many'"),
        ("rounds: 0\n", [], "rounds = 0: Input should be greater than or equal to 1"),
        (
            "strategy:\n  name: fedsgd\n",
            [],
            "strategy.name = 'fedsgd': Input should be 'fedavg', 'fedprox', 'fedavgm'",
        ),
        (
            "clients_per_round: 50\nclients:\n  num_clients: 10\n",
            [],
            "clients_per_round=50 exceeds clients.num_clients=10",
        ),
        ("rounds: 3\n", ["clients.profile.dropout=1.5"], "dropout is a probability"),
        ("rounds: 3\n", ["clients.profile.speed={dist: gamma}"], "unknown dist 'gamma'"),
        ("rounds: 3\n", ["rounds"], "needs the form key=value"),
        ("rounds: 3\n", ["rounds.x=1"], "rounds is a value, not a section"),
        ("rounds: [1, 2\n", [], "is not valid YAML at line"),
        ("- 1\n- 2\n", [], "must be a mapping of keys"),
        (
            "strategy:\n  mu: 0.1\n",
            [],
            "strategy.mu is not an option of fedavg; it belongs to fedprox",
        ),
    ],
)
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, yaml_text, overrides, expected):
    path = write(tmp_path, yaml_text)
    args = ["validate", str(path)] + [a for o in overrides for a in ("--set", o)]
    code, err = run_cli(args, capsys)
    assert code == 2
    assert err.count("\n") == 1, err  # one line
    assert err.startswith("fedray: error: ")
    assert expected in err, err


def test_missing_file(capsys, tmp_path):
    code, err = run_cli(["validate", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "not found" in err


def test_bad_cli_argument_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run"])
    assert exc.value.code == 2


def test_config_error_is_raised_in_python():
    with pytest.raises(ConfigError, match="execution.num_workers = 0"):
        config_from_dict({"execution": {"num_workers": 0}})


def test_no_traceback_from_the_real_executable(tmp_path):
    path = write(tmp_path, "rounds: -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fedray.cli", "run", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"fedray: error: invalid config {str(path)!r}: rounds = -1: Input should be greater than "
        "or equal to 1"
    ]


@pytest.mark.parametrize(
    "address, expected",
    [
        ("127.0.0.1:1", "no Ray cluster answers at '127.0.0.1:1'"),
        ("nonsense", "must look like HOST:PORT"),
    ],
)
def test_unreachable_address_fails_fast_and_leaves_nothing(tmp_path, address, expected):
    # A fresh process: in this one Ray may already be up (and fedray.run then reuses it).
    path = write(tmp_path, "rounds: 1\n")
    cmd = [sys.executable, "-m", "fedray.cli", "run", str(path), "--out", str(tmp_path / "res")]
    proc = subprocess.run(cmd + ["--address", address], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and expected in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert not (tmp_path / "res").exists()


def test_ecom_rec_refuses_world_keys_it_does_not_use():
    with pytest.raises(ConfigError, match="world.num_users has no effect"):
        config_from_dict({"workload": {"name": "ecom_rec", "world": {"num_users": 5}}})
    # the catalogue keys are its own
    cfg = config_from_dict({"workload": {"name": "ecom_rec", "world": {"num_products": 300}}})
    assert cfg.workload.world.num_products == 300
    # the dumped config (a run's config.yaml, `fedray validate`) lists them at their defaults
    # and loads back: resuming an ecom_rec run reads it
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


@pytest.mark.parametrize(
    ("settings", "vectorized", "expected"),
    [
        ({"clients_per_round": 1000}, False, 10),  # client by client: 10 per actor call
        ({"clients_per_round": 100}, True, 10),
        ({"clients_per_round": 300}, True, 30),  # batched blocks: a tenth of the cohort
        ({"clients_per_round": 5000}, True, 100),  # ... at most 100
        ({"clients_per_round": 200, "over_selection": 1.5}, True, 30),  # of the selected cohort
        ({"clients_per_round": 1000, "execution": {"clients_per_task": 7}}, True, 7),  # as set
        ({"mode": "async", "clients_per_round": 1000}, True, 10),  # async dispatch blocks
    ],
)
def test_clients_per_task_is_automatic_unless_set(settings, vectorized, expected):
    cfg = config_from_dict({"clients": {"num_clients": 10_000}, **settings})

    assert cfg.group_size(vectorized) == expected
