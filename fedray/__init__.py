"""fedray: a virtual-clock federated-learning simulator on a Ray actor pool.

import fedray
result = fedray.run(fedray.load_config("configs/fedavg_synthetic.yaml", overrides=["rounds=5"]))
result.rounds, result.clients          # pandas DataFrames
fedray.Result.from_path(result.path)   # rebuild from disk
"""

from fedray.api import run
from fedray.config import Config, load_config
from fedray.errors import ConfigError, UserError
from fedray.results.result import Result

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "Result", "UserError", "load_config", "run", "__version__"]
