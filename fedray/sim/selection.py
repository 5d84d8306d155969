"""Seeded client selection: sample up to M available clients for a round.

A client is online in round r with its profile's availability, drawn from
(seed, "availability", client id, r). Candidates are drawn uniformly without replacement from a
generator derived from (seed, "selection", r) in chunks, and filtered by availability, so a round
never materialises a list of the whole population (numpy's ``choice`` without replacement uses
Floyd's algorithm for small samples of large populations).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedray import seeding
from fedray.clients.profiles import ProfileModel


def is_available(profiles: ProfileModel, seed: int, client_ids, round_: int) -> np.ndarray:
    ids = np.asarray(client_ids, dtype=np.int64)
    availability = profiles.column("availability", ids)
    return seeding.uniform(seed, "availability", ids, round_) < availability


Eligible = Callable[[np.ndarray], np.ndarray]  # client ids -> may they be selected now


def select_clients(
    *,
    seed: int,
    round_: int,
    num_clients: int,
    count: int,
    profiles: ProfileModel,
    eligible: Eligible | None = None,
) -> np.ndarray:
    """Up to ``count`` distinct available client ids, in the (seeded) order they were drawn.

    ``eligible``: a further filter on the online candidates (availability over virtual time,
    batteries, energy: :mod:`fedray.sim.conditions`). Returns fewer than ``count`` only when
    fewer clients are online (and eligible) this round.
    """
    draw = min(num_clients, max(2 * count, count + 16))
    while True:
        # Each attempt's generator is derived from (seed, round, attempt size), so a retry with a
        # larger draw is still a pure function of the config and the round.
        rng = seeding.generator(seed, "selection", draw, round_)
        candidates = rng.choice(num_clients, size=draw, replace=False, shuffle=True)
        online = candidates[is_available(profiles, seed, candidates, round_)]
        if eligible is not None and len(online):
            online = online[eligible(online)]
        if len(online) >= count or draw == num_clients:
            return online[:count].astype(np.int64)
        draw = min(num_clients, draw * 4)


def select_poisson(
    *,
    seed: int,
    round_: int,
    num_clients: int,
    rate: float,
    profiles: ProfileModel,
    eligible: Eligible | None = None,
) -> np.ndarray:
    """Poisson sampling: every client takes part independently with probability ``rate``, drawn
    as its equivalent — a Binomial(N, rate) cohort size, then a uniform subset of that size — so
    a round costs O(cohort), not O(N). Seeded by (seed, "selection.poisson", round); the
    available clients among them, in the drawn order."""
    rng = seeding.generator(seed, "selection.poisson", 0, round_)
    size = int(rng.binomial(num_clients, rate))
    cohort = rng.choice(num_clients, size=size, replace=False, shuffle=True)
    online = cohort[is_available(profiles, seed, cohort, round_)].astype(np.int64)
    return online[eligible(online)] if eligible is not None and len(online) else online
