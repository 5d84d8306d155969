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
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from fedray.errors import ConfigError, one_line
from fedray.userfiles import MAX_FLOAT, MAX_INT, folder_name_problem, read_text, short_repr


class _Model(BaseModel):
    # inf and nan are refused everywhere: no option means "infinitely many" or "undefined"
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


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


# Energy and battery fields of a device (fedray.clients.energy): joules per sample of local
# training, per MB sent and received, watts drawn while a task runs, battery capacity in joules,
# watts while charging; and the device's time zone, in hours from the virtual clock's midnight.
ENERGY_FIELDS = (
    "compute_j_per_sample",
    "up_j_per_mb",
    "down_j_per_mb",
    "idle_w",
    "battery_j",
    "charge_w",
)
PROFILE_FIELDS = (
    "speed",
    "down_mbps",
    "up_mbps",
    "latency_ms",
    "dropout",
    "availability",
    *ENERGY_FIELDS,
    "timezone_h",
)
# FLOP/s of local training: when given, a client's speed is flops / the workload's measured
# training FLOPs per sample (fedray.clients.profiles), so it is drawn but not a Profiles column.
# memory_gb: a device's memory for training; a client whose device cannot hold the workload's
# measured training footprint is never selected (fedray.sim.conditions). Drawn, not a column.
DRAWN_FIELDS = (*PROFILE_FIELDS, "flops", "memory_gb")
_POSITIVE = ("speed", "down_mbps", "up_mbps", "battery_j", "flops", "memory_gb")
_NON_NEGATIVE = (
    "latency_ms",
    "compute_j_per_sample",
    "up_j_per_mb",
    "down_j_per_mb",
    "idle_w",
    "charge_w",
)
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
            return {k: (_coerce_dist(v) if k in DRAWN_FIELDS else v) for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _ranges(self):
        if self.flops is not None and "speed" in self.model_fields_set:
            raise ValueError(
                "give a device's compute as speed (samples/s) or flops (FLOP/s), not both"
            )
        for field in DRAWN_FIELDS:
            d = getattr(self, field)
            if d is None:
                continue
            low, high = _dist_bounds(d)
            if field in _POSITIVE and low <= 0 and not isinstance(d, LogNormal):
                raise ValueError(f"{field} must be > 0 (got a lower bound of {low})")
            if field in _NON_NEGATIVE and low < 0:
                raise ValueError(f"{field} must be >= 0 (got a lower bound of {low})")
            if field == "timezone_h" and (low < -24 or high > 24):
                raise ValueError("timezone_h is an offset in hours and must lie in [-24, 24]")
            if field in _PROBABILITY and (low < 0 or (high > 1 and not isinstance(d, LogNormal))):
                raise ValueError(f"{field} is a probability and must lie in [0, 1]")
        return self


class Tier(_ProfileFields):
    """A device class in a ``tiers`` mix. Fields left out inherit the profile's top-level ones."""

    name: str = ""
    weight: float = Field(gt=0)
    speed: Distribution | None = None
    flops: Distribution | None = None
    memory_gb: Distribution | None = None
    down_mbps: Distribution | None = None
    up_mbps: Distribution | None = None
    latency_ms: Distribution | None = None
    dropout: Distribution | None = None
    availability: Distribution | None = None
    compute_j_per_sample: Distribution | None = None
    up_j_per_mb: Distribution | None = None
    down_j_per_mb: Distribution | None = None
    idle_w: Distribution | None = None
    battery_j: Distribution | None = None
    charge_w: Distribution | None = None
    timezone_h: Distribution | None = None


class ProfileConfig(_ProfileFields):
    """Device profile of the population.

    Units: ``speed`` samples/s of local training (or ``flops``, FLOP/s of local training, for
    workloads that measure their training FLOPs per sample: speed is then flops / FLOPs per
    sample, so one device profile fits models of any size), ``down_mbps`` / ``up_mbps`` Mbit/s,
    ``latency_ms`` milliseconds (one way, per transfer), ``dropout`` probability per task,
    ``availability`` probability that a client is online in a given round (or async dispatch).

    Energy (all 0 by default, so energy is not modelled until set; :mod:`fedray.clients.energy`):
    ``compute_j_per_sample`` joules per sample of local training, ``up_j_per_mb`` /
    ``down_j_per_mb`` joules per MB (10⁶ bytes) sent / received, ``idle_w`` watts drawn for the
    whole task; ``battery_j`` capacity and ``charge_w`` charging power, used with
    ``clients.battery``. ``timezone_h``: the device's offset in hours from the virtual clock,
    used by diurnal availability and plugged-in hours.
    """

    speed: Distribution = Constant(value=100.0)
    # FLOP/s instead of speed: speed = flops / the workload's training FLOPs per sample
    flops: Distribution | None = None
    # GB (10⁹ bytes) for training; unlimited by default. Clients below the workload's measured
    # training footprint are ineligible (never selected; counted in summary.json)
    memory_gb: Distribution | None = None
    down_mbps: Distribution = Constant(value=20.0)
    up_mbps: Distribution = Constant(value=5.0)
    latency_ms: Distribution = Constant(value=50.0)
    dropout: Distribution = Constant(value=0.0)
    availability: Distribution = Constant(value=1.0)
    compute_j_per_sample: Distribution = Constant(value=0.0)
    up_j_per_mb: Distribution = Constant(value=0.0)
    down_j_per_mb: Distribution = Constant(value=0.0)
    idle_w: Distribution = Constant(value=0.0)
    battery_j: Distribution = Constant(value=40_000.0)  # ~11 Wh, a phone
    charge_w: Distribution = Constant(value=10.0)
    timezone_h: Distribution = Constant(value=0.0)
    tiers: list[Tier] | None = None
    trace: Path | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if self.tiers is not None and self.trace is not None:
            raise ValueError("use either 'tiers' or 'trace', not both")
        if self.tiers is not None and not self.tiers:
            raise ValueError("'tiers' needs at least one tier")
        return self


def _hours_window(value: list[float]) -> list[float]:
    start, end = value
    if not (0 <= start < 24 and 0 <= end <= 24):
        raise ValueError(
            f"hours are local clock hours: give [start, end] with 0 <= start < 24 and "
            f"0 <= end <= 24 (e.g. [8, 23], or [22, 7] across midnight), got {value}"
        )
    if start == end:
        raise ValueError(f"[{start}, {end}] is an empty window; use e.g. [0, 24] for all day")
    return value


HoursWindow = Annotated[list[float], Field(min_length=2, max_length=2)]


class DiurnalConfig(_Model):
    """Online only within ``active_hours`` of the client's local day (its ``timezone_h``)."""

    active_hours: HoursWindow

    _check = field_validator("active_hours")(classmethod(lambda cls, v: _hours_window(v)))


class MarkovConfig(_Model):
    """A two-state on/off process per client: exponential up and down times with these means
    (seconds), started in its stationary state."""

    mean_up_s: float = Field(gt=0, le=1e12)
    mean_down_s: float = Field(gt=0, le=1e12)


class OutageConfig(_Model):
    """Correlated outages: clients sit behind ``groups`` networks (a seeded assignment); each
    network fails for exponential times of mean ``mean_duration_s`` after exponential up times of
    mean ``mean_between_s``, taking all its clients offline together."""

    groups: int = Field(ge=1, le=10**9)
    mean_between_s: float = Field(gt=0, le=1e12)
    mean_duration_s: float = Field(gt=0, le=1e12)


class AvailabilityConfig(_Model):
    """Availability over virtual time (:mod:`fedray.clients.availability`). A client is online
    when every configured part says so, and also draws ``profile.availability`` per round as
    before. ``trace``: intervals in which each client is online (CSV or Parquet with columns
    client_id, start_s, end_s and optionally period_s). ``mid_task``: a client that goes offline
    during a task ``drop``s (status ``offline``) or finishes it anyway (``finish``).
    ``retry_s``: how long the server waits when no client is online before trying again."""

    diurnal: DiurnalConfig | None = None
    markov: MarkovConfig | None = None
    outages: OutageConfig | None = None
    trace: Path | None = None
    mid_task: Literal["drop", "finish"] = "drop"
    retry_s: float = Field(default=300.0, gt=0, le=1e9)

    @property
    def varies(self) -> bool:
        """Whether availability depends on virtual time at all."""
        return any(x is not None for x in (self.diurnal, self.markov, self.outages, self.trace))


class BatteryConfig(_Model):
    """Batteries (:mod:`fedray.clients.battery`): each starts at ``initial_level`` (a fraction of
    its profile's ``battery_j``), drains by the energy of the tasks it runs unplugged and charges
    at ``charge_w`` during ``plugged_hours`` of its local day. It takes part when
    ``participate``: ``charging``, ``above_min`` (level >= ``min_level``) or
    ``charging_or_above_min``. A task that would empty it stops there (status ``depleted``)."""

    plugged_hours: HoursWindow = [22.0, 7.0]
    min_level: float = Field(default=0.2, ge=0, le=1)
    participate: Literal["charging", "above_min", "charging_or_above_min"] = "charging_or_above_min"
    initial_level: Distribution = Uniform(dist="uniform", low=0.3, high=1.0)

    _check = field_validator("plugged_hours")(classmethod(lambda cls, v: _hours_window(v)))

    @field_validator("initial_level", mode="before")
    @classmethod
    def _level_number(cls, value: Any) -> Any:
        return _coerce_dist(value)

    @field_validator("initial_level")
    @classmethod
    def _level_range(cls, d):
        low, high = _dist_bounds(d)
        if low < 0 or (high > 1 and not isinstance(d, LogNormal)):
            raise ValueError("initial_level is a fraction of battery_j and must lie in [0, 1]")
        return d


class SelectionConfig(_Model):
    """Energy-aware selection. ``max_task_energy_j``: clients whose next task would cost more
    joules (by the cost model, at dispatch) are not selected. ``prefer_low_energy``: draw that
    many times the clients needed and keep the cheapest (e.g. 2.0); null selects uniformly."""

    max_task_energy_j: float | None = Field(default=None, gt=0, le=1e15)
    prefer_low_energy: float | None = Field(default=None, gt=1, le=100)


class ClientsConfig(_Model):
    num_clients: int = Field(default=1000, ge=1, le=10**9)
    profile: ProfileConfig = ProfileConfig()
    availability: AvailabilityConfig = AvailabilityConfig()
    battery: BatteryConfig | None = None  # off by default
    selection: SelectionConfig = SelectionConfig()


# --------------------------------------------------------------------------- sections


class SyntheticWorkloadConfig(_Model):
    """Synthetic(α, β) of the FedProx paper, the default (logreg/MLP; accuracy)."""

    name: Literal["synthetic"] = "synthetic"
    alpha: float = Field(default=1.0, ge=0)
    beta: float = Field(default=1.0, ge=0)
    iid: bool = False
    model: Literal["logreg", "mlp"] = "logreg"
    hidden: int = Field(default=64, ge=1, le=1 << 16)
    min_samples: int = Field(default=50, ge=2, le=10**7)
    max_samples: int | None = Field(default=None, ge=2, le=10**7)
    eval_clients: int = Field(default=100, ge=1, le=10**7)

    def check_num_clients(self, num_clients: int) -> None:
        """Any number of clients works: each one's data is generated from its id."""


class EcomWorldConfig(_Model):
    """Size of the generated e-commerce world (workloads/ecommerce/world.py)."""

    num_platforms: int = Field(default=4, ge=1, le=6)
    shops_per_platform: int = Field(default=5, ge=1, le=1000)
    num_brands: int = Field(default=30, ge=2, le=100)
    num_products: int = Field(default=400, ge=20, le=10**6)
    num_users: int = Field(default=200, ge=1, le=10**6)
    interactions_per_user: int = Field(default=10, ge=1, le=1000)
    utterances_per_platform: int = Field(default=500, ge=10, le=10**6)
    # Relative paths resolve against the working directory of the process that builds the world.
    cache_dir: Path | None = Path("results/.cache")


_PARTITION_OPTIONS = {
    "natural": {"by"},
    "dirichlet": {"alpha"},
    "powerlaw": {"exponent"},
    "iid": set(),
}


class PartitionConfig(_Model):
    """How examples are split into clients: ``natural`` (``by`` platform or shop),
    ``dirichlet`` (label skew, ``alpha``), ``powerlaw`` (quantity skew, ``exponent``) or ``iid``."""

    scheme: Literal["natural", "dirichlet", "powerlaw", "iid"] = "natural"
    by: Literal["platform", "shop"] | None = None
    alpha: float | None = Field(default=None, gt=0)
    exponent: float | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _bare_scheme(cls, data: Any) -> Any:
        # `--set workload.partition=iid` means {scheme: iid}.
        return {"scheme": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _options_belong_to_the_scheme(self):
        for key in ("by", "alpha", "exponent"):
            if getattr(self, key) is not None and key not in _PARTITION_OPTIONS[self.scheme]:
                owner = next(n for n, opts in _PARTITION_OPTIONS.items() if key in opts)
                raise ValueError(
                    f"partition.{key} is an option of the {owner} scheme, not {self.scheme}; "
                    f"remove it or set scheme: {owner}"
                )
        if self.scheme == "natural" and self.by is None:
            self.by = "platform"
        if self.scheme == "dirichlet" and self.alpha is None:
            self.alpha = 0.5
        if self.scheme == "powerlaw" and self.exponent is None:
            self.exponent = 1.0
        return self


class _KnowsNumClients(_Model):
    """A workload section that needs the run's ``clients.num_clients``; :class:`Config`'s
    cross-checks hand it over through ``check_num_clients``."""

    _num_clients: int | None = PrivateAttr(default=None)

    @property
    def num_clients(self) -> int:
        """clients.num_clients of the run (set by :class:`Config`'s cross-checks)."""
        if self._num_clients is None:
            raise RuntimeError("workload config used outside a Config: num_clients is unknown")
        return self._num_clients


class _EcomTaskConfig(_KnowsNumClients):
    """Options shared by the e-commerce text tasks (workloads/ecommerce/)."""

    world: EcomWorldConfig = EcomWorldConfig()
    # `generated` (the seeded world) or the path of a user file (see the README for its format)
    source: str = "generated"
    partition: PartitionConfig = PartitionConfig()
    eval_clients: int = Field(default=100, ge=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    embed_dim: int = Field(default=32, ge=1, le=4096)
    hidden: int = Field(default=64, ge=1, le=4096)
    max_len: int = Field(default=32, ge=2, le=4096)

    @property
    def generated(self) -> bool:
        return self.source == "generated"

    @model_validator(mode="after")
    def _natural_needs_the_world(self):
        if not self.generated and self.partition.scheme == "natural":
            raise ValueError(
                "partition natural needs the generated world's platforms and shops; with a user "
                "file as source use partition dirichlet, powerlaw or iid"
            )
        return self

    def check_num_clients(self, num_clients: int) -> None:
        if self.partition.scheme == "natural":
            w = self.world
            given = w.num_platforms * (w.shops_per_platform if self.partition.by == "shop" else 1)
            if num_clients != given:
                unit = "shop" if self.partition.by == "shop" else "platform"
                raise ValueError(
                    f"clients.num_clients={num_clients} but partition natural by {unit} gives "
                    f"{given} clients; set clients.num_clients={given} or use partition dirichlet"
                )
        self._num_clients = num_clients


class EcomIntentConfig(_EcomTaskConfig):
    """Customer-service intent per platform (fastText bag of embeddings; accuracy, macro F1)."""

    name: Literal["ecom_intent"]


class EcomRelationConfig(_EcomTaskConfig):
    """Relation between two marked entities in a sentence (CNN; accuracy, macro F1)."""

    name: Literal["ecom_relation"]


class EcomNerConfig(_EcomTaskConfig):
    """BIO entities of product titles across platforms (CNN tagger; entity-level F1)."""

    name: Literal["ecom_ner"]


class EcomLmConfig(_EcomTaskConfig):
    """Causal LM over product text (tiny transformer; perplexity); LoRA adapters via lora_rank."""

    name: Literal["ecom_lm"]
    embed_dim: int = Field(default=128, ge=1, le=4096)  # d_model
    hidden: int = Field(default=256, ge=1, le=16384)  # feed-forward width
    max_len: int = Field(default=40, ge=2, le=4096)
    num_layers: int = Field(default=2, ge=1, le=48)
    num_heads: int = Field(default=4, ge=1, le=64)
    lora_rank: int | None = Field(default=None, ge=1, le=1024)
    # Adam steps of central pre-training on a public world before federated training (0: none)
    pretrain_steps: int = Field(default=0, ge=0, le=100000)

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim={self.embed_dim} must be a multiple of num_heads={self.num_heads}"
            )
        return self


class HfArchitectureConfig(_Model):
    """A randomly initialised transformers causal LM of a named architecture (offline: nothing
    is downloaded). Its vocabulary is the locally trained BPE tokenizer's."""

    architecture: Literal["llama", "gpt2"] = "llama"
    hidden_size: int = Field(default=64, ge=8, le=16384)
    num_layers: int = Field(default=2, ge=1, le=128)
    num_heads: int = Field(default=4, ge=1, le=256)
    intermediate_size: int | None = Field(default=None, ge=8, le=65536)  # default 4 × hidden

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.config.hidden_size={self.hidden_size} must be a multiple of "
                f"num_heads={self.num_heads}"
            )
        return self


class HfModelConfig(_Model):
    """Where the base model comes from: ``path``, a local ``save_pretrained`` directory of any
    causal LM (with its tokenizer), or ``config``, a random model built offline."""

    path: str | None = None
    config: HfArchitectureConfig | None = None
    # vocabulary of the BPE tokenizer trained on the federation's own train text (config only)
    vocab_size: int = Field(default=1024, ge=300, le=1_000_000)
    # Adam steps of central causal-LM pre-training of a config-built base on a public world's
    # product text (titles, descriptions) before federated LoRA fine-tuning (0: random base)
    pretrain_steps: int = Field(default=0, ge=0, le=100000)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.config is None):
            raise ValueError(
                "set exactly one of model.path (a local save_pretrained directory) or "
                "model.config (architecture, hidden_size, num_layers, num_heads)"
            )
        if self.path is not None and self.pretrain_steps:
            raise ValueError(
                "model.pretrain_steps pre-trains a model built from model.config; a model.path "
                "checkpoint is already trained: remove pretrain_steps"
            )
        return self


