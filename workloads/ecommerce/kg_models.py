"""Knowledge-graph embedding models and the filtered ranking metrics of ``ecom_kg``.

A triple (h, r, t) gets a score s(h, r, t); training pushes true triples up and corrupted ones
down, evaluation ranks the true entity of each test triple among candidates. The scores:

* DistMult (Yang et al. 2015, "Embedding Entities and Relations for Learning and Inference in
  Knowledge Bases"): s = ⟨h, r, t⟩ = Σ_i h_i r_i t_i — symmetric in h and t.
* ComplEx (Trouillon et al. 2016, "Complex Embeddings for Simple Link Prediction"):
  s = Re(⟨h, r, t̄⟩) with h, r, t ∈ ℂ^(d/2), stored as [real half | imaginary half] of a width-d
  row, so antisymmetric relations are expressible and every model ships d floats per entity.
* TransE (Bordes et al. 2013, "Translating Embeddings for Modeling Multi-relational Data"):
  s = γ − ‖h + r − t‖₁, γ a fixed margin so that the logistic loss has a threshold.

The filtered ranking protocol is Bordes et al. 2013's: when ranking the tail of (h, r, ?), every
other t' with (h, r, t') known to be true is removed from the candidates (likewise for heads), so a
model is not punished for ranking another correct answer first. Ties count half (the expected
rank under random tie-breaking), so a constant model scores the random ranker's MRR, not 1.

Everything here is plain torch on tensors: no data, no federation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("distmult", "complex", "transe")
_EVAL_CHUNK = 256  # queries scored at once: a [chunk, candidates] block bounds eval memory


class KGEModel(nn.Module):
    """One entity table and one relation table; the parameters are ``entity.weight``
    [entities, width] and ``relation.weight`` [relations, width], in that order."""

    def __init__(
        self, kind: str, num_entities: int, num_relations: int, width: int, init_std: float
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown KG model {kind!r}; known: {', '.join(KINDS)}")
        if kind == "complex" and width % 2:
            raise ValueError(
                f"complex needs an even width (real and imaginary halves), got {width}"
            )
        self.kind = kind
        self.entity = nn.Embedding(num_entities, width)
        self.relation = nn.Embedding(num_relations, width)
        nn.init.normal_(self.entity.weight, std=init_std)
        nn.init.normal_(self.relation.weight, std=init_std)
        # TransE's margin, of the order of ‖h + r − t‖₁ for untrained rows (≈ 1.4 · width ·
        # init_std), so scores start near the logistic loss's threshold, not deep on one side.
        self.gamma = float(width * init_std)

    def score(self, h: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """s(h, r, t) of embedding rows, broadcast over leading dims: [..., width] -> [...]."""
        if self.kind == "distmult":
            return (h * r * t).sum(-1)
        if self.kind == "complex":
            hr, hi = h.chunk(2, -1)
            rr, ri = r.chunk(2, -1)
            tr, ti = t.chunk(2, -1)
            return (hr * rr * tr + hi * rr * ti + hr * ri * ti - hi * ri * tr).sum(-1)
        return self.gamma - (h + r - t).abs().sum(-1)

    def score_tails(self, h: torch.Tensor, r: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """s(h_i, r_i, c_j) for all queries i [m, width] and candidates j [n, width]: [m, n]."""
        if self.kind == "distmult":
            return (h * r) @ cand.T
        if self.kind == "complex":
            hr, hi = h.chunk(2, -1)
            rr, ri = r.chunk(2, -1)
            cr, ci = cand.chunk(2, -1)
            # Re(h·r·c̄) = Re(h·r)·Re(c) + Im(h·r)·Im(c)
            return (hr * rr - hi * ri) @ cr.T + (hr * ri + hi * rr) @ ci.T
        return self.gamma - torch.cdist(h + r, cand, p=1)

    def score_heads(self, r: torch.Tensor, t: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """s(c_j, r_i, t_i) for all queries i and candidates j: [m, n]."""
        if self.kind == "distmult":
            return (r * t) @ cand.T
        if self.kind == "complex":
            rr, ri = r.chunk(2, -1)
            tr, ti = t.chunk(2, -1)
            cr, ci = cand.chunk(2, -1)
            return (rr * tr + ri * ti) @ cr.T + (rr * ti - ri * tr) @ ci.T
        # ‖c + r − t‖₁ = ‖c − (t − r)‖₁
        return self.gamma - torch.cdist(t - r, cand, p=1)


def negative_sampling_loss(
    model: KGEModel,
    entities: torch.Tensor,
    relations: torch.Tensor,
    batch: torch.Tensor,
    corrupt: torch.Tensor,
    replace_head: torch.Tensor,
) -> torch.Tensor:
    """Logistic loss of positives against their corruptions (Trouillon et al. 2016's loss,
    without its L2 term): mean softplus(−s⁺) + mean softplus(s⁻).

    ``entities`` [n, width] is the table ``batch`` [b, 3] indexes; ``corrupt`` [b, k] are
    replacement entity ids, put in the head where ``replace_head`` [b, k] is true, else the tail.
    """
    h, r, t = batch.unbind(1)
    rel = relations[r]
    pos = model.score(entities[h], rel, entities[t])
    neg_h = torch.where(replace_head, corrupt, h[:, None])
    neg_t = torch.where(replace_head, t[:, None], corrupt)
    neg = model.score(entities[neg_h], rel[:, None, :], entities[neg_t])
    return F.softplus(-pos).mean() + F.softplus(neg).mean()


def matching_pairs(
    query: np.ndarray, key: np.ndarray, value: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """All (i, value[j]) with key[j] == query[i], vectorised: a sorted join of int64 keys."""
    order = np.argsort(key, kind="stable")
    key, value = key[order], value[order]
    lo = np.searchsorted(key, query, "left")
    counts = np.searchsorted(key, query, "right") - lo
    rows = np.repeat(np.arange(len(query)), counts)
    # the j-th match of query i sits at lo[i] + j; g − (first g of row i) is that j
    first = np.cumsum(counts) - counts
    cols = value[np.repeat(lo - first, counts) + np.arange(counts.sum())]
    return rows, cols


def filtered_ranks(
    scores: torch.Tensor, target: torch.Tensor, known_rows: np.ndarray, known_cols: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rank, cross-entropy, candidates left) of each row's ``target`` column among the row's
    candidates after removing the other known answers ``(known_rows, known_cols)``.

    Ties count half: the rank is 1 + #better + #tied / 2, the expected rank under random
    tie-breaking. A NaN score (a diverged model) ties with everything rather than winning."""
    rows = torch.arange(len(target))
    scores = torch.nan_to_num(scores, nan=-torch.inf)
    true = scores[rows, target]
    rivals = torch.ones_like(scores, dtype=torch.bool)
    rivals[torch.from_numpy(known_rows), torch.from_numpy(known_cols)] = False
    rivals[rows, target] = False
    greater = ((scores > true[:, None]) & rivals).sum(1)
    equal = ((scores == true[:, None]) & rivals).sum(1)
    logits = scores.masked_fill(~rivals, -torch.inf)
    logits[rows, target] = true
    nll = F.cross_entropy(logits, target, reduction="none")
    return 1.0 + greater + 0.5 * equal, nll, rivals.sum(1) + 1


