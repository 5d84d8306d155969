"""Sinks for a run's results: the run directory, Parquet tables, summary and TensorBoard.

Rows are streamed into Parquet row groups as the run goes, so memory stays bounded on long runs.
A run directory is never half-replaced: with ``overwrite`` the old run is moved aside and only
deleted once the new run finished; if the new run fails, the old one is put back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fedray.errors import UserError
from fedray.results.schema import CLIENT_EVENTS_SCHEMA, rounds_schema

ROUNDS_FILE = "rounds.parquet"
CLIENTS_FILE = "client_events.parquet"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
PARTITION_FILE = "partition.parquet"
TB_DIR = "tb"


class TableSink:
    """Appends column batches to one Parquet file with a fixed schema."""

    def __init__(self, path: Path, schema: pa.Schema, rows_per_group: int = 65536):
        self.path, self.schema, self.rows_per_group = path, schema, rows_per_group
        self._writer = pq.ParquetWriter(path, schema)
        self._buffer: list[tuple[int, dict]] = []
        self._buffered = 0

    def append(self, columns: dict) -> None:
        """Buffer a batch of rows given as columns (lists or numpy arrays). A column the batch
        leaves out (a workload metric on a round without evaluation) is null."""
        # Batches are converted to Arrow once per row group: a table per async server step
        # would cost more than the step itself.
        rows = len(next(iter(columns.values())))
        self._buffer.append((rows, columns))
        self._buffered += rows
        if self._buffered >= self.rows_per_group:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        arrays = []
        for f in self.schema:
            values: list = []
            for rows, columns in self._buffer:
                column = columns.get(f.name)
                if column is None:
                    values.extend([None] * rows)
                else:
                    values.extend(column.tolist() if isinstance(column, np.ndarray) else column)
            arrays.append(pa.array(values, type=f.type))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self._buffer, self._buffered = [], 0

    def close(self) -> None:
        self.flush()
        self._writer.close()


class RunDirectory:
    """Owns ``<root>/<name>/`` for the lifetime of a run."""

    def __init__(self, root: Path, name: str, overwrite: bool, metric_names: tuple[str, ...] = ()):
        if not name or "/" in name or name in (".", ".."):
            raise UserError(
                f"run name {name!r} is not a valid folder name; pass e.g. --name prox90"
            )
        self.path = Path(root) / name
        self._replaced: Path | None = None
        if self.path.exists():
            if not overwrite:
                raise UserError(
                    f"run directory {str(self.path)!r} already exists; pass --overwrite or choose another --name"
                )
            self._replaced = self.path.with_name(f".{name}.replaced")
            if self._replaced.exists():
                shutil.rmtree(self._replaced)
            os.replace(self.path, self._replaced)
        try:
            self.path.mkdir(parents=True)
        except OSError as err:
            raise UserError(
                f"cannot create run directory {str(self.path)!r}: {err.strerror}"
            ) from None
        self.rounds = TableSink(
            self.path / ROUNDS_FILE, rounds_schema(metric_names), rows_per_group=1024
        )
        self.clients = TableSink(self.path / CLIENTS_FILE, CLIENT_EVENTS_SCHEMA)

    @property
    def replaces_existing(self) -> bool:
        return self._replaced is not None

    def write_text(self, filename: str, text: str) -> None:
        tmp = self.path / f".{filename}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.path / filename)

    def write_table(self, filename: str, columns: dict) -> None:
        """A whole Parquet table at once (e.g. ``partition.parquet``), written atomically."""
        tmp = self.path / f".{filename}.tmp"
        pq.write_table(pa.Table.from_pydict(columns), tmp)
        os.replace(tmp, self.path / filename)

    def write_summary(self, summary: dict) -> None:
        self.write_text(
            SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True, default=_jsonable) + "\n"
        )

    def close(self, success: bool) -> None:
        self.rounds.close()
        self.clients.close()
        if self._replaced is None:
            return
        if success:
            shutil.rmtree(self._replaced, ignore_errors=True)
        else:
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(self._replaced, self.path)


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)