class LoraOptions(_Model):
    """peft ``LoraConfig`` keys. ``ffa``: FFA-LoRA (Sun et al. 2024), A frozen at its seeded
    initialisation on every client, only B trained, sent and averaged."""

    r: int = Field(default=8, ge=1, le=4096)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: peft's default for the architecture
    ffa: bool = False


class EcomQaLoraConfig(_EcomTaskConfig):
    """LoRA instruction tuning of a transformers causal LM via peft (QA, intents or a JSONL;
    perplexity, exact match, token F1)."""

    name: Literal["ecom_qa_lora"]
    model: HfModelConfig = HfModelConfig(config=HfArchitectureConfig())
    lora: LoraOptions = LoraOptions()
    # which instruction examples the generated world contributes
    tasks: list[Literal["qa", "intent"]] = ["qa", "intent"]
    max_len: int = Field(default=96, ge=8, le=8192)  # tokens of prompt + answer
    decode_examples: int = Field(default=32, ge=0, le=100000)  # greedy-decoded per evaluation
    max_new_tokens: int = Field(default=24, ge=1, le=4096)
    eval_clients: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _natural_needs_the_world(self):
        # Replaces the text tasks' check: a JSONL file's `client` column is a natural partition.
        p = self.partition
        if not self.generated and p.scheme == "natural" and p.by != "platform":
            raise ValueError(
                "partition natural with a JSONL file means the file's client column; remove "
                "partition.by, or use partition iid, dirichlet or powerlaw"
            )
        if not self.tasks:
            raise ValueError("workload.tasks is empty; use [qa], [intent] or [qa, intent]")
        return self

    def check_num_clients(self, num_clients: int) -> None:
        if not self.generated:
            self._num_clients = num_clients  # checked against the file's client column
            return
        super().check_num_clients(num_clients)


