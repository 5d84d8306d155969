"""The run configuration: a few small validated pydantic models, YAML loading and ``--set`` overrides.

Every model forbids unknown keys, so a typo is an error rather than a silently ignored option.
Errors are raised as :class:`~fedray.errors.ConfigError` with one line that names the key, the bad
value and what is accepted.

Example::

    cfg = load_config("configs/fedavg_synthetic.yaml", overrides=["rounds=5", "strategy.name=fedprox"])
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from fedray.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- distributions


class Constant(_Model):
    """Every client gets ``value``."""

    dist: Literal["constant"] = "constant"
    value: float


class Uniform(_Model):
    """Uniform on [low, high]."""

    dist: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self):
        if self.high < self.low:
            raise ValueError(f"uniform needs low <= high, got low={self.low}, high={self.high}")
        return self


class LogNormal(_Model):
    """Lognormal with the given median and log-space standard deviation ``sigma``,
    optionally clipped to [min, max]."""

    dist: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(ge=0)
    min: float | None = None
    max: float | None = None


Distribution = Annotated[Constant | Uniform | LogNormal, Field(discriminator="dist")]


def _coerce_dist(value: Any) -> Any:
    # A bare number in YAML means a constant: `speed: 100` == `speed: {dist: constant, value: 100}`.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"dist": "constant", "value": value}
    return value


PROFILE_FIELDS = ("speed", "down_mbps", "up_mbps", "latency_ms", "dropout", "availability")
_POSITIVE = ("speed", "down_mbps", "up_mbps")
_PROBABILITY = ("dropout", "availability")


def _dist_bounds(d) -> tuple[float, float]:
    if isinstance(d, Constant):
        return d.value, d.value
    if isinstance(d, Uniform):
        return d.low, d.high
    return (d.min if d.min is not None else 0.0), (d.max if d.max is not None else math.inf)


class _ProfileFields(_Model):
    @model_validator(mode="before")
    @classmethod
    def _numbers_are_constants(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: (_coerce_dist(v) if k in PROFILE_FIELDS else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _ranges(self):
        for field in PROFILE_FIELDS:
            d = getattr(self, field)
            if d is None:
                continue
            low, high = _dist_bounds(d)
            if field in _POSITIVE and low <= 0 and not isinstance(d, LogNormal):
                raise ValueError(f"{field} must be > 0 (got a lower bound of {low})")
            if field == "latency_ms" and low < 0:
                raise ValueError(f"latency_ms must be >= 0 (got a lower bound of {low})")
            if field in _PROBABILITY and (low < 0 or (high > 1 and not isinstance(d, LogNormal))):
                raise ValueError(f"{field} is a probability and must lie in [0, 1]")
        return self


class Tier(_ProfileFields):
    """A device class in a ``tiers`` mix. Fields left out inherit the profile's top-level ones."""

    name: str = ""
    weight: float = Field(gt=0)
    speed: Distribution | None = None
    down_mbps: Distribution | None = None
    up_mbps: Distribution | None = None
    latency_ms: Distribution | None = None
    dropout: Distribution | None = None
    availability: Distribution | None = None


class ProfileConfig(_ProfileFields):
    """Device profile of the population.

    Units: ``speed`` samples/s of local training, ``down_mbps`` / ``up_mbps`` Mbit/s,
    ``latency_ms`` milliseconds (one way, per transfer), ``dropout`` probability per task,
    ``availability`` probability that a client is online in a given round.
    """

    speed: Distribution = Constant(value=100.0)
    down_mbps: Distribution = Constant(value=20.0)
    up_mbps: Distribution = Constant(value=5.0)
    latency_ms: Distribution = Constant(value=50.0)
    dropout: Distribution = Constant(value=0.0)
    availability: Distribution = Constant(value=1.0)
    tiers: list[Tier] | None = None
    trace: Path | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if self.tiers is not None and self.trace is not None:
            raise ValueError("use either 'tiers' or 'trace', not both")
        if self.tiers is not None and not self.tiers:
            raise ValueError("'tiers' needs at least one tier")
        return self


class ClientsConfig(_Model):
    num_clients: int = Field(default=1000, ge=1, le=10**9)
    profile: ProfileConfig = ProfileConfig()


# --------------------------------------------------------------------------- sections


class WorkloadConfig(_Model):
    """Which task to simulate. Workload-specific options live here too (see the README)."""

    name: Literal["synthetic"] = "synthetic"
    alpha: float = Field(default=1.0, ge=0)
    beta: float = Field(default=1.0, ge=0)
    iid: bool = False
    model: Literal["logreg", "mlp"] = "logreg"
    hidden: int = Field(default=64, ge=1)
    min_samples: int = Field(default=50, ge=2)
    max_samples: int | None = Field(default=None, ge=2)
    eval_clients: int = Field(default=100, ge=1)


