"""``ecom_kg``: federated knowledge-graph completion over the platforms' subgraphs, FedE-style.

Each client is a platform (or shop) holding the subgraph of the world's product graph that its
catalogue reaches: the triples about the products it lists (hasBrand, inCategory, hasColor,
madeOf, compatibleWith) and the originCountry of their brands. A product listed on several
platforms is the same entity on each, which is what federating entity embeddings exploits.

Training follows FedE (Chen et al. 2021, "FedE: Embedding Knowledge Graphs in Federated
Setting"): the entity table is federated row by row — a client uploads the rows of the entities in
its train triples and the server averages each row over the clients that sent it
(:class:`~fedray.workloads.base.ParameterLayout` ``row_tables``) — while relation embeddings stay
private to each client. Local training is plain SGD on the logistic loss with ``negatives``
corruptions per positive, drawn from the client's own entities only (as in FedE), so rows of other
entities are left bit-identical and need not travel. Scores: DistMult (Yang et al. 2015),
ComplEx (Trouillon et al. 2016) or TransE (Bordes et al. 2013), see :mod:`.kg_models`.

Metrics (per client, over its own entities, filtered by its train and test triples, tails and
heads both ranked): MRR and Hits@10 (``accuracy`` is Hits@10), and the cross-entropy of the true
entity as ``loss``.

With ``source: <file.tsv>`` the triples come from a file (:func:`.loaders.read_triples`); its
optional ``client`` column is the natural partition, otherwise triples are split IID, by
Dirichlet skew over relations, or by a power law over sizes.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from fedray import seeding
from fedray.errors import UserError
from fedray.training import TrainStats, proximal
from fedray.workloads.base import ClientData, ParameterLayout, Workload
from fedray.workloads.ecommerce import partition as part
from fedray.workloads.ecommerce.kg_models import KGEModel, negative_sampling_loss, rank_metrics
from fedray.workloads.ecommerce.loaders import read_triples
from fedray.workloads.ecommerce.task import load_world
from fedray.workloads.ecommerce.world import World

# Initial std of every embedding coordinate. Trilinear scores (DistMult, ComplEx) have a saddle at
# zero, so rows must start large enough for SGD to leave it within a few local epochs.
INIT_STD = 0.2


def world_subgraphs(world: World, by: str) -> tuple[list[tuple[str, str, str]], list[np.ndarray]]:
    """The world's triples and, per platform (``by: platform``) or shop (``by: shop``), the
    indices of the triples its listings reach: triples with a listed product as head or tail,
    and the brand triples (originCountry) of the listed products' brands."""
    triples = list(dict.fromkeys(world.triples))  # a repeated triple would count twice
    shops = world.params.shops_per_platform
    num_groups = world.params.num_platforms * (shops if by == "shop" else 1)
    reach: dict[str, set[int]] = {}
    for p, s, j in world.listings:
        group = p * shops + s if by == "shop" else p
        prod = world.products[j]
        reach.setdefault(f"{prod.brand} {prod.type} {prod.model}", set()).add(group)
        reach.setdefault(prod.brand, set()).add(group)
    parts: list[list[int]] = [[] for _ in range(num_groups)]
    for i, (h, r, t) in enumerate(triples):
        # a brand's own triples go with its products; a product's attribute tails (a brand,
        # a colour) do not pull in triples about other products
        groups = reach.get(h, set()) | (reach.get(t, set()) if r == "compatibleWith" else set())
        for g in groups:
            parts[g].append(i)
    return triples, [np.array(sorted(p), np.int64) for p in parts]


