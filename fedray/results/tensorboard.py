"""TensorBoard logging of a run.

Scalars are logged against the round (the step) and, under ``by_sim_time/``, against simulated
seconds (step = whole simulated seconds) and, under ``by_kB_up/``, against cumulative uploaded
kilobytes — TensorBoard steps are integers, so those axes are quantised to 1 s and 1 kB.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


class TensorBoardSink:
    def __init__(self, logdir: Path, purge_step: int | None = None):
        """``purge_step``: a resumed run's first round; TensorBoard hides what an interrupted
        run logged from that step on."""
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(logdir), purge_step=purge_step)

    def log_round(
        self, row: dict, durations: np.ndarray, staleness: np.ndarray | None = None
    ) -> None:
        step = int(row["round"])
        sim_step = int(round(row["sim_time_s"]))
        kb_up = int(row["cum_bytes_up"] // 1000)
        scalars = {
            "train/loss": row["train_loss"],
            "eval/loss": row["eval_loss"],
            "eval/accuracy": row["eval_accuracy"],
            "train/global_loss": row["global_train_loss"],
            "clients/completed": row["num_completed"],
            "clients/dropped": row["num_dropped"],
            "clients/stragglers": row["num_stragglers"],
            "time/round_duration_s": row["round_duration_s"],
            "time/sim_time_s": row["sim_time_s"],
            "comm/cum_MB_up": row["cum_bytes_up"] / 1e6,
            "comm/cum_MB_down": row["cum_bytes_down"] / 1e6,
            "comm/compression_ratio": row["compression_ratio"],
            "async/staleness_mean": row.get("staleness_mean"),
            "async/staleness_max": row.get("staleness_max"),
            "async/num_stale": row.get("num_stale"),
            "privacy/epsilon": row.get("dp_epsilon"),
            "privacy/clipped_fraction": row.get("dp_clipped_fraction"),
        }
        # workload metrics (eval_macro_f1, eval_entity_f1, ...) beyond loss and accuracy
        scalars.update(
            (f"eval/{key[5:]}", value)
            for key, value in row.items()
            if key.startswith("eval_") and key not in ("eval_loss", "eval_accuracy")
        )
        for tag, value in scalars.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self._writer.add_scalar(tag, value, step)
        for tag in ("eval/accuracy", "eval/loss", "train/loss"):
            value = scalars[tag]
            if value is not None and not math.isnan(value):
                self._writer.add_scalar(f"by_sim_time/{tag}", value, sim_step)
                self._writer.add_scalar(f"by_kB_up/{tag}", value, kb_up)
        if len(durations):
            self._writer.add_histogram("clients/task_duration_s", durations, step)
        if staleness is not None and len(staleness) and np.any(staleness > 0):
            # Sync rounds have none; async runs log the staleness of every update received.
            self._writer.add_histogram("async/staleness", staleness, step)

    def close(self) -> None:
        self._writer.close()
