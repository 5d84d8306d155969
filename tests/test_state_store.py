"""ClientStateStore: lazy creation, a hard memory budget, exact spill/reload, order independence."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.clients.state_store import ClientStateStore


def state(client_id: int, size: int = 1000) -> np.ndarray:
    """A client's array: every bit depends on the id, so a mix-up or a lossy spill shows."""
    return np.random.default_rng(client_id).standard_normal(size).astype(np.float32)


BASE = state(12345)


def cheap_state(client_id: int) -> np.ndarray:
    """Like :func:`state` (distinct for every id) but ~50x cheaper, for the 10k-client test."""
    return np.roll(BASE, client_id) + np.float32(client_id)


def spill_files(store: ClientStateStore) -> list:
    return [] if store.spill_dir is None else sorted(store.spill_dir.glob("*.npy"))


def test_absent_clients_have_no_state():
    with ClientStateStore(budget_bytes=10_000) as store:
        assert store.get(3) is None
        assert 3 not in store and len(store) == 0
        store.put(3, state(3))
        assert 3 in store and np.int64(3) in store and len(store) == 1
        np.testing.assert_array_equal(store.get(3), state(3))
        assert store.memory_bytes == 4000 and store.spill_dir is None  # nothing spilled


def test_ten_thousand_clients_in_one_megabyte(tmp_path):
    # Prepare: 10k clients x 1k float32 = 40 MB of state, 1 MB allowed in memory
    budget, n = 2**20, 10_000
    store = ClientStateStore(budget_bytes=budget, spill_dir=tmp_path / "spill")
    # Execute / Assert: the budget holds after every operation
    for client_id in range(n):
        store.put(client_id, cheap_state(client_id))
        assert store.memory_bytes <= budget
    assert len(store) == n
    in_memory = budget // 4000  # 262 arrays fit; all others live on disk
    assert len(spill_files(store)) == n - in_memory
    for client_id in range(n):
        assert np.array_equal(store.get(client_id), cheap_state(client_id))
        assert store.memory_bytes <= budget
    assert store.memory_bytes == in_memory * 4000
    # Reloaded entries are unchanged, so evicting them again writes nothing: one file per client.
    assert len(spill_files(store)) == n
    store.close()
    assert spill_files(store) == [] and (tmp_path / "spill").is_dir()


@pytest.mark.parametrize("budget", [0, 10_000, 10**9])
def test_values_do_not_depend_on_the_budget_or_eviction_order(budget):
    # Prepare: an interleaving of reads and read-modify-writes, like error feedback over rounds
    rng = np.random.default_rng(0)
    schedule = rng.integers(0, 30, size=400)
    reference: dict[int, np.ndarray] = {}
    # Execute
    with ClientStateStore(budget_bytes=budget) as store:
        for step, client_id in enumerate(schedule):
            client_id = int(client_id)
            old = store.get(client_id)
            new = state(step, 64) + (0 if old is None else old)
            store.put(client_id, new)
            reference[client_id] = new
            assert store.memory_bytes <= budget
        # Assert
        assert len(store) == len(reference)
        for client_id, expected in reference.items():
            np.testing.assert_array_equal(store.get(client_id), expected)


def test_put_copies_and_get_is_read_only():
    with ClientStateStore(budget_bytes=10_000) as store:
        source = state(1, 10)
        store.put(1, source)
        source[:] = 0  # the caller's later writes must not leak into the store
        stored = store.get(1)
        np.testing.assert_array_equal(stored, state(1, 10))
        with pytest.raises(ValueError, match="read-only"):
            stored[0] = 1.0


def test_overwriting_a_spilled_client_deletes_its_stale_file(tmp_path):
    with ClientStateStore(budget_bytes=4000, spill_dir=tmp_path) as store:
        store.put(1, state(1))
        store.put(2, state(2))  # evicts 1 to disk
        assert [p.name for p in spill_files(store)] == ["1.npy"]
        store.put(1, state(100))  # new value in memory; the old file must go, 2 is evicted
        assert [p.name for p in spill_files(store)] == ["2.npy"]
        np.testing.assert_array_equal(store.get(1), state(100))
        np.testing.assert_array_equal(store.get(2), state(2))


def test_arrays_larger_than_the_budget_live_on_disk_only():
    with ClientStateStore(budget_bytes=100) as store:
        store.put(7, state(7))
        assert store.memory_bytes == 0 and len(spill_files(store)) == 1
        np.testing.assert_array_equal(store.get(7), state(7))
        assert store.memory_bytes == 0


def test_any_shape_and_dtype_round_trips_exactly():
    arrays = {
        0: np.arange(12, dtype=np.float64).reshape(3, 4) / 7,
        1: np.array([-(2**31), 2**31 - 1], dtype=np.int32),
        2: np.array([np.nan, -0.0, np.inf], dtype=np.float32),
        3: np.zeros(0, dtype=np.float32),
    }
    with ClientStateStore(budget_bytes=0) as store:  # everything goes through disk
        for client_id, array in arrays.items():
            store.put(client_id, array)
        for client_id, array in arrays.items():
            got = store.get(client_id)
            assert got.dtype == array.dtype and got.shape == array.shape
            assert got.tobytes() == array.tobytes()


def test_close_removes_a_temporary_spill_dir():
    store = ClientStateStore(budget_bytes=0)
    store.put(1, state(1))
    spill_dir = store.spill_dir
    assert spill_dir.is_dir()
    store.close()
    assert not spill_dir.exists()
    with pytest.raises(RuntimeError, match="closed"):
        store.get(1)
    store.close()  # idempotent


def test_bad_arguments():
    with pytest.raises(ValueError, match="budget_bytes must be an integer >= 0, got -1"):
        ClientStateStore(budget_bytes=-1)
    with ClientStateStore(budget_bytes=100) as store:
        with pytest.raises(TypeError, match="client ids are integers"):
            store.put("a", state(1))
        with pytest.raises(ValueError, match="numeric array"):
            store.put(1, np.array([object()]))
