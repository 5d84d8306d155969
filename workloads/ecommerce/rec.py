"""``ecom_rec``: personalised recommendation, one client per user (cross-device, 100k+ clients).

Federated collaborative filtering after Ammad-ud-din et al. 2019 ("Federated Collaborative
Filtering for Privacy-Preserving Personalized Recommendation System"): a user's embedding p_u
never leaves the device — it is a *private* parameter, kept in the client's state — while item
embeddings are federated. A client uploads only the item rows it touched (its positives and
sampled negatives) and the server averages each row over the clients that sent it (per-row
averaging, as FedE does for entities), so upload bytes follow a user's activity, not the
catalogue size.

Models (``workload.model``):

* ``mf`` — matrix factorisation with item biases (Koren, Bell & Volinsky 2009, "Matrix
  Factorization Techniques for Recommender Systems"): s(u, i) = p_u · q_i + b_i.
* ``ncf`` — GMF + MLP after NeuMF (He et al. 2017, "Neural Collaborative Filtering"): a GMF
  branch p_u^G · q_i^G plus an MLP tower over [p_u^M, q_i^M], plus b_i. p_u = [p_u^G, p_u^M] is
  private, q_i = [q_i^G, q_i^M] and b_i are row tables, the MLP is dense and federated.

Both train on implicit feedback with the binary cross-entropy of NCF (positives 1, sampled
negatives 0), with plain SGD (no weight decay: untouched rows must not move). Evaluation is NCF's leave-one-out protocol: each user's latest interaction is
ranked among ``eval_negatives`` sampled items; HR@10 and NDCG@10 (ties counted against the
positive). Before ranking (and before training), a user's device *folds in* its embedding — a few
full-batch Newton steps on p_u alone with the items frozen, on its own training split (the
folding-in of Sarwar et al. 2002, "Incremental SVD-Based Algorithms for Highly Scalable
Recommender Systems"; FCF's local user update) — since most of a large population has never
trained and holds only its initial vector. ``loss`` is the BCE over the test candidates after
fold-in (the positive labelled 1, the negatives 0).

Data: :mod:`.rec_data` (generated users or a ``user_id,item_id,timestamp`` file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedray import seeding
from fedray.errors import UserError
from fedray.training import TrainStats, proximal
from fedray.workloads.base import ClientData, ParameterLayout, Workload
from fedray.workloads.ecommerce.loaders import read_interactions
from fedray.workloads.ecommerce.rec_data import Catalogue, FileUsers, GeneratedUsers
from fedray.workloads.ecommerce.task import load_world

TOP_K = 10
USER_INIT_STD = 0.1  # a fresh device's user vector; small, so fold-in starts near "no opinion"
ITEM_INIT_STD = 0.1
PRIVATE = ("user",)
ROW_TABLES = ("item.weight", "item_bias.weight")


# ----------------------------------------------------------------------------- models


class MatrixFactorization(nn.Module):
    """s(u, i) = p_u · q_i + b_i for one user u (the model holds only its own p_u)."""

    def __init__(self, num_items: int, dim: int):
        super().__init__()
        self.user = nn.Parameter(torch.zeros(dim))
        self.item = nn.Embedding(num_items, dim)
        self.item_bias = nn.Embedding(num_items, 1)
        nn.init.normal_(self.item.weight, std=ITEM_INIT_STD)
        nn.init.zeros_(self.item_bias.weight)

    def score(self, user: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Scores of gathered item rows ``[..., dim]`` and biases ``[..., 1]`` for ``user``
        (``[dim]``, or one user row per item row)."""
        return (rows * user).sum(-1) + bias.squeeze(-1)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.score(self.user, self.item(items), self.item_bias(items))


