"""FedAdagrad, FedAdam and FedYogi: adaptive server optimizers on the averaged client update.

Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan. "Adaptive Federated
Optimization", ICLR 2021, Algorithm 2. The weighted mean client update is a pseudo-gradient,

    Δ_t = Σ_k n_k Δ_k / Σ_k n_k,

and the server applies one step of an adaptive optimizer to it (squares, roots and divisions are
per coordinate):

    m_t     = β1 · m_{t−1} + (1 − β1) · Δ_t                       m_{−1} = 0
    v_t     = v_{t−1} + Δ_t²                                      FedAdagrad
    v_t     = β2 · v_{t−1} + (1 − β2) · Δ_t²                      FedAdam
    v_t     = v_{t−1} − (1 − β2) · Δ_t² · sign(v_{t−1} − Δ_t²)    FedYogi
    x_{t+1} = x_t + η · m_t / (√v_t + τ).

The paper starts from v_{−1} ≥ τ²; ``initial_accumulator`` sets v_{−1} and defaults (None) to
τ². Flower starts from v_{−1} = 0; pass ``initial_accumulator=0.0`` to match it.

Bias correction (``bias_correction``), with t = 1 on the first server update:

* ``none`` (the default) — the paper's Algorithm 2 has none: the step above as written.
* ``moments`` — Adam's corrected moments (Kingma & Ba 2015, Algorithm 1):
  m̂_t = m_t / (1 − β1^t), v̂_t = v_t / (1 − β2^t), x_{t+1} = x_t + η · m̂_t / (√v̂_t + τ).
  Only m is corrected for FedAdagrad: its v is a running sum, not a decaying average.
* ``step`` — Flower's convention (``flwr`` FedAdam): the correction folded into the step size,
  τ left uncorrected, with Flower's round index (its rounds count from 1 and it raises β to the
  round + 1): η_t = η · √(1 − β2^(t+1)) / (1 − β1^(t+1)), x_{t+1} = x_t + η_t · m_t / (√v_t + τ).
  FedAdam and FedYogi only: FedAdagrad's v has no β2 to correct.

``moments`` and ``step`` differ by where τ sits (``moments`` effectively rescales it by
√(1 − β2^t)) and by one in the exponent. YAML booleans keep working: ``true`` means ``moments``,
``false`` ``none``. To reproduce a Flower run use ``bias_correction: step`` with
``initial_accumulator: 0`` and Flower's τ (1e-9). The moments are kept in float64 so a resumed run
continues bit-for-bit; the model is stored as float32 like every other strategy. The mean is
linear, so workers pre-sum n_k Δ_k.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedray.strategies.aggregate import Aggregate
from fedray.strategies.base import Strategy

BIAS_CORRECTIONS = ("none", "moments", "step")


@dataclass(frozen=True)
class AdaptiveState:
    params: np.ndarray  # flat float32 model parameters
    m: np.ndarray  # first moment, float64, same shape as params
    v: np.ndarray  # second moment, float64, same shape as params
    version: int = 0  # number of server updates applied; also the step count t


def adagrad_second_moment(v: np.ndarray, sq: np.ndarray, beta2: float) -> np.ndarray:
    return v + sq


def adam_second_moment(v: np.ndarray, sq: np.ndarray, beta2: float) -> np.ndarray:
    return beta2 * v + (1.0 - beta2) * sq


def yogi_second_moment(v: np.ndarray, sq: np.ndarray, beta2: float) -> np.ndarray:
    # When Δ² ≪ v, Adam shrinks v by (1 − β2)(v − Δ²) and the effective step can grow fast;
    # Yogi shrinks it only by (1 − β2)Δ² (Zaheer et al., NeurIPS 2018).
    return v - (1.0 - beta2) * sq * np.sign(v - sq)


@dataclass(frozen=True)
class FedOpt(Strategy):
    """The shared server step; use :class:`FedAdagrad`, :class:`FedAdam` or :class:`FedYogi`."""

    server_lr: float = 0.01  # η
    beta1: float = 0.9
    beta2: float = 0.99  # unused by FedAdagrad
    tau: float = 1e-3  # τ, the degree of adaptivity
    initial_accumulator: float | None = None  # v_{−1}; None means τ², as in the paper
    bias_correction: str = "none"  # none | moments | step; see the module docstring

    second_moment: ClassVar[Callable[[np.ndarray, np.ndarray, float], np.ndarray]]
    corrects_v: ClassVar[bool] = True  # whether bias_correction also rescales v

    def __post_init__(self):
        name = type(self).__name__
        if type(self) is FedOpt:
            raise TypeError("FedOpt is the shared step; build FedAdagrad, FedAdam or FedYogi")
        if not self.server_lr > 0:
            raise ValueError(f"{name} server_lr must be > 0, got {self.server_lr!r}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"{name} {key} must be in [0, 1), got {getattr(self, key)!r}")
        if not self.tau > 0:
            raise ValueError(f"{name} tau must be > 0, got {self.tau!r}")
        mode = {True: "moments", False: "none"}.get(self.bias_correction, self.bias_correction)
        object.__setattr__(self, "bias_correction", mode)  # booleans: the old spelling
        if mode not in BIAS_CORRECTIONS:
            raise ValueError(
                f"{name} bias_correction must be one of {', '.join(BIAS_CORRECTIONS)}, got {mode!r}"
            )
        if mode == "step" and not self.corrects_v:
            raise ValueError(
                f"{name} has no second-moment decay to fold into the step: use bias_correction "
                "none or moments"
            )
        if self.initial_accumulator is not None and not self.initial_accumulator >= 0:
            raise ValueError(
                f"{name} initial_accumulator must be >= 0 (or None for tau**2), "
                f"got {self.initial_accumulator!r}"
            )

    @property
    def v0(self) -> float:
        return self.tau**2 if self.initial_accumulator is None else float(self.initial_accumulator)

    def init(self, params: np.ndarray) -> AdaptiveState:
        params = np.asarray(params, dtype=np.float32).copy()
        return AdaptiveState(
            params=params, m=np.zeros(params.shape), v=np.full(params.shape, self.v0), version=0
        )

    def server_step(self, state: AdaptiveState, aggregate: Aggregate) -> AdaptiveState:
        if aggregate.empty:
            return state  # nobody reported: model and moments stay, the version does not advance
        delta = aggregate.mean()
        m = self.beta1 * state.m + (1.0 - self.beta1) * delta
        v = self.second_moment(state.v, delta * delta, self.beta2)
        t = state.version + 1
        m_hat, v_hat, lr = m, v, self.server_lr
        if self.bias_correction == "moments":
            m_hat = m / (1.0 - self.beta1**t)
            if self.corrects_v:
                v_hat = v / (1.0 - self.beta2**t)
        elif self.bias_correction == "step":
            lr = (
                self.server_lr
                * np.sqrt(1.0 - self.beta2 ** (t + 1))
                / (1.0 - self.beta1 ** (t + 1))
            )
        step = lr * m_hat / (np.sqrt(v_hat) + self.tau)
        params = (state.params.astype(np.float64) + step).astype(np.float32)
        return AdaptiveState(params=params, m=m, v=v, version=state.version + 1)


class FedAdagrad(FedOpt):
    second_moment = staticmethod(adagrad_second_moment)
    corrects_v = False  # v is a sum, not a decaying average: nothing to correct


class FedAdam(FedOpt):
    second_moment = staticmethod(adam_second_moment)


class FedYogi(FedOpt):
    second_moment = staticmethod(yogi_second_moment)
