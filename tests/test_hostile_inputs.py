"""Hostile user files: whatever bytes a config, trace, dataset or checkpoint holds, fedray either
reads it or refuses it with one line that names the file — never a traceback (hypothesis fuzzes
each loader, from random bytes up to schema-shaped configs and typed Parquet tables), and the
`fedray` command exits with 2."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import types
import typing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from fedray import cli
from fedray.clients.profiles import PROFILE_FIELDS, load_trace
from fedray.config import Config, ConfigError, config_from_dict, dump_config, load_config
from fedray.errors import UserError
from fedray.results.writer import RunDirectory
from fedray.sim import checkpoint
from fedray.userfiles import folder_name_problem
from fedray.workloads import make_workload
from fedray.workloads.ecommerce import loaders

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(
    max_examples=int(os.environ.get("FEDRAY_FUZZ_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def one_line_naming(err: BaseException, *names: str) -> None:
    """``err`` is one line that names what was wrong (the file, or one of ``names``)."""
    message = str(err)
    assert "\n" not in message and "Traceback" not in message, message
    assert any(name in message for name in names), message
    assert len(message) < 600, message  # a value is shown cut short, never in full


def refused_or_read(load, path: Path):
    """``load(path)``; a refusal must be a UserError of one line naming the file."""
    try:
        return load(path)
    except UserError as err:
        one_line_naming(err, path.name)
        return None


def write(data: bytes, suffix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fedray-fuzz-"))
    path = folder / f"input{suffix}"
    path.write_bytes(data)
    return path


def write_table(table: pa.Table, suffix: str = ".parquet") -> Path:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return write(buffer.getvalue(), suffix)


# Junk of every YAML type, including the numbers that overflow: 1e308, 10**30, inf, nan.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([0, 1, -1, 2**63, 10**30, 1e308, -1e308, 1e-320])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["inf", "nan", "-inf", "1e400", "../x", "/abs", ".", "..", "a\x00b", ""])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


# ----------------------------------------------------------------------------- config files


@FUZZ
@given(data=st.binary(max_size=400))
def test_config_files_of_random_bytes(data):
    refused_or_read(load_config, write(data, ".yaml"))


@FUZZ
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_config_files_of_random_text(text):
    refused_or_read(load_config, write(text.encode(), ".yaml"))


# Pieces of YAML syntax: anchors, aliases, merges, tags, flow collections, block scalars, dates,
# numbers too long or too large, tabs and comments — put together at random.
YAML_PIECES = ["rounds", "client", "lr", "output", "name", "strategy", "workload", ":", ": ",
               "\n", "\n  ", "\n    ", "- ", "[", "]", "{", "}", ", ", "&a ", "*a", "<<: ",
               "!!binary ", "!!python/object:os.system ", "!!set ", "!!float ", "? ", "|", ">",
               "'", '"', "# c", "\t", "~", "1e400", ".inf", ".nan", "2024-13-45", "2024-05-01",
               "0x1F", "0o17", "1_000", "9" * 5000, "-1", "3", "0.5", "---\n", "...\n", "\x07",
               "é", "\ufeff", "../x"]  # fmt: skip


@FUZZ
@given(pieces=st.lists(st.sampled_from(YAML_PIECES), max_size=30))
def test_config_files_of_yaml_syntax(pieces):
    refused_or_read(load_config, write("".join(pieces).encode(), ".yaml"))


def _schema(annotation) -> st.SearchStrategy:
    """Values for a config field: mostly of its own type (so validation reaches the deeper
    checks: codec options, tiers, partitions), sometimes junk of any type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        own = st.booleans()
    elif annotation is int:
        own = st.integers(-5, 200) | st.sampled_from([2**63, 10**30, -(10**30)])
    elif annotation is float:
        own = st.floats(-2, 200) | st.sampled_from([1e308, 1e101, -1e308, 0.0, 1e-320])
    elif annotation is str:
        own = st.text(max_size=8) | st.sampled_from(["generated", "../x", "a/b", ".hidden"])
    elif annotation is Path:
        own = st.sampled_from(["results", "/tmp", "", "a\x00b", "../up"])
    elif annotation is type(None):
        own = st.none()
    elif origin is typing.Literal:
        own = st.sampled_from(args)
    elif origin in (typing.Union, types.UnionType):
        own = st.one_of([_schema(a) for a in args])
    elif origin is list:
        own = st.lists(_schema(args[0]), max_size=3)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return st.deferred(lambda: _shaped(annotation))
    else:
        own = VALUES
    return own | VALUES if origin is not typing.Literal else own | SCALARS


