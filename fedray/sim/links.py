"""The run's two links: the codecs on them and the payload sizes they imply.

Shared by the sync and async drivers. The global model is encoded with the downlink codec once per
model version and clients train from the decoded model; updates go through the uplink codec on the
workers. All shipped codecs have data-independent payload sizes, so a client's upload time is known
at dispatch from ``update_bytes``; :meth:`Links.check_uploads` holds the workers to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedray import seeding
from fedray.clients.state_store import ClientStateStore
from fedray.compression import make_codec


class Links:
    def __init__(self, cfg, segments: tuple[int, ...], num_params: int):
        self.seed = cfg.seed
        self.segments = segments
        self.uplink = make_codec(cfg.compression.uplink)
        self.downlink = make_codec(cfg.compression.downlink)
        zeros = np.zeros(num_params, dtype=np.float32)
        self.raw_bytes = len(make_codec("none").encode(zeros, segments, None))
        self.update_bytes = len(self.uplink.encode(zeros, segments, seeding.generator(0, "size")))

    def broadcast(self, params: np.ndarray, key: int) -> tuple[np.ndarray, int]:
        """The model clients start from (as decoded from the downlink payload) and the payload's
        length; ``key`` is the round (sync) or model version (async)."""
        # The downlink codecs (none, fp16, bf16, int8) are deterministic: no generator needed,
        # which matters when FedAsync broadcasts a new version per arrival.
        payload = self.downlink.encode(params, self.segments, None)
        return self.downlink.decode(payload, self.segments), len(payload)

    def check_uploads(self, bytes_up: np.ndarray) -> None:
        if np.any(bytes_up != self.update_bytes):
            raise RuntimeError(
                f"{self.uplink.name} produced {sorted(set(bytes_up))} bytes, planned "
                f"{self.update_bytes}: codec sizes must not depend on the data"
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
