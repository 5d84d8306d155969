"""Vectorized local training: a block of clients trained together in one batched computation.

For small models the cost of a client update is almost all per-call overhead — a Python loop,
a dozen torch dispatches and an autograd graph per minibatch — not arithmetic. Following FedJAX's
``for_each_client`` (Ro et al. 2021, "FedJAX: Federated learning simulation with JAX"), this
module stacks the parameters of K clients and takes the *same* minibatch SGD step for all of them
at once: step t multiplies a [a_t, B, in] block of minibatches by a [a_t, in, out] block of
weights, where a_t is the number of clients that still have a t-th step.

It computes exactly what :func:`fedray.training.local_sgd` computes per client, to float tolerance:

* each client's batches come from its own generator, one ``rng.permutation(n)`` per epoch, cut
  into batches of B with a short last batch per epoch — the order of the sequential path;
* a short batch is padded to B and masked: each row carries the weight 1/|batch| (0 for padding),
  so the loss is the batch-mean cross-entropy and padded rows contribute no gradient;
* clients with fewer steps (smaller n, fewer epochs under the ``partial`` straggler policy) stop
  early: clients are ordered by step count, so the active ones at step t form a prefix of the
  stack and finished clients are simply not computed (no masked arithmetic is wasted on them);
* FedProx adds μ (w − w^t) to the gradient, and SCAFFOLD (Karimireddy et al. 2020) a per-client
  constant correction c − c_i, as in the sequential path.

The model must be a dense stack — ``nn.Linear`` or ``nn.Sequential`` of ``Linear`` layers with
``ReLU`` between them (Synthetic's logreg and MLP) — with the cross-entropy loss; its gradient is
written out by hand (softmax − one-hot, back through the ReLUs). The critical path of a round is
the longest client's chain of steps, paid in per-step overhead, so that overhead decides: for a
logreg step on this machine ``torch.func.vmap(grad(...))`` over ``functional_call`` took ~20×,
and the same hand-written step in torch ~2×, the time of the numpy float32 version used here.
A step is therefore written to make as few numpy calls as possible (~10 for a logreg step,
9.7 µs on a single client): lr is folded into the loss weights, the losses are computed from the
kept logits after the loop, and the softmax first runs without its max-shift; a client whose
logits left the range where that is exact is trained again with the shift, alone, so that which
clients share its block never changes its update (the two round differently).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedray.errors import UserError

MODES = ("auto", "on", "off")


def dense_shapes(model: nn.Module) -> list[tuple[int, int]] | None:
    """``[(out, in), ...]`` of a dense ReLU stack with biases, or ``None`` for any other model."""
    layers = [model] if isinstance(model, nn.Linear) else list(model.children())
    if not isinstance(model, nn.Linear | nn.Sequential) or not layers:
        return None
    shapes = []
    for i, layer in enumerate(layers):
        expected = nn.Linear if i % 2 == 0 else nn.ReLU
        if type(layer) is not expected:
            return None
        if expected is nn.Linear:
            if layer.bias is None:
                return None
            shapes.append((layer.out_features, layer.in_features))
    if len(layers) % 2 == 0:  # must end on a Linear producing the logits
        return None
    return shapes


def resolve_mode(mode: str, workload, model: nn.Module | None = None) -> bool:
    """Whether to train blocks vectorized, for ``execution.vectorize`` = auto | on | off.

    ``auto`` turns it on where the workload's local training is plain cross-entropy SGD
    (:meth:`Workload.vectorizable`) and its model is a dense stack; ``on`` insists and raises a
    one-line :class:`UserError` where that does not hold.
    """
    if mode not in MODES:
        raise UserError(f"execution.vectorize must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "off":
        return False
    model = model if model is not None else workload.build_model()
    supported = workload.vectorizable() and dense_shapes(model) is not None
    if mode == "on" and not supported:
        raise UserError(
            f"execution.vectorize=on, but workload {workload.name!r} with model "
            f"{type(model).__name__} cannot train vectorized; set execution.vectorize to auto or off"
        )
    return supported


@dataclass(frozen=True)
class ClientJob:
    """One client's share of a block: its train split, epochs, shuffling generator and start."""

    x: np.ndarray  # float32 [n, in]
    y: np.ndarray  # int64 [n]
    epochs: int
    rng: np.random.Generator
    start: np.ndarray  # flat float32 parameters the client starts from (its w^t)
    correction: np.ndarray | None = None  # flat float32 added to every gradient (SCAFFOLD)