def _shaped(model: type[BaseModel]) -> st.SearchStrategy:
    fields = {name: _schema(f.annotation) for name, f in model.model_fields.items()}
    return st.fixed_dictionaries({}, optional=fields) | VALUES


CONFIGS = st.fixed_dictionaries(
    {}, optional={name: _schema(f.annotation) for name, f in Config.model_fields.items()}
)


def loads_or_refuses(data, overrides=()):
    try:
        cfg = config_from_dict(data, list(overrides))
    except ConfigError as err:
        one_line_naming(err, "invalid config", "override")
        return None
    assert isinstance(cfg, Config)
    # what `fedray validate` prints loads back to the same config
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again.model_dump() == cfg.model_dump()
    return cfg


@FUZZ
@given(mapping=CONFIGS)
def test_schema_shaped_configs_load_or_are_refused(mapping):
    loads_or_refuses(mapping)


@FUZZ
@given(data=VALUES)
def test_config_from_dict_of_anything(data):
    loads_or_refuses(data)


DOTTED = ["rounds", "seed", "output.name", "output.root", "clients.num_clients", "client.lr",
          "compression.uplink", "compression.uplink.k", "clients.profile.speed", "workload",
          "workload.name", "strategy.name", "strategy.mu", "rounds.x", "a..b", ""]  # fmt: skip


@FUZZ
@given(
    overrides=st.lists(
        st.builds(
            "{}={}".format,
            st.sampled_from(DOTTED),
            st.sampled_from(YAML_PIECES) | st.text(max_size=10),
        )
        | st.text(max_size=12),
        max_size=3,
    )
)
def test_overrides_of_anything(overrides):
    loads_or_refuses({}, overrides)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"# only a comment\n", "is empty (only comments)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "is a binary file"),
        ("rounds: 5\n".encode("utf-16"), "is UTF-16 text"),
        ("rounds: 5\n".encode("utf-16-le"), "is UTF-16 text (without a byte-order mark)"),
        ("rounds: 5\n".encode("utf-32"), "is UTF-32 text"),
        ("rounds: 5 # café\n".encode("latin-1"), "is not UTF-8 text (byte 15 is 0xe9"),
        (b"rounds: 5\nrounds: 6\n", "key 'rounds' appears twice"),
        (b"? [1, 2]\n: 3\n", "found unhashable key"),
        (b"rounds: 1" + b"0" * 5000 + b"\n", "a number has over 4300 digits"),
        (b"rounds: 2024-13-45\n", "month must be in 1..12"),
        (b"rounds: \x07\n", "character 0x07 at position 8 is not allowed"),
        (b"1: 2\n", "key 1 in the top level is not a name"),
        (b"client: [1, 2]\n", "client = [1, 2]: Input should be a valid dictionary"),
        (b"rounds: five\n", "rounds = 'five'"),
        (b"client:\n  lr: 1e308\n", "client.lr = 1e+308: too large"),
        (b"compression:\n  uplink: {name: topk, k: 1000000000000000000000000}\n", "too large"),
        (b"clients:\n  num_clients: -3\n", "clients.num_clients = -3"),
        (b'output:\n  root: "a\\0b"\n', "output.root = 'a\\x00b': contains a control"),
    ],
)
def test_hostile_config_files_are_refused_with_one_line(tmp_path, content, message):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    one_line_naming(caught.value, "cfg.yaml")
    assert message in str(caught.value)


