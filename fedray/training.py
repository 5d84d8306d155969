"""Local training and evaluation of a classifier on one client's tensors.

:func:`local_sgd` is the client algorithm of FedAvg (McMahan et al. 2017, "Communication-Efficient
Learning of Deep Networks from Decentralized Data") and, with ``mu > 0``, of FedProx (Li et al.
2020, "Federated Optimization in Heterogeneous Networks"), whose local objective is

    h_k(w; w^t) = F_k(w) + μ/2 · ‖w − w^t‖²,   so   ∇h_k = ∇F_k(w) + μ (w − w^t).

The proximal gradient is added directly instead of differentiating the penalty: same maths, no
extra autograd graph. With a ``correction`` it is also SCAFFOLD's client step (Karimireddy et al.
2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", Algorithm 1),

    y ← y − η_l (g_k(y) − c_k + c),   with the constant correction c − c_k.

The function knows nothing of Ray, files or clocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TrainStats:
    loss: float  # mean minibatch loss over all local steps
    steps: int


def flat_params(model: torch.nn.Module) -> np.ndarray:
    """The model's parameters as one float32 numpy vector (a copy)."""
    with torch.no_grad():
        return torch.nn.utils.parameters_to_vector(model.parameters()).numpy().copy()


def load_flat_params(model: torch.nn.Module, flat: np.ndarray | torch.Tensor) -> None:
    """Copy a flat vector into the model's parameters.

    Copies rather than aliases: the source is often a read-only array in Ray's object store,
    which local training must never write through.
    """
    source = flat if isinstance(flat, torch.Tensor) else torch.tensor(np.asarray(flat, np.float32))
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(source[offset : offset + n].view_as(p))
            offset += n


def split_like(model: torch.nn.Module, flat: np.ndarray) -> list[torch.Tensor]:
    """A flat float32 vector as tensors shaped like the model's parameters (in their order)."""
    source = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
    sizes = [p.numel() for p in model.parameters()]
    return [
        t.view_as(p) for t, p in zip(torch.split(source, sizes), model.parameters(), strict=True)
    ]


def proximal(
    grads: list[torch.Tensor],
    params: list[torch.Tensor],
    anchor: list[torch.Tensor] | None,
    mu: float,
) -> list[torch.Tensor]:
    """FedProx's gradient ∇h_k = ∇F_k(w) + μ (w − w^t), with ``anchor`` = w^t (the global
    model on entry); the plain gradients when there is no anchor (μ = 0)."""
    if anchor is None:
        return grads
    return [g.add(p - a, alpha=mu) for g, p, a in zip(grads, params, anchor, strict=True)]


def local_sgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    rng: np.random.Generator,
    mu: float = 0.0,
    correction: list[torch.Tensor] | None = None,
) -> TrainStats:
    """Minibatch SGD for ``epochs`` passes over (x, y), reshuffled each epoch by ``rng``.

    With ``mu > 0`` the anchor w^t is the model's parameters on entry (the global model).
    ``correction`` (one tensor per parameter) is added to every step's gradient.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if mu > 0 else None
    n = len(x)
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(n))
        # Splitting once and collecting losses without a per-step sync trims ~10% per step.
        batches = zip(
            torch.split(x[order], batch_size), torch.split(y[order], batch_size), strict=True
        )
        for xb, yb in batches:
            loss = F.cross_entropy(model(xb), yb)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                grads = proximal(grads, params, anchor, mu)
                if correction is not None:
                    grads = [g.add(c) for g, c in zip(grads, correction, strict=True)]
                torch._foreach_add_(params, grads, alpha=-lr)
            losses.append(loss.detach())
    steps = len(losses)
    loss_sum = torch.stack(losses).sum() if losses else torch.zeros(())
    return TrainStats(loss=float(loss_sum) / max(steps, 1), steps=steps)


@torch.no_grad()
def evaluate_classifier(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on (x, y)."""
    if len(x) == 0:
        return float("nan"), float("nan")
    model.eval()
    logits = model(x)
    loss = F.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, accuracy