@dataclass(frozen=True)
class BlockResult:
    """Per client, in job order."""

    params: np.ndarray  # float32 [K, d] trained flat parameters
    loss: np.ndarray  # mean minibatch loss over the client's steps
    steps: np.ndarray  # int64


def _schedule(jobs: list[ClientJob], batch_size: int):
    """Lay every step of every client out time-major: step t holds the active clients (a prefix of
    the step-count order) one after another, each as one slot of B rows. Returns the order, the
    step counts, the active counts and each step's first slot, and per rank the slots of its
    steps with the client's own row of each (−1 pads a short last batch)."""
    sizes = np.array([len(j.y) for j in jobs], dtype=np.int64)
    batches = -(-sizes // batch_size)
    steps = batches * np.array([j.epochs for j in jobs], dtype=np.int64)
    order = np.argsort(-steps, kind="stable")
    horizon = int(steps.max(initial=0))
    # active[t] = number of clients with more than t steps; they are order[:active[t]].
    active = len(jobs) - np.searchsorted(np.sort(steps), np.arange(horizon), side="right")
    block_start = np.concatenate([[0], np.cumsum(active)])
    placement = []
    for rank, k in enumerate(order):
        job, n, nb = jobs[k], int(sizes[k]), int(batches[k])
        padded = np.full((job.epochs, nb * batch_size), -1, dtype=np.int64)
        for e in range(job.epochs):
            padded[e, :n] = job.rng.permutation(n)
        placement.append((block_start[: steps[k]] + rank, padded.reshape(-1, batch_size)))
    return order, steps, active, block_start, placement


@dataclass(frozen=True)
class _Block:
    """A block's time-major inputs (see :func:`_schedule`) and its lr-scaled loss terms."""

    x: np.ndarray  # [slots, B, in + 1] minibatch rows with a constant-1 column
    lr_weight: np.ndarray  # [slots, B, 1] lr / |batch|, 0 for padding
    lr_target: np.ndarray  # [slots, B, classes] lr × weighted one-hot
    active: np.ndarray  # clients with a t-th step
    block_start: np.ndarray  # first slot of step t
    lr_mu: float
    anchor: list[np.ndarray] | None  # FedProx: the start models, stacked like the parameters
    correction: list[np.ndarray] | None  # SCAFFOLD: lr (c − c_i), stacked


def _sgd(block: _Block, params: list[np.ndarray], shapes, *, stable: bool):
    """Every step of the block, updating the stacked ``params`` in place. Returns each slot's
    logits (max-shifted if ``stable``) and softmax normaliser, from which the losses follow."""
    jobs, batch_size = len(params[0]), block.x.shape[1]
    slots, num_classes = len(block.x), shapes[-1][0]
    # Hidden activations with their constant-1 column, reused every step (views [:a]).
    hidden = [np.ones((jobs, batch_size, out + 1), np.float32) for out, _ in shapes[:-1]]
    # Every step's logits and normaliser are kept and the losses computed once after the loop:
    # the loss took a third of a step's calls.
    logits = np.empty((slots, batch_size, num_classes), np.float32)
    normaliser = np.empty((slots, batch_size, 1), np.float32)
    probs = np.empty((jobs, batch_size, num_classes), np.float32)
    scale = np.empty((jobs, batch_size, 1), np.float32)
    grads = [np.empty_like(p) for p in params]
    x, lr_weight, lr_target = block.x, block.lr_weight, block.lr_target
    last = len(shapes) - 1
    # ufunc methods directly: np.sum/ndarray.max add ~1 µs of dispatch per call.
    add_reduce, max_reduce = np.add.reduce, np.maximum.reduce
    for a, lo in zip(block.active.tolist(), block.block_start.tolist(), strict=False):
        hi = lo + a
        h = x[lo:hi]
        inputs = []
        for layer in range(last):
            inputs.append(h)
            z = np.matmul(h, params[layer][:a])
            h = hidden[layer][:a]
            np.maximum(z, 0.0, out=h[..., :-1])
        inputs.append(h)
        z = np.matmul(h, params[last][:a], out=logits[lo:hi])
        if stable:
            z -= max_reduce(z, axis=2, keepdims=True)
        e = np.exp(z, out=probs[:a])
        total = add_reduce(e, axis=2, keepdims=True, out=normaliser[lo:hi])
        # lr × d loss / d logits = lr (softmax − one-hot) / |batch|, masked rows 0.
        e *= np.divide(lr_weight[lo:hi], total, out=scale[:a])
        delta = np.subtract(e, lr_target[lo:hi], out=e)
        for layer in range(last, -1, -1):
            p = params[layer][:a]
            step = np.matmul(inputs[layer].transpose(0, 2, 1), delta, out=grads[layer][:a])
            if layer > 0:  # propagate with the weights before this step's update
                below = inputs[layer][..., :-1]
                delta = np.matmul(delta, p[:, :-1, :].transpose(0, 2, 1)) * (below > 0)
            if block.anchor is not None:
                step += block.lr_mu * (p - block.anchor[layer][:a])
            if block.correction is not None:
                step += block.correction[layer][:a]
            np.subtract(p, step, out=p)
    return logits, normaliser


# Without the max-shift, a softmax step is exact to float32 rounding while, for every row, the
# normaliser Σ exp(z) is finite and its largest term a normal number (terms that matter then carry
# their full 24-bit precision; the rest are below 2^-24 of it and round away as they would
# anyway), and the row's scale lr / (|batch| · Σ exp(z)) is a normal number too (a denormal one
# keeps fewer bits: lr 2e-5 with logits near 80 had lost all but a few).
_NORMALISER_MIN = float(np.exp(np.float32(-80.0)))
_SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)


