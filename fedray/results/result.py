"""A finished run, rebuilt from its directory.

result = fedray.Result.from_path("results/prox90")
result.rounds.plot(x="sim_time_s", y="eval_accuracy")
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from fedray.errors import UserError
from fedray.results.writer import CLIENTS_FILE, CONFIG_FILE, ROUNDS_FILE, SUMMARY_FILE, TB_DIR

if TYPE_CHECKING:
    import pandas as pd


class Result:
    """Tables, summary and config of one run directory. Tables load lazily."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def from_path(cls, path: str | Path) -> Result:
        path = Path(path)
        missing = [f for f in (ROUNDS_FILE, CLIENTS_FILE, SUMMARY_FILE) if not (path / f).is_file()]
        if missing:
            raise UserError(
                f"{str(path)!r} is not a complete fedray run directory (missing {', '.join(missing)})"
            )
        return cls(path)

    @cached_property
    def rounds(self) -> pd.DataFrame:
        """One row per server update (rounds.parquet)."""
        import pandas as pd  # imported on first use: a run's driver never needs it

        return pd.read_parquet(self.path / ROUNDS_FILE)

    @cached_property
    def clients(self) -> pd.DataFrame:
        """One row per client task (client_events.parquet)."""
        import pandas as pd

        return pd.read_parquet(self.path / CLIENTS_FILE)

    @cached_property
    def summary(self) -> dict:
        return json.loads((self.path / SUMMARY_FILE).read_text())

    @cached_property
    def config(self) -> dict:
        return yaml.safe_load((self.path / CONFIG_FILE).read_text())

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TB_DIR

    def __repr__(self) -> str:
        return f"Result({str(self.path)!r})"


def first_reaching(rounds: pd.DataFrame, target: float) -> pd.Series | None:
    """The first row of a rounds table whose ``eval_accuracy`` reaches ``target`` — the
    "time to target" of studies and sweeps — or None (rows without evaluation never reach it)."""
    reached = rounds[rounds.eval_accuracy >= target]
    return reached.iloc[0] if len(reached) else None
