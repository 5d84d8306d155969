"""Checkpoints of a run: the driver's state, the client-state store and how far the tables got.

A checkpoint is the folder ``<run>/checkpoint/`` holding ``state.pt`` (plain containers of
tensors, ints, floats and strings, written with ``torch.save`` and read back with
``torch.load(weights_only=True)``, which refuses anything that would need unpickling code) and
``client_state.npz`` (``numpy.load(allow_pickle=False)``). It is written into a temporary folder
and renamed into place, so a crash at any instant leaves either the previous checkpoint or the
new one, never a torn one. The result tables are written in parts (:mod:`fedray.results.writer`)
and the checkpoint records how many parts it covers; parts written after it are dropped on
resume, so a resumed run's tables are exactly an uninterrupted run's.
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from fedray.errors import UserError

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
CLIENT_STATE_FILE = "client_state.npz"
FORMAT = 1


def to_saveable(value):
    """numpy arrays (at any depth of dicts, lists and tuples) as torch tensors."""
    import torch

    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: to_saveable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_saveable(v) for v in value]
    return value


def from_saved(value):
    """The inverse of :func:`to_saveable`: tensors back as numpy arrays."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {k: from_saved(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_saved(v) for v in value]
    return value


def dataclass_fields(obj) -> dict:
    """A (frozen) dataclass's fields, shallowly, for :func:`to_saveable`."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def rebuild(template, saved: dict):
    """``template`` (e.g. ``strategy.init(params)``) with the saved field values."""
    return replace(template, **saved)


def save(run_path: Path, state: dict, client_states) -> None:
    """Write a checkpoint atomically (see the module docstring)."""
    import torch

    final = Path(run_path) / CHECKPOINT_DIR
    temp = final.with_name(f".{CHECKPOINT_DIR}.tmp")
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir()
    torch.save(to_saveable({"format": FORMAT, **state}), temp / STATE_FILE)
    client_states.save(temp / CLIENT_STATE_FILE)
    old = final.with_name(f".{CHECKPOINT_DIR}.old")
    if final.exists():
        os.replace(final, old)
    os.replace(temp, final)
    shutil.rmtree(old, ignore_errors=True)


def exists(run_path: Path) -> bool:
    return (Path(run_path) / CHECKPOINT_DIR / STATE_FILE).is_file()


def load(run_path: Path) -> dict:
    """The saved driver state (numpy arrays); a one-line error for a missing or bad file."""
    import torch

    path = Path(run_path) / CHECKPOINT_DIR / STATE_FILE
    if not path.is_file():
        raise UserError(
            f"{str(Path(run_path))!r} has no checkpoint ({CHECKPOINT_DIR}/{STATE_FILE}); it cannot "
            "be resumed — start it again without --resume"
        )
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of a foreign file
            warnings.simplefilter("ignore")
            saved = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(
            f"checkpoint {str(path)!r} is unreadable ({type(err).__name__}); it is not a fedray "
            "checkpoint or it is damaged — start the run again without --resume"
        ) from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise UserError(
            f"checkpoint {str(path)!r} is not a fedray checkpoint of format {FORMAT}; start the run "
            "again without --resume"
        )
    return from_saved(saved)


def client_state_path(run_path: Path) -> Path:
    return Path(run_path) / CHECKPOINT_DIR / CLIENT_STATE_FILE
