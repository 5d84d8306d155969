"""The run's two links: the codecs on them and the payload sizes they imply.

Shared by the sync and async drivers. The global model is encoded with the downlink codec once per
model version and clients train from the decoded model; updates go through the uplink codec on the
workers (or, under ``secure_aggregation``, are masked ring vectors of a fixed size). All shipped
codecs have data-independent payload sizes, so a client's upload time is known
at dispatch: ``update_bytes`` for a dense model, or :meth:`Links.upload_bytes` of the number of
rows a client uploads under a row-sparse layout (:mod:`fedray.execution.layout`);
:meth:`Links.check_uploads` holds the workers to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedray import seeding
from fedray.clients.state_store import ClientStateStore
from fedray.compression import make_codec
from fedray.execution.layout import ROW_COUNT_BYTES, ROW_ID_BYTES, FlatLayout


@dataclass(frozen=True)
class Transfers:
    """Per client: the bytes of one upload payload and of the download, coded and as
    uncompressed float32 (what the same transfer would have cost without a codec)."""

    up: np.ndarray
    up_raw: np.ndarray
    down: np.ndarray
    down_raw: np.ndarray


class Links:
    def __init__(self, cfg, segments: tuple[int, ...], flat: FlatLayout):
        self.seed = cfg.seed
        self.segments = segments
        self.flat = flat
        self.uplink = make_codec(cfg.compression.uplink)
        self.downlink = make_codec(cfg.compression.downlink)
        self._raw = make_codec("none")
        # (id of the uplink or downlink codec, rows) -> (coded bytes, uncompressed bytes); by id,
        # since both links may use one codec name with different options
        self._sizes: dict[tuple[int, int], tuple[int, int]] = {}
        # The downlink always carries the whole model; uploads follow the layout.
        zeros = np.zeros(flat.size, dtype=np.float32)
        self.raw_bytes = len(self._raw.encode(zeros, segments, None))
        self.update_bytes, self.update_raw_bytes = self._size(self.uplink, 0)
        sa = cfg.secure_aggregation
        if sa is not None:
            # the upload is the masked ring vector (dense models only: fedray.api refuses the rest)
            from fedray.secagg.costs import masked_upload_bytes

            self.update_bytes = masked_upload_bytes(sa.bits, flat.size)

    def _size(self, codec, num_rows: int) -> tuple[int, int]:
        """(coded, uncompressed) bytes of a payload in the upload format
        (:mod:`fedray.execution.layout`) carrying ``num_rows`` rows through ``codec``."""
        key = (id(codec), num_rows)
        sizes = self._sizes.get(key)
        if sizes is None:
            zeros = np.zeros(self.flat.upload_length(num_rows), dtype=np.float32)
            segments = self.flat.upload_segments(num_rows)
            ids = ROW_COUNT_BYTES + ROW_ID_BYTES * num_rows if self.flat.tables else 0
            coded = codec.encode(zeros, segments, seeding.generator(0, "size"))
            raw = self._raw.encode(zeros, segments, None)
            sizes = self._sizes[key] = (ids + len(coded), ids + len(raw))
        return sizes

    def _sizes_of(self, codec, num_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pairs = np.array([self._size(codec, int(r)) for r in num_rows], np.int64).reshape(-1, 2)
        return pairs[:, 0], pairs[:, 1]

    def upload_bytes(self, num_rows: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per client: (uplink bytes, uncompressed bytes) of the uploads of ``n`` clients that
        carry ``num_rows`` rows each (None for a model without row tables)."""
        if num_rows is None:
            return (
                np.full(n, self.update_bytes, np.int64),
                np.full(n, self.update_raw_bytes, np.int64),
            )
        return self._sizes_of(self.uplink, num_rows)

    def download_bytes(
        self, num_rows: np.ndarray | None, n: int, model_bytes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per client: (downlink bytes, uncompressed bytes) of what ``n`` clients download — the
        broadcast model (``model_bytes`` long), or under ``download_rows`` their own rows and
        the shared parameters, with row ids, like an upload."""
        if not self.flat.download_rows:
            return np.full(n, model_bytes, np.int64), np.full(n, self.raw_bytes, np.int64)
        return self._sizes_of(self.downlink, num_rows)

    def transfer_bytes(self, num_rows: np.ndarray | None, n: int, model_bytes: int) -> Transfers:
        """:meth:`upload_bytes` and :meth:`download_bytes`, from one row count per client."""
        up, up_raw = self.upload_bytes(num_rows, n)
        down, down_raw = self.download_bytes(num_rows, n, model_bytes)
        return Transfers(up, up_raw, down, down_raw)

    def broadcast(self, params: np.ndarray, key: int) -> tuple[np.ndarray, int]:
        """The model clients start from (as decoded from the downlink payload) and the payload's
        length; ``key`` is the round (sync) or model version (async)."""
        # The downlink codecs (none, fp16, bf16, int8) are deterministic: no generator needed,
        # which matters when FedAsync broadcasts a new version per arrival.
        payload = self.downlink.encode(params, self.segments, None)
        return self.downlink.decode(payload, self.segments), len(payload)

    def check_uploads(self, bytes_up: np.ndarray, planned: np.ndarray | int | None = None) -> None:
        """The workers' real payload lengths must be what the cost model charged at dispatch."""
        planned = self.update_bytes if planned is None else planned
        if np.any(bytes_up != planned):
            raise RuntimeError(
                f"{self.uplink.name} produced {sorted(set(np.ravel(bytes_up)))} bytes, planned "
                f"{sorted(set(np.ravel(planned)))}: codec sizes must not depend on the data, and a "
                "workload's num_client_rows must match its client_rows"
            )

    def residual_store(self, budget_mb: int, state_dir: Path | None) -> ClientStateStore | None:
        """Where clients' error-feedback residuals live between tasks (None without feedback)."""
        if not self.uplink.uses_error_feedback:
            return None
        return ClientStateStore(budget_mb * 2**20, state_dir)


def close_residual_store(store: ClientStateStore | None, state_dir: Path | None) -> None:
    """Close a per-client store (deleting its spill files) and its folder if that is now empty."""
    if store is not None:
        store.close()
    remove_if_empty(state_dir)


def remove_if_empty(folder: Path | None) -> None:
    if folder is not None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
