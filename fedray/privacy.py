"""User-level differential privacy: DP-FedAvg's clip, noise and accountant, and their variants.

McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language Models",
ICLR 2018 (DP-FedAvg). Central DP with a trusted server: each client's update Δ_k is
clipped to L2 norm at most C (on the client, before the uplink codec; the server enforces the
bound again on the decoded update — :class:`fedray.execution.transforms.DPClip`), the clipped
updates are summed with weight 1 each (sample weights
n_k would let one user's influence grow with its data), and Gaussian noise is added to the sum;
the noisy sum is divided by the fixed expected cohort size K (the paper's fixed-denominator
estimator f̃_f, eq. 4 with w_k = 1):

    Δ̃ = ( Σ_{k∈S} Δ_k · min(1, C / ‖Δ_k‖₂) + N(0, (z·C)² I) ) / K

This module owns that maths: :func:`clip` (the DP client transform's maths),
:func:`add_noise` (on the driver, seeded by (seed, "dp.noise", round)) and the privacy accountant
(:func:`epsilon_after`, :class:`Accountant`), built on Google's ``dp_accounting``.

**Which event.** fedray samples each round's cohort as a uniform sample *without replacement* of
a fixed size M = ⌈K · over_selection⌉ from the N registered clients (:mod:`fedray.sim.selection`),
so a round is ``SampledWithoutReplacementDpEvent(N, M, GaussianDpEvent(z / 2))`` under the
REPLACE_ONE neighbouring relation (N is public; one user's data is swapped for another's), with
RDP accounting (Wang, Balle, Kasiviswanathan, AISTATS 2019, Thm. 27). The noise multiplier is
z / 2 because that bound takes σ relative to the query's replace-one sensitivity, and swapping one
user's clipped update for another's moves the sum by up to 2C. This is what fedray actually does,
rather than the paper's Poisson sampling with q = K/N under add/remove-one (``PoissonSampledDpEvent``,
about 8× smaller ε at z = 1, K/N = 0.1, 50 rounds: 5.9 against 47), which would be an approximation here.

**Poisson sampling** (``privacy.sampling: poisson``). The paper's own sampling: every registered
client takes part in a round independently with probability q = K / N, so the cohort's size
varies around K (:func:`fedray.sim.selection.select_poisson`). A round is then
``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` under add/remove-one, the setting of the
established accountants (Mironov, Talwar, Zhang 2019, "Rényi Differential Privacy of the Sampled
Gaussian Mechanism"): with q = 0.04, σ = 1.5, 2250 steps and δ = 1e-5 the RDP accountant gives
ε = 7.3293 (Opacus's test value, 7.3291), and TF Privacy's MNIST setting (N = 60000, B = 150,
z = 1.3, 15 epochs = 6000 steps) gives 0.7242 — both with ``dp_accounting``'s default RDP orders
(tests/test_privacy.py). The sum is still divided by K, the expected cohort size (eq. 4).

**Which clients.** Deadlines, dropout and over-selection keep a subset of the M sampled clients,
chosen from their device profiles only, never from their data, so accounting for all M sampled
clients is conservative. The guarantee assumes availability 1: with availability < 1 a round
samples among the clients online then, whose number is random and smaller than N, and the
uniform-over-N accounting would understate ε. :class:`fedray.config.Config` and
:func:`fedray.sim.driver.check_privacy_support` therefore refuse availability below 1 rather
than report a number that is not a guarantee. A round in which no client was accepted still
counts (conservative). ``noise_multiplier: 0`` clips only; ε is then infinite.

**Asynchronous rounds (DP-FedBuff**, Huba et al., "Papaya", MLSys 2022): the buffer of K updates
is the noised sum; each client contributes at most once per buffer (the async driver does not
dispatch a contributor again before the step), so a server step is a Gaussian mechanism of
sensitivity C under add/remove-one, ``GaussianDpEvent(z)``, composed over the steps. Dispatch
follows arrival times, not a sampling scheme an accountant can model, so no amplification by
sampling is claimed (rigorous and pessimistic; ``sampling`` ``async``).

**Local DP** (``kind: local``): each client noises its own clipped update; its guarantee against
anyone who sees the upload is a Gaussian mechanism of multiplier z/2 per round it takes part in
(two of its datasets can move the clipped update by 2C), bounded by taking part in every round
(``sampling`` ``local``).

**Adaptive clipping** (Andrew et al., NeurIPS 2021): :func:`adaptive_noise_multiplier` and
:func:`next_clip_norm`; the accountant is unchanged, since the update sum and the bit count
together are exactly as private as one Gaussian query with multiplier z.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from fedray import seeding

ACCOUNTANTS = {
    "fixed": "rdp, sampled without replacement, replace-one",
    "poisson": "rdp, poisson sampled, add/remove-one",
    "async": "rdp, gaussian per server step without sampling amplification, add/remove-one",
    "local": "rdp, gaussian per round a client takes part in (local dp), replace-one",
}
ACCOUNTANT = ACCOUNTANTS["fixed"]
NOISE_PURPOSE = "dp.noise"
LOCAL_NOISE_PURPOSE = "dp.local_noise"
COUNT_NOISE_PURPOSE = "dp.count_noise"


def clip(update: np.ndarray, clip_norm: float) -> tuple[np.ndarray, bool]:
    """``update`` scaled by min(1, C / ‖update‖₂) and whether it was scaled down.

    The norm is taken in float64, so a float32 update whose norm is near C is judged the same on
    every machine; the result keeps the update's dtype."""
    norm = float(np.linalg.norm(np.asarray(update, dtype=np.float64)))
    if norm <= clip_norm:
        return update, False
    return (update * (clip_norm / norm)).astype(update.dtype, copy=False), True