class NeuMF(MatrixFactorization):
    """GMF + MLP (He et al. 2017): embeddings of width 2·dim, the first half GMF's, the second
    the MLP tower's; s(u, i) = p_u^G · q_i^G + h^T MLP([p_u^M, q_i^M]) + b_i.

    NeuMF learns a weight vector over the GMF branch too; here it is fixed to ones (the GMF
    branch is MF's dot product). With a learned one the score is trilinear in (h, p_u, q_i), and
    plain SGD at MF's step sizes blew up after ~70 rounds of the shipped config; pre-training
    with Adam, as the paper does, is not an option for a device that trains a few steps once."""

    def __init__(self, num_items: int, dim: int, hidden: int):
        super().__init__(num_items, 2 * dim)
        self.dim = dim
        self.mlp = nn.Sequential(
            nn.Linear(2 * dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2 or 1),
            nn.ReLU(),
            nn.Linear(hidden // 2 or 1, 1),
        )

    def score(self, user, rows, bias):
        d = self.dim
        gmf = (user[..., :d] * rows[..., :d]).sum(-1)
        tower = torch.cat([user[..., d:].expand_as(rows[..., d:]), rows[..., d:]], dim=-1)
        return gmf + self.mlp(tower).squeeze(-1) + bias.squeeze(-1)


# ----------------------------------------------------------------------------- metrics


def rank_metrics(scores: torch.Tensor, k: int = TOP_K) -> tuple[torch.Tensor, torch.Tensor]:
    """HR@k and NDCG@k per row of ``scores`` ``[users, candidates]``, the positive in column 0.

    The positive's rank is the number of negatives scoring at least as high (ties count against
    it, so a constant scorer gets no credit); NDCG@k = 1/log2(rank + 2) for a hit (one relevant
    item, so the ideal DCG is 1)."""
    rank = (scores[:, 1:] >= scores[:, :1]).sum(dim=1)
    hit = rank < k
    ndcg = torch.where(
        hit, 1.0 / torch.log2(rank.double() + 2.0), torch.zeros((), dtype=torch.float64)
    )
    return hit.double(), ndcg


# ----------------------------------------------------------------------------- workload


class EcomRec(Workload):
    name = "ecom_rec"
    metric_names = ("hr10", "ndcg10")

    def __init__(self, cfg, seed: int):
        self.cfg, self.seed = cfg, seed
        if cfg.generated:
            catalogue = Catalogue(load_world(cfg.world, seed), seed)
            self.users = GeneratedUsers(catalogue, cfg, seed, cfg.num_clients)
        else:
            table = read_interactions(Path(cfg.source))
            self.users = FileUsers(table, cfg, seed, cfg.num_clients)
        self.num_items = self.users.num_items

    # ------------------------------------------------------------------ data

    def num_train_samples(self, client_ids) -> np.ndarray:
        return self.users.num_train_samples(client_ids)

    def client_data(self, client_id: int) -> ClientData:
        s = self.users.split(int(client_id))
        items = np.concatenate([s.positives, s.negatives])
        labels = np.zeros(len(items), np.float32)
        labels[: len(s.positives)] = 1.0
        return ClientData(
            torch.from_numpy(items),
            torch.from_numpy(labels),
            torch.from_numpy(s.candidates[None, :]),
            torch.zeros(1),
        )

    # ------------------------------------------------------------------ layout

    def parameter_layout(self) -> ParameterLayout:
        return ParameterLayout(private=PRIVATE, row_tables=ROW_TABLES)

    def client_rows(self, client_id: int, data: ClientData) -> np.ndarray:
        return np.unique(data.x_train.numpy())

    def num_client_rows(self, client_ids) -> np.ndarray:
        return self.users.num_rows(client_ids)

    def init_private(self, client_id: int, initial: np.ndarray) -> np.ndarray:
        rng = seeding.generator(self.seed, "ecom.rec.init", client_id)
        return rng.normal(0.0, USER_INIT_STD, np.shape(initial)).astype(np.float32)

    # ------------------------------------------------------------------ model and training

    def build_model(self) -> nn.Module:
        if self.cfg.model == "ncf":
            return NeuMF(self.num_items, self.cfg.embed_dim, self.cfg.hidden)
        return MatrixFactorization(self.num_items, self.cfg.embed_dim)

    def local_train(
        self,
        model: nn.Module,
        data: ClientData,
        *,
        epochs: int,
        lr: float,
        batch_size: int,
        mu: float,
        rng: np.random.Generator,
        correction: list[torch.Tensor] | None = None,
    ) -> TrainStats:
        """Fold in the user vector against the items as received (:meth:`fold_in`), then
        minibatch SGD on the BCE of (item, label) pairs, shuffled by ``rng`` each epoch, over the
        user vector, the touched item rows and biases (step ``lr``), and NCF's dense tower (step
        ``workload.tower_lr``).

        The fold-in comes first because most users of a large population train once: starting
        from a random user vector, their item gradients point in random directions and cancel
        in the per-row average (FCF likewise solves the user factor before computing item
        gradients). With ``mu > 0`` FedProx's proximal gradient μ(w − w^t) pulls every trained
        tensor towards its starting value. Rows the user never touched are not even gathered,
        so they stay bit-identical."""
        if correction is not None:
            raise UserError(
                "workload ecom_rec does not support scaffold: control variates would be dense "
                "over the item table; choose another strategy"
            )
        rows, local = np.unique(data.x_train.numpy(), return_inverse=True)
        rows_t, local = torch.from_numpy(rows), torch.from_numpy(local)
        user = self.fold_in(model, data).requires_grad_()
        table = model.item.weight.detach()[rows_t].requires_grad_()  # a gathered copy
        bias = model.item_bias.weight.detach()[rows_t].requires_grad_()
        dense = [p for n, p in model.named_parameters() if n not in (*PRIVATE, *ROW_TABLES)]
        params = [user, table, bias, *dense]
        anchor = [p.detach().clone() for p in params] if mu > 0 else None
        y = data.y_train.float()
        losses = []
        model.train()
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(len(local)))
            for idx, yb in zip(
                torch.split(local[order], batch_size),
                torch.split(y[order], batch_size),
                strict=True,
            ):
                logits = model.score(user, table[idx], bias[idx])
                loss = F.binary_cross_entropy_with_logits(logits, yb)
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    grads = proximal(grads, params, anchor, mu)
                    torch._foreach_add_(params[:3], grads[:3], alpha=-lr)
                    if dense:
                        torch._foreach_add_(dense, grads[3:], alpha=-self.cfg.tower_lr)
                losses.append(loss.detach())
        with torch.no_grad():
            model.user.copy_(user)
            model.item.weight[rows_t] = table
            model.item_bias.weight[rows_t] = bias
        steps = len(losses)
        total = float(torch.stack(losses).sum()) if losses else 0.0
        if not np.isfinite(total):
            # caught here, a NaN would otherwise spread through the per-row averages
            raise UserError(
                f"workload ecom_rec: local training diverged (loss {total}) at client.lr={lr}; "
                "lower client.lr (or, for ncf, workload.tower_lr)"
            )
        return TrainStats(loss=total / max(steps, 1), steps=steps)

    # ------------------------------------------------------------------ evaluation

    def fold_in(self, model: nn.Module, data: ClientData) -> torch.Tensor:
        """The user vector fitted to the user's train split with items and dense layers frozen:
        ``fold_in_steps`` Gauss–Newton steps on the mean BCE + λ/2‖p_u‖² (for MF, whose score is
        linear in p_u, exactly Newton's method, i.e. IRLS for a logistic regression on the item
        rows). A fixed gradient step would not do: the right step size scales with the item
        rows, whose norms grow during training. λ keeps a separable split bounded."""
        user = model.user.detach().clone()
        if not self.cfg.fold_in_steps or not len(data.x_train):
            return user
        with torch.no_grad():
            rows, bias = model.item(data.x_train), model.item_bias(data.x_train)
        y, n, lam = data.y_train.float(), len(data.x_train), self.cfg.fold_in_l2
        eye = torch.eye(len(user))
        for _ in range(self.cfg.fold_in_steps):
            # one backward through a per-row copy of p_u gives the Jacobian ∂s_j/∂p_u, row by row
            per_row = user.expand(n, -1).clone().requires_grad_()
            scores = model.score(per_row, rows, bias)
            (jac,) = torch.autograd.grad(scores.sum(), [per_row])
            with torch.no_grad():
                prob = torch.sigmoid(scores)
                grad = jac.T @ (prob - y) / n + lam * user
                hess = (jac.T * (prob * (1 - prob))) @ jac / n + lam * eye
                user = user - torch.linalg.solve(hess, grad)
        return user

    @torch.no_grad()
    def _rank(self, model: nn.Module, user: torch.Tensor, candidates: torch.Tensor) -> dict:
        scores = model.score(user, model.item(candidates), model.item_bias(candidates))
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1.0
        hr, ndcg = rank_metrics(scores)
        return {
            "loss": F.binary_cross_entropy_with_logits(scores, labels).item(),
            "accuracy": hr.mean().item(),
            "hr10": hr.mean().item(),
            "ndcg10": ndcg.mean().item(),
        }

    def evaluate_client(self, model: nn.Module, data: ClientData) -> dict[str, float]:
        model.eval()
        return self._rank(model, self.fold_in(model, data), data.x_test)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Stacked candidate rows ``[n, 1 + eval_negatives]`` are ranked with the model's own user
        vector; (item, label) pairs get their BCE and accuracy (HR/NDCG undefined: NaN)."""
        model.eval()
        if x.dim() == 2:
            return self._rank(model, model.user.detach(), x)
        if len(x) == 0:
            nan = float("nan")
            return {"loss": nan, "accuracy": nan, "hr10": nan, "ndcg10": nan}
        logits = model(x)
        return {
            "loss": F.binary_cross_entropy_with_logits(logits, y.float()).item(),
            "accuracy": ((logits > 0).float() == y.float()).float().mean().item(),
            "hr10": float("nan"),
            "ndcg10": float("nan"),
        }
