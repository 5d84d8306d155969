"""Client transforms: what happens to an update between a client's training and the server's sum.

Each transform is a small object with a client side (``send``, run in pipeline order on the
client) and its inverse on the server (``receive``, run in reverse order) — pfl-research's
postprocessors are the model. The pipeline fedray builds from a config is

    rows (row-sparse layouts) → attack (``attack``) → DP clip (``privacy``) → encode (uplink
    codec, error feedback)

so the server side is decode → enforce the clip bound → (an attack's server side) → scatter the
rows into the full model. With ``secure_aggregation`` the last step is the masking
(:mod:`fedray.secagg.transform`) instead of the codec: its masked vectors go into a ring aggregate
(``new_aggregate``), and what clients must know of the round to mask (who shared keys) comes with
the model (``downlink``). A transform may also act on a client's training data before it trains
(``prepare``: label flipping, :mod:`fedray.attacks`). A transform that keeps per-client memory
(the error-feedback residual) reads and writes it as a named entry of the client's state
(:mod:`fedray.clients.state_store`); a transform that acts on the whole round's sum (DP-FedAvg's
Gaussian noise, secure aggregation's unmasking, ALIE's crafted updates) has a ``finalize`` step on
the driver, run in reverse pipeline order like ``receive``. New features are new transforms; the
drivers, the pool and the worker do not change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedray import seeding
from fedray.attacks import make_attack
from fedray.compression import encode_with_feedback, make_codec
from fedray.execution.layout import FlatLayout, pack_upload
from fedray.privacy import (
    LOCAL_NOISE_PURPOSE,
    adaptive_noise_multiplier,
    add_noise,
    clip,
    next_clip_norm,
)
from fedray.strategies.aggregate import Aggregate, ClientMessage

RESIDUAL = "ef.residual"  # the client-state entry of the error-feedback residual
CLIP_NORM = "dp.clip_norm"  # adaptive clipping: the round's C, sent with the model
UNCLIPPED = "dp.unclipped"  # adaptive clipping: Σ (b_k − ½) over the round's uploads


@dataclass
class Upload:
    """One client's update on its way to the server. Between ``send`` and ``receive`` the
    update travels as ``payload`` bytes; ``nbytes`` is the real wire length."""

    client_id: int
    key: int  # round (sync) or dispatch number (async): keys the codec's draws
    update: np.ndarray | None
    weight: float
    extras: dict  # side uploads (arrays on the client, payloads on the wire)
    state: dict  # the client's stored state (read-only)
    received: Mapping = field(default_factory=dict)  # what the client received this round
    new_state: dict = field(default_factory=dict)  # what the transforms leave the client
    rows: np.ndarray | None = None  # row-table rows the upload carries
    segments: tuple[int, ...] = ()
    index: np.ndarray | None = None  # flat coordinates of a row-sparse upload
    payload: bytes | None = None
    nbytes: int = 0
    clipped: bool = False


class RowSparse:
    """Upload only a client's row-table rows and the shared parameters (private ones never
    leave the client); the server scatters them back into the full vector."""

    def __init__(self, flat: FlatLayout, segments: tuple[int, ...], who: str):
        self.flat, self.segments, self.who = flat, segments, who
        self._private = np.zeros(flat.size, dtype=bool)  # coordinates never uploaded
        self._private[flat.private_index] = True

    def send(self, up: Upload) -> None:
        if self.flat.dense:
            up.segments = self.segments
            return
        index = self.flat.upload_index(up.rows)
        outside = ~self._private
        outside[index] = False
        if np.any(up.update[outside] != 0):
            # A row outside client_rows would silently never reach the server: a workload bug.
            changed = int(np.count_nonzero(up.update[outside]))
            raise RuntimeError(
                f"workload {self.who}: local training of client {up.client_id} changed {changed} "
                "parameters outside its client_rows; client_rows must name every row its "
                "training touches"
            )
        up.update, up.index = up.update[index], index
        up.segments = self.flat.upload_segments(0 if up.rows is None else len(up.rows))

    def receive(self, up: Upload) -> None:
        if up.index is not None:
            full = np.zeros(self.flat.size, dtype=np.float32)
            full[up.index] = up.update
            up.update = full


class DPClip:
    """User-level DP (:mod:`fedray.privacy`) as a client transform: the client clips its update to
    L2 norm C and counts once (weight 1, whatever its sample count).

    * ``central`` (DP-FedAvg, McMahan et al., ICLR 2018; DP-FedBuff, Huba et al., MLSys 2022):
      the server enforces the bound again on what it decoded, so a lossy codec cannot exceed the
      sensitivity (beyond float32 rounding of C), and ``finalize`` adds N(0, (zC)²) to the
      round's — or the asynchronous buffer's — sum and divides it by the fixed denominator (K
      clients per round, or the buffer size). Under secure aggregation (``secure=True``) the
      server sees neither an update nor a sum before unmasking: the clients add the noise in
      shares before masking (:class:`fedray.secagg.transform.SecureAggregation`), so here the
      server only divides the unmasked sum.
    * ``local``: the client adds N(0, (zC)²) to its own clipped update, seeded by
      (seed, "dp.local_noise", client, round), before the codec; the server adds none.
    * ``adaptive`` (Andrew et al., NeurIPS 2021): C is the server's, sent with the model as
      ``dp.clip_norm``; each client's bit b_k = [‖Δ_k‖ ≤ C] reaches the sum as b_k − ½ (the bit
      is not charged to the uplink), and ``finalize`` moves C geometrically towards the
      ``target_quantile`` of the update norms from the noised count. Its state — C — is the
      pipeline's server state, checkpointed with the driver's.
    """

    def __init__(
        self,
        privacy,
        seed: int,
        denominator: int,
        secure: bool = False,
    ):
        self.clip_norm, self.noise_multiplier = privacy.clip_norm, privacy.noise_multiplier
        self.local = privacy.kind == "local"
        self.seed, self.denominator, self.secure = seed, denominator, secure
        self.adaptive = privacy.adaptive_clipping
        if self.adaptive is not None:
            self.count_noise = self.adaptive.count_noise_multiplier or denominator / 20
            self.update_noise = adaptive_noise_multiplier(self.noise_multiplier, self.count_noise)
        else:
            self.update_noise = self.noise_multiplier

    # -- client side

    def _bound(self, up: Upload) -> float:
        """The C of this upload's round: the server's current one under adaptive clipping (as
        sent with the model), else the configured one."""
        if self.adaptive is None:
            return self.clip_norm
        return float(np.asarray(up.received[CLIP_NORM]).reshape(-1)[0])

    def send(self, up: Upload) -> None:
        bound = self._bound(up)
        up.update, up.clipped = clip(up.update, bound)
        up.weight = 1.0
        if self.local and self.noise_multiplier > 0:
            rng = seeding.generator(self.seed, LOCAL_NOISE_PURPOSE, up.client_id, up.key)
            noise = rng.normal(0.0, self.noise_multiplier * bound, size=up.update.shape)
            up.update = (up.update + noise).astype(up.update.dtype)

    # -- server side

    def receive(self, up: Upload) -> None:
        if self.adaptive is not None:
            up.extras[UNCLIPPED] = np.array([0.5 - float(up.clipped)])
        if self.secure or self.local:
            return  # a masked or noised vector: its norm is not bounded by C
        bound = self._bound(up)
        norm = float(np.linalg.norm(np.asarray(up.update, dtype=np.float64)))
        if norm > bound * (1 + 1e-6):
            up.update, _ = clip(up.update, bound)

    def downlink(self, round_: int, cohort) -> dict:
        if self.adaptive is None:
            return {}
        return {CLIP_NORM: np.array([self.clip_norm], dtype=np.float32)}

    def finalize(self, aggregate: Aggregate, round_: int, context: Mapping) -> dict:
        # Noise the sum of clipped updates and divide by the fixed denominator, not the number
        # that arrived (eq. 4 of McMahan et al.).
        columns = {} if self.adaptive is None else {"dp_clip_norm": self.clip_norm}
        unclipped = aggregate.extras.pop(UNCLIPPED, None)
        if aggregate.total is None:
            return columns
        aggregate.weight = float(self.denominator)
        if not (self.secure or self.local):
            aggregate.total = add_noise(
                aggregate.total,
                seed=self.seed,
                round_=round_,
                noise_multiplier=self.update_noise,
                clip_norm=self.clip_norm,
            )
        if self.adaptive is not None:
            centred = 0.0 if unclipped is None else float(np.sum(unclipped))
            self.clip_norm = next_clip_norm(
                self.clip_norm,
                centred,
                cohort=self.denominator,
                target_quantile=self.adaptive.target_quantile,
                learning_rate=self.adaptive.learning_rate,
                count_noise=self.count_noise if self.noise_multiplier > 0 else 0.0,
                seed=self.seed,
                round_=round_,
            )
        return columns

    def server_state(self) -> dict:
        return {} if self.adaptive is None else {CLIP_NORM: self.clip_norm}

    def load_server_state(self, state: Mapping) -> None:
        if self.adaptive is not None and CLIP_NORM in state:
            self.clip_norm = float(state[CLIP_NORM])


class Encode:
    """The uplink codec, with error feedback where the codec uses it (Stich et al. 2018;
    Karimireddy et al. 2019): the residual is the client-state entry ``ef.residual``. Side
    uploads (SCAFFOLD's Δc) go through the same codec, without feedback."""

    def __init__(self, codec, seed: int, segments: tuple[int, ...]):
        self.codec, self.seed, self.segments = codec, seed, segments

    def send(self, up: Upload) -> None:
        rng = seeding.generator(self.seed, "codec", up.client_id, up.key)
        payload, residual = encode_with_feedback(
            self.codec, up.update, up.segments, rng, up.state.get(RESIDUAL)
        )
        if residual is not None:
            up.new_state[RESIDUAL] = residual
        up.payload, up.update = payload, None
        up.nbytes = len(pack_upload(up.rows, payload))
        for name, value in up.extras.items():
            rng = seeding.generator(self.seed, f"codec.{name}", up.client_id, up.key)
            up.extras[name] = self.codec.encode(value, self.segments, rng)
            up.nbytes += len(up.extras[name])

    def receive(self, up: Upload) -> None:
        up.update = self.codec.decode(up.payload, up.segments)
        for name, payload in up.extras.items():
            up.extras[name] = self.codec.decode(payload, self.segments)


class Pipeline:
    """The ordered client transforms of a run; :meth:`deliver` takes a message from the client
    to what the server adds to its aggregate."""

    def __init__(self, transforms: list):
        self.transforms = transforms

    @classmethod
    def of(
        cls,
        cfg,
        flat: FlatLayout,
        segments: tuple[int, ...],
        who: str,
        num_classes: int | None = None,
    ) -> Pipeline:
        transforms: list = [RowSparse(flat, segments, who)]
        attack = make_attack(cfg, num_classes=num_classes)
        if attack is not None:
            transforms.append(attack)
        if cfg.privacy is not None:
            denominator = cfg.clients_per_round if cfg.mode == "sync" else cfg.buffer_size
            secure = cfg.secure_aggregation is not None
            transforms.append(DPClip(cfg.privacy, cfg.seed, denominator, secure))
        if cfg.secure_aggregation is not None:
            from fedray.secagg.transform import SecureAggregation

            # the masked ring vector is the wire format: the config allows no uplink codec
            noise = (
                None
                if cfg.privacy is None
                else cfg.privacy.noise_multiplier * cfg.privacy.clip_norm
            )
            transforms.append(SecureAggregation(cfg.secure_aggregation, cfg.seed, noise))
        else:
            transforms.append(Encode(make_codec(cfg.compression.uplink), cfg.seed, segments))
        return cls(transforms)

    def prepare(self, data, client_id: int, key: int):
        """The data a client trains on in round (or dispatch) ``key``."""
        for transform in self.transforms:
            if hasattr(transform, "prepare"):
                data = transform.prepare(data, client_id, key)
        return data

    def adversarial(self, client_ids, key: int) -> np.ndarray:
        """Per client, whether an attack transform corrupts its task ``key`` (for the tables)."""
        flags = np.zeros(len(client_ids), dtype=bool)
        for transform in self.transforms:
            if hasattr(transform, "adversarial"):
                flags |= transform.adversarial(client_ids, key)
        return flags

    def deliver(
        self,
        message: ClientMessage,
        client_id: int,
        key: int,
        state: dict,
        rows=None,
        received: Mapping | None = None,
    ) -> Upload:
        up = Upload(
            client_id,
            key,
            message.update,
            message.weight,
            dict(message.extras),
            state,
            received=received or {},
            rows=rows,
        )
        for transform in self.transforms:
            transform.send(up)
        for transform in reversed(self.transforms):
            transform.receive(up)
        return up

    def new_aggregate(self, aggregate: Aggregate) -> Aggregate:
        """The aggregate uploads are summed into: the strategy's ``aggregate``, unless a
        transform sums its payloads otherwise (secure aggregation's ring)."""
        for transform in self.transforms:
            if hasattr(transform, "new_aggregate"):
                aggregate = transform.new_aggregate(aggregate)
        return aggregate

    def downlink(self, round_: int, cohort: np.ndarray) -> dict:
        """What the transforms send every client of a sync round besides the model."""
        out: dict = {}
        for transform in self.transforms:
            if hasattr(transform, "downlink"):
                out.update(transform.downlink(round_, cohort))
        return out

    def server_state(self) -> dict:
        """What the transforms' server sides carry from one server step to the next (adaptive
        clipping's C), as plain values for the driver's checkpointed state."""
        out: dict = {}
        for transform in self.transforms:
            if hasattr(transform, "server_state"):
                out.update(transform.server_state())
        return out

    def load_server_state(self, state: Mapping) -> None:
        for transform in self.transforms:
            if hasattr(transform, "load_server_state"):
                transform.load_server_state(state)

    def finalize(self, aggregate: Aggregate, round_: int, context: Mapping | None = None) -> dict:
        """The server-side steps on a whole round's sum (sync rounds), in reverse pipeline order
        (the last transform applied on the client is undone first); ``context``: what
        :meth:`downlink` sent. Returns the columns they add to the round's row."""
        columns: dict = {}
        for transform in reversed(self.transforms):
            if hasattr(transform, "finalize"):
                columns.update(transform.finalize(aggregate, round_, context or {}))
        return columns