class EcomKG(Workload):
    """Link prediction over per-platform subgraphs with federated entities (FedE)."""

    name = "ecom_kg"
    metric_names = ("mrr", "hits10")

    def __init__(self, cfg, seed: int):
        self.cfg, self.seed = cfg, seed
        triples, parts = self._load()
        self.entity_names = sorted({h for h, _, _ in triples} | {t for _, _, t in triples})
        self.relation_names = sorted({r for _, r, _ in triples})
        ent = {e: i for i, e in enumerate(self.entity_names)}
        rel = {r: i for i, r in enumerate(self.relation_names)}
        self.triples = np.array([(ent[h], rel[r], ent[t]) for h, r, t in triples], np.int64)
        self.triples = self.triples.reshape(-1, 3)
        self.parts = parts
        self.train_idx, self.test_idx = zip(
            *(self._split(k, idx) for k, idx in enumerate(parts)), strict=True
        )
        # the client's local entity set: the rows its training may change and upload
        self.local = [np.unique(self.triples[tr][:, [0, 2]]) for tr in self.train_idx]
        self.x = torch.from_numpy(self.triples)

    # ------------------------------------------------------------------ data

    def _load(self) -> tuple[list[tuple[str, str, str]], list[np.ndarray]]:
        cfg, n = self.cfg, self.cfg.num_clients
        p = cfg.partition
        if cfg.generated:
            world = load_world(cfg.world, self.seed)
            triples, parts = world_subgraphs(world, p.by or "platform")
            if p.scheme == "natural":
                return triples, parts
        else:
            file = read_triples(Path(cfg.source))
            if p.scheme == "natural":
                return self._file_clients(file)
            triples = list(dict.fromkeys(file.triples))
        labels = np.array([r for _, r, _ in triples])
        labels = np.unique(labels, return_inverse=True)[1]
        rng = seeding.generator(self.seed, "ecom.partition")
        try:
            if p.scheme == "dirichlet":
                return triples, part.dirichlet(labels, n, p.alpha, rng)
            if p.scheme == "powerlaw":
                return triples, part.power_law(len(triples), n, p.exponent, rng)
            return triples, part.iid(len(triples), n, rng)
        except part.PartitionError as err:
            where = f"workload {self.name}" if cfg.generated else str(cfg.source)
            raise UserError(f"{where}: {err}") from None

    def _file_clients(self, file) -> tuple[list[tuple[str, str, str]], list[np.ndarray]]:
        """The file's ``client`` column as the partition: integer ids as given, names in sorted
        order; a triple listed under several clients is held by each."""
        source, n = self.cfg.source, self.cfg.num_clients
        if file.clients is None:
            raise UserError(
                f"{source}: partition natural needs a 4th column client on every line; add it, "
                "or set workload.partition to iid, dirichlet or powerlaw"
            )
        names = sorted(set(file.clients))
        # integer ids only as Python writes them: '٣' or '05' would otherwise alias client 3 or 5
        if all(c.isascii() and c.isdigit() and len(c) < 19 and str(int(c)) == c for c in names):
            ids = {c: int(c) for c in names}
            given = sorted(set(ids.values()))
            if given != list(range(n)):
                missing = sorted(set(range(n)) - set(given)) or [given[-1]]
                raise UserError(
                    f"{source}: client ids must be 0..{n - 1} (clients.num_clients={n}), each "
                    f"with triples; client {missing[0]} is missing or out of range"
                )
        else:
            if len(names) != n:
                raise UserError(
                    f"{source}: the client column names {len(names)} clients but "
                    f"clients.num_clients={n}; set clients.num_clients={len(names)}"
                )
            ids = {c: i for i, c in enumerate(names)}
        triples = list(dict.fromkeys(file.triples))
        index = {t: i for i, t in enumerate(triples)}
        parts: list[set[int]] = [set() for _ in range(n)]
        for t, c in zip(file.triples, file.clients, strict=True):
            parts[ids[c]].add(index[t])
        return triples, [np.array(sorted(p), np.int64) for p in parts]

    def _split(self, k: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Train/test triples of client ``k``: a seeded ``test_fraction`` of them, taking only
        triples whose head, tail and relation all remain in the client's train triples — an
        entity seen only at test time would be ranked with an untrained, never-uploaded row."""
        # a user's file is named, and more of its triples are the fix, not a bigger world
        where = f"workload {self.name}" if self.cfg.generated else str(self.cfg.source)
        more = "workload.world.num_products" if self.cfg.generated else "more triples in the file"
        if len(idx) < 2:
            raise UserError(
                f"{where}: client {k} holds {len(idx)} triples; use more data ({more}) or fewer "
                "clients"
            )
        order = seeding.generator(self.seed, "ecom.kg.split", k).permutation(idx)
        n_test = max(1, round(self.cfg.test_fraction * len(idx)))
        rows = self.triples[order]
        degree = Counter(rows[:, 0].tolist()) + Counter(rows[:, 2].tolist())
        uses = Counter(rows[:, 1].tolist())
        test = np.zeros(len(order), bool)
        for i, (h, r, t) in enumerate(rows.tolist()):
            if test.sum() == n_test:
                break
            # a self-loop takes two of its entity's occurrences
            if degree[h] - (h == t) > 1 and degree[t] - (h == t) > 1 and uses[r] > 1:
                test[i] = True
                degree[h] -= 1
                degree[t] -= 1
                uses[r] -= 1
        if not test.any():
            raise UserError(
                f"{where}: client {k} has no triple whose entities also occur in "
                "its other triples, so nothing to test on; use more data, fewer clients or (Dirichlet) a "
                "larger partition.alpha"
            )
        return np.sort(order[~test]), np.sort(order[test])

    def client_statistics(self) -> dict[str, list]:
        num_train = np.array([len(t) for t in self.train_idx])
        stats = part.statistics(self.parts, num_train, self.triples[:, 1], self.relation_names)
        return {**stats, "num_entities": [len(e) for e in self.local]}

    # ------------------------------------------------------------------ Workload

    def num_train_samples(self, client_ids) -> np.ndarray:
        return np.array([len(self.train_idx[int(c)]) for c in np.atleast_1d(client_ids)], np.int64)

    def client_data(self, client_id: int) -> ClientData:
        tr = torch.from_numpy(self.train_idx[client_id])
        te = torch.from_numpy(self.test_idx[client_id])
        # y holds the client id: evaluate() over stacked clients needs each triple's graph
        return ClientData(
            self.x[tr],
            torch.full((len(tr),), client_id, dtype=torch.int64),
            self.x[te],
            torch.full((len(te),), client_id, dtype=torch.int64),
        )

    def build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        return KGEModel(
            cfg.model, len(self.entity_names), len(self.relation_names), cfg.embed_dim, INIT_STD
        )

    def parameter_layout(self) -> ParameterLayout:
        # FedE: entities federated row by row, relations kept by each client
        return ParameterLayout(
            private=("relation.weight",), row_tables=("entity.weight",), download_rows=True
        )

    def client_rows(self, client_id: int, data: ClientData) -> np.ndarray:
        return np.unique(data.x_train[:, [0, 2]].numpy()).astype(np.int64)

    def num_client_rows(self, client_ids) -> np.ndarray:
        return np.array([len(self.local[int(c)]) for c in np.atleast_1d(client_ids)], np.int64)

    def local_train(
        self,
        model: torch.nn.Module,
        data: ClientData,
        *,
        epochs: int,
        lr: float,
        batch_size: int,
        mu: float,
        rng: np.random.Generator,
        correction: list[torch.Tensor] | None = None,
    ) -> TrainStats:
        """SGD over the client's train triples, each against ``negatives`` corruptions of its
        head or tail (even odds) by entities of the client's own set.

        Training runs on a copy of the local rows only, so every other row of ``entity.weight``
        stays bit-identical; with ``mu > 0`` FedProx's μ (w − w^t) joins every gradient as in
        :func:`fedray.training.local_sgd`."""
        if correction is not None:
            raise UserError(
                f"workload {self.name} does not support SCAFFOLD (its relation embeddings are "
                "private); use fedavg, fedprox or a FedOpt strategy"
            )
        local = torch.from_numpy(self.client_rows(-1, data))
        x = data.x_train.clone()
        x[:, [0, 2]] = torch.searchsorted(local, x[:, [0, 2]].contiguous())
        entities = model.entity.weight.detach()[local].clone().requires_grad_(True)
        relations = model.relation.weight
        params = [entities, relations]
        anchor = [p.detach().clone() for p in params] if mu > 0 else None
        k = self.cfg.negatives
        losses = []
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(len(x)))
            for batch in torch.split(x[order], batch_size):
                corrupt = torch.from_numpy(rng.integers(len(local), size=(len(batch), k)))
                replace_head = torch.from_numpy(rng.random((len(batch), k)) < 0.5)
                loss = negative_sampling_loss(
                    model, entities, relations, batch, corrupt, replace_head
                )
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    grads = proximal(grads, params, anchor, mu)
                    torch._foreach_add_(params, grads, alpha=-lr)
                losses.append(loss.detach())
        with torch.no_grad():
            model.entity.weight[local] = entities
        steps = len(losses)
        loss_sum = torch.stack(losses).sum() if losses else torch.zeros(())
        return TrainStats(loss=float(loss_sum) / max(steps, 1), steps=steps)

    # ------------------------------------------------------------------ evaluation

    def evaluate_client(self, model: torch.nn.Module, data: ClientData) -> dict[str, float]:
        return self._rank(model, data.x_test, data)

    def evaluate(self, model, x, y) -> dict[str, float]:
        """Filtered ranking of triples ``x``, each within the graph of client ``y`` (its entities
        as candidates, its train and test triples filtered); means weighted by triples."""
        out: dict[str, float] = {}
        total = 0
        for c in torch.unique(y).tolist():
            mine = x[y == c]
            metrics = self._rank(model, mine, self.client_data(int(c)))
            for key, value in metrics.items():
                out[key] = out.get(key, 0.0) + value * len(mine)
            total += len(mine)
        if not total:
            nan = float("nan")
            return {"loss": nan, "accuracy": nan, "mrr": nan, "hits10": nan}
        return {key: value / total for key, value in out.items()}

    def _rank(self, model, queries: torch.Tensor, data: ClientData) -> dict[str, float]:
        local = torch.from_numpy(self.client_rows(-1, data))
        known = torch.cat([data.x_train, data.x_test])

        def positions(t: torch.Tensor) -> torch.Tensor:
            t = t.clone()
            t[:, [0, 2]] = torch.searchsorted(local, t[:, [0, 2]].contiguous())
            return t

        if len(queries):
            ents = queries[:, [0, 2]]
            found = local[torch.searchsorted(local, ents).clamp(max=len(local) - 1)] == ents
            if not bool(found.all()):
                raise ValueError(f"{self.name}: a ranked triple has an entity outside the graph")
        metrics = rank_metrics(
            model, model.relation.weight, local, positions(queries), positions(known)
        )
        return {**metrics, "accuracy": metrics["hits10"]}
