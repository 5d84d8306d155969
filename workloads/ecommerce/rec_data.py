"""The users of ``ecom_rec``: interactions generated lazily from (seed, user id), or read from a file,
and each user's leave-one-out split with sampled negatives.

Generated users live on the world's catalogue (the items are the world's products). User ``u``
follows the world's interaction story (``world._interactions``), drawn from
``generator(seed, "ecom.rec.user", u)`` alone:

* a home platform and a number of interactions (lognormal around ``interactions_per_user``, at
  least 3) — both counter-based (:func:`fedray.seeding.uniform`), so the driver knows every
  user's sample count without generating anyone;
* a latent preference over leaf types θ_u ~ Dir(0.3·1) and a price sensitivity s_u ~ U(0, 1);
* distinct items of the home platform's listings, in time order, each next one drawn with
  probability ∝ θ_u[type] · (1 − 0.8 · s_u · band/2) · a_i among the items not yet seen, where
  a_i ~ lognormal(0, 1) is a per-item appeal shared by all users (real catalogues have a
  popularity head, which the popularity baseline exploits).

Items are bucketed once per (platform, leaf type, price band) with cumulative appeal, so one user
costs O(interactions): a categorical over the 48 cells, then a binary search in the cell. The
distinct draws are sequential sampling without replacement: drawing with replacement and keeping
first occurrences gives exactly that distribution.

The split follows NCF's protocol (He et al. 2017, "Neural Collaborative Filtering"): the
latest interaction is held out and ranked against ``eval_negatives`` items the user never
interacted with; the others are training positives, each with ``negatives`` sampled
non-interacted items labelled 0 (drawn once, as part of the user's data, and distinct from the
evaluation negatives so that training never sees a test candidate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedray import seeding
from fedray.errors import UserError
from fedray.userfiles import short_repr
from fedray.workloads.ecommerce import lexicon as lx

PREFERENCE_CONCENTRATION = 0.3  # Dirichlet over leaf types, as in world._interactions
PREFERENCE_FLOOR = 1e-3  # every type stays possible, so a user can always find enough items
PRICE_DETERRENCE = 0.8  # a fully price-sensitive user picks premium items at 0.2x the rate
APPEAL_SIGMA = 1.0
COUNT_SIGMA = 0.5  # lognormal spread of interactions per user


@dataclass(frozen=True)
class UserSplit:
    """One user's leave-one-out split, as item ids."""

    positives: np.ndarray  # training positives, time order
    negatives: np.ndarray  # training negatives, ``negatives`` per positive
    candidates: np.ndarray  # the held-out positive, then the evaluation negatives


def split_user(
    rng: np.random.Generator,
    items: np.ndarray,
    num_items: int,
    negatives: int,
    eval_negatives: int,
) -> UserSplit:
    """Leave-one-out split of a user's distinct ``items`` (time order) with sampled negatives.

    Evaluation negatives are drawn first, so they do not depend on ``negatives``. Training
    negatives are distinct where the catalogue has room, else drawn with replacement."""
    seen = np.sort(items)
    test_negatives = sample_excluding(rng, num_items, eval_negatives, seen)
    excluded = np.sort(np.concatenate([seen, test_negatives]))  # disjoint: a sort is a union
    wanted = (len(items) - 1) * negatives
    if wanted <= num_items - len(excluded):
        train_negatives = sample_excluding(rng, num_items, wanted, excluded)
    else:  # a heavy user of a small catalogue (file data): repeat negatives
        pool = np.setdiff1d(np.arange(num_items), excluded, assume_unique=True)
        train_negatives = rng.choice(pool, size=wanted)
    return UserSplit(items[:-1], train_negatives, np.concatenate([items[-1:], test_negatives]))


def sample_excluding(
    rng: np.random.Generator, num_items: int, k: int, excluded: np.ndarray
) -> np.ndarray:
    """``k`` distinct ids uniform over ``range(num_items)`` minus ``excluded`` (sorted)."""
    if k > num_items - len(excluded):
        raise ValueError(f"cannot draw {k} distinct items from {num_items - len(excluded)}")
    if 2 * (k + len(excluded)) > num_items:  # dense: rejection would stall, enumerate instead
        pool = np.setdiff1d(np.arange(num_items), excluded, assume_unique=True)
        return rng.choice(pool, size=k, replace=False)
    out = np.empty(0, np.int64)
    while len(out) < k:
        missing = k - len(out)
        draw = rng.integers(num_items, size=missing + missing // 4 + 8)
        draw = draw[~_member(draw, excluded)]
        out = _first_occurrences(np.concatenate([out, draw]))[:k]
    return out


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if not len(sorted_set):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def _first_occurrences(values: np.ndarray) -> np.ndarray:
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]


