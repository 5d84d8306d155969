"""fedray: a virtual-clock federated-learning simulator on a Ray actor pool.

import fedray
result = fedray.run(fedray.load_config("configs/fedavg_synthetic.yaml", overrides=["rounds=5"]))
result.rounds, result.clients          # pandas DataFrames
fedray.Result.from_path(result.path)   # rebuild from disk
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public names resolve lazily, so a pool actor importing fedray.execution.worker does not pay
# for pandas, pyarrow and the result sinks at start-up.
_EXPORTS = {
    "run": "fedray.api",
    "Config": "fedray.config",
    "load_config": "fedray.config",
    "ConfigError": "fedray.errors",
    "UserError": "fedray.errors",
    "Result": "fedray.results.result",
}

if TYPE_CHECKING:
    from fedray.api import run
    from fedray.config import Config, load_config
    from fedray.errors import ConfigError, UserError
    from fedray.results.result import Result


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedray' has no attribute {name!r}")


__all__ = ["Config", "ConfigError", "Result", "UserError", "__version__", "load_config", "run"]