def test_yaml_merge_keys_may_be_overridden_but_not_repeated(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("client: {<<: {lr: 0.1, batch_size: 4}, lr: 0.2}\n")
    assert (load_config(path).client.lr, load_config(path).client.batch_size) == (0.2, 4)
    path.write_text("client: {<<: {lr: 0.1}, lr: 0.2, lr: 0.3}\n")
    with pytest.raises(ConfigError, match="key 'lr' appears twice"):
        load_config(path)


# ----------------------------------------------------------------------------- run names


@pytest.mark.parametrize(
    "name",
    [
        "..",
        ".",
        "../x",
        "..x",
        "a/b",
        "a\\b",
        "/abs",
        ".hidden",
        "a\x00b",
        "tab\there",
        "",
        " ",
        "\ud800",
        "x" * 201,
    ],  # fmt: skip
)
def test_run_names_that_leave_the_results_root_are_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="output.name .*must be a plain folder name inside"):
        config_from_dict({"output": {"name": name}})
    with pytest.raises(ConfigError, match="must be a plain folder name"):
        config_from_dict({}, [("output.name", name)])
    # RunDirectory checks again, for callers that build one without a Config
    with pytest.raises(UserError, match="is not a plain folder name"):
        RunDirectory(tmp_path, name, overwrite=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("root", ["..", "/tmp/somewhere", "../results", "~/x", "a b"])
def test_the_results_root_may_be_any_path(root):
    assert config_from_dict({"output": {"root": root, "name": "run-1"}}).output.root == Path(root)


@FUZZ
@given(name=st.text(max_size=20))
def test_an_accepted_run_name_is_one_folder_inside_the_root(name):
    if folder_name_problem(name) is None:
        root = Path("/results")
        assert (root / name).parent == root and (root / name).name == name


def test_a_config_file_of_any_name_gives_a_default_run_name(tmp_path):
    path = tmp_path / "odd\nname\\.yaml"
    path.write_text("rounds: 2\n")
    assert folder_name_problem(f"20260101-000000-{load_config(path).source_name}") is None


# ----------------------------------------------------------------------------- traces


CSV_CELLS = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "1e308", "9" * 400, "0", "1", "0.5", "-0", '"', "x"]),
    st.text(alphabet=",;\"'\n abc0123456789.-e", max_size=6),
)
HEADERS = [*PROFILE_FIELDS, "client_id", "bogus", ""]


@FUZZ
@given(
    header=st.lists(st.sampled_from(HEADERS), min_size=0, max_size=4),
    rows=st.lists(st.lists(CSV_CELLS, min_size=0, max_size=5), max_size=5),
)
def test_trace_csv_files(header, rows):
    text = "\n".join([",".join(header), *(",".join(r) for r in rows)])
    trace = refused_or_read(load_trace, write(text.encode(), ".csv"))
    if trace is not None:  # what loads is usable: finite, in range, one value per row
        assert len({len(v) for v in trace.values()}) == 1
        assert all(np.isfinite(v).all() for v in trace.values())


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".parquet", ".json"]))
def test_trace_files_of_random_bytes(data, suffix):
    refused_or_read(load_trace, write(data, suffix))


@st.composite
def typed_tables(draw, names: list[str]) -> pa.Table:
    """A Parquet-able table whose columns have any Arrow type, with nulls, NaN, inf and
    extreme values."""
    n = draw(st.integers(0, 4))
    rows = st.lists

    def column():
        return draw(
            st.one_of(
                rows(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n).map(pa.array),
                rows(st.floats() | st.none(), min_size=n, max_size=n).map(
                    lambda v: pa.array(v, pa.float64())
                ),
                rows(st.text(max_size=4) | st.none(), min_size=n, max_size=n).map(
                    lambda v: pa.array(v, pa.string())
                ),
                rows(st.booleans(), min_size=n, max_size=n).map(pa.array),
                rows(st.lists(st.integers(0, 3), max_size=2), min_size=n, max_size=n).map(pa.array),
                rows(st.integers(0, 2**63 - 1), min_size=n, max_size=n).map(
                    lambda v: pa.array(v, pa.uint64())
                ),
                rows(st.integers(-(2**31), 2**31 - 1), min_size=n, max_size=n).map(
                    lambda v: pa.array(v, pa.date32())
                ),
                rows(st.integers(-(2**62), 2**62), min_size=n, max_size=n).map(
                    lambda v: pa.array(v, pa.timestamp("ns"))
                ),
                rows(st.binary(max_size=3), min_size=n, max_size=n).map(pa.array),
                rows(st.none(), min_size=n, max_size=n).map(lambda v: pa.array(v, pa.null())),
            )
        )

    chosen = draw(st.lists(st.sampled_from(names), max_size=4))
    return pa.Table.from_arrays([column() for _ in chosen], names=chosen)


@FUZZ
@given(table=typed_tables(HEADERS))
def test_trace_parquet_tables_of_any_type(table):
    refused_or_read(load_trace, write_table(table))


def _valid_parquet(columns: dict) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


TRACE_PARQUET = _valid_parquet({"client_id": np.arange(20), "speed": np.linspace(1, 9, 20)})
INTERACTIONS_PARQUET = _valid_parquet(
    {"user_id": np.arange(20) % 4, "item_id": np.arange(20), "timestamp": np.arange(20.0)}
)


