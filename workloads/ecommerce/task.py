"""What every e-commerce text task shares: corpus → partition → per-client split → tensors.

A task object is built identically on the driver and in every pool actor from (config, seed): it
loads the world from the cache (or a user file), partitions the examples with the seeded
partitioner, splits each client's examples into train/test with a generator derived from
(seed, client id), and encodes them with a vocabulary built from the clients' train splits only
(a test-only word would get an untrained embedding; its shape class is the better guess).
Subclasses supply the corpus, the targets, the model and the metrics.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import numpy as np
import torch

from fedray import seeding
from fedray.errors import UserError
from fedray.workloads.base import ClientData, Workload
from fedray.workloads.ecommerce import partition as part
from fedray.workloads.ecommerce.corpus import Corpus
from fedray.workloads.ecommerce.text import Vocab
from fedray.workloads.ecommerce.world import World, WorldParams, load_or_generate


def world_params(world_cfg, seed: int) -> WorldParams:
    return WorldParams(seed=seed, **world_cfg.model_dump(exclude={"cache_dir"}))


def load_world(world_cfg, seed: int) -> World:
    return load_or_generate(world_params(world_cfg, seed), world_cfg.cache_dir)


class TextTask(Workload):
    """Base of ``ecom_intent``, ``ecom_relation``, ``ecom_ner`` and ``ecom_lm``."""

    metric_names: tuple[str, ...] = ()

    def __init__(self, cfg, seed: int):
        self.cfg, self.seed = cfg, seed
        if cfg.generated:
            self.corpus = self.from_world(load_world(cfg.world, seed))
        else:
            self.corpus = self.from_file(Path(cfg.source))
        self.parts = self._partition()
        self.train_idx, self.test_idx = self._split()
        train_all = np.concatenate(self.train_idx)
        self.vocab = Vocab([self.corpus.tokens[i] for i in np.sort(train_all)])
        self.x = torch.from_numpy(self.inputs(self.corpus))
        self.y = torch.from_numpy(self.targets(self.corpus))

    # ------------------------------------------------------------------ subclass hooks

    @abstractmethod
    def from_world(self, world: World) -> Corpus: ...

    @abstractmethod
    def from_file(self, path: Path) -> Corpus: ...

    def inputs(self, corpus: Corpus) -> np.ndarray:
        """Padded token ids, one row per example."""
        return self.vocab.encode(corpus.tokens, self.cfg.max_len)

    @abstractmethod
    def targets(self, corpus: Corpus) -> np.ndarray:
        """What the model predicts, one row per example."""

    # ------------------------------------------------------------------ partition

    def _partition(self) -> list[np.ndarray]:
        p, n = self.cfg.partition, self.cfg.num_clients
        rng = seeding.generator(self.seed, "ecom.partition")
        try:
            if p.scheme == "natural":
                groups = self.corpus.groups[p.by]
                parts = [np.flatnonzero(groups == k) for k in range(n)]
                small = [k for k, q in enumerate(parts) if len(q) < 2]
                if small:
                    raise part.PartitionError(
                        f"natural partition by {p.by} leaves client {small[0]} with "
                        f"{len(parts[small[0]])} examples; use more data (workload.world) or "
                        "partition by platform"
                    )
                return parts
            if p.scheme == "dirichlet":
                return part.dirichlet(self.corpus.labels, n, p.alpha, rng)
            if p.scheme == "powerlaw":
                return part.power_law(len(self.corpus), n, p.exponent, rng)
            return part.iid(len(self.corpus), n, rng)
        except part.PartitionError as err:
            raise UserError(f"workload {self.name}: {err}") from None

    def _split(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        train, test = [], []
        for k, idx in enumerate(self.parts):
            order = seeding.generator(self.seed, "ecom.split", k).permutation(idx)
            n_test = min(len(idx) - 1, max(1, round(self.cfg.test_fraction * len(idx))))
            test.append(np.sort(order[:n_test]))
            train.append(np.sort(order[n_test:]))
        return train, test

    def client_statistics(self) -> dict[str, list]:
        num_train = np.array([len(t) for t in self.train_idx])
        return part.statistics(self.parts, num_train, self.corpus.labels, self.corpus.label_names)

    # ------------------------------------------------------------------ Workload

    def num_train_samples(self, client_ids) -> np.ndarray:
        return np.array([len(self.train_idx[int(c)]) for c in np.atleast_1d(client_ids)], np.int64)

    def client_data(self, client_id: int) -> ClientData:
        tr = torch.from_numpy(self.train_idx[client_id])
        te = torch.from_numpy(self.test_idx[client_id])
        return ClientData(self.x[tr], self.y[tr], self.x[te], self.y[te])

    # local_train is the Workload default (local_sgd): token-level models emit
    # [batch, classes, length] with -100 on padding, so its plain cross-entropy (and its FedProx /
    # SCAFFOLD terms) applies to every task.
