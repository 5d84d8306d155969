"""Per-client persistent state (error-feedback residuals, control variates) under a memory budget.

Most algorithms keep nothing per client; the few that do (error feedback, SCAFFOLD) keep one
model-sized array per client that has ever taken part, which for thousands of clients outgrows
memory. :class:`ClientStateStore` keeps the most recently used arrays in memory up to a byte budget
and spills the rest to disk, one ``<client id>.npy`` per client, reloading them on access.

Why one ``.npy`` per client rather than one big memmap: a memmap needs the number of clients and
the array shape fixed up front, and sparse client ids over a million-client registry would make it
huge; per-client files hold any shape or dtype, are written atomically (temp file + ``os.replace``,
so an interrupted write never leaves a torn array behind), and only exist for clients that have
state. The price is a file open per spill and per reload, which is small next to local training.

Values never depend on eviction order: ``put`` stores a private copy, ``get`` returns a read-only
array (modify a copy and ``put`` it back), and ``.npy`` round-trips bit for bit. Only array data
counts towards the budget (not the few hundred bytes of bookkeeping per client). Not thread-safe:
one store per process, one process per spill directory.

Example::

    with ClientStateStore(budget_bytes=256 * 2**20) as store:
        residual = store.get(client_id)          # None on a client's first round
        payload, residual = encode_with_feedback(codec, update, segments, rng, residual)
        store.put(client_id, residual)
"""

from __future__ import annotations

import numbers
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np


