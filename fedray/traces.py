"""``fedray traces import-fedscale``: FedScale's device and behaviour traces as fedray traces.

FedScale (Lai et al., ICML 2022, "FedScale: Benchmarking Model and System Performance of
Federated Learning at Scale") publishes two per-client traces, each a mapping from a client key to

* ``client_device_capacity``: ``{"computation": ms per sample, "communication": kbit/s}`` —
  FedScale charges ``3 · batch · steps · computation / 1000`` s for local training (forward plus
  backward) and ``size / communication`` for a transfer of ``size`` kbit (1 kbit = 1024 bits);
* ``client_behave_trace``: ``{"active": [s...], "inactive": [s...], "finish_time": s, ...}`` — a
  client is online in ``[active[i], inactive[i])`` of each period of ``finish_time`` seconds.

They become a device trace (``client_id, speed, down_mbps, up_mbps``:
speed = 1000 / (3 · computation) samples/s, both bandwidths = communication · 1024 / 10⁶ Mbit/s)
and an availability trace (``client_id, start_s, end_s, period_s``;
:mod:`fedray.clients.availability_trace`). Clients are renumbered 0..n-1 in the sorted order of
their keys, each file separately (FedScale pairs them by key modulo too).

FedScale ships the traces as Python pickles, and unpickling runs whatever code the file names, so
a pickle is refused unless ``--trust-pickle`` is given — and even then only plain containers,
numbers and strings are unpickled (anything else is refused). The same mappings as JSON need no
such trust.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np

from fedray.clients.availability_trace import write_availability_trace
from fedray.errors import UserError, one_line
from fedray.userfiles import MAX_FLOAT, require_file, short_repr

_SAFE = {("builtins", n) for n in ("dict", "list", "tuple", "set", "int", "float", "str", "bool")}
MAX_TRACE_BYTES = 2 << 30


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only plain containers, numbers and strings: a class or function named in the
    file (how a pickle runs code) is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a trace never needs")


def read_mapping(path: str | Path, what: str, trust_pickle: bool) -> dict:
    """A FedScale trace file (pickle or JSON) as a dict, or a one-line UserError."""
    path = Path(path)
    where = f"{what} {str(path)!r}"
    require_file(path, where, "give FedScale's trace file (pickle or JSON)")
    if path.stat().st_size > MAX_TRACE_BYTES:
        raise UserError(f"{where} is larger than 2 GiB; that is not a FedScale trace")
    raw = path.read_bytes()
    if not raw:
        raise UserError(f"{where} is empty; give FedScale's trace file")
    if raw[:1] in (b"{", b"[") or path.suffix.lower() == ".json":
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{where} is not valid JSON ({one_line(err)})") from None
    else:
        if not trust_pickle:
            raise UserError(
                f"{where} is a pickle, and loading a pickle can run any code it names; pass "
                "--trust-pickle if it is FedScale's own file, or convert it to JSON first"
            )
        try:
            data = _PlainUnpickler(io.BytesIO(raw)).load()
        except Exception as err:  # pickle raises many types for damaged or hostile files
            raise UserError(f"{where} could not be unpickled safely: {one_line(err)}") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{where} must map client keys to records, got {type(data).__name__}")
    return data


def _sorted_keys(data: dict, where: str) -> list:
    try:
        return sorted(
            data, key=lambda k: (0, int(k)) if str(k).lstrip("-").isdigit() else (1, str(k))
        )
    except (TypeError, ValueError):
        raise UserError(f"{where}: client keys must be numbers or strings") from None


def _number(record: dict, field: str, where: str, key, positive: bool = True) -> float:
    value = record.get(field) if isinstance(record, dict) else None
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = np.isfinite(value) and abs(value) <= MAX_FLOAT and (value > 0 or not positive)
    if not ok:
        raise UserError(
            f"{where}: client {short_repr(key)} has {field} = {short_repr(value)}; FedScale "
            f"records need a {'positive ' if positive else ''}number there"
        )
    return value


def convert_devices(data: dict, where: str) -> dict[str, np.ndarray]:
    keys = _sorted_keys(data, where)
    speed, mbps = [], []
    for key in keys:
        record = data[key]
        speed.append(1000.0 / (3.0 * _number(record, "computation", where, key)))
        mbps.append(_number(record, "communication", where, key) * 1024 / 1e6)
    n = len(keys)
    mbps = np.asarray(mbps)
    return {
        "client_id": np.arange(n),
        "speed": np.asarray(speed),
        "down_mbps": mbps,
        "up_mbps": mbps,
    }


def convert_behaviour(data: dict, where: str) -> dict[str, np.ndarray]:
    keys = _sorted_keys(data, where)
    ids, starts, ends, periods = [], [], [], []
    for cid, key in enumerate(keys):
        record = data[key]
        period = _number(record, "finish_time", where, key)
        active, inactive = (record.get(f) for f in ("active", "inactive"))
        if not isinstance(active, list | tuple) or not isinstance(inactive, list | tuple):
            raise UserError(
                f"{where}: client {short_repr(key)} needs lists 'active' and 'inactive'"
            )
        if len(active) != len(inactive):
            raise UserError(
                f"{where}: client {short_repr(key)} has {len(active)} 'active' but "
                f"{len(inactive)} 'inactive' times; FedScale pairs them"
            )
        for i, (a, b) in enumerate(zip(active, inactive, strict=True)):
            start = _number({"a": a}, "a", where, f"{key} active[{i}]", positive=False)
            end = min(_number({"b": b}, "b", where, f"{key} inactive[{i}]", positive=False), period)
            if start < 0 or start >= end:
                continue  # an empty (or out-of-period) interval is no time online
            ids.append(cid)
            starts.append(start)
            ends.append(end)
            periods.append(period)
    if not ids:
        raise UserError(f"{where} has no online interval at all; is it a behaviour trace?")
    return {
        "client_id": np.asarray(ids, dtype=np.int64),
        "start_s": np.asarray(starts),
        "end_s": np.asarray(ends),
        "period_s": np.asarray(periods),
    }


def import_fedscale(
    out: str | Path,
    device: str | Path | None = None,
    behaviour: str | Path | None = None,
    trust_pickle: bool = False,
) -> list[Path]:
    """Convert the given FedScale traces into ``out/devices.csv`` and ``out/availability.csv``
    (written atomically, never over a file that exists); returns the files written."""
    import pandas as pd

    if device is None and behaviour is None:
        raise UserError("give --device and/or --behaviour (FedScale trace files)")
    out = Path(out)
    jobs = []
    if device is not None:
        where = f"device trace {str(device)!r}"
        rows = convert_devices(read_mapping(device, "device trace", trust_pickle), where)
        jobs.append((out / "devices.csv", lambda p, r=rows: pd.DataFrame(r).to_csv(p, index=False)))
    if behaviour is not None:
        where = f"behaviour trace {str(behaviour)!r}"
        rows = convert_behaviour(read_mapping(behaviour, "behaviour trace", trust_pickle), where)
        jobs.append((out / "availability.csv", lambda p, r=rows: write_availability_trace(r, p)))
    for target, _ in jobs:
        if target.exists():
            raise UserError(f"{target} exists; choose another --out folder or remove it")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for target, write in jobs:
        temp = target.with_name(f".{target.name}.tmp")
        write(temp)
        temp.replace(target)
        written.append(target)
    return written