def _unshifted_was_inexact(
    normaliser: np.ndarray, lr_weight: np.ndarray, params: list[np.ndarray], rank: np.ndarray
) -> np.ndarray:
    """Per client (rank order), whether its unshifted steps left the exact range. Judged per
    client, not per block: the shifted steps round differently, so retraining a whole block
    would make a client's update depend on which clients shared its block."""
    with np.errstate(invalid="ignore", over="ignore"):
        in_range = (normaliser >= _NORMALISER_MIN) & np.isfinite(normaliser)
        # float64: the product of a large normaliser and 2^-126 must not itself underflow.
        scale_normal = (lr_weight == 0) | (
            lr_weight.astype(np.float64) >= normaliser.astype(np.float64) * _SMALLEST_NORMAL
        )
    bad_slot = ~(in_range & scale_normal).reshape(len(rank), -1).all(axis=1)
    jobs = len(params[0])
    bad = np.bincount(rank, weights=bad_slot, minlength=jobs) > 0
    for p in params:
        bad |= ~np.isfinite(p.reshape(jobs, -1)).all(axis=1)
    return bad


def _sub_block(block: _Block, ranks: np.ndarray, steps_by_rank: np.ndarray):
    """The block of only the clients at ``ranks`` (sorted; the stack stays ordered by step
    count), with the same minibatches; and the slots of the full block its slots came from."""
    steps = steps_by_rank[ranks]
    # as in _schedule: active[t] = clients with more than t steps
    active = len(steps) - np.searchsorted(np.sort(steps), np.arange(steps.max()), side="right")
    slots = np.concatenate(
        [block.block_start[t] + ranks[:a] for t, a in enumerate(active.tolist())]
    )

    def pick(arrays):
        return None if arrays is None else [a[ranks] for a in arrays]

    sub = _Block(
        block.x[slots],
        block.lr_weight[slots],
        block.lr_target[slots],
        active,
        np.concatenate([[0], np.cumsum(active)]),
        block.lr_mu,
        pick(block.anchor),
        pick(block.correction),
    )
    return sub, slots


