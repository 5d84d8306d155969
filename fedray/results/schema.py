"""The fixed schemas of fedray's tables, declared once.

``rounds.parquet`` has one row per server update (a round in sync runs, one model update in async
runs); ``client_events.parquet`` one row per client task. ``model_version`` on an event is the
version the client was dispatched with; ``staleness`` is the server's version when the update
arrived minus that (always 0 in sync runs; -1 where no update arrived: dropped clients). Times are seconds: ``*_time_s`` columns are simulated and cumulative from the run's virtual
start, except ``wall_time_s`` which is wall-clock seconds since the first round began.
"""

from __future__ import annotations

import pyarrow as pa

ROUNDS_SCHEMA = pa.schema(
    [
        pa.field("round", pa.int64()),
        pa.field("sim_time_s", pa.float64()),
        pa.field("round_duration_s", pa.float64()),
        pa.field("wall_time_s", pa.float64()),
        pa.field("model_version", pa.int64()),
        pa.field("num_selected", pa.int64()),
        pa.field("num_completed", pa.int64()),
        pa.field("num_partial", pa.int64()),
        # lost connections: a random dropout, going offline part-way (availability over
        # virtual time), an empty battery
        pa.field("num_dropped", pa.int64()),
        pa.field("num_offline", pa.int64()),
        pa.field("num_depleted", pa.int64()),
        pa.field("num_stragglers", pa.int64()),
        pa.field("num_stale", pa.int64()),
        # clients whose update was poisoned (NaN/inf, or above robustness.max_update_norm) and
        # withheld from the model (status ``quarantined`` in client_events)
        pa.field("num_quarantined", pa.int64()),
        pa.field("num_aggregated", pa.int64()),
        # adversarial clients (``attack``) among those aggregated; 0 without an attack
        pa.field("num_adversarial", pa.int64()),
        pa.field("staleness_mean", pa.float64()),
        pa.field("staleness_max", pa.int64()),
        pa.field("bytes_up", pa.int64()),
        pa.field("bytes_down", pa.int64()),
        pa.field("bytes_up_raw", pa.int64()),
        pa.field("bytes_down_raw", pa.int64()),
        pa.field("compression_ratio", pa.float64()),
        pa.field("cum_bytes_up", pa.int64()),
        pa.field("cum_bytes_down", pa.int64()),
        # joules the step's tasks spent (fedray.clients.energy; 0 without energy fields), the
        # run's total so far, and seconds the server waited for a client to come online first
        # (async: summed over the slots that waited)
        pa.field("energy_j", pa.float64()),
        pa.field("cum_energy_j", pa.float64()),
        pa.field("wait_s", pa.float64()),
        pa.field("train_loss", pa.float64()),
        pa.field("eval_loss", pa.float64()),
        pa.field("eval_accuracy", pa.float64()),
        pa.field("global_train_loss", pa.float64()),
        pa.field("global_train_accuracy", pa.float64()),
        # DP (``privacy``): cumulative ε at the config's δ after this round (or server step),
        # and the share of its trained (async: aggregated) clients whose update was clipped;
        # with adaptive clipping, the clip norm C the round's clients used. NaN (null in async
        # runs) when off.
        pa.field("dp_epsilon", pa.float64(), nullable=True),
        pa.field("dp_clipped_fraction", pa.float64(), nullable=True),
        pa.field("dp_clip_norm", pa.float64(), nullable=True),
        # Secure aggregation (``secure_aggregation``; null when off): whether the round failed
        # (too few survivors to unmask: the model was left unchanged), |U_2| and |U_1 \ U_2|,
        # each client's neighbour count, the dropped clients' keys reconstructed and the pairwise
        # masks the server removed with them, the protocol's own bytes (keys, shares, survivor
        # lists; included in bytes_up / bytes_down) and the seconds of its key rounds before
        # training and of its unmasking round after (included in round_duration_s).
        pa.field("secagg_failed", pa.bool_(), nullable=True),
        pa.field("secagg_survivors", pa.int64(), nullable=True),
        pa.field("secagg_dropped", pa.int64(), nullable=True),
        pa.field("secagg_neighbours", pa.int64(), nullable=True),
        pa.field("secagg_dropped_keys", pa.int64(), nullable=True),
        pa.field("secagg_pair_masks", pa.int64(), nullable=True),
        pa.field("secagg_bytes_up", pa.int64(), nullable=True),
        pa.field("secagg_bytes_down", pa.int64(), nullable=True),
        pa.field("secagg_setup_s", pa.float64(), nullable=True),
        pa.field("secagg_unmask_s", pa.float64(), nullable=True),
        # clients whose weighted update or weight was clipped to ±clip_range (null with privacy,
        # whose config check makes the range wide enough)
        pa.field("secagg_clipped", pa.int64(), nullable=True),
    ]
)


def rounds_schema(metric_names: tuple[str, ...] = ()) -> pa.Schema:
    """``ROUNDS_SCHEMA`` plus a float64 ``eval_<name>`` column per workload-specific metric
    (macro F1, entity F1, ...); null on rounds without evaluation."""
    extra = [pa.field(f"eval_{name}", pa.float64()) for name in metric_names]
    return pa.schema([*ROUNDS_SCHEMA, *extra])


CLIENT_EVENTS_SCHEMA = pa.schema(
    [
        pa.field("round", pa.int64()),
        pa.field("client_id", pa.int64()),
        pa.field("status", pa.string()),
        pa.field("model_version", pa.int64()),
        pa.field("staleness", pa.int64()),
        pa.field("dispatch_time_s", pa.float64()),
        pa.field("finish_time_s", pa.float64()),
        pa.field("download_s", pa.float64()),
        pa.field("compute_s", pa.float64()),
        pa.field("upload_s", pa.float64()),
        pa.field("num_samples", pa.int64()),
        pa.field("local_epochs", pa.int64()),
        pa.field("bytes_up", pa.int64()),
        pa.field("bytes_down", pa.int64()),
        pa.field("train_loss", pa.float64()),
        # joules the task spent, and the battery's level after it (null without clients.battery)
        pa.field("energy_j", pa.float64()),
        pa.field("battery_j", pa.float64(), nullable=True),
        # whether the client was an attacker for this task (``attack``; fedray.attacks)
        pa.field("adversarial", pa.bool_()),
    ]
)

# Columns that depend on the machine rather than the config and seed; everything else is
# identical across worker counts.
NONDETERMINISTIC_COLUMNS = ("wall_time_s",)
