"""Progress display for long runs: round, simulated time and the latest eval metric.

On a terminal it is a live rich progress bar; otherwise (CI logs, pipes) one plain line every
tenth of the run, so logs stay readable.
"""

from __future__ import annotations

import math
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _fmt_sim(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


class RoundProgress:
    def __init__(self, total_rounds: int, description: str, enabled: bool = True):
        self.total = total_rounds
        self.enabled = enabled
        self.console = Console(file=sys.stderr)
        self._live = enabled and self.console.is_terminal
        self._acc = "–"
        self._every = max(1, total_rounds // 10)
        if self._live:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("round"),
                MofNCompleteColumn(),
                TextColumn("sim {task.fields[sim]}"),
                TextColumn("acc {task.fields[acc]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._task = self._bar.add_task(description, total=total_rounds, sim="0s", acc="–")
            self._bar.start()

    def update(self, round_: int, sim_time_s: float, eval_accuracy: float) -> None:
        if not self.enabled:
            return
        if not math.isnan(eval_accuracy):
            self._acc = f"{eval_accuracy:.4f}"
        if self._live:
            self._bar.update(self._task, completed=round_, sim=_fmt_sim(sim_time_s), acc=self._acc)
        elif round_ % self._every == 0 or round_ == self.total:
            self.console.print(
                f"round {round_}/{self.total}  sim {_fmt_sim(sim_time_s)}  acc {self._acc}",
                highlight=False,
            )

    def close(self) -> None:
        if self._live:
            self._bar.stop()