def damaged(original: bytes):
    """A valid file with a few bytes changed, or cut short: what a bad disk or copy leaves."""
    edits = st.lists(
        st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), min_size=1, max_size=4
    )

    def apply(args):
        changes, cut = args
        data = bytearray(original)
        for at, byte in changes:
            data[at] = byte
        return bytes(data[:cut])

    return st.tuples(edits, st.integers(0, len(original))).map(apply)


@FUZZ
@given(data=damaged(TRACE_PARQUET))
def test_damaged_trace_parquet_files(data):
    refused_or_read(load_trace, write(data, ".parquet"))


# ----------------------------------------------------------------------------- data files

DATA_LOADERS = {
    "labelled_csv": (loaders.read_labelled_csv, ".csv"),
    "conll": (loaders.read_conll, ".conll"),
    "text": (loaders.read_text, ".txt"),
    "interactions_csv": (loaders.read_interactions, ".csv"),
    "interactions_parquet": (loaders.read_interactions, ".parquet"),
    "triples": (loaders.read_triples, ".tsv"),
}


@pytest.mark.parametrize("name", list(DATA_LOADERS))
def test_data_loaders_on_random_bytes_and_text(name):
    load, suffix = DATA_LOADERS[name]

    @FUZZ
    @given(
        data=st.binary(max_size=300)
        | st.text(alphabet='\t,\n abc012-.eé"#', max_size=200).map(str.encode)
    )
    def fuzz(data):
        refused_or_read(load, write(data, suffix))

    fuzz()


ID_CELLS = st.one_of(
    st.integers(-3, 5).map(str),
    st.sampled_from(["", " ", "05", "5", "1_0", "10", "٣", "9" * 5000, "a", "a,b", '"q"']),
)
TIME_CELLS = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "2024-05-01",
            "2024-13-45",
            "0001-01-01T00:00:00+01:00",
            "9" * 400,
            "9999-12-31T23:59:59-01:00",
            "yesterday",
            "",
            "1e308",
        ]
    ),  # fmt: skip
)


@FUZZ
@given(
    header=st.permutations(["user_id", "item_id", "timestamp", "extra"]).map(",".join)
    | st.sampled_from(["user_id,user_id,item_id,timestamp", "USER_ID,Item_Id,timestamp", ""]),
    rows=st.lists(st.tuples(ID_CELLS, ID_CELLS, TIME_CELLS, ID_CELLS), max_size=8),
)
def test_interaction_csv_files(header, rows):
    text = "\n".join([header, *(",".join(r) for r in rows)])
    table = refused_or_read(loaders.read_interactions, write(text.encode(), ".csv"))
    if table is not None:
        assert np.isfinite(table.timestamp).all() and len(table.user) == len(table.item)


@FUZZ
@given(table=typed_tables(["user_id", "item_id", "timestamp", "USER_ID", "other"]))
def test_interaction_parquet_tables_of_any_type(table):
    refused_or_read(loaders.read_interactions, write_table(table))


@FUZZ
@given(data=damaged(INTERACTIONS_PARQUET))
def test_damaged_interaction_parquet_files(data):
    refused_or_read(loaders.read_interactions, write(data, ".parquet"))


def test_integer_ids_are_distinct_only_as_written(tmp_path):
    # '05' and '5' are two users, not one: ids are numbers only if written as numbers are
    path = tmp_path / "inter.csv"
    path.write_text("user_id,item_id,timestamp\n5,1,1\n05,1,2\n1_0,2,3\n10,2,4\n")
    assert loaders.read_interactions(path).num_users == 4
    path.write_text("user_id,item_id,timestamp\n10,1,1\n9,1,2\n")
    assert loaders.read_interactions(path).user_names.tolist() == [9, 10]  # numeric order


TRIPLE_FIELDS = st.sampled_from(["a", "b", "rel", "", " ", "head", "relation", "tail", "client",
                                 "0", "1", "00", "²", "#x"])  # fmt: skip


@FUZZ
@given(
    lines=st.lists(st.lists(TRIPLE_FIELDS, min_size=1, max_size=5).map("\t".join), max_size=8),
    num_clients=st.integers(1, 3),
    scheme=st.sampled_from(["natural", "iid"]),
)
def test_triple_files_through_the_kg_workload(lines, num_clients, scheme):
    """Reading the file and turning its client column into clients (kg.py) either works or is
    refused in one line naming the file."""
    path = write("\n".join(lines).encode(), ".tsv")
    cfg = config_from_dict(
        {
            "workload": {"name": "ecom_kg", "source": str(path), "partition": scheme},
            "clients": {"num_clients": num_clients},
            "clients_per_round": 1,
        }
    )
    refused_or_read(lambda p: make_workload(cfg.workload, 0), path)


