"""Device profiles of the client population, looked up lazily and column-wise.

A client's profile is a pure function of (seed, client id): each field is drawn from its configured
distribution with a counter-based hash (:mod:`fedray.seeding`). Nothing is stored per client, so a
population of any size costs only the arrays of the clients actually looked at. A trace file, when
given, is the one table held in memory; clients beyond its length wrap modulo its row count.

Units: speed in samples/s of local training, bandwidths in Mbit/s, latency in ms per transfer,
dropout as a probability per task, availability as the probability of being online in a round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedray import seeding
from fedray.config import PROFILE_FIELDS, Constant, LogNormal, ProfileConfig, Uniform
from fedray.errors import UserError, one_line


@dataclass(frozen=True)
class Profiles:
    """Profiles of a set of clients, one float64 array per field (aligned with ``client_ids``)."""

    client_ids: np.ndarray
    speed: np.ndarray
    down_mbps: np.ndarray
    up_mbps: np.ndarray
    latency_ms: np.ndarray
    dropout: np.ndarray
    availability: np.ndarray


def _draw(dist, seed: int, field: str, ids: np.ndarray) -> np.ndarray:
    purpose = f"profile.{field}"
    if isinstance(dist, Constant):
        return np.full(ids.shape, float(dist.value))
    if isinstance(dist, Uniform):
        return dist.low + (dist.high - dist.low) * seeding.uniform(seed, purpose, ids)
    if isinstance(dist, LogNormal):
        values = dist.median * np.exp(dist.sigma * seeding.normal(seed, purpose, ids))
        return np.clip(values, dist.min, dist.max) if (dist.min or dist.max) else values
    raise TypeError(f"unknown distribution {dist!r}")


class ProfileModel:
    """Maps client ids to device profiles per a :class:`~fedray.config.ProfileConfig`."""

    def __init__(self, cfg: ProfileConfig, seed: int):
        self.cfg = cfg
        self.seed = seed
        self.trace = load_trace(cfg.trace) if cfg.trace is not None else None
        if cfg.tiers:
            weights = np.array([t.weight for t in cfg.tiers], dtype=np.float64)
            self._tier_cdf = np.cumsum(weights / weights.sum())

    def lookup(self, client_ids) -> Profiles:
        ids = np.asarray(client_ids, dtype=np.int64)
        return Profiles(client_ids=ids, **{f: self.column(f, ids) for f in PROFILE_FIELDS})

    def column(self, field: str, client_ids) -> np.ndarray:
        """One profile field for the given clients (probabilities clipped to [0, 1])."""
        values = self._field(field, np.asarray(client_ids, dtype=np.int64))
        return np.clip(values, 0.0, 1.0) if field in ("dropout", "availability") else values

    def tier_of(self, client_ids) -> np.ndarray:
        """Index of each client's tier (all zeros without tiers)."""
        ids = np.asarray(client_ids, dtype=np.int64)
        if not self.cfg.tiers:
            return np.zeros(ids.shape, dtype=np.int64)
        u = seeding.uniform(self.seed, "profile.tier", ids)
        return np.minimum(np.searchsorted(self._tier_cdf, u), len(self.cfg.tiers) - 1)

    def _field(self, field: str, ids: np.ndarray) -> np.ndarray:
        if self.trace is not None and field in self.trace:
            column = self.trace[field]
            return column[ids % len(column)]
        base = getattr(self.cfg, field)
        if not self.cfg.tiers:
            return _draw(base, self.seed, field, ids)
        tiers = self.tier_of(ids)
        out = np.empty(ids.shape, dtype=np.float64)
        for index, tier in enumerate(self.cfg.tiers):
            mask = tiers == index
            if mask.any():
                dist = getattr(tier, field) or base
                out[mask] = _draw(dist, self.seed, field, ids[mask])
        return out


def load_trace(path: Path) -> dict[str, np.ndarray]:
    """Read a device trace (CSV or Parquet; one row per client; columns named as the profile
    fields). Unknown columns other than ``client_id`` are rejected so a misspelt column is not
    silently replaced by the default distribution."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"trace file {str(path)!r} not found; set clients.profile.trace to a CSV or Parquet file"
        )
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif path.suffix.lower() in (".csv", ".txt"):
            frame = pd.read_csv(path)
        else:
            raise UserError(f"trace file {str(path)!r}: use a .csv or .parquet file")
    except UserError:
        raise
    except Exception as err:  # pandas raises many types for malformed files
        raise UserError(f"trace file {str(path)!r} could not be read: {one_line(err)}") from None
    unknown = [c for c in frame.columns if c not in PROFILE_FIELDS and c != "client_id"]
    if unknown:
        raise UserError(
            f"trace file {str(path)!r} has unknown column(s) {unknown}; "
            f"accepted: client_id, {', '.join(PROFILE_FIELDS)}"
        )
    if len(frame) == 0:
        raise UserError(f"trace file {str(path)!r} has no rows")
    if "client_id" in frame.columns:
        frame = frame.sort_values("client_id", kind="stable")
    trace = {}
    for field in PROFILE_FIELDS:
        if field not in frame.columns:
            continue
        values = pd.to_numeric(frame[field], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if field in ("speed", "down_mbps", "up_mbps"):
            bad |= values <= 0
        elif field == "latency_ms":
            bad |= values < 0
        else:
            bad |= (values < 0) | (values > 1)
        if bad.any():
            row = int(np.argmax(bad))
            raise UserError(
                f"trace file {str(path)!r}: column {field!r} has an invalid value "
                f"{str(frame[field].iloc[row])!r} at row {row + 1}; see the README for units and ranges"
            )
        trace[field] = values
    return trace