def add_noise(
    update_sum: np.ndarray, *, seed: int, round_: int, noise_multiplier: float, clip_norm: float
) -> np.ndarray:
    """``update_sum`` + N(0, (z·C)² I) in float64, drawn from (seed, "dp.noise", round): the
    same for any number of workers, since it is drawn once, on the driver, after the sum."""
    out = np.asarray(update_sum, dtype=np.float64)
    if noise_multiplier == 0:
        return out.copy()
    rng = seeding.generator(seed, NOISE_PURPOSE, 0, round_)
    return out + rng.normal(0.0, noise_multiplier * clip_norm, size=out.shape)


def adaptive_noise_multiplier(noise_multiplier: float, count_noise: float) -> float:
    """The update sum's noise multiplier z_Δ under adaptive clipping, so that the pair (noised
    sum, noised count of unclipped clients) is as private as one Gaussian query with multiplier z:
    z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) (Andrew et al., NeurIPS 2021, §3; the 2 because each client adds
    b − ½, of sensitivity ½). z = 0 (clipping only) stays 0."""
    if noise_multiplier == 0:
        return 0.0
    return (noise_multiplier**-2 - (2 * count_noise) ** -2) ** -0.5


def next_clip_norm(
    clip_norm: float,
    centred_unclipped: float,
    *,
    cohort: int,
    target_quantile: float,
    learning_rate: float,
    count_noise: float,
    seed: int,
    round_: int,
) -> float:
    """Adaptive clipping's geometric step (Andrew et al., Algorithm 1): the noised fraction of
    unclipped clients b̃ = ½ + (Σ (b_k − ½) + N(0, σ_b²)) / K, then C ← C · exp(−η_C (b̃ − γ)).
    The noise is drawn once on the driver from (seed, "dp.count_noise", round); C is kept at
    float32 precision, the precision it is sent to clients with."""
    noise = 0.0
    if count_noise > 0:
        noise = float(
            seeding.generator(seed, COUNT_NOISE_PURPOSE, 0, round_).normal(0, count_noise)
        )
    fraction = 0.5 + (centred_unclipped + noise) / cohort
    return float(np.float32(clip_norm * math.exp(-learning_rate * (fraction - target_quantile))))