# ----------------------------------------------------------------------------- generated users


class Catalogue:
    """The world's products as items, bucketed by (platform, leaf type, price band)."""

    def __init__(self, world, seed: int):
        leaf = {t: k for k, t in enumerate(world.leaf_types)}
        self.num_items = len(world.products)
        self.num_platforms = world.params.num_platforms
        self.num_types = len(world.leaf_types)
        bands = len(lx.PRICE_BANDS)
        self.type_of = np.array([leaf[p.type] for p in world.products], np.int64)
        self.band_of = np.array([lx.PRICE_BANDS.index(p.band) for p in world.products], np.int64)
        self.appeal = seeding.generator(seed, "ecom.rec.items").lognormal(
            0.0, APPEAL_SIGMA, self.num_items
        )
        # a product is listed at most once per platform's pool, whatever its number of shops
        listed = np.unique(np.array([(p, j) for p, _, j in world.listings], np.int64), axis=0)
        platform, item = listed[:, 0], listed[:, 1]
        cell = (platform * self.num_types + self.type_of[item]) * bands + self.band_of[item]
        order = np.lexsort((item, cell))
        self.items, cell = item[order], cell[order]
        self.cum = np.cumsum(self.appeal[self.items])
        num_cells = self.num_platforms * self.num_types * bands
        self.start = np.searchsorted(cell, np.arange(num_cells))
        self.end = np.searchsorted(cell, np.arange(num_cells), side="right")
        below = np.concatenate([[0.0], self.cum])
        self.base = below[self.start]  # cumulative appeal before each cell
        self.mass = (below[self.end] - self.base).reshape(self.num_platforms, self.num_types, bands)
        self.pool_size = np.bincount(platform, minlength=self.num_platforms)


