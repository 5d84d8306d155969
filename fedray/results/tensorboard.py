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
    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(logdir))

    def log_round(self, row: dict, durations: np.ndarray) -> None:
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
        }
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

    def close(self) -> None:
        self._writer.close()
