"""Availability traces: when each client is online, as a table of intervals.

Layout (CSV or Parquet, one row per online interval)::

    client_id,start_s,end_s[,period_s]
    0,0,3600,86400
    0,7200,9000,86400
    1,100,50000,

``client_id`` numbers clients 0..n-1 (clients beyond n wrap around, like device traces, so a
trace of 500 devices can drive a population of a million); ``start_s`` < ``end_s`` are seconds of
virtual time; ``period_s``, if given, repeats a client's intervals every that many seconds (all of
a client's rows must agree, and its intervals must lie within one period) — FedScale's behaviour
traces are periodic this way. A client with no rows is never online. Overlapping or touching
intervals are merged. Every problem is refused with one line naming the file and the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedray.clients.profiles import is_empty, numeric, read_columns
from fedray.errors import UserError
from fedray.userfiles import MAX_FLOAT, short_repr

COLUMNS = ("client_id", "start_s", "end_s", "period_s")
_REQUIRED = COLUMNS[:3]
_FIX = "set clients.availability.trace to a CSV or Parquet file (see the README for its columns)"


@dataclass(frozen=True)
class AvailabilityTrace:
    """Merged intervals per client: client c's are ``starts[offsets[c]:offsets[c + 1]]``."""

    num_clients: int
    offsets: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    periods: np.ndarray  # per client; inf for none

    def at(self, client_ids, t) -> tuple[np.ndarray, np.ndarray]:
        """(online at t, end of that online interval) per client."""
        ids = np.asarray(client_ids, dtype=np.int64) % self.num_clients
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), ids.shape)
        online = np.zeros(ids.shape, dtype=bool)
        until = np.full(ids.shape, -np.inf)
        for i, (c, when) in enumerate(zip(ids.tolist(), t.tolist(), strict=True)):
            lo, hi = self.offsets[c], self.offsets[c + 1]
            if lo == hi:
                continue
            period = self.periods[c]
            base = np.floor(when / period) * period if np.isfinite(period) else 0.0
            local = when - base
            j = int(np.searchsorted(self.starts[lo:hi], local, side="right")) - 1
            if j >= 0 and local < self.ends[lo + j]:
                online[i] = True
                end = base + self.ends[lo + j]
                # an interval reaching the end of the period continues into the next one
                if np.isfinite(period) and self.ends[lo + j] >= period and self.starts[lo] <= 0:
                    end = base + period + self.ends[lo]
                until[i] = end
        return online, until

    def to_rows(self) -> dict[str, np.ndarray]:
        """The merged intervals as the trace's columns (for writing a trace back)."""
        counts = np.diff(self.offsets)
        ids = np.repeat(np.arange(self.num_clients), counts)
        return {
            "client_id": ids,
            "start_s": self.starts,
            "end_s": self.ends,
            "period_s": np.repeat(self.periods, counts),
        }


def load_availability_trace(path: str | Path) -> AvailabilityTrace:
    """Read and check an availability trace (see the module docstring)."""
    path = Path(path)
    where = f"availability trace {str(path)!r}"
    columns, line_of = read_columns(path, where, _FIX)
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise UserError(
            f"{where} has unknown column(s) {short_repr(unknown)}; accepted: {', '.join(COLUMNS)}"
        )
    missing = [c for c in _REQUIRED if c not in columns]
    if missing:
        raise UserError(f"{where} lacks column(s) {', '.join(missing)}; give {', '.join(COLUMNS)}")
    rows = len(columns["client_id"])
    if rows == 0:
        raise UserError(f"{where} has no rows; add one row per online interval under a header")
    values = {c: numeric(columns[c]) for c in columns}
    raw = columns

    def refuse(column: str, bad: np.ndarray, rule: str) -> None:
        if bad.any():
            row = int(np.argmax(bad))
            shown = raw[column][row]
            problem = (
                f"is empty at {line_of(row)}; fill it or remove the row"
                if is_empty(shown) and column != "period_s"
                else f"has an invalid value {short_repr(str(shown))} at {line_of(row)}; {rule}"
            )
            raise UserError(f"{where}: column {column!r} {problem}")

    with np.errstate(invalid="ignore"):
        ids = values["client_id"]
        refuse(
            "client_id",
            ~np.isfinite(ids) | (ids != np.round(ids)) | (ids < 0) | (ids > 2**31),
            "client_id must be an integer >= 0",
        )
        for column in ("start_s", "end_s"):
            v = values[column]
            refuse(
                column,
                ~np.isfinite(v) | (v < 0) | (v > MAX_FLOAT),
                f"{column} must be a number of seconds >= 0",
            )
        refuse(
            "end_s",
            values["end_s"] <= values["start_s"],
            "an interval must end after it starts (end_s > start_s)",
        )
        periods = values.get("period_s", np.full(rows, np.nan))
        given = ~np.array([is_empty(v) for v in raw.get("period_s", [None] * rows)])
        refuse(
            "period_s",
            given & (~np.isfinite(periods) | (periods <= 0) | (periods > MAX_FLOAT)),
            "period_s must be a number of seconds > 0 (or empty for none)",
        )
        refuse(
            "period_s",
            given & (values["end_s"] > periods),
            "a periodic client's intervals must end within one period (end_s <= period_s)",
        )
    ids = ids.astype(np.int64)
    periods = np.where(given, periods, np.inf)
    n = int(ids.max()) + 1
    client_period = np.full(n, np.nan)
    for row in np.argsort(ids, kind="stable"):
        c = ids[row]
        if np.isnan(client_period[c]):
            client_period[c] = periods[row]
        elif client_period[c] != periods[row]:
            raise UserError(
                f"{where}: client {c} has period_s {short_repr(str(raw.get('period_s')[row]))} "
                f"at {line_of(int(row))} but another of its rows differs; give each client one "
                "period"
            )
    client_period = np.where(np.isnan(client_period), np.inf, client_period)
    order = np.lexsort((values["start_s"], ids))
    starts, ends, owners = [], [], []
    for row in order:  # merge overlapping or touching intervals per client
        c, s, e = int(ids[row]), float(values["start_s"][row]), float(values["end_s"][row])
        if owners and owners[-1] == c and s <= ends[-1]:
            ends[-1] = max(ends[-1], e)
        else:
            owners.append(c)
            starts.append(s)
            ends.append(e)
    offsets = np.searchsorted(np.asarray(owners), np.arange(n + 1), side="left")
    return AvailabilityTrace(
        num_clients=n,
        offsets=offsets.astype(np.int64),
        starts=np.asarray(starts),
        ends=np.asarray(ends),
        periods=client_period,
    )


def write_availability_trace(rows: dict[str, np.ndarray], path: str | Path) -> None:
    """Write trace columns (``client_id``, ``start_s``, ``end_s``, ``period_s``) as CSV or
    Parquet by the file's suffix; an infinite period is written empty."""
    import pandas as pd

    path = Path(path)
    frame = pd.DataFrame({c: rows[c] for c in COLUMNS if c in rows})
    if "period_s" in frame:
        frame["period_s"] = frame["period_s"].where(np.isfinite(frame["period_s"]))
    if path.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
