"""Planning asynchronous dispatches in vectorised blocks.

The n-th dispatch of an async run picks its client from a seeded stream of candidates — the j-th
candidate is ⌊N · u(seed, "async.select", j, n)⌋ — taking the first one online for that dispatch
(availability drawn from (seed, client, n)) and not already in flight. Everything else about the
task follows from the chosen client and n alone: its sample count, its phase times from the cost
model, whether and when it drops out. None of it depends on the model, so the first few
candidates of the next ``block`` dispatch numbers are planned together with one vectorised call
per quantity; only the busy-check is per dispatch. A dispatch whose first candidates are all busy
or offline falls back to drawing further along the same stream one client at a time, so the
choice never depends on the block size.

With conditions that vary over virtual time (:mod:`fedray.sim.conditions`: availability, batteries,
an energy cap), a candidate must also be eligible at the dispatch instant, and the chosen client's
task is planned alone at that instant (when it would go offline or empty its battery, and what it
does to the battery). If no candidate is eligible within ``_DYNAMIC_DRAWS``, :meth:`next` returns
None and the driver tries again ``retry_s`` later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedray import seeding
from fedray.clients.profiles import ProfileModel
from fedray.sim.conditions import Conditions, plan_energy, price
from fedray.sim.links import Transfers
from fedray.sim.round_plan import LOST, plan_round
from fedray.sim.selection import is_available

_SLOW_DRAWS = 32
_MAX_DRAWS = 1 << 20
_DYNAMIC_DRAWS = 4096  # candidates tried at one instant before waiting for someone to come online


@dataclass(frozen=True)
class DispatchPlan:
    client_id: int
    dropped: bool
    duration_s: float  # to arrival, or to the drop
    download_s: float
    compute_s: float
    upload_s: float
    num_samples: int
    local_epochs: int
    bytes_down: int
    bytes_up: int  # the update's payload, charged if it arrives
    bytes_up_raw: int  # the same update uncompressed
    bytes_down_raw: int  # what crossed the downlink (``bytes_down``), counted uncompressed
    status: str = "completed"  # or how its connection was lost (dropped, offline, depleted)
    energy_j: float = 0.0  # spent by the task (fedray.clients.energy)
    battery_j: float = float("nan")  # its battery's level after the task


class DispatchPlanner:
    def __init__(
        self,
        *,
        seed: int,
        num_clients: int,
        profiles: ProfileModel,
        num_train_samples,
        local_epochs: int,
        transfer_bytes: Callable[[np.ndarray, int], Transfers],
        block: int = 256,
        candidates: int = 4,
        conditions: Conditions | None = None,
    ):
        self.seed, self.n = seed, num_clients
        self.profiles = profiles
        self.num_train_samples = num_train_samples
        self.local_epochs = local_epochs
        # (client ids, broadcast bytes) -> per-client byte counts (Links.transfer_bytes)
        self.transfer_bytes = transfer_bytes
        self.block, self.width = block, candidates
        self._cached: tuple | None = None  # (block index, model bytes, candidates, online, plan)
        self.conditions = conditions if conditions is not None and conditions.active else None

    def next(
        self, seq: int, busy: set[int], model_bytes: int, now: float = 0.0
    ) -> DispatchPlan | None:
        """The plan of dispatch number ``seq`` at virtual time ``now`` given the clients in
        flight (None: nobody is eligible now; see the module docstring)."""
        if self.conditions is not None:
            return self._next_dynamic(seq, busy, model_bytes, now)
        b, row = divmod(seq, self.block)
        if self._cached is None or self._cached[:2] != (b, model_bytes):
            self._cached = (b, model_bytes, *self._plan_block(b, model_bytes))
        _, _, cands, online, plan = self._cached
        for j in range(self.width):
            cid = int(cands[row, j])
            if online[row, j] and cid not in busy:
                return _extract(plan, row * self.width + j)
        cid = self._draw_further(seq, busy)
        return _extract(self._plan(np.array([cid]), np.array([seq]), model_bytes), 0)

    def _next_dynamic(self, seq: int, busy: set[int], model_bytes: int, now: float):
        conditions = self.conditions
        want = 1 if conditions.prefer is None else int(np.ceil(conditions.prefer))
        chosen: list[int] = []
        # four draws per client miss an eligible one with probability ~e^-4 per eligible client
        draws = min(_DYNAMIC_DRAWS, max(2 * _SLOW_DRAWS, 4 * self.n))
        for start in range(0, draws, _SLOW_DRAWS):
            cands = self._candidates(np.arange(start, start + _SLOW_DRAWS), np.array([seq]))
            keep = is_available(self.profiles, self.seed, cands, seq)
            keep &= np.array([c not in busy for c in cands.tolist()])
            keep &= ~np.isin(cands, chosen)
            if keep.any():
                ids = cands[keep]
                costed = conditions.max_task_j is not None or conditions.prefer is not None
                work = self._work(ids, model_bytes) if costed else None
                ok = conditions.eligible(ids, now, work)
                for cid in ids[ok].tolist():
                    if cid not in chosen:
                        chosen.append(cid)
            if len(chosen) >= want:
                break
        if not chosen:
            return None
        ids = np.array(chosen[:want], dtype=np.int64)
        if len(ids) > 1:  # prefer_low_energy: the cheapest of the first eligible candidates
            ids = ids[conditions.cheapest(ids, 1, self._work(ids, model_bytes))]
        return _extract(self._plan(ids, np.array([seq]), model_bytes, now), 0)

    def _work(self, ids: np.ndarray, model_bytes: int):
        sizes = self.transfer_bytes(ids, model_bytes)
        return price(
            self.profiles.lookup(ids),
            self.num_train_samples(ids),
            self.local_epochs,
            sizes.down,
            sizes.up,
        )

    def _candidates(self, draws: np.ndarray, seqs: np.ndarray) -> np.ndarray:
        u = seeding.uniform(self.seed, "async.select", draws, seqs)
        return np.minimum((u * self.n).astype(np.int64), self.n - 1)

    def _plan_block(self, b: int, model_bytes: int):
        seqs = np.arange(b * self.block, (b + 1) * self.block, dtype=np.int64)[:, None]
        cands = self._candidates(np.arange(self.width)[None, :], seqs)
        keys = np.broadcast_to(seqs, cands.shape)
        online = is_available(self.profiles, self.seed, cands.ravel(), keys.ravel())
        plan = self._plan(cands.ravel(), keys.ravel(), model_bytes)
        return cands, online.reshape(cands.shape), plan

    def _plan(self, ids: np.ndarray, seqs: np.ndarray, model_bytes: int, now: float | None = None):
        """Plans of dispatches ``seqs`` of clients ``ids``; ``now``: the instant of a single
        dispatch under varying conditions (its limits apply, its battery is charged)."""
        # With "wait" and room for everyone, each client's plan is independent of the others.
        num_samples = self.num_train_samples(ids)
        sizes = self.transfer_bytes(ids, model_bytes)
        update_bytes, raw_bytes, down_bytes, down_raw = (
            sizes.up,
            sizes.up_raw,
            sizes.down,
            sizes.down_raw,
        )
        work = price(self.profiles.lookup(ids), num_samples, self.local_epochs, down_bytes, update_bytes)  # fmt: skip
        limit = None if now is None else self.conditions.limit(ids, now, work)
        plan = plan_round(
            seed=self.seed,
            round_=seqs,
            client_ids=ids,
            profiles=work.profiles,
            num_samples=num_samples,
            local_epochs=self.local_epochs,
            model_bytes=down_bytes,
            update_bytes=update_bytes,
            clients_per_round=len(ids),
            deadline_s=None,
            policy="wait",
            limit=limit,
        )
        energy = plan_energy(work, plan)
        battery = np.full(len(ids), np.nan)
        if now is not None:
            energy, battery = self.conditions.settle(ids, now, plan, energy)
        return plan, num_samples, update_bytes, raw_bytes, down_raw / down_bytes, energy, battery

    def _draw_further(self, seq: int, busy: set[int]) -> int:
        seqs = np.array([seq])
        for start in range(self.width, _MAX_DRAWS, _SLOW_DRAWS):
            cands = self._candidates(np.arange(start, start + _SLOW_DRAWS), seqs)
            online = is_available(self.profiles, self.seed, cands, seq)
            for cid, ok in zip(cands.tolist(), online.tolist(), strict=True):
                if ok and cid not in busy:
                    return cid
        raise RuntimeError(
            f"no available client found for dispatch {seq} after {_MAX_DRAWS} draws; raise the "
            "profile's availability or lower asynchronous.concurrency"
        )


def _extract(planned: tuple, i: int) -> DispatchPlan:
    plan, num_samples, update_bytes, raw_bytes, raw_per_byte_down, energy, battery = planned
    return DispatchPlan(
        client_id=int(plan.client_ids[i]),
        dropped=bool(plan.status[i] in LOST),
        duration_s=float(plan.finish_s[i]),
        download_s=float(plan.times.download_s[i]),
        compute_s=float(plan.times.compute_s[i]),
        upload_s=float(plan.times.upload_s[i]),
        num_samples=int(num_samples[i]),
        local_epochs=int(plan.local_epochs[i]),
        bytes_down=int(plan.bytes_down[i]),
        bytes_up=int(update_bytes[i]),
        bytes_up_raw=int(raw_bytes[i]),
        bytes_down_raw=int(round(plan.bytes_down[i] * raw_per_byte_down[i])),
        status=str(plan.status[i]),
        energy_j=float(energy[i]),
        battery_j=float(battery[i]),
    )
