"""Where a workload's :class:`~fedray.workloads.base.ParameterLayout` puts things in the flat
parameter vector, and the wire format of an upload under it.

The engine works on one flat float32 vector per model (parameters in ``named_parameters`` order).
A layout splits its coordinates three ways:

* **private** coordinates (a user embedding, local relation embeddings) — loaded from the
  client's state before training, stored back after it, never uploaded;
* **row-table** coordinates — the rows ``[rows, width]`` of embedding tables that share one row
  id; a client uploads only its rows;
* **shared** coordinates — everything else, dense and uploaded whole.

An upload is the *compact* vector ``[table₁ rows…, table₂ rows…, shared…]`` (each table's rows
row-major, in the client's sorted row order) through the uplink codec, whose segments are
``(r·w₁, r·w₂, …, shared tensor sizes…)``. With row tables it is preceded by the row ids::

    uint32 r (little-endian) | r × uint32 row id | codec payload of the compact vector

so the byte count charged is the real length of the ids plus the values. A dense layout (no
private parameters, no tables) reduces to the plain codec payload of the whole vector. With
``download_rows`` a client's download has the same form, through the downlink codec.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

ROW_COUNT_BYTES = 4
ROW_ID_BYTES = 4


@dataclass(frozen=True)
class Table:
    offset: int  # first coordinate of the table in the flat vector
    width: int  # values per row


@dataclass(frozen=True)
class FlatLayout:
    size: int  # length of the flat vector
    private_index: np.ndarray  # int64 coordinates of the private parameters, model order
    shared_index: np.ndarray  # int64 coordinates of the dense uploaded parameters
    shared_segments: tuple[int, ...]  # their tensor sizes, model order
    tables: tuple[Table, ...]
    num_rows: int  # rows of every table (0 without tables)
    download_rows: bool = False  # a client downloads only its rows (FedE), not the whole model

    @classmethod
    def of(cls, model, layout) -> FlatLayout:
        """The flat layout of ``model``'s parameters under a ``ParameterLayout``; raises
        ``ValueError`` naming a parameter that does not exist or cannot be a row table."""
        params = dict(model.named_parameters())
        for name in (*layout.private, *layout.row_tables):
            if name not in params:
                raise ValueError(
                    f"parameter layout names {name!r}, which is not one of the model's "
                    f"parameters ({', '.join(params)})"
                )
        both = set(layout.private) & set(layout.row_tables)
        if both:
            raise ValueError(f"{sorted(both)} cannot be both private and a row table")
        offsets, offset = {}, 0
        for name, p in params.items():
            offsets[name] = (offset, p.numel())
            offset += p.numel()
        tables, rows = [], set()
        for name in layout.row_tables:
            shape = tuple(params[name].shape)
            if len(shape) not in (1, 2):
                raise ValueError(f"row table {name!r} must be [rows] or [rows, width], got {shape}")
            rows.add(shape[0])
            tables.append(Table(offsets[name][0], shape[1] if len(shape) == 2 else 1))
        if len(rows) > 1:
            raise ValueError(f"row tables {layout.row_tables} must have equal row counts: {rows}")

        def coords(names) -> np.ndarray:
            parts = [np.arange(o, o + n, dtype=np.int64) for o, n in (offsets[k] for k in names)]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

        special = set(layout.private) | set(layout.row_tables)
        shared = [k for k in params if k not in special]
        return cls(
            size=offset,
            private_index=coords([k for k in params if k in layout.private]),
            shared_index=coords(shared),
            shared_segments=tuple(offsets[k][1] for k in shared),
            tables=tuple(tables),
            num_rows=rows.pop() if rows else 0,
            download_rows=bool(layout.download_rows and tables),
        )

    @property
    def dense(self) -> bool:
        return not self.tables and not self.private_index.size

    @property
    def row_width(self) -> int:
        """Values per row id over all tables."""
        return sum(t.width for t in self.tables)

    def upload_index(self, rows: np.ndarray | None) -> np.ndarray:
        """Flat coordinates of the compact upload vector for a client's ``rows``."""
        if not self.tables:
            return self.shared_index
        rows = np.asarray(rows, dtype=np.int64)
        parts = [
            (t.offset + rows[:, None] * t.width + np.arange(t.width)[None, :]).ravel()
            for t in self.tables
        ]
        return np.concatenate([*parts, self.shared_index])

    def upload_segments(self, num_rows: int) -> tuple[int, ...]:
        return tuple(num_rows * t.width for t in self.tables) + self.shared_segments

    def upload_length(self, num_rows: int) -> int:
        return num_rows * self.row_width + int(self.shared_index.size)

    def check_rows(self, rows: np.ndarray, who: str) -> np.ndarray:
        """``rows`` as sorted unique in-range int64 ids, or a ``ValueError`` naming ``who``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows[0] < 0 or rows[-1] >= self.num_rows or np.any(np.diff(rows) <= 0)):
            raise ValueError(
                f"{who}: client_rows must be sorted unique ids in [0, {self.num_rows}), "
                f"got {rows[:8]}{'…' if rows.size > 8 else ''}"
            )
        return rows


def pack_upload(rows: np.ndarray | None, codec_payload: bytes) -> bytes:
    """The wire bytes of an upload: row ids (with row tables) then the codec payload."""
    if rows is None:
        return codec_payload
    ids = np.asarray(rows, dtype="<u4").tobytes()
    return struct.pack("<I", len(rows)) + ids + codec_payload


def unpack_upload(payload: bytes, has_tables: bool) -> tuple[np.ndarray | None, bytes]:
    """Inverse of :func:`pack_upload`: (row ids or None, codec payload)."""
    if not has_tables:
        return None, payload
    (count,) = struct.unpack_from("<I", payload, 0)
    end = ROW_COUNT_BYTES + ROW_ID_BYTES * count
    rows = np.frombuffer(payload, dtype="<u4", count=count, offset=ROW_COUNT_BYTES)
    return rows.astype(np.int64), payload[end:]
