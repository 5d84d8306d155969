"""TensorBoard logging of a run.

Scalars are logged against the round (the step) and, under ``by_sim_time/``, against simulated
seconds (step = whole simulated seconds) and, under ``by_kB_up/``, against cumulative uploaded
kilobytes — TensorBoard steps are integers, so those axes are quantised to 1 s and 1 kB.

When the sink closes it writes a custom-scalars layout (TensorBoard's *Custom Scalars* tab) that
groups the standard views — accuracy and losses by round, by simulated time and by uploaded kB,
client outcomes, communication, and the async and privacy views — over the tags the run logged.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# The standard views: (category, chart, tags). A chart keeps only the tags the run logged, so a
# run without privacy gets no privacy view; the async view needs some staleness above zero
# (sync rounds log staleness 0 throughout).
LAYOUT = (
    ("fedray: by round", "accuracy", ("eval/accuracy",)),
    ("fedray: by round", "losses", ("train/loss", "eval/loss", "train/global_loss")),
    ("fedray: by simulated time (s)", "accuracy", ("by_sim_time/eval/accuracy",)),
    (
        "fedray: by simulated time (s)",
        "losses",
        ("by_sim_time/train/loss", "by_sim_time/eval/loss"),
    ),
    ("fedray: by uploaded kB", "accuracy", ("by_kB_up/eval/accuracy",)),
    ("fedray: by uploaded kB", "losses", ("by_kB_up/train/loss", "by_kB_up/eval/loss")),
    (
        "fedray: clients",
        "outcomes per round",
        (
            "clients/completed",
            "clients/dropped",
            "clients/offline",
            "clients/depleted",
            "clients/stragglers",
        ),
    ),
    ("fedray: clients", "round duration (simulated s)", ("time/round_duration_s",)),
    ("fedray: clients", "waited for clients (simulated s)", ("time/wait_s",)),
    ("fedray: energy", "kJ per round", ("energy/round_kJ",)),
    ("fedray: energy", "cumulative kJ", ("energy/cum_kJ",)),
    ("fedray: energy", "accuracy by cumulative kJ", ("by_kJ/eval/accuracy",)),
    ("fedray: communication", "cumulative MB", ("comm/cum_MB_up", "comm/cum_MB_down")),
    ("fedray: communication", "compression ratio", ("comm/compression_ratio",)),
    ("fedray: async", "staleness", ("async/staleness_mean", "async/staleness_max")),
    ("fedray: async", "stale updates", ("async/num_stale",)),
    ("fedray: privacy", "epsilon", ("privacy/epsilon",)),
    ("fedray: privacy", "clipped fraction", ("privacy/clipped_fraction",)),
)
_STANDARD_EVAL = ("eval/accuracy", "eval/loss")


def custom_scalars_layout(logged: set[str], stale: bool = True) -> dict:
    """The custom-scalars layout over the ``logged`` tags, in the form of torch's
    ``SummaryWriter.add_custom_scalars``: {category: {chart: ["Multiline", [tags]]}}. ``stale``:
    whether any update arrived stale (else the async view is left out)."""
    layout: dict = {}
    for category, chart, tags in LAYOUT:
        if category == "fedray: async" and not stale:
            continue
        present = [t for t in tags if t in logged]
        if present:
            layout.setdefault(category, {})[chart] = ["Multiline", present]
    workload = sorted(t for t in logged if t.startswith("eval/") and t not in _STANDARD_EVAL)
    for tag in workload:  # macro F1, entity F1, perplexity, ...: each on its own scale
        layout.setdefault("fedray: by round", {})[tag.split("/", 1)[1]] = ["Multiline", [tag]]
    return layout


class TensorBoardSink:
    def __init__(self, logdir: Path, purge_step: int | None = None):
        """``purge_step``: a resumed run's first round; TensorBoard hides what an interrupted
        run logged from that step on."""
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(logdir), purge_step=purge_step)
        self._logged: set[str] = set()
        self._stale = False

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
            "clients/offline": row.get("num_offline"),
            "clients/depleted": row.get("num_depleted"),
            "clients/stragglers": row["num_stragglers"],
            "time/wait_s": row.get("wait_s"),
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
            "privacy/clip_norm": row.get("dp_clip_norm"),
        }
        # workload metrics (eval_macro_f1, eval_entity_f1, ...) beyond loss and accuracy
        scalars.update(
            (f"eval/{key[5:]}", value)
            for key, value in row.items()
            if key.startswith("eval_") and key not in ("eval_loss", "eval_accuracy")
        )
        cum_energy = row.get("cum_energy_j") or 0.0
        if cum_energy > 0:  # energy is modelled (the profile's energy fields are set)
            scalars["energy/round_kJ"] = row["energy_j"] / 1e3
            scalars["energy/cum_kJ"] = cum_energy / 1e3
        staleness_max = row.get("staleness_max")
        self._stale = self._stale or (staleness_max is not None and staleness_max > 0)
        for tag, value in scalars.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self._writer.add_scalar(tag, value, step)
                self._logged.add(tag)
        for tag in ("eval/accuracy", "eval/loss", "train/loss"):
            value = scalars[tag]
            if value is not None and not math.isnan(value):
                self._writer.add_scalar(f"by_sim_time/{tag}", value, sim_step)
                self._writer.add_scalar(f"by_kB_up/{tag}", value, kb_up)
                self._logged.update((f"by_sim_time/{tag}", f"by_kB_up/{tag}"))
        accuracy = scalars["eval/accuracy"]
        if cum_energy > 0 and accuracy is not None and not math.isnan(accuracy):
            self._writer.add_scalar("by_kJ/eval/accuracy", accuracy, int(cum_energy // 1e3))
            self._logged.add("by_kJ/eval/accuracy")
        if len(durations):
            self._writer.add_histogram("clients/task_duration_s", durations, step)
        if staleness is not None and len(staleness) and np.any(staleness > 0):
            # Sync rounds have none; async runs log the staleness of every update received.
            self._writer.add_histogram("async/staleness", staleness, step)

    def close(self) -> None:
        layout = custom_scalars_layout(self._logged, self._stale)
        if layout:
            self._writer.add_custom_scalars(layout)
        self._writer.close()