class ClientStateStore:
    """An LRU map ``client id -> numpy array`` holding at most ``budget_bytes`` of arrays in memory.

    ``spill_dir``: where evicted arrays go. ``None`` makes a temporary directory on the first spill,
    removed by :meth:`close`; a given directory is created if needed and keeps only what this store
    did not write (``close`` deletes this store's files).
    """

    def __init__(self, budget_bytes: int, spill_dir: str | os.PathLike | None = None):
        if not isinstance(budget_bytes, numbers.Integral) or budget_bytes < 0:
            raise ValueError(f"budget_bytes must be an integer >= 0, got {budget_bytes!r}")
        self.budget_bytes = int(budget_bytes)
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._owns_dir = spill_dir is None
        self._memory: OrderedDict[int, np.ndarray] = OrderedDict()  # least recently used first
        self._memory_bytes = 0
        # Clients whose file holds their current value. A put deletes the file, so a file on disk
        # is never stale, and an evicted entry that has a file is dropped without a write.
        self._on_disk: set[int] = set()
        self._ids: set[int] = set()
        self._closed = False

    # ------------------------------------------------------------------ mapping

    def get(self, client_id: int) -> np.ndarray | None:
        """The client's array (read-only), or ``None`` if it has none."""
        key = self._key(client_id)
        array = self._memory.get(key)
        if array is not None:
            self._memory.move_to_end(key)
            return array
        if key not in self._on_disk:
            return None
        array = np.load(self._path(key), allow_pickle=False)
        array.flags.writeable = False
        self._remember(key, array)
        return array

    def put(self, client_id: int, array: np.ndarray) -> None:
        """Store a copy of ``array`` as the client's state, replacing any previous one."""
        key = self._key(client_id)
        value = np.array(array, copy=True)
        if value.dtype.hasobject:
            raise ValueError(f"client state must be a numeric array, got dtype {value.dtype}")
        value.flags.writeable = False
        self._forget(key)
        self._ids.add(key)
        self._remember(key, value)

    def __contains__(self, client_id: int) -> bool:
        return self._key(client_id) in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def memory_bytes(self) -> int:
        """Bytes of array data currently held in memory (always <= ``budget_bytes``)."""
        return self._memory_bytes

    @property
    def spill_dir(self) -> Path | None:
        return self._spill_dir

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Drop everything and delete this store's spill files (and its temporary directory)."""
        if self._closed:
            return
        self._closed = True
        self._memory.clear()
        self._memory_bytes = 0
        if self._spill_dir is not None:
            if self._owns_dir:
                shutil.rmtree(self._spill_dir, ignore_errors=True)
            else:
                for key in self._on_disk:
                    self._path(key).unlink(missing_ok=True)
        self._on_disk.clear()
        self._ids.clear()

    def __enter__(self) -> ClientStateStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _key(self, client_id):
        """A client id, or a (client id, entry name) pair (:class:`ClientStates`)."""
        if self._closed:
            raise RuntimeError("this ClientStateStore is closed")
        name = None
        if isinstance(client_id, tuple) and len(client_id) == 2:
            client_id, name = client_id
            if not isinstance(name, str) or not name.replace(".", "").replace("_", "").isalnum():
                raise ValueError(f"client-state names are dotted identifiers, got {name!r}")
        if not isinstance(client_id, numbers.Integral) or isinstance(client_id, bool):
            raise TypeError(f"client ids are integers, got {client_id!r}")
        return int(client_id) if name is None else (int(client_id), name)

    def _path(self, key) -> Path:
        if isinstance(key, tuple):
            return self._spill_dir / f"{key[0]}.{key[1]}.npy"
        return self._spill_dir / f"{key}.npy"

    def keys(self) -> list:
        """Every key that has state, sorted."""
        return sorted(self._ids, key=lambda k: (k, "") if isinstance(k, int) else k)

    def _forget(self, key: int) -> None:
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_bytes -= old.nbytes
        if key in self._on_disk:
            self._path(key).unlink()
            self._on_disk.discard(key)

    def _remember(self, key: int, array: np.ndarray) -> None:
        """Make ``array`` the most recently used entry, spilling older ones to fit the budget."""
        if array.nbytes > self.budget_bytes:
            # Never fits: it lives on disk only and is read back on every get.
            if key not in self._on_disk:
                self._spill(key, array)
            return
        self._memory[key] = array
        self._memory_bytes += array.nbytes
        while self._memory_bytes > self.budget_bytes:
            old_key, old = self._memory.popitem(last=False)
            self._memory_bytes -= old.nbytes
            if old_key not in self._on_disk:
                self._spill(old_key, old)

    def _spill(self, key: int, array: np.ndarray) -> None:
        if self._spill_dir is None:
            self._spill_dir = Path(tempfile.mkdtemp(prefix="fedray-client-state-"))
        elif not self._on_disk:  # first spill into a given directory
            self._spill_dir.mkdir(parents=True, exist_ok=True)
        final = self._path(key)
        temp = final.with_name(f".{final.name}.tmp")
        # No fsync: spill files only need to outlive this process's reads, not a power cut.
        with open(temp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(temp, final)
        self._on_disk.add(key)


# Entries only the driver reads (a battery's level): never shipped to the workers.
DRIVER_SIDE = frozenset({"battery"})


class ClientStates:
    """Everything clients remember between tasks, keyed by (client, name): error-feedback
    residuals (``ef.residual``), private parameters (``private``), SCAFFOLD's control variates
    (``scaffold.control``), ... One bounded :class:`ClientStateStore` holds them all, so one
    budget (``execution.client_state_mb``) and one checkpoint cover every feature."""

    def __init__(self, budget_bytes: int, spill_dir: str | os.PathLike | None = None):
        self.store = ClientStateStore(budget_bytes, spill_dir)
        self.names: set[str] = set()  # entry names ever stored

    def get(self, client_id: int, name: str) -> np.ndarray | None:
        return self.store.get((client_id, name)) if name in self.names else None

    def of(self, client_id: int) -> dict[str, np.ndarray]:
        """All of a client's entries (empty on its first task)."""
        return {
            n: a for n in sorted(self.names) if (a := self.store.get((client_id, n))) is not None
        }

    def bundle(self, client_ids) -> dict[int, dict[str, np.ndarray]]:
        """The entries of those of ``client_ids`` that have any, to ship with a job (without the
        driver's own entries, :data:`DRIVER_SIDE`)."""
        if not self.names - DRIVER_SIDE:
            return {}
        out = {}
        for c in client_ids:
            entries = {n: a for n, a in self.of(int(c)).items() if n not in DRIVER_SIDE}
            if entries:
                out[int(c)] = entries
        return out

    def update(self, states: dict[int, dict[str, np.ndarray]]) -> None:
        """Store a job's new entries (in sorted order: eviction never depends on arrival)."""
        for cid in sorted(states):
            for name in sorted(states[cid]):
                self.names.add(name)
                self.store.put((cid, name), states[cid][name])

    def __len__(self) -> int:
        return len(self.store)

    def save(self, path: Path) -> None:
        """Write every entry to one ``.npz`` (no pickles), atomically (temp file + rename)."""
        arrays = {f"{cid}/{name}": self.store.get((cid, name)) for cid, name in self.store.keys()}
        temp = path.with_name(f".{path.name}.tmp")
        with open(temp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(temp, path)

    def load(self, path: Path) -> None:
        """Replace the entries with those :meth:`save` wrote."""
        with np.load(path, allow_pickle=False) as saved:
            for key in saved.files:
                cid, name = key.split("/", 1)
                self.names.add(name)
                self.store.put((int(cid), name), saved[key])

    def close(self) -> None:
        self.store.close()
