"""Hostile user files: whatever bytes a config, trace, dataset or checkpoint holds, fedray either
reads it or refuses it with one line that names the file — never a traceback (hypothesis fuzzes
each loader), and `fedray` exits with 2."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedray.clients.profiles import load_trace
from fedray.config import Config, config_from_dict, load_config
from fedray.errors import UserError
from fedray.sim import checkpoint
from fedray.workloads.ecommerce import loaders

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(
    max_examples=int(os.environ.get("FEDRAY_FUZZ_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def refused_or_read(load, path: Path):
    """``load(path)``; a refusal must be a UserError of one line naming the file."""
    try:
        return load(path)
    except UserError as err:
        message = str(err)
        assert "\n" not in message, message
        assert path.name in message, message
        return None


def write(data: bytes, suffix: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fedray-fuzz-"))
    path = folder / f"input{suffix}"
    path.write_bytes(data)
    return path


# A few shapes a config can take: random bytes, random YAML-ish text, and structured mappings
# of real keys with values of the wrong type or size.
KEYS = ["rounds", "seed", "clients_per_round", "mode", "workload", "clients", "strategy",
        "client", "execution", "output", "privacy", "robustness", "eval_every"]  # fmt: skip
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
MAPPINGS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4)


@FUZZ
@given(data=st.binary(max_size=400))
def test_config_files_of_random_bytes(data):
    refused_or_read(load_config, write(data, ".yaml"))


@FUZZ
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_config_files_of_random_text(text):
    refused_or_read(load_config, write(text.encode(), ".yaml"))


@FUZZ
@given(mapping=MAPPINGS)
def test_config_mappings_with_wrong_types_and_sizes(mapping):
    try:
        assert isinstance(config_from_dict(mapping), Config)
    except UserError as err:
        assert "\n" not in str(err)


CSV_CELLS = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=",;\"'\n abc0123456789.-e", max_size=6),
)
HEADERS = ["client_id", "speed", "down_mbps", "up_mbps", "latency_ms", "dropout", "availability",
           "bogus"]  # fmt: skip


@FUZZ
@given(
    header=st.lists(st.sampled_from(HEADERS), min_size=0, max_size=4),
    rows=st.lists(st.lists(CSV_CELLS, min_size=0, max_size=5), max_size=5),
)
def test_trace_csv_files(header, rows):
    text = "\n".join([",".join(header), *(",".join(r) for r in rows)])
    refused_or_read(load_trace, write(text.encode(), ".csv"))


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".parquet"]))
def test_trace_files_of_random_bytes(data, suffix):
    refused_or_read(load_trace, write(data, suffix))


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
        | st.text(alphabet='\t,\n abc012-.eé"', max_size=200).map(str.encode)
    )
    def fuzz(data):
        refused_or_read(load, write(data, suffix))

    fuzz()


@FUZZ
@given(data=st.binary(max_size=200))
def test_checkpoints_of_random_bytes_are_refused(data):
    run = Path(tempfile.mkdtemp(prefix="fedray-fuzz-run-"))
    (run / checkpoint.CHECKPOINT_DIR).mkdir()
    (run / checkpoint.CHECKPOINT_DIR / checkpoint.STATE_FILE).write_bytes(data)
    with pytest.raises(UserError) as caught:
        checkpoint.load(run)
    assert "\n" not in str(caught.value) and checkpoint.STATE_FILE in str(caught.value)


@pytest.mark.parametrize(
    "content, args, message",
    [
        (b"", [], "is empty"),
        (b"# nothing but a comment\n", [], "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", [], "is a binary file"),
        ("rounds: 5\n".encode("utf-16"), [], "is UTF-16 text"),
        (b"rounds: 5\nrounds: 6\n", [], "key 'rounds' appears twice"),
        (b"rounds: 100000000000000000000\n", [], "rounds = 100000000000000000000"),
        (b"client:\n  lr: .inf\n", [], "client.lr = inf"),
        (b"rounds: 2\n", ["--name", "../escape"], "must be a plain folder name"),
        (b"rounds: 2\n", ["--name", "/tmp/abs"], "must be a plain folder name"),
        (b"rounds: 2\n", ["--set", "output.name=a/b"], "must be a plain folder name"),
    ],
)
def test_the_cli_refuses_hostile_files_in_one_line(tmp_path, content, args, message):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content)
    cmd = [sys.executable, "-m", "fedray.cli", "run", str(path), "--out", str(tmp_path), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not any(tmp_path.glob("*/rounds.parquet"))  # nothing ran