def train_block(
    shapes: list[tuple[int, int]],
    jobs: list[ClientJob],
    *,
    lr: float,
    batch_size: int,
    mu: float = 0.0,
) -> BlockResult:
    """Minibatch SGD for every job at once; see the module docstring for what "at once" means.

    Each layer's weight and bias are kept as one [K, in + 1, out] array (the bias as the weight of
    an input that is always 1), so a layer is one batched matmul forward and one backward."""
    order, steps, active, block_start, placement = _schedule(jobs, batch_size)
    num_classes = shapes[-1][0]
    # Each client's rows gathered straight into its minibatch slots, with a constant-1 column for
    # the bias; padded rows read the client's row 0 and get weight 0. The block's arrays are per
    # row slot (a block of Synthetic's 50 largest clients has ~260k), so nothing else per row
    # is built: ~350 bytes a row at the peak, against ~690 when the rows were first concatenated.
    slots = int(block_start[-1])
    x = np.empty((slots, batch_size, shapes[0][1] + 1), np.float32)
    x[..., -1] = 1.0
    y = np.empty((slots, batch_size), np.int64)
    valid = np.empty((slots, batch_size), bool)
    for (at, local), k in zip(placement, order, strict=True):
        ok = local >= 0
        index = np.where(ok, local, 0)
        x[at, :, :-1] = jobs[k].x[index]
        y[at] = jobs[k].y[index]
        valid[at] = ok
    del placement
    # Row weight 1/|batch| makes Σ_rows weight·CE the batch-mean loss of the sequential path.
    weight = (valid / np.maximum(valid.sum(1, keepdims=True), 1)).astype(np.float32)[..., None]
    del valid
    lr_weight = lr * weight
    # lr × the weighted one-hot: d loss / d logits = weight · softmax − target.
    lr_target = (y[..., None] == np.arange(num_classes)) * lr_weight

    def stack(vectors: list[np.ndarray]) -> list[np.ndarray]:
        """Per layer [W^T; b] (K, in + 1, out) from flat per-client vectors, in rank order."""
        flat = np.stack([vectors[k] for k in order]).astype(np.float32)
        layers, at = [], 0
        for out, inp in shapes:
            w = flat[:, at : at + out * inp].reshape(-1, out, inp)
            b = flat[:, at + out * inp : at + out * inp + out]
            layers.append(np.concatenate([w.transpose(0, 2, 1), b[:, None, :]], axis=1))
            at += out * inp + out
        return layers

    # The steps work on lr-scaled gradients (lr folded into the loss weights, the proximal
    # coefficient and the correction), so an update is one in-place subtraction.
    anchor = stack([j.start for j in jobs]) if mu > 0 else None
    correction = None
    if any(j.correction is not None for j in jobs):
        zero = np.zeros_like(jobs[0].start)
        correction = stack([zero if j.correction is None else lr * j.correction for j in jobs])
    block = _Block(x, lr_weight, lr_target, active, block_start, lr * mu, anchor, correction)
    # Optimistically without the softmax's max-shift (two of a step's ~10 numpy calls, each
    # ~1 µs of pure overhead on a block's single-client tail); a block whose logits left the
    # range where that is exact is trained again with the shift.
    start = stack([j.start for j in jobs])
    params = [p.copy() for p in start]
    with np.errstate(all="ignore"):  # overflow there is detected and answered by the retry
        logits, normaliser = _sgd(block, params, shapes, stable=False)
    # slot s of step t belongs to rank s − block_start[t]
    rank = np.arange(len(x)) - np.repeat(block_start[:-1], active)
    inexact = _unshifted_was_inexact(normaliser, block.lr_weight, params, rank)
    if inexact.any():  # those clients alone are trained again, with the shift
        ranks = np.flatnonzero(inexact)
        sub, slots = _sub_block(block, ranks, steps[order])
        again = [p[ranks] for p in start]
        sub_logits, sub_normaliser = _sgd(sub, again, shapes, stable=True)
        for p, q in zip(params, again, strict=True):
            p[ranks] = q
        logits[slots], normaliser[slots] = sub_logits, sub_normaliser

    # A row's cross-entropy is log Σ_c exp(z) − z_y for the logits z as used (shifted or not);
    # weighted and summed per slot, then over each client's slots. In float64: unshifted, the
    # two terms can be large and close.
    z_y = np.take_along_axis(logits, y[..., None], axis=2)[..., 0]
    row_loss = np.log(normaliser[..., 0], dtype=np.float64) - z_y
    slot_loss = (weight[..., 0] * row_loss).sum(axis=1)
    loss_sum = np.bincount(rank, weights=slot_loss, minlength=len(jobs))

    flat = np.concatenate(
        [
            part.reshape(len(jobs), -1)
            for p in params
            for part in (p[:, :-1, :].transpose(0, 2, 1), p[:, -1, :])
        ],
        axis=1,
    )
    unsorted = np.empty_like(flat)
    unsorted[order] = flat
    losses = np.empty(len(jobs), dtype=np.float64)
    losses[order] = loss_sum
    losses /= np.maximum(steps, 1)
    return BlockResult(params=unsorted, loss=losses, steps=steps)


def job_from(data, *, epochs: int, rng, start: np.ndarray, correction=None) -> ClientJob:
    """A job from a workload's :class:`~fedray.workloads.ClientData` (torch tensors)."""
    x, y = data.x_train, data.y_train
    if isinstance(x, torch.Tensor):
        x, y = x.numpy(), y.numpy()
    return ClientJob(x, y, epochs, rng, start, correction)