@torch.no_grad()
def rank_metrics(
    model: KGEModel,
    relations: torch.Tensor,
    candidates: torch.Tensor,
    test: torch.Tensor,
    known: torch.Tensor,
) -> dict[str, float]:
    """Filtered link prediction of ``test`` triples, both directions, over ``candidates``.

    ``candidates`` [n] are entity ids of ``model.entity``; ``test`` [m, 3] and ``known`` [k, 3]
    (every true triple of the graph, test included) hold *positions* in ``candidates`` for
    heads and tails, and relation ids. Returns the means over the 2m queries (tails and heads)
    of ``loss`` (cross-entropy of the true entity over the filtered candidates), ``mrr``,
    ``hits10`` and ``random_mrr`` (what a random ranker would score on the same queries).
    """
    cand = model.entity.weight[candidates]
    n_rel = len(relations)
    kh, kr, kt = (known[:, i].numpy().astype(np.int64) for i in range(3))
    ranks, losses, lefts = [], [], []
    for chunk in torch.split(test, _EVAL_CHUNK):
        h, r, t = chunk.unbind(1)
        hn, rn, tn = (v.numpy().astype(np.int64) for v in (h, r, t))
        rel = relations[r]
        for scores, target, query, key, value in (
            (model.score_tails(cand[h], rel, cand), t, hn * n_rel + rn, kh * n_rel + kr, kt),
            (model.score_heads(rel, cand[t], cand), h, tn * n_rel + rn, kt * n_rel + kr, kh),
        ):
            rank, nll, left = filtered_ranks(scores, target, *matching_pairs(query, key, value))
            ranks.append(rank), losses.append(nll), lefts.append(left)
    if not ranks:
        nan = float("nan")
        return {"loss": nan, "mrr": nan, "hits10": nan, "random_mrr": nan}
    rank = torch.cat(ranks).double()
    return {
        "loss": torch.cat(losses).double().mean().item(),
        "mrr": (1.0 / rank).mean().item(),
        "hits10": (rank <= 10).double().mean().item(),
        "random_mrr": random_mrr(torch.cat(lefts).numpy()),
    }


def random_mrr(num_candidates: np.ndarray) -> float:
    """Expected MRR of a ranker that orders each query's n filtered candidates at random:
    mean over queries of H_n / n (H_n the n-th harmonic number)."""
    n = np.asarray(num_candidates, dtype=np.int64)
    harmonic = np.cumsum(1.0 / np.arange(1, max(int(n.max()), 1) + 1))
    return float(np.mean(harmonic[n - 1] / n))