class GeneratedUsers:
    """``num_users`` users drawn lazily over a :class:`Catalogue`; nothing here is O(users)."""

    def __init__(self, catalogue: Catalogue, cfg, seed: int, num_users: int):
        self.catalogue, self.seed, self.num_users = catalogue, seed, num_users
        self.num_items = catalogue.num_items
        self.negatives, self.eval_negatives = cfg.negatives, cfg.eval_negatives
        self.mean_count = cfg.interactions_per_user
        self.platforms = np.flatnonzero(catalogue.pool_size)
        # distinct positives, training negatives and evaluation negatives must all fit in the
        # catalogue; and a user takes at most half its platform's pool, so distinct draws finish
        fit = (self.num_items - self.eval_negatives + self.negatives) // (1 + self.negatives)
        self.cap = np.minimum(catalogue.pool_size[self.platforms] // 2, fit)
        if len(self.platforms) == 0 or self.cap.min() < 3:
            need = 3 * (1 + self.negatives) + self.eval_negatives
            raise UserError(
                f"workload ecom_rec: the catalogue of {self.num_items} products is too small for "
                f"{self.negatives} negatives per positive and {self.eval_negatives} evaluation "
                f"negatives; raise workload.world.num_products (at least {need}, and enough for "
                "every platform to list 6) or lower the negatives"
            )
        price = 1.0 - PRICE_DETERRENCE * np.arange(len(lx.PRICE_BANDS)) / (len(lx.PRICE_BANDS) - 1)
        self._price = price

    def profile(self, user_ids) -> tuple[np.ndarray, np.ndarray]:
        """(home platform, number of interactions) per user, counter-based and vectorised."""
        ids = np.atleast_1d(np.asarray(user_ids, np.int64))
        # one counter-based uniform per user (hashing dominates a single user's cost): its
        # integer part picks the platform, its fraction — uniform again — gives the count's z
        scaled = seeding.uniform(self.seed, "ecom.rec.profile", ids) * len(self.platforms)
        k = np.minimum(scaled.astype(np.int64), len(self.platforms) - 1)
        z = torch.special.ndtri(torch.from_numpy(scaled - k)).numpy()
        # lognormal with mean ``interactions_per_user``: E[exp(σz − σ²/2)] = 1
        count = np.rint(self.mean_count * np.exp(COUNT_SIGMA * z - COUNT_SIGMA**2 / 2))
        count = np.clip(count.astype(np.int64), 3, self.cap[k])
        return self.platforms[k], count

    def num_train_samples(self, user_ids) -> np.ndarray:
        _, count = self.profile(user_ids)
        return (count - 1) * (1 + self.negatives)

    def num_rows(self, user_ids) -> np.ndarray:
        # generated users' positives and negatives are all distinct: one row per example
        return self.num_train_samples(user_ids)

    def interactions(self, user_id: int) -> tuple[np.ndarray, np.random.Generator]:
        """The user's distinct items in time order, and its generator (to draw negatives next)."""
        if not 0 <= user_id < self.num_users:
            raise IndexError(f"user {user_id} out of range(0, {self.num_users})")
        (platform,), (count,) = self.profile([user_id])
        c = self.catalogue
        rng = seeding.generator(self.seed, "ecom.rec.user", user_id)
        preference = rng.dirichlet(np.full(c.num_types, PREFERENCE_CONCENTRATION))
        sensitivity = rng.uniform()
        price = 1.0 - sensitivity * (1.0 - self._price)
        weight = ((preference + PREFERENCE_FLOOR)[:, None] * price) * c.mass[platform]
        cdf = np.cumsum(weight.ravel())
        first_cell = platform * weight.size
        items = np.empty(0, np.int64)
        while len(items) < count:
            m = 2 * (count - len(items)) + 4
            cell = np.minimum(
                np.searchsorted(cdf, rng.random(m) * cdf[-1], side="right"), len(cdf) - 1
            )
            cell += first_cell
            target = c.base[cell] + rng.random(m) * (c.cum[c.end[cell] - 1] - c.base[cell])
            at = np.clip(
                np.searchsorted(c.cum, target, side="right"), c.start[cell], c.end[cell] - 1
            )
            items = _first_occurrences(np.concatenate([items, c.items[at]]))
        return items[:count], rng

    def split(self, user_id: int) -> UserSplit:
        items, rng = self.interactions(user_id)
        return split_user(rng, items, self.num_items, self.negatives, self.eval_negatives)


# ----------------------------------------------------------------------------- users from a file


class FileUsers:
    """Users of a ``user_id,item_id,timestamp`` file (:func:`.loaders.read_interactions`)."""

    def __init__(self, table, cfg, seed: int, num_users: int):
        if table.num_users != num_users:
            raise UserError(
                f"{table.path}: {table.num_users} distinct users but clients.num_clients="
                f"{num_users}; ecom_rec has one client per user, set clients.num_clients="
                f"{table.num_users}"
            )
        self.seed, self.num_users, self.num_items = seed, num_users, table.num_items
        self.negatives, self.eval_negatives = cfg.negatives, cfg.eval_negatives
        # time order per user; a re-interaction counts once, at its latest time (leave-one-out
        # must not hold out an item the user also trains on)
        order = np.lexsort((table.timestamp, table.user))
        user, item = table.user[order], table.item[order]
        _, from_end = np.unique((user * table.num_items + item)[::-1], return_index=True)
        last = np.zeros(len(user), bool)
        last[len(user) - 1 - from_end] = True
        self.items = item[last]
        self.offsets = np.searchsorted(user[last], np.arange(num_users + 1))
        counts = np.diff(self.offsets)
        few = np.flatnonzero(counts < 2)
        if len(few):
            raise UserError(
                f"{table.path}: user {short_repr(table.user_names[few[0]].item())} has {counts[few[0]]} distinct "
                "item(s); leave-one-out needs at least 2 per user, drop such users from the file"
            )
        # the evaluation negatives and at least one training negative must be left over
        full = np.flatnonzero(table.num_items - counts < self.eval_negatives + 1)
        if len(full):
            raise UserError(
                f"{table.path}: user {short_repr(table.user_names[full[0]].item())} interacted with "
                f"{counts[full[0]]} of {table.num_items} items, leaving fewer than "
                f"eval_negatives + 1 = {self.eval_negatives + 1} to sample negatives from; "
                "lower workload.eval_negatives"
            )
        self._counts = counts

    def num_train_samples(self, user_ids) -> np.ndarray:
        return (self._counts[np.atleast_1d(user_ids)] - 1) * (1 + self.negatives)

    def num_rows(self, user_ids) -> np.ndarray:
        return np.array(
            [
                len(np.union1d(s.positives, s.negatives))
                for s in map(self.split, np.atleast_1d(user_ids))
            ],
            np.int64,
        )

    def split(self, user_id: int) -> UserSplit:
        items = self.items[self.offsets[user_id] : self.offsets[user_id + 1]]
        rng = seeding.generator(self.seed, "ecom.rec.negatives", user_id)
        return split_user(rng, items, self.num_items, self.negatives, self.eval_negatives)