def round_event(
    noise_multiplier: float, num_clients: int, sample_size: int, sampling: str = "fixed"
):
    """The ``dp_accounting`` event of one round (see the module docstring for why this one)."""
    import dp_accounting

    if noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    if sampling == "async":
        return dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling == "local":
        # any two local datasets of a client: its clipped update can move by 2C
        return dp_accounting.GaussianDpEvent(noise_multiplier / 2)
    if sampling == "poisson":
        return dp_accounting.PoissonSampledDpEvent(
            sample_size / num_clients, dp_accounting.GaussianDpEvent(noise_multiplier)
        )
    return dp_accounting.SampledWithoutReplacementDpEvent(
        source_dataset_size=num_clients,
        sample_size=sample_size,
        event=dp_accounting.GaussianDpEvent(noise_multiplier / 2),
    )


@functools.lru_cache(maxsize=64)
def _round_rdp(
    noise_multiplier: float, num_clients: int, sample_size: int, sampling: str = "fixed"
) -> tuple[np.ndarray, np.ndarray]:
    """RDP orders and the RDP of one round at each. Computing it is ~0.2 s (Theorem 27's sums
    over ~70 orders); rounds compose additively, so it is computed once per configuration."""
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    relation = dp_accounting.NeighboringRelation
    # A Gaussian event carries its sensitivity in its multiplier (round_event), so its RDP is the
    # same under either relation; dp_accounting composes it under add/remove-one.
    accountant = rdp.RdpAccountant(
        neighboring_relation=relation.REPLACE_ONE
        if sampling == "fixed"
        else relation.ADD_OR_REMOVE_ONE
    )
    accountant.compose(round_event(noise_multiplier, num_clients, sample_size, sampling))
    # dp_accounting offers no public per-order RDP; its composition is count × this vector
    # (tests/test_privacy.py checks the result against composing the rounds through its API).
    return np.array(accountant._orders, dtype=np.float64), np.array(accountant._rdp)


def epsilon_after(
    rounds: int,
    *,
    noise_multiplier: float,
    num_clients: int,
    sample_size: int,
    delta: float,
    sampling: str = "fixed",
) -> float:
    """ε at ``delta`` after ``rounds`` rounds of DP-FedAvg (0 rounds: 0; z = 0: inf);
    ``sampling``: ``fixed`` (M of N without replacement) or ``poisson`` (rate M / N)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    orders, one = _round_rdp(float(noise_multiplier), int(num_clients), int(sample_size), sampling)
    return float(rdp.compute_epsilon(orders, rounds * one, delta)[0])


class Accountant:
    """A run's privacy parameters; :meth:`epsilon` gives ε after any number of rounds (cheap: the
    round's RDP is cached). Stateless on purpose: every round counts, so ε is a function of the
    round number alone and there is nothing to carry between rounds or checkpoint.

    >>> acc = Accountant(noise_multiplier=1.0, num_clients=1000, sample_size=100, delta=1e-5)
    >>> acc.epsilon(1) < acc.epsilon(2)
    True
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        num_clients: int,
        sample_size: int,
        delta: float,
        sampling: str = "fixed",
    ):
        self.sampling = sampling
        self.noise_multiplier = noise_multiplier
        self.num_clients = num_clients
        self.sample_size = sample_size
        self.delta = delta

    @property
    def sample_rate(self) -> float:
        return self.sample_size / self.num_clients

    def epsilon(self, rounds: int) -> float:
        """ε at ``delta`` after ``rounds`` rounds."""
        return epsilon_after(
            rounds,
            noise_multiplier=self.noise_multiplier,
            num_clients=self.num_clients,
            sample_size=self.sample_size,
            delta=self.delta,
            sampling=self.sampling,
        )

    @property
    def name(self) -> str:
        return ACCOUNTANTS[self.sampling]

    @classmethod
    def of(cls, cfg) -> Accountant | None:
        """The accountant of a run's config (None when ``privacy`` is off)."""
        p = cfg.privacy
        if p is None:
            return None
        sampling = p.sampling
        if p.kind == "local":
            sampling = "local"
        elif cfg.mode == "async":
            sampling = "async"
        return cls(
            noise_multiplier=p.noise_multiplier,
            num_clients=cfg.clients.num_clients,
            sample_size=cfg.clients_per_round if p.sampling == "poisson" else cfg.num_selected,
            delta=p.delta,
            sampling=sampling,
        )
