"""Peak PSS of a process tree (plus a Ray session's daemons), sampled from /proc in a side process.

Used by ``bench_vs_loop.py`` and ``bench_scale.py`` (``bench_soak.py`` takes a few readings
in-process with :func:`tree_snapshot`); standard library only, so the sampler process costs a few MB and
never competes for the benchmark's GIL. Reading ``smaps_rollup`` makes the kernel walk a process's
page tables (a few ms for a 300 MB torch process), so doing it every 0.2 s for a dozen processes
inside the benchmark would steal noticeable CPU and GIL time from the fedray driver it measures.

    sampler = TreeSampler(os.getpid(), interval=0.2)   # starts `python pss_tree.py <pid> 0.2 pss`
    sampler.set_session("session_2026-...")            # optional: also count that Ray session
    ...
    stats = sampler.stop()   # {"peak_mb": ..., "breakdown": [...], "samples": ..., ...}

Membership, re-evaluated on every sample: the root process and all its descendants (walking the
ppid links of /proc/*/stat), plus every process whose command line names the Ray session (the
session name is on the command lines of gcs_server, raylet, the agents and monitors) and their
descendants (the worker actors are children of the raylet). The session match catches Ray's
daemons even where they are not children of the driver, e.g. reparented to init or a subreaper.
The sampler itself is excluded. PSS splits each shared page (shared libraries, the plasma object
store in /dev/shm) among the processes mapping it, so the sum counts it once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, a zombie, or not ours to read
        return None


def process_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, CPU ticks used: utime + stime) of every process."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _read(f"/proc/{entry.name}/stat")
            if stat:
                # Fields after the last ')': the command name may contain ')' or spaces.
                fields = stat[stat.rfind(b")") + 2 :].split()
                table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def machine_busy_ticks() -> int:
    """Busy (non-idle, non-iowait) ticks of all CPUs since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return sum(fields) - fields[3] - fields[4]


def pss_kb(pid: int) -> int | None:
    rollup = _read(f"/proc/{pid}/smaps_rollup")
    for line in (rollup or b"").splitlines():
        if line.startswith(b"Pss:"):
            return int(line.split()[1])
    return None


def process_name(pid: int) -> str:
    comm = _read(f"/proc/{pid}/comm")
    return comm.decode(errors="replace").strip() if comm else "?"


class _Tree:
    def __init__(self, root: int, exclude: int):
        self.root, self.exclude = root, exclude
        self.session: bytes | None = None
        self._matched: set[int] = set()
        self._checked: set[int] = set()  # pids whose command line was already looked at

    def members(self) -> tuple[set[int], dict[int, tuple[int, int]]]:
        table = process_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        roots = [self.root]
        if self.session:
            for pid in table:
                if pid not in self._checked:
                    self._checked.add(pid)
                    cmdline = _read(f"/proc/{pid}/cmdline")
                    if cmdline and self.session in cmdline:
                        self._matched.add(pid)
            roots += [p for p in self._matched if p in table]
        members, stack = set(), roots
        while stack:
            pid = stack.pop()
            if pid in members or pid == self.exclude or pid not in table:
                continue
            members.add(pid)
            stack.extend(children.get(pid, ()))
        return members, table


def pss_parts_kb(pid: int) -> dict[str, int] | None:
    """``Pss`` and its split into ``Pss_Anon`` (heap, stacks), ``Pss_File`` (libraries, mapped
    files) and ``Pss_Shmem`` (e.g. Ray's plasma store in /dev/shm), in kB, from smaps_rollup."""
    rollup = _read(f"/proc/{pid}/smaps_rollup")
    parts = {}
    for line in (rollup or b"").splitlines():
        key, _, value = line.partition(b":")
        if key in (b"Pss", b"Pss_Anon", b"Pss_File", b"Pss_Shmem"):
            parts[key.decode()] = int(value.split()[0])
    return parts or None


def process_title(pid: int) -> str:
    """argv[0] as the process shows it now, or ``python <script>`` for a Python script.

    Ray's workers rename themselves with setproctitle (``ray::ClientWorker`` for an actor of
    that class, ``ray::ClientWorker.run_group`` while a method runs, ``ray::IDLE`` for a worker
    with no actor), so this tells actors apart where ``comm`` only says ``ray::ClientWo``; Ray's
    Python daemons show as e.g. ``python log_monitor.py``."""
    cmdline = _read(f"/proc/{pid}/cmdline")
    if not cmdline:
        return "?"
    args = cmdline.decode(errors="replace").split("\0")
    if os.path.basename(args[0]).startswith("python"):
        script = next((a for a in args[1:] if a.endswith(".py")), None)
        if script:
            return f"python {os.path.basename(script)}"
    return args[0]