_STRATEGY_OPTIONS = {
    "fedavg": set(),
    "fedprox": {"mu"},
    "fedavgm": {"momentum"},
    "fedadagrad": {"beta1", "tau", "initial_accumulator", "bias_correction"},
    "fedadam": {"beta1", "beta2", "tau", "initial_accumulator", "bias_correction"},
    "fedyogi": {"beta1", "beta2", "tau", "initial_accumulator", "bias_correction"},
    "robust": {"rule", "beta", "f", "m"},
}
_FEDOPT = ("fedadagrad", "fedadam", "fedyogi")


class StrategyConfig(_Model):
    """The server strategy and its options; an option the named strategy does not use is an
    error. ``server_lr`` defaults to 1.0, and to 0.01 for the adaptive FedOpt family, whose early
    steps move every coordinate by about η."""

    name: Literal["fedavg", "fedprox", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "robust"] = (
        "fedavg"
    )
    server_lr: float | None = Field(default=None, gt=0)
    mu: float | None = Field(default=None, ge=0, description="FedProx proximal coefficient")
    momentum: float | None = Field(default=None, ge=0, lt=1)
    beta1: float | None = Field(default=None, ge=0, lt=1)
    beta2: float | None = Field(default=None, ge=0, lt=1)
    tau: float | None = Field(default=None, gt=0)
    initial_accumulator: float | None = Field(default=None, ge=0)
    bias_correction: bool | None = None
    rule: Literal["median", "trimmed_mean", "krum", "multi_krum"] | None = None
    beta: float | None = Field(default=None, ge=0, lt=0.5)
    f: int | None = Field(default=None, ge=0)
    m: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _options_belong_to_the_strategy(self):
        given = {k for k in _ALL_STRATEGY_OPTIONS if getattr(self, k) is not None}
        extra = sorted(given - _STRATEGY_OPTIONS[self.name])
        if extra:
            owners = sorted(n for n, opts in _STRATEGY_OPTIONS.items() if extra[0] in opts)
            raise ValueError(
                f"strategy.{extra[0]} is not an option of {self.name}; it belongs to "
                f"{' / '.join(owners)} (set strategy.name) or remove it"
            )
        if self.name == "fedprox" and self.mu is None:
            raise ValueError(
                "strategy fedprox needs strategy.mu, the proximal coefficient (e.g. 0.01)"
            )
        if self.name == "robust" and self.rule is None:
            raise ValueError(
                "strategy robust needs strategy.rule: median, trimmed_mean, krum or multi_krum"
            )
        if self.server_lr is None:
            self.server_lr = 0.01 if self.name in _FEDOPT else 1.0
        return self


_ALL_STRATEGY_OPTIONS = set().union(*_STRATEGY_OPTIONS.values())


class ClientTrainingConfig(_Model):
    lr: float = Field(default=0.01, gt=0)
    batch_size: int = Field(default=10, ge=1)
    local_epochs: int = Field(default=1, ge=1)


class CodecConfig(_Model):
    """One link's codec; options a codec does not take must be left out (see the README)."""

    name: Literal["none", "fp16", "bf16", "int8", "qsgd", "topk", "randk", "signsgd"] = "none"
    fraction: float | None = None
    k: int | None = None
    levels: int | None = None
    bucket_size: int | None = None
    chunk_size: int | None = None
    error_feedback: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        # `--set compression.uplink=fp16` means {name: fp16}.
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _buildable(self):
        from fedray.compression import make_codec

        make_codec(self)  # raises CodecOptionError (a ValueError) naming the option
        return self


_DOWNLINK_CODECS = ("none", "fp16", "bf16", "int8")


class CompressionConfig(_Model):
    """``uplink`` compresses client updates; ``downlink`` the global model sent to clients."""

    uplink: CodecConfig = CodecConfig()
    downlink: CodecConfig = CodecConfig()

    @model_validator(mode="after")
    def _downlink_quantisers_only(self):
        if self.downlink.name not in _DOWNLINK_CODECS:
            raise ValueError(
                f"downlink codec {self.downlink.name!r} is not supported; the model broadcast "
                f"takes {', '.join(_DOWNLINK_CODECS)} (sparsifiers apply to updates, not models)"
            )
        return self