class EcomKgConfig(_EcomTaskConfig):
    """KG completion over the platforms' subgraphs, FedE (DistMult/ComplEx/TransE; filtered MRR,
    Hits@10). Entity embeddings are federated row by row; relation embeddings stay local."""

    name: Literal["ecom_kg"]
    model: Literal["distmult", "complex", "transe"] = "distmult"
    embed_dim: int = Field(default=64, ge=2, le=4096)
    negatives: int = Field(default=16, ge=1, le=1024)  # corrupted triples per positive
    test_fraction: float = Field(default=0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _natural_needs_the_world(self):
        # Replaces the text tasks' check: a triple file's `client` column is a natural partition.
        p = self.partition
        if not self.generated and p.scheme == "natural" and p.by != "platform":
            raise ValueError(
                "partition natural with a triple file means the file's client column; remove "
                "partition.by, or use partition iid, dirichlet or powerlaw"
            )
        if self.model == "complex" and self.embed_dim % 2:
            raise ValueError(
                f"model complex stores real and imaginary halves: embed_dim={self.embed_dim} "
                "must be even"
            )
        return self

    def check_num_clients(self, num_clients: int) -> None:
        if not self.generated:
            # a file's client column sets the count; the workload checks it when it reads the file
            self._num_clients = num_clients
            return
        super().check_num_clients(num_clients)


_REC_UNUSED_WORLD_KEYS = {"num_users", "interactions_per_user", "utterances_per_platform"}


class EcomRecConfig(_KnowsNumClients):
    """Personalised recommendation, one client per user (MF/NCF; HR@10, NDCG@10). Users are
    generated lazily from (seed, user id); user embeddings never leave the client and item
    embeddings travel as row-sparse updates."""

    name: Literal["ecom_rec"]
    world: EcomWorldConfig = EcomWorldConfig()
    # `generated` (users drawn lazily over the world's catalogue) or a CSV/Parquet file of
    # user_id,item_id,timestamp interactions
    source: str = "generated"
    model: Literal["mf", "ncf"] = "mf"
    embed_dim: int = Field(default=32, ge=1, le=4096)
    hidden: int = Field(default=64, ge=1, le=4096)  # NCF's MLP width
    # SGD step of NCF's dense MLP tower: every example moves it, so the client.lr that the
    # embedding rows need (each sees few examples per minibatch) would blow it up
    tower_lr: float = Field(default=0.5, gt=0)
    interactions_per_user: int = Field(default=20, ge=3, le=10000)  # mean, generated users
    negatives: int = Field(default=4, ge=1, le=1000)  # sampled negatives per training positive
    eval_negatives: int = Field(default=100, ge=1, le=100000)  # leave-one-out ranking
    # before training and ranking, a device fits its user vector to its train split (items
    # frozen): this many Newton steps on the BCE + fold_in_l2/2·‖user‖²; 0 keeps the stored one
    fold_in_steps: int = Field(default=5, ge=0, le=1000)
    fold_in_l2: float = Field(default=0.01, gt=0)
    eval_clients: int = Field(default=500, ge=1)

    @property
    def generated(self) -> bool:
        return self.source == "generated"

    @model_validator(mode="after")
    def _world_keys_it_uses(self):
        # The world's own users, interactions and utterances play no part here; setting them
        # would silently change nothing.
        # Their defaults are accepted: a dumped config (run/config.yaml, `fedray validate`)
        # lists every key and must load back.
        defaults = EcomWorldConfig()
        unused = sorted(
            k
            for k in self.world.model_fields_set & _REC_UNUSED_WORLD_KEYS
            if getattr(self.world, k) != getattr(defaults, k)
        )
        if unused:
            raise ValueError(
                f"ecom_rec draws its own users, so workload.world.{unused[0]} has no effect; "
                "remove it (use clients.num_clients and workload.interactions_per_user)"
            )
        return self

    def check_num_clients(self, num_clients: int) -> None:
        """Generated users: any number (each is drawn from its id). A source file's distinct
        users are checked against it when the workload reads the file."""
        self._num_clients = num_clients


WORKLOAD_MODELS: dict[str, type[_Model]] = {
    "synthetic": SyntheticWorkloadConfig,
    "ecom_intent": EcomIntentConfig,
    "ecom_relation": EcomRelationConfig,
    "ecom_ner": EcomNerConfig,
    "ecom_lm": EcomLmConfig,
    "ecom_kg": EcomKgConfig,
    "ecom_rec": EcomRecConfig,
    "ecom_qa_lora": EcomQaLoraConfig,
}


def _default_workload_name(data: Any) -> Any:
    # `workload: {alpha: 0.5}` predates the other workloads and still means synthetic.
    if isinstance(data, dict) and "name" not in data:
        return {**data, "name": "synthetic"}
    return data


WorkloadConfig = Annotated[
    SyntheticWorkloadConfig
    | EcomIntentConfig
    | EcomRelationConfig
    | EcomNerConfig
    | EcomLmConfig
    | EcomKgConfig
    | EcomRecConfig
    | EcomQaLoraConfig,
    BeforeValidator(_default_workload_name),
    Field(discriminator="name"),
]


_STRATEGY_OPTIONS = {
    "fedavg": set(),
    "fedprox": {"mu"},
    "fedavgm": {"momentum"},
    "fedadagrad": {"beta1", "tau", "initial_accumulator", "bias_correction"},
    "fedadam": {"beta1", "beta2", "tau", "initial_accumulator", "bias_correction"},
    "fedyogi": {"beta1", "beta2", "tau", "initial_accumulator", "bias_correction"},
    "robust": {"rule", "beta", "f", "m", "weighting"},
    "fedasync": {"alpha"},
    "scaffold": set(),
}
_FEDOPT = ("fedadagrad", "fedadam", "fedyogi")


def _bias_correction_alias(value: Any) -> Any:
    # `bias_correction: true` predates the three conventions and meant Adam's corrected moments.
    return {True: "moments", False: "none"}.get(value, value) if isinstance(value, bool) else value


class StrategyConfig(_Model):
    """The server strategy and its options; an option the named strategy does not use is an
    error. ``server_lr`` defaults to 1.0, and to 0.01 for the adaptive FedOpt family, whose early
    steps move every coordinate by about η."""

    name: Literal[
        "fedavg",
        "fedprox",
        "fedavgm",
        "fedadagrad",
        "fedadam",
        "fedyogi",
        "robust",
        "fedasync",
        "scaffold",
    ] = "fedavg"
    server_lr: float | None = Field(default=None, gt=0)
    mu: float | None = Field(default=None, ge=0, description="FedProx proximal coefficient")
    momentum: float | None = Field(default=None, ge=0, lt=1)
    beta1: float | None = Field(default=None, ge=0, lt=1)
    beta2: float | None = Field(default=None, ge=0, lt=1)
    tau: float | None = Field(default=None, gt=0)
    initial_accumulator: float | None = Field(default=None, ge=0)
    # none | moments | step (fedray.strategies.fedopt); YAML true/false mean moments/none
    bias_correction: Annotated[
        Literal["none", "moments", "step"] | None, BeforeValidator(_bias_correction_alias)
    ] = None
    rule: Literal["median", "trimmed_mean", "krum", "multi_krum"] | None = None
    beta: float | None = Field(default=None, ge=0, lt=0.5)
    f: int | None = Field(default=None, ge=0)
    m: int | None = Field(default=None, ge=1)
    weighting: Literal["uniform", "num_samples"] | None = None  # multi_krum
    alpha: float | None = Field(default=None, gt=0, le=1, description="FedAsync mixing weight")

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
        if self.name == "fedasync" and self.server_lr is not None:
            raise ValueError(
                "fedasync has no server_lr: its step size is strategy.alpha; remove server_lr"
            )
        if self.server_lr is None and self.name != "fedasync":
            self.server_lr = 0.01 if self.name in _FEDOPT else 1.0
        from fedray.strategies import make_server_strategy

        make_server_strategy(self)  # the strategy's own checks (a ValueError naming the option)
        return self


_ALL_STRATEGY_OPTIONS = set().union(*_STRATEGY_OPTIONS.values())


class AsyncConfig(_Model):
    """Asynchronous rounds (``mode: async``): ``concurrency`` clients are always in flight.

    With ``strategy.name: fedasync`` every arrival is mixed into the model (FedAsync). With any
    other strategy, arrivals are buffered and every ``buffer_size`` of them make one server step
    of that strategy (FedBuff). Updates are weighted by ``staleness`` s(τ): ``constant``,
    ``polynomial`` (τ+1)^-a or ``hinge`` (1 up to b, then 1/(a(τ−b)+1)); the default is FedBuff's
    1/sqrt(1+τ). Updates older than ``max_staleness`` versions are discarded (status ``stale``).
    FedBuff averages a buffer by sample count (``weighting: samples``, like sync FedAvg) or
    uniformly (``uniform``, as in the FedBuff paper).
    """

    concurrency: int = Field(default=10, ge=1, le=10**7)
    buffer_size: int | None = Field(
        default=None, ge=1, le=10**7, description="FedBuff K; default 10"
    )
    staleness: Literal["constant", "polynomial", "hinge"] = "polynomial"
    staleness_a: float = Field(default=0.5, ge=0)
    staleness_b: float = Field(default=4.0, ge=0)
    max_staleness: int | None = Field(default=None, ge=0, le=10**9)
    weighting: Literal["samples", "uniform"] = "samples"


class ClientTrainingConfig(_Model):
    lr: float = Field(default=0.01, gt=0)
    batch_size: int = Field(default=10, ge=1, le=10**7)
    local_epochs: int = Field(default=1, ge=1, le=10**5)


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


DEFAULT_CLIENTS_PER_TASK = 10
# A block's arrays grow with its row slots (~350 bytes each): 100 typical Synthetic clients are
# ~45k slots, ~15 MB; the cost cap (make_groups) keeps the heaviest clients in smaller blocks.
MAX_AUTO_BLOCK = 100


class ExecutionConfig(_Model):
    num_workers: int | None = Field(
        default=None, ge=1, le=10**5, description="default: one per CPU"
    )
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    # None: automatic (Config.group_size): 10, or a tenth of the cohort (10 to 100) for the
    # batched blocks of vectorized synchronous rounds.
    clients_per_task: int | None = Field(default=None, ge=1, le=10**7)
    address: str | None = None
    object_store_mb: int = Field(default=256, ge=80, le=2**24)
    # Small by default: with vectorized training, regenerating a client's data is about half of
    # a worker's work, but every worker holds its own copy; 32 MB keeps the K=100 benchmark's
    # whole process tree under 1.2 GB (64 MB took it to ~1.23 GB). See benchmarks/README.md.
    data_cache_mb: int = Field(default=32, ge=0, le=2**24)
    client_state_mb: int = Field(
        default=256, ge=0, le=2**24, description="in-memory per-client state"
    )
    # auto: train each group as one batched computation where the workload's model allows it
    # (fedray/execution/batched.py); on: insist (an error where it cannot); off: client by client.
    vectorize: Literal["auto", "on", "off"] = "auto"


class AdaptiveClippingConfig(_Model):
    """Adaptive clipping by quantile (Andrew, Thakkar, McMahan, Ramaswamy, "Differentially
    Private Learning with Adaptive Clipping", NeurIPS 2021; :mod:`fedray.privacy`): after every
    round C ← C · exp(−``learning_rate`` · (b̃ − ``target_quantile``)), b̃ the noised fraction of
    clients whose update was within C; ``count_noise_multiplier`` σ_b defaults to the paper's
    clients_per_round / 20."""

    target_quantile: float = Field(default=0.5, gt=0, lt=1)
    learning_rate: float = Field(default=0.2, gt=0, le=10)
    count_noise_multiplier: float | None = Field(default=None, gt=0)


class PrivacyConfig(_Model):
    """User-level differential privacy (:mod:`fedray.privacy`). ``kind: central`` is DP-FedAvg
    (McMahan et al., ICLR 2018) — in asynchronous runs DP-FedBuff (Huba et al., MLSys 2022):
    every client's decoded update is clipped to L2 norm ``clip_norm`` (C) and counts with weight
    1, Gaussian noise N(0, (``noise_multiplier`` · C)² I) is added to the round's (or buffer's) sum,
    and the sum is divided by ``clients_per_round`` (or the buffer size K). ``kind: local``: each
    client adds that noise to its own clipped update before it leaves the device, and the server
    adds none. ε is reported at ``delta``."""

    clip_norm: float = Field(gt=0)
    noise_multiplier: float = Field(ge=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    # fixed: M = ceil(K * over_selection) clients without replacement; poisson: every client
    # independently with probability K / N (the paper's sampling; fedray.privacy)
    sampling: Literal["fixed", "poisson"] = "fixed"
    kind: Literal["central", "local"] = "central"
    adaptive_clipping: AdaptiveClippingConfig | None = None  # clip_norm is then the initial C


# --------------------------------------------------------------------------- attacks


_ATTACK_OPTIONS = {
    "scale": "gaussian",
    "boost": "model_replacement",
    "target_class": "model_replacement",
    "z": "alie",
}


class AttackConfig(_Model):
    """Adversarial clients (:mod:`fedray.attacks`): ``fraction`` of the registered clients —
    a ``fixed`` set chosen by the seed, or drawn afresh ``per_round`` — corrupt their uploads
    by ``kind``: ``sign_flip`` (−Δ), ``gaussian`` (Δ + N(0, ``scale``²)), ``model_replacement``
    (Δ boosted by ``boost``, default clients_per_round / server_lr; with ``target_class`` the
    attacker first trains its model to predict that class on all its data), ``alie`` (μ − z·σ of the
    attackers' honest updates; ``z`` defaults to Baruch et al.'s z_max) or ``label_flip``
    (train on labels C − 1 − y)."""

    kind: Literal["sign_flip", "gaussian", "model_replacement", "alie", "label_flip"]
    fraction: float = Field(gt=0, le=1)
    selection: Literal["fixed", "per_round"] = "fixed"
    scale: float | None = Field(default=None, gt=0)
    boost: float | None = Field(default=None, gt=0)
    target_class: int | None = Field(default=None, ge=0, le=10**6)
    z: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _options_belong_to_the_kind(self):
        for key, owner in _ATTACK_OPTIONS.items():
            if getattr(self, key) is not None and self.kind != owner:
                raise ValueError(
                    f"attack.{key} is an option of kind {owner}, not {self.kind}; remove it or "
                    f"set kind: {owner}"
                )
        if self.kind == "gaussian" and self.scale is None:
            raise ValueError(
                "attack kind gaussian needs attack.scale, the noise's standard deviation (e.g. 1.0)"
            )
        return self


class RobustnessConfig(_Model):
    """What happens to a poisoned update — NaN or inf in a client's update or private
    parameters, or (``max_update_norm``) an L2 norm above a bound: it is ``quarantine``d (recorded
    in client_events with status ``quarantined``, never aggregated, the client's state left as it
    was) or stops the run with a one-line ``error``."""

    nonfinite: Literal["quarantine", "error"] = "quarantine"
    max_update_norm: float | None = Field(default=None, gt=0)


# Strategies that cannot take a noisy, clipped sum: robust rules see every update (no sum to
# noise), SCAFFOLD also uploads control variates the noise would not cover, FedAsync is async.
_PRIVACY_STRATEGIES_REFUSED = {
    "robust": "robust rules look at each client's update, not a noised sum",
    "scaffold": "its control-variate uploads would leave the noised sum unprotected",
    "fedasync": "it mixes in each update as it arrives, with no sum to noise",
}


# --------------------------------------------------------------------------- secure aggregation


class SecureAggregationConfig(_Model):
    """Simulated secure aggregation (:mod:`fedray.secagg`): SecAgg (Bonawitz et al., CCS 2017) or
    SecAgg+ (Bell et al., CCS 2020, masks between ``neighbours`` of a k-regular graph). Each
    client's weighted update and weight are clipped to [−``clip_range``, ``clip_range``], rounded
    to the grid of step 1/``scale`` and masked in Z_{2^``bits``}; a round fails when fewer than
    ``threshold`` (a count, or a fraction of the cohort — of each neighbourhood in SecAgg+) of the
    clients holding a secret's shares survive. ``key_bytes`` / ``share_bytes``: the size of a
    public key and of one share message on the wire."""

    protocol: Literal["secagg", "secagg_plus"] = "secagg"
    bits: int = Field(default=32, ge=8, le=64)
    scale: float = Field(default=1024.0, gt=0)
    clip_range: float = Field(default=1000.0, gt=0)
    threshold: int | float = 0.5
    neighbours: int | None = Field(default=None, ge=2, le=10**6)
    key_bytes: int = Field(default=32, ge=1, le=2**20)
    share_bytes: int = Field(default=64, ge=1, le=2**20)

    @field_validator("threshold")
    @classmethod
    def _count_or_fraction(cls, value):
        if isinstance(value, bool):
            raise ValueError("must be a count (an integer >= 1) or a fraction in (0, 1]")
        if isinstance(value, int) and value < 1:
            raise ValueError("a count of survivors must be >= 1 (or give a fraction in (0, 1])")
        if isinstance(value, float) and not 0 < value <= 1:
            raise ValueError("a fraction of the cohort must lie in (0, 1] (or give a count >= 1)")
        return value

    @model_validator(mode="after")
    def _neighbours_belong_to_secagg_plus(self):
        if self.neighbours is not None and self.protocol != "secagg_plus":
            raise ValueError(
                "neighbours is an option of protocol secagg_plus; remove it or set protocol: "
                "secagg_plus"
            )
        return self


# Strategies whose server step needs more than one linear sum of the updates.
_SECAGG_STRATEGIES_REFUSED = {
    "robust": "robust rules look at each client's update, and the server sees only the sum",
    "scaffold": "its control-variate uploads are not masked",
    "fedasync": "it mixes in each update as it arrives, with no round to aggregate",
}


class OutputConfig(_Model):
    root: Path = Path("results")
    name: str | None = None
    overwrite: bool = False
    tensorboard: bool = True
    # Server steps between checkpoints (<run>/checkpoint/, also written at the end and on
    # SIGINT/SIGTERM): None means 10 rounds (sync) or 100 updates (async); 0 turns them off.
    checkpoint_every: int | None = Field(default=None, ge=0, le=10**8)

    @field_validator("name")
    @classmethod
    def _name_stays_inside_root(cls, name: str | None) -> str | None:
        # A run folder is created (and, with overwrite, replaced) at root/name: a name with a
        # separator or '..' would put it, or delete one, outside the results root.
        problem = None if name is None else folder_name_problem(name)
        if problem is not None:
            raise ValueError(
                f"must be a plain folder name inside output.root, but {problem}; pass e.g. "
                "--name prox90, and choose where runs go with --out DIR"
            )
        return name

    @field_validator("root")
    @classmethod
    def _root_is_a_path(cls, root: Path) -> Path:
        # Any path is a valid results root (absolute, relative, '..'): it is the user's choice
        # where results go. Only what no file system can hold is refused here.
        text = str(root)
        if any(ord(c) < 32 for c in text):
            raise ValueError("contains a control character; give a directory path, e.g. results")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("is not valid Unicode text; give a directory path") from None
        return root

    def checkpoint_interval(self, mode: str) -> int:
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        return 100 if mode == "async" else 10


class Config(_Model):
    """A complete, validated fedray run configuration."""

    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    mode: Literal["sync", "async"] = "sync"
    rounds: int = Field(
        default=20, ge=1, le=10**8, description="rounds (sync) or server updates (async)"
    )
    clients_per_round: int = Field(default=10, ge=1, le=10**9)
    over_selection: float = Field(default=1.0, ge=1.0, le=100.0)
    deadline_s: float | None = Field(default=None, gt=0)
    stragglers: Literal["drop", "partial", "wait"] = "drop"
    eval_every: int = Field(default=1, ge=1, le=10**8)
    workload: WorkloadConfig = SyntheticWorkloadConfig()
    clients: ClientsConfig = ClientsConfig()
    strategy: StrategyConfig = StrategyConfig()
    asynchronous: AsyncConfig = AsyncConfig()
    client: ClientTrainingConfig = ClientTrainingConfig()
    compression: CompressionConfig = CompressionConfig()
    execution: ExecutionConfig = ExecutionConfig()
    output: OutputConfig = OutputConfig()
    privacy: PrivacyConfig | None = None  # off by default
    secure_aggregation: SecureAggregationConfig | None = None  # off by default
    robustness: RobustnessConfig = RobustnessConfig()
    attack: AttackConfig | None = None  # no adversarial clients by default
    _source: Path | None = PrivateAttr(default=None)  # the YAML file it was loaded from

    @property
    def source_name(self) -> str:
        """Stem of the config file, used in default run names (with characters a folder name
        cannot hold replaced by '_': a file may be called anything)."""
        if self._source is None:
            return "config"
        stem = "".join("_" if ord(c) < 32 or c in "\\\x7f" else c for c in self._source.stem)
        # 200 bytes leave room for the timestamp within a file system's 255
        return stem.encode("utf-8", "replace")[:200].decode("utf-8", "ignore") or "config"

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.mode == "sync" and self.clients_per_round > self.clients.num_clients:
            raise ValueError(
                f"clients_per_round={self.clients_per_round} exceeds "
                f"clients.num_clients={self.clients.num_clients}; lower it or add clients"
            )
        self.workload.check_num_clients(self.clients.num_clients)
        if self.workload.eval_clients > self.clients.num_clients:
            self.workload.eval_clients = self.clients.num_clients
        if self.privacy is not None:  # first: its strategy message is the one to act on
            self._check_privacy()
        if self.secure_aggregation is not None:
            self._check_secure_aggregation()
        if self.mode == "async":
            self._check_async()
            if self.attack is not None and self.attack.kind == "alie":
                raise ValueError(
                    "attack kind alie needs the attackers of a round together; asynchronous "
                    "runs have no rounds — use mode: sync or another attack.kind"
                )
        elif self.strategy.name == "fedasync":
            raise ValueError(
                "strategy fedasync is asynchronous; set mode: async (or pick a sync strategy)"
            )
        return self

    @property
    def buffer_size(self) -> int:
        """Updates per server step of an asynchronous run: FedBuff's K (default 10), FedAsync 1."""
        if self.strategy.name == "fedasync":
            return 1
        return self.asynchronous.buffer_size or 10

    def _check_privacy(self) -> None:
        p = self.privacy
        why = _PRIVACY_STRATEGIES_REFUSED.get(self.strategy.name)
        if why is not None and not (p.kind == "local" and self.strategy.name != "scaffold"):
            raise ValueError(
                f"privacy cannot be combined with strategy {self.strategy.name}: {why}; use "
                "fedavg, fedprox, fedavgm, fedadagrad, fedadam or fedyogi, privacy.kind local, "
                "or remove privacy"
            )
        if p.adaptive_clipping is not None:
            self._check_adaptive_clipping()
        if self.mode == "async":
            if p.sampling == "poisson":
                raise ValueError(
                    "privacy.sampling poisson samples synchronous rounds; asynchronous runs "
                    "dispatch clients as slots free up — remove privacy.sampling or set mode: sync"
                )
            a = self.asynchronous
            if p.kind == "central" and self.clients.num_clients < a.concurrency + self.buffer_size:
                # DP-FedBuff's sensitivity needs each client at most once per buffer, so a client
                # that has contributed to the open buffer is not dispatched until the step
                # (fedray.sim.async_driver); with fewer clients a slot could find nobody to run.
                raise ValueError(
                    f"privacy in asynchronous runs needs clients.num_clients >= concurrency + "
                    f"buffer size ({a.concurrency} + {self.buffer_size}); add clients or lower "
                    "asynchronous.concurrency or asynchronous.buffer_size"
                )
        if p.sampling == "poisson" and self.over_selection != 1.0:
            raise ValueError(
                "privacy.sampling poisson draws each client with probability K/N; over_selection "
                "does not apply — remove it or use sampling: fixed"
            )
        if self.clients.availability.varies or self.clients.battery is not None:
            raise ValueError(
                "privacy accounting assumes every client can be sampled in every round; remove "
                "clients.availability's time-varying parts and clients.battery, or remove privacy"
            )
        profile = self.clients.profile
        dists = [profile.availability] + [t.availability for t in profile.tiers or ()]
        if any(d is not None and _dist_bounds(d) != (1.0, 1.0) for d in dists):
            # Sampling among the clients online in a round is not the uniform sampling over N
            # the accountant assumes; ε would be understated (fedray.privacy).
            raise ValueError(
                "privacy accounting assumes every client is always available; set "
                "clients.profile.availability (and every tier's) to 1 or remove privacy"
            )

    def _check_adaptive_clipping(self) -> None:
        p, a = self.privacy, self.privacy.adaptive_clipping
        if self.mode == "async" or p.kind == "local" or self.secure_aggregation is not None:
            # the clip norm is a server decision taken on the round's noised count of unclipped
            # clients, sent with the next round's model: central, synchronous, and in the clear
            raise ValueError(
                "privacy.adaptive_clipping needs central DP in synchronous rounds without "
                "secure_aggregation; remove adaptive_clipping or those options"
            )
        sigma_b = a.count_noise_multiplier or self.clients_per_round / 20
        if p.noise_multiplier > 0 and 2 * sigma_b <= p.noise_multiplier:
            # z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) (Andrew et al., Thm. 1) needs 2σ_b > z
            raise ValueError(
                f"privacy.adaptive_clipping.count_noise_multiplier={sigma_b:g} must exceed "
                f"noise_multiplier / 2 = {p.noise_multiplier / 2:g}; raise it (the paper's "
                "default is clients_per_round / 20)"
            )

    def _check_secure_aggregation(self) -> None:
        sa = self.secure_aggregation
        why = _SECAGG_STRATEGIES_REFUSED.get(self.strategy.name)
        if why is not None:
            raise ValueError(
                f"secure_aggregation cannot be combined with strategy {self.strategy.name}: {why}; "
                "use fedavg, fedprox, fedavgm, fedadagrad, fedadam or fedyogi, or remove "
                "secure_aggregation"
            )
        if self.mode == "async":
            raise ValueError(
                "secure_aggregation supports synchronous rounds only; set mode: sync or remove "
                "secure_aggregation"
            )
        if self.attack is not None and self.attack.kind == "alie":
            # fedray simulates ALIE's collusion on the server side of the attackers' uploads,
            # which secure aggregation hides in the ring sum
            raise ValueError(
                "attack kind alie is simulated from the attackers' individual uploads, which "
                "secure_aggregation masks; remove secure_aggregation or pick another attack.kind"
            )
        if self.privacy is not None and self.privacy.kind == "local":
            raise ValueError(
                "privacy.kind local noises every upload on its device, which secure_aggregation's "
                "ring (sized for central DP's noise shares) does not need; remove one of them"
            )
        if self.privacy is not None and self.privacy.sampling == "poisson":
            raise ValueError(
                "secure_aggregation needs a cohort of known size to size its ring and noise "
                "shares, but privacy.sampling poisson draws a random one; use sampling: fixed"
            )
        if self.compression.uplink.name != "none":
            raise ValueError(
                f"secure_aggregation masks uploads in its own ring (bits, scale), so uplink codec "
                f"{self.compression.uplink.name} cannot apply to them; set compression.uplink: none"
            )
        if self.robustness.max_update_norm is not None:
            raise ValueError(
                "robustness.max_update_norm needs each update's norm, but secure aggregation "
                "shows the server only masked vectors; remove one of them"
            )
        # Σ over the cohort of values in [−c, c] at scale s must stay inside [−2^(b−1), 2^(b−1))
        cohort = self.num_selected
        capacity = cohort * sa.clip_range * sa.scale
        if capacity >= 2 ** (sa.bits - 1):
            raise ValueError(
                f"secure_aggregation: the sum of {cohort} clients' values up to clip_range="
                f"{sa.clip_range:g} at scale={sa.scale:g} can overflow a {sa.bits}-bit ring; "
                "raise bits or lower scale or clip_range"
            )
        if self.privacy is not None:
            # Each client's noisy coordinates must fit [−c, c]: C plus 10 of its noise's std.
            from fedray.secagg.transform import threshold_rule

            p, t = self.privacy, threshold_rule(sa.threshold)(cohort)
            needed = max(1.0, p.clip_norm * (1 + 10 * p.noise_multiplier / math.sqrt(t)))
            if sa.clip_range < needed:
                raise ValueError(
                    f"secure_aggregation.clip_range={sa.clip_range:g} would clip the clients' "
                    f"noisy updates (C={p.clip_norm:g} plus 10 noise deviations, and the weight "
                    f"1); raise it to at least {needed:.3g}"
                )
        if isinstance(sa.threshold, int) and sa.threshold > cohort:
            raise ValueError(
                f"secure_aggregation.threshold={sa.threshold} survivors exceeds the "
                f"{cohort} clients sampled per round; lower it or give a fraction"
            )
        if sa.protocol == "secagg_plus" and isinstance(sa.threshold, int):
            from fedray.secagg.graph import default_degree

            k = sa.neighbours or default_degree(cohort)
            if sa.threshold > min(k + k % 2, cohort - 1) + 1:
                raise ValueError(
                    f"secure_aggregation.threshold={sa.threshold} exceeds the {k} neighbours "
                    "(plus itself) holding each client's shares in secagg_plus; lower it or "
                    "give a fraction"
                )

    def _check_async(self) -> None:
        if self.deadline_s is not None:
            raise ValueError(
                "deadline_s applies to synchronous rounds only; remove it or set mode: sync"
            )
        if self.over_selection != 1.0:
            raise ValueError(
                "over_selection applies to synchronous rounds only; remove it or set mode: sync"
            )
        if self.strategy.name == "scaffold":
            raise ValueError(
                "scaffold's control variates assume synchronous rounds; use mode: sync, or "
                "FedBuff with another strategy"
            )
        a = self.asynchronous
        if a.concurrency > self.clients.num_clients:
            raise ValueError(
                f"asynchronous.concurrency={a.concurrency} exceeds clients.num_clients="
                f"{self.clients.num_clients}; lower it or add clients"
            )
        if self.strategy.name == "fedasync" and a.buffer_size not in (None, 1):
            raise ValueError(
                "fedasync applies every update as it arrives; remove asynchronous.buffer_size "
                "(or use another strategy for FedBuff-style buffering)"
            )

    def group_size(self, vectorized_rounds: bool = False) -> int:
        """Clients per actor call: ``execution.clients_per_task`` if set, else 10 — or, for the
        batched blocks of vectorized synchronous rounds, a tenth of the cohort within [10, 100].

        A block pays a fixed cost per step of its longest client, so larger blocks amortise it
        over more clients: K=1000 Synthetic rounds took 7.9 s in blocks of 100 against 10.9 s in
        blocks of 10 (K=100 and K=10 gained nothing from larger ones). It depends on the
        configuration only, never on the worker count, since the groups fix the order of the
        pre-summed updates."""
        if self.execution.clients_per_task is not None:
            return self.execution.clients_per_task
        if vectorized_rounds and self.mode == "sync":
            return min(MAX_AUTO_BLOCK, max(DEFAULT_CLIENTS_PER_TASK, self.num_selected // 10))
        return DEFAULT_CLIENTS_PER_TASK

    @property
    def num_selected(self) -> int:
        """Clients sampled per round, after over-selection."""
        return min(
            self.clients.num_clients, math.ceil(self.clients_per_round * self.over_selection)
        )


# --------------------------------------------------------------------------- loading


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    raw = [str(p) for p in first["loc"]]
    workload = None
    if len(raw) > 1 and raw[0] == "workload" and raw[1] in WORKLOAD_MODELS:
        workload = WORKLOAD_MODELS[raw.pop(1)]  # the workload's discriminator tag
    # Drop the discriminator tags pydantic inserts into the location ("speed.lognormal.median").
    loc = [p for p in raw if p not in ("constant", "uniform", "lognormal")]
    key = ".".join(loc) or "<config>"
    if len(key) > 80 or not key.isprintable():  # a user's own key, not a field's name
        key = short_repr(key)
    quoted_key = short_repr(".".join(loc))
    kind, msg, value = first["type"], first["msg"], first.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1], workload)
        accepted = ", ".join(parent.model_fields) if parent else "see the README"
        return f"unknown key {quoted_key}; accepted keys here: {accepted}"
    if kind == "invalid_key":  # YAML keys may be numbers, booleans or null
        parent = ".".join(loc[:-1]) or "the top level"
        return (
            f"key {short_repr(value)} in {parent} is not a name; keys are names such as rounds "
            "(quote it if it is meant as text)"
        )
    if kind == "union_tag_invalid" and loc == ["workload"]:
        return (
            f"workload.name: unknown workload {short_repr(value.get('name'))}; use one of "
            f"{', '.join(WORKLOAD_MODELS)}"
        )
    if kind == "union_tag_invalid":
        return (
            f"{key}: unknown dist {short_repr(value.get('dist'))}; use one of constant, uniform, "
            "lognormal"
        )
    if kind == "union_tag_not_found":
        return f"{key}: a distribution needs 'dist' (constant, uniform or lognormal) or a number"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    shown = "" if isinstance(value, dict) else f" = {short_repr(value)}"
    return f"{key}{shown}: {msg}"


def _model_at(path: list[str], workload: type[BaseModel] | None = None) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in path:
        if model is None or part not in model.model_fields:
            return None
        if model is Config and part == "workload" and workload is not None:
            model = workload
            continue
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
        raise ConfigError(f"override {short_repr(text)} needs the form key=value, e.g. rounds=50")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(
            f"override {short_repr(text)} has an empty key; use e.g. clients.num_clients=100"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except Exception:  # noqa: BLE001 - YAMLError, or a constructor's ValueError/IndexError
        # not YAML (or a number of over 4300 digits, a date like 2024-13-01, an empty !!float):
        # the text itself, which validation then refuses or accepts as a string
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
                raise ConfigError(f"override {short_repr(text)}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def config_from_dict(data: dict, overrides: list[str] | None = None) -> Config:
    """Validate a config given as a mapping (with ``overrides`` applied first)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"invalid config: a config is a mapping of keys, got {type(data).__name__}"
        )
    data = apply_overrides(dict(data), list(overrides or []))
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid config: {_format_error(err)}") from None
    except RecursionError:  # a structure that contains itself
        raise ConfigError("invalid config: a value nests too deeply to be a setting") from None
    for key, value in _numbers(cfg.model_dump()):
        limit = MAX_INT if isinstance(value, int) else MAX_FLOAT
        if abs(value) > limit:
            raise ConfigError(
                f"invalid config: {key} = {short_repr(value)}: too large to mean anything "
                f"(at most {limit if isinstance(value, int) else f'{limit:g}'} in magnitude); "
                "use a realistic value"
            )
    return cfg


def _numbers(node: Any, key: str = ""):
    """(dotted key, value) of every number in a dumped config."""
    if isinstance(node, dict):
        for name, child in node.items():
            yield from _numbers(child, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list | tuple):
        for i, child in enumerate(node):
            yield from _numbers(child, f"{key}[{i}]")
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield key, node


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: YAML would
    keep the last one silently, and a run would quietly use a value the user did not mean. Keys
    brought in by a merge (``<<: *base``) may be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                continue  # the safe loader itself refuses unhashable keys; pydantic non-names
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {short_repr(key)} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


MAX_CONFIG_BYTES = 16 << 20  # configs are a few KB; this refuses a dataset passed by mistake


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """A user's YAML file as a mapping, or a one-line :class:`ConfigError` that names the file
    and the problem: missing, a folder, binary, not UTF-8, invalid YAML, a key given twice,
    empty (or only comments), or not a mapping."""
    path = Path(path)
    where = f"{what} {str(path)!r}"
    text = read_text(
        path,
        where,
        "write at least the keys you want to set (see configs/ for examples)",
        error=ConfigError,
        max_bytes=MAX_CONFIG_BYTES,
    )
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.reader.ReaderError as err:  # a control character: YAML allows none
        char = err.character if isinstance(err.character, int) else ord(err.character)
        raise ConfigError(
            f"{where} is not valid YAML: character 0x{char:02x} at position {err.position} is "
            "not allowed; remove it"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise ConfigError(f"{where} is not valid YAML{at}: {one_line(problem)}") from None
    except RecursionError:
        raise ConfigError(f"{where} nests too deeply to be a config") from None
    except Exception as err:  # noqa: BLE001 - only text is parsed here
        # what PyYAML's constructors let through: a number of over 4300 digits, a date such as
        # 2024-13-45, an empty `!!float` (IndexError)
        problem = (
            "a number has over 4300 digits; no setting needs that many"
            if "4300 digits" in str(err)
            else f"{one_line(err, 120)}; correct or quote the value"
        )
        raise ConfigError(f"{where} is not valid YAML: {problem}") from None
    if data is None:
        raise ConfigError(
            f"{where} is empty (only comments); write at least the keys you want to set (see "
            "configs/ for examples)"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply dotted ``key=value`` overrides and validate."""
    path = Path(path)
    data = read_yaml_mapping(path)
    try:
        cfg = config_from_dict(data, overrides)
    except ConfigError as err:
        raise ConfigError(
            str(err).replace("invalid config:", f"invalid config {str(path)!r}:", 1)
        ) from None
    if cfg.clients.profile.trace is not None and not cfg.clients.profile.trace.is_absolute():
        # Trace paths are relative to the config file, so configs stay runnable from anywhere.
        candidate = path.parent / cfg.clients.profile.trace
        if candidate.exists() or not cfg.clients.profile.trace.exists():
            cfg.clients.profile.trace = candidate
    source = getattr(cfg.workload, "source", "generated")
    if source != "generated" and not Path(source).is_absolute():
        # A workload's data file, like a trace, is relative to the config file.
        candidate = path.parent / source
        if candidate.exists() or not Path(source).exists():
            cfg.workload.source = str(candidate)
    model = getattr(cfg.workload, "model", None)
    if getattr(model, "path", None) and not Path(model.path).is_absolute():
        # so is a local model directory
        candidate = path.parent / model.path
        if candidate.exists() or not Path(model.path).exists():
            model.path = str(candidate)
    cfg._source = path
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