@FUZZ
@given(
    rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6), st.integers(0, 5)), max_size=25),
    num_clients=st.integers(1, 4),
)
def test_interaction_files_through_the_rec_workload(rows, num_clients):
    """rec_data.FileUsers on whatever users and items a file holds: works or one line."""
    text = "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows)
    path = write(text.encode(), ".csv")
    cfg = config_from_dict(
        {
            "workload": {"name": "ecom_rec", "source": str(path), "eval_negatives": 2},
            "clients": {"num_clients": num_clients},
            "clients_per_round": 1,
        }
    )
    workload = refused_or_read(lambda p: make_workload(cfg.workload, 0), path)
    if workload is not None:
        assert (workload.num_train_samples(np.arange(num_clients)) > 0).all()


# ----------------------------------------------------------------------------- checkpoints


@FUZZ
@given(data=st.binary(max_size=200))
def test_checkpoints_of_random_bytes_are_refused(data):
    run = Path(tempfile.mkdtemp(prefix="fedray-fuzz-run-"))
    (run / checkpoint.CHECKPOINT_DIR).mkdir()
    (run / checkpoint.CHECKPOINT_DIR / checkpoint.STATE_FILE).write_bytes(data)
    with pytest.raises(UserError) as caught:
        checkpoint.load(run)
    assert "\n" not in str(caught.value) and checkpoint.STATE_FILE in str(caught.value)


# ----------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    "command, content, args, message",
    [
        ("run", b"", [], "is empty"),
        ("validate", b"# nothing but a comment\n", [], "is empty (only comments)"),
        ("run", b"\x89PNG\r\n\x1a\n\x00\x00", [], "is a binary file"),
        ("validate", "rounds: 5\n".encode("utf-16"), [], "is UTF-16 text"),
        ("run", "seed: 1 # é\n".encode("latin-1"), [], "is not UTF-8 text"),
        ("run", b"rounds: 5\nrounds: 6\n", [], "key 'rounds' appears twice"),
        ("run", b"rounds: 100000000000000000000\n", [], "rounds = 100000000000000000000"),
        ("validate", b"client:\n  lr: .inf\n", [], "client.lr = inf"),
        ("run", b"clients: [1, 2]\n", [], "clients = [1, 2]"),
        ("run", b"rounds: 2\n", ["--name", "../escape"], "must be a plain folder name"),
        ("run", b"rounds: 2\n", ["--name", ".."], "must be a plain folder name"),
        ("run", b"rounds: 2\n", ["--name", "/tmp/abs"], "must be a plain folder name"),
        ("run", b"rounds: 2\n", ["--name", "a\x01b"], "contains a control character"),
        ("validate", b"rounds: 2\n", ["--set", "output.name=a\\b"], "must be a plain folder"),
        ("run", b"clients:\n  profile:\n    trace: t.csv\n", [], "trace file"),
    ],
)
def test_the_cli_refuses_hostile_input_in_one_line(
    tmp_path, capsys, command, content, args, message
):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content)
    (tmp_path / "t.csv").write_bytes(b"speed\n1,2\n")  # more fields than the header
    code = cli.main([command, str(path), *(["--out", str(tmp_path)] if command == "run" else [])]
                    + args)  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not any(tmp_path.glob("*/rounds.parquet"))  # nothing ran


@pytest.mark.parametrize(
    "kind, content, message",
    [
        ("study", b"", "study file"),
        ("study", b"name: ../up\nbase: x.yaml\nvariants: {a: {}}\n", "must be a plain folder"),
        ("sweep", b"\x00\x01", "is a binary file"),
        ("sweep", b"name: a\\b\nbase: x.yaml\ngrid: {seed: [1]}\n", "must be a plain folder"),
    ],
)
def test_study_and_sweep_files_are_refused_in_one_line(tmp_path, capsys, kind, content, message):
    path = tmp_path / f"{kind}.yaml"
    path.write_bytes(content)
    assert cli.main([kind, str(path), "--out", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and f"{kind}.yaml" in lines[0]


def test_the_real_executable_prints_no_traceback(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"? [1]\n: 2\n")  # once a TypeError out of the YAML loader
    for args in (["run", str(path)], ["validate", str(path), "--set", "rounds=1" + "0" * 5000]):
        cmd = [sys.executable, "-m", "fedray.cli", *args]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
