"""Sinks for a run's results: the run directory, Parquet tables, summary and TensorBoard.

Rows are streamed into Parquet parts as the run goes, so memory stays bounded on long runs and a
crash never leaves a truncated table; a finished run's parts are joined into one file per table.
A run directory is never half-replaced: with ``overwrite`` the old run is moved aside and only
deleted once the new run finished; if the new run fails, the old one is put back.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fedray.errors import UserError
from fedray.results.schema import CLIENT_EVENTS_SCHEMA, rounds_schema
from fedray.userfiles import folder_name_problem, short_repr

ROUNDS_FILE = "rounds.parquet"
CLIENTS_FILE = "client_events.parquet"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
PARTITION_FILE = "partition.parquet"
TB_DIR = "tb"
PARTS_DIR = ".parts"


@functools.cache
def warm_parquet_writer() -> None:
    """Pay pyarrow's one-time cost of a first Parquet write (~180 ms: codecs, writer
    properties) now, during start-up, rather than at the first flush in the middle of the
    rounds (measured: round 11 of a K=100 run took 220 ms instead of 60)."""
    pq.write_table(pa.schema([pa.field("x", pa.int64())]).empty_table(), pa.BufferOutputStream())


class TableSink:
    """Appends column batches to one Parquet table with a fixed schema, written in parts.

    Each flush writes one part file (``<run>/.parts/<table>-00000.parquet``, ...) atomically, so
    a crash never leaves a truncated table: the parts written so far stay readable and a
    checkpoint records how many of them it covers. :meth:`close` joins the parts into the final
    file, again through a temporary file and a rename."""

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        rows_per_group: int = 65536,
        parts_dir: Path | None = None,
        start_part: int = 0,
    ):
        self.path, self.schema, self.rows_per_group = path, schema, rows_per_group
        warm_parquet_writer()
        self.parts_dir = parts_dir or path.parent / PARTS_DIR
        self.parts_dir.mkdir(exist_ok=True)
        self.parts = start_part
        for stale in self._part_paths(start=start_part):  # written after the checkpoint
            stale.unlink()
        self._buffer: list[tuple[int, dict]] = []
        self._buffered = 0

    def _part(self, i: int) -> Path:
        return self.parts_dir / f"{self.path.stem}-{i:05d}.parquet"

    def _part_paths(self, start: int = 0) -> list[Path]:
        found = sorted(self.parts_dir.glob(f"{self.path.stem}-*.parquet"))
        return [p for p in found if int(p.stem.rsplit("-", 1)[1]) >= start]

    def append(self, columns: dict) -> None:
        """Buffer a batch of rows given as columns (lists or numpy arrays). A column the batch
        leaves out (a workload metric on a round without evaluation) is null."""
        # Batches are converted to Arrow once per part: a table per async server step would
        # cost more than the step itself.
        rows = len(next(iter(columns.values())))
        self._buffer.append((rows, columns))
        self._buffered += rows
        if self._buffered >= self.rows_per_group:
            self.flush()

    def flush(self) -> int:
        """Write the buffered rows as the next part; returns the number of parts written."""
        if not self._buffer:
            return self.parts
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
        part = self._part(self.parts)
        temp = part.with_name(f".{part.name}.tmp")
        pq.write_table(pa.Table.from_arrays(arrays, schema=self.schema), temp)
        os.replace(temp, part)
        self.parts += 1
        self._buffer, self._buffered = [], 0
        return self.parts

    def close(self, keep_parts: bool = False) -> None:
        """Flush, then join the parts into the table's file (atomically) and delete them —
        unless ``keep_parts`` (an unfinished run that a checkpoint may resume)."""
        self.flush()
        temp = self.path.with_name(f".{self.path.name}.tmp")
        with pq.ParquetWriter(temp, self.schema) as writer:
            for i in range(self.parts):
                writer.write_table(pq.read_table(self._part(i), schema=self.schema))
        os.replace(temp, self.path)
        if not keep_parts:
            for i in range(self.parts):
                self._part(i).unlink()


class RunDirectory:
    """Owns ``<root>/<name>/`` for the lifetime of a run."""

    def __init__(
        self,
        root: Path,
        name: str,
        overwrite: bool,
        metric_names: tuple[str, ...] = (),
        resume_parts: dict | None = None,
    ):
        # Defence in depth: OutputConfig already refuses such names, but a RunDirectory can be
        # made without one, and a name with '/' or '..' would create (or replace) a folder
        # outside the results root.
        problem = folder_name_problem(name)
        if problem is not None:
            raise UserError(
                f"run name {short_repr(name)} is not a plain folder name ({problem}); pass e.g. "
                "--name prox90"
            )
        self.path = Path(root) / name
        self._replaced: Path | None = None
        if resume_parts is not None:  # continue a checkpointed run in place
            self._open_tables(metric_names, resume_parts)
            return
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
        self._open_tables(metric_names, {})

    def _open_tables(self, metric_names: tuple[str, ...], parts: dict) -> None:
        self.rounds = TableSink(
            self.path / ROUNDS_FILE,
            rounds_schema(metric_names),
            rows_per_group=1024,
            start_part=int(parts.get("rounds", 0)),
        )
        self.clients = TableSink(
            self.path / CLIENTS_FILE, CLIENT_EVENTS_SCHEMA, start_part=int(parts.get("clients", 0))
        )

    def checkpoint(self) -> dict:
        """Flush both tables; the part counts a checkpoint records."""
        return {"rounds": self.rounds.flush(), "clients": self.clients.flush()}

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

    def read_summary(self) -> dict:
        path = self.path / SUMMARY_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            raise UserError(
                f"{str(path)!r} is missing or not valid JSON; the run folder is damaged"
            ) from None

    def write_summary(self, summary: dict) -> None:
        self.write_text(
            SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True, default=_jsonable) + "\n"
        )

    def close(self, success: bool) -> None:
        """Finish the tables; an unfinished run also keeps its parts (a checkpoint may resume
        it)."""
        self.rounds.close(keep_parts=not success)
        self.clients.close(keep_parts=not success)
        remove_empty(self.path / PARTS_DIR)
        if self._replaced is None:
            return
        if success:
            shutil.rmtree(self._replaced, ignore_errors=True)
        else:
            shutil.rmtree(self.path, ignore_errors=True)
            os.replace(self._replaced, self.path)


def remove_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)