def tree_snapshot(root: int, session: str | None = None, exclude: int = -1) -> list[dict]:
    """One in-process reading of every member of ``root``'s tree (and of a Ray session's
    daemons, as the sampler defines membership): pid, ppid, name, title and PSS parts in kB.

    For a handful of readings over a long run (``bench_soak.py``) reading in-process costs
    less than a side process; for frequent sampling use :class:`TreeSampler`."""
    tree = _Tree(root, exclude=exclude)
    tree.session = session.encode() if session else None
    members, table = tree.members()
    rows = []
    for pid in sorted(members):
        parts = pss_parts_kb(pid)
        if parts:  # None: exited since the walk
            rows.append(
                {
                    "pid": pid,
                    "ppid": table[pid][0],
                    "name": process_name(pid),
                    "title": process_title(pid),
                    **parts,
                }
            )
    return rows


def _sampler_main(root: int, interval: float, pss: bool = True) -> None:
    """The side process: sample until 'stop' on stdin, then print the stats as JSON.

    With ``pss=False`` only the CPU accounting runs (cheap: no ``smaps_rollup`` reads)."""
    os.nice(5)  # yield to the measured processes when they saturate the CPUs
    tree = _Tree(root, exclude=os.getpid())
    stop = threading.Event()

    def commands() -> None:
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "session" and arg:
                tree.session = arg.encode()
            elif cmd == "stop":
                break
        stop.set()

    threading.Thread(target=commands, daemon=True).start()
    peak, breakdown, samples, cost, most = 0, [], 0, 0.0, 0
    # CPU accounting: ticks each member used since we first saw it (or since its start, for
    # processes born during the run), so that load from *other* processes can be told apart.
    first_ticks: dict[int, int] = {}
    last_ticks: dict[int, int] = {}
    start, busy0 = time.monotonic(), machine_busy_ticks()
    while True:
        t0 = time.process_time()
        members, table = tree.members()
        per_process = []
        for pid in members:
            ticks = table[pid][1]
            first_ticks.setdefault(pid, ticks if samples == 0 else 0)
            last_ticks[pid] = ticks
            kb = pss_kb(pid) if pss else None
            if kb:
                per_process.append((pid, kb))
        total = sum(kb for _, kb in per_process)
        if total > peak:
            peak = total
            breakdown = [(pid, process_name(pid), kb) for pid, kb in per_process]
        most = max(most, len(members))
        samples += 1
        cost += time.process_time() - t0
        if stop.is_set():  # one last sample after 'stop', then report
            break
        stop.wait(interval)
    elapsed = time.monotonic() - start
    hz = os.sysconf("SC_CLK_TCK")
    own = sum(os.times()[:2]) * hz  # the sampler's own CPU
    tree_ticks = sum(last_ticks[p] - first_ticks[p] for p in last_ticks)
    other = machine_busy_ticks() - busy0 - tree_ticks - own
    breakdown.sort(key=lambda p: -p[2])
    stats = {
        "peak_mb": round(peak / 1024, 1),
        "breakdown": [
            {"pid": p, "name": n, "pss_mb": round(kb / 1024, 1)} for p, n, kb in breakdown
        ],
        "samples": samples,
        "mean_interval_s": round(elapsed / max(samples - 1, 1), 3),
        "sampling_cpu_s": round(cost, 3),
        "max_processes": most,
        "tree_cpus": round(tree_ticks / hz / elapsed, 2),
        # Upper bound: CPU of members that exited between samples is counted as other load.
        "other_load_cpus": round(max(0.0, other / hz / elapsed), 2),
        "session_matched": sorted(tree._matched),
    }
    try:
        json.dump(stats, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # the benchmark process died first; nobody to report to
        pass


class TreeSampler:
    """Handle on a sampler side process watching ``root`` (default: this process)."""

    def __init__(self, root: int | None = None, interval: float = 0.2, pss: bool = True):
        mode = "pss" if pss else "cpu"
        self._proc = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                str(root or os.getpid()),
                str(interval),
                mode,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.session: str | None = None

    @property
    def pid(self) -> int:
        """The side process's pid (to leave it out of readings taken elsewhere)."""
        return self._proc.pid

    def set_session(self, name: str) -> None:
        self.session = name
        self._proc.stdin.write(f"session {name}\n")
        self._proc.stdin.flush()

    def watch_ray(self, poll: float = 0.1) -> threading.Thread:
        """Poll (in a thread) until Ray is initialised in this process, then add its session."""

        def poll_loop() -> None:
            import ray

            while self._proc.poll() is None and self.session is None:
                try:
                    if ray.is_initialized():
                        self.set_session(ray.get_runtime_context().get_session_name())
                        return
                except Exception:  # Ray is mid-start or mid-shutdown: look again
                    pass
                time.sleep(poll)

        thread = threading.Thread(target=poll_loop, daemon=True, name="ray-session-watch")
        thread.start()
        return thread

    def stop(self) -> dict:
        out, _ = self._proc.communicate("stop\n", timeout=60)
        stats = json.loads(out)
        stats["ray_session"] = self.session
        return stats


if __name__ == "__main__":
    _sampler_main(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:4] != ["cpu"])
