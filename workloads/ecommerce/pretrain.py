"""Central pre-training of the LM base on a *public* world, cached like the world itself.

Federated LLM work fine-tunes a model pre-trained on public data with private silos' data, often
with LoRA (e.g. Zhang et al. 2024, "Towards Building the FederatedGPT"); adapters on a random base
learn little. The public corpus here is a second world drawn from a different seed — same
lexicon, other brands, products, platforms and phrasings — encoded with the task's vocabulary.
Training is single-threaded Adam (Kingma & Ba 2015) with seeded initialisation and batches, so
every process that has to compute the base gets the same bytes; the first one to finish caches it
(temporary file, then ``os.replace``) and the others load it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedray import seeding

BATCH_SIZE = 32
LR = 3e-3
IGNORE = -100


def public_world_params(params):
    """The public world: the private world's sizes under a seed derived from its own."""
    return dataclasses.replace(params, seed=seeding.purpose_code("ecom.public_world") ^ params.seed)


def pretrained_state(
    build_full_model, x: np.ndarray, y: np.ndarray, steps: int, seed: int, key: dict, cache_dir
) -> dict[str, torch.Tensor]:
    """State dict of a full (non-LoRA) model trained ``steps`` Adam steps on (x, y)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"ecom-lm-base-{digest}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except (OSError, RuntimeError, EOFError):
            pass  # unreadable: train again; the result is a pure function of the key
    state = _train(build_full_model, torch.from_numpy(x), torch.from_numpy(y), steps, seed)
    if path is not None:
        _save_atomically(state, path)
    return state


def _train(build_full_model, x, y, steps: int, seed: int) -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums in one fixed order: the same base in every process
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_full_model()
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        rng = seeding.generator(seed, "ecom_lm.pretrain")
        model.train()
        for _ in range(steps):
            batch = torch.from_numpy(
                rng.choice(len(x), size=min(BATCH_SIZE, len(x)), replace=False)
            )
            loss = F.cross_entropy(model(x[batch]), y[batch], ignore_index=IGNORE)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    finally:
        torch.set_num_threads(threads)


def _save_atomically(state: dict, path: Path) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