class ExecutionConfig(_Model):
    num_workers: int | None = Field(default=None, ge=1, description="default: one per CPU")
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    clients_per_task: int = Field(default=10, ge=1)
    address: str | None = None
    object_store_mb: int = Field(default=256, ge=80)
    # Off by default: regenerating a client's data costs ~5-7% of its training, while a cache
    # holds a copy per worker and grew each worker by ~130 MB at K=1000 (benchmarks/).
    data_cache_mb: int = Field(default=0, ge=0)
    client_state_mb: int = Field(default=256, ge=0, description="in-memory per-client state")
    # auto: train each group as one batched computation where the workload's model allows it
    # (fedray/execution/batched.py); on: insist (an error where it cannot); off: client by client.
    vectorize: Literal["auto", "on", "off"] = "auto"


class OutputConfig(_Model):
    root: Path = Path("results")
    name: str | None = None
    overwrite: bool = False
    tensorboard: bool = True


class Config(_Model):
    """A complete, validated fedray run configuration."""

    seed: int = Field(default=0, ge=0)
    rounds: int = Field(default=20, ge=1)
    clients_per_round: int = Field(default=10, ge=1)
    over_selection: float = Field(default=1.0, ge=1.0)
    deadline_s: float | None = Field(default=None, gt=0)
    stragglers: Literal["drop", "partial", "wait"] = "drop"
    eval_every: int = Field(default=1, ge=1)
    workload: WorkloadConfig = WorkloadConfig()
    clients: ClientsConfig = ClientsConfig()
    strategy: StrategyConfig = StrategyConfig()
    client: ClientTrainingConfig = ClientTrainingConfig()
    compression: CompressionConfig = CompressionConfig()
    execution: ExecutionConfig = ExecutionConfig()
    output: OutputConfig = OutputConfig()
    _source: Path | None = PrivateAttr(default=None)  # the YAML file it was loaded from

    @property
    def source_name(self) -> str:
        """Stem of the config file, used in default run names."""
        return self._source.stem if self._source is not None else "config"

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.clients_per_round > self.clients.num_clients:
            raise ValueError(
                f"clients_per_round={self.clients_per_round} exceeds "
                f"clients.num_clients={self.clients.num_clients}; lower it or add clients"
            )
        if self.workload.eval_clients > self.clients.num_clients:
            self.workload.eval_clients = self.clients.num_clients
        return self

    @property
    def num_selected(self) -> int:
        """Clients sampled per round, after over-selection."""
        return min(
            self.clients.num_clients, math.ceil(self.clients_per_round * self.over_selection)
        )


# --------------------------------------------------------------------------- loading


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    # Drop the discriminator tags pydantic inserts into the location ("speed.lognormal.median").
    loc = [str(p) for p in first["loc"] if p not in ("constant", "uniform", "lognormal")]
    key = ".".join(loc) or "<config>"
    kind, msg, value = first["type"], first["msg"], first.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        accepted = ", ".join(parent.model_fields) if parent else "see the README"
        return f"unknown key '{key}'; accepted keys here: {accepted}"
    if kind == "union_tag_invalid":
        return f"{key}: unknown dist {value.get('dist')!r}; use one of constant, uniform, lognormal"
    if kind == "union_tag_not_found":
        return f"{key}: a distribution needs 'dist' (constant, uniform or lognormal) or a number"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"{key}{shown}: {msg}"


def _model_at(path: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in path:
        if model is None or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        model = next(
            (
                a
                for a in getattr(ann, "__args__", (ann,))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None,
        )
    return model


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"clients.num_clients=1000"`` -> (["clients", "num_clients"], 1000). Values are YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} needs the form key=value, e.g. rounds=50")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; use e.g. clients.num_clients=100")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list) -> dict:
    """Apply ``"key=value"`` strings (values parsed as YAML) or ``(dotted_key, value)`` pairs."""
    for text in overrides:
        path, value = (
            parse_override(text) if isinstance(text, str) else (text[0].split("."), text[1])
        )
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(f"override {text!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def config_from_dict(data: dict, overrides: list[str] | None = None) -> Config:
    data = apply_overrides(dict(data or {}), list(overrides or []))
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid config: {_format_error(err)}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply dotted ``key=value`` overrides and validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(path)!r} must be a mapping of keys, got {type(data).__name__}"
        )
    cfg = config_from_dict(data, overrides)
    if cfg.clients.profile.trace is not None and not cfg.clients.profile.trace.is_absolute():
        # Trace paths are relative to the config file, so configs stay runnable from anywhere.
        candidate = path.parent / cfg.clients.profile.trace
        if candidate.exists() or not cfg.clients.profile.trace.exists():
            cfg.clients.profile.trace = candidate
    cfg._source = path
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
