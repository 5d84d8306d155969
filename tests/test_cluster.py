"""cluster/: every launcher YAML and KubeRay manifest parses and has what its tool requires, the
images agree with the Dockerfile, and a real two-node Ray cluster on this machine produces the
same tables as a local run."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml

import fedray
from fedray.config import config_from_dict
from fedray.results.schema import NONDETERMINISTIC_COLUMNS

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHERS = sorted((CLUSTER / "launcher").glob("*.yaml"))
MANIFESTS = sorted((CLUSTER / "kuberay").glob("*.yaml"))


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


def dockerfile_image_version() -> str:
    match = re.search(
        r'org\.opencontainers\.image\.version="([^"]+)"', (CLUSTER / "Dockerfile").read_text()
    )
    assert match, "cluster/Dockerfile must label its version"
    return match.group(1)


def fedray_ray_version() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray = next(d for d in deps if d.startswith("ray"))
    return ray.split("==")[1]


def pod_containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def ray_cluster_specs(manifest: dict) -> list[dict]:
    if manifest["kind"] == "RayCluster":
        return [manifest["spec"]]
    if manifest["kind"] == "RayJob":
        return [manifest["spec"]["rayClusterSpec"]]
    return []


def test_the_examples_exist():
    assert {p.name for p in LAUNCHERS} >= {"aws.yaml", "onprem.yaml"}
    assert {p.name for p in MANIFESTS} >= {"raycluster.yaml", "rayjob-sweep.yaml"}
    assert (CLUSTER / "README.md").is_file()


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_yaml_has_the_fields_ray_up_needs(path):
    cfg = load(path)
    assert cfg["cluster_name"] and cfg["provider"]["type"] in {"aws", "gcp", "azure", "local"}
    assert cfg["auth"]["ssh_user"]
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:" in c for c in cfg["worker_start_ray_commands"])
    if cfg["provider"]["type"] == "local":
        assert cfg["provider"]["head_ip"] and cfg["provider"]["worker_ips"]
        assert cfg["max_workers"] == len(cfg["provider"]["worker_ips"])
    else:
        types = cfg["available_node_types"]
        assert cfg["head_node_type"] in types
        for node in types.values():
            assert "node_config" in node and "resources" in node
        workers = [t for n, t in types.items() if n != cfg["head_node_type"]]
        assert workers and all(t["max_workers"] >= t.get("min_workers", 0) for t in workers)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifest_has_the_required_fields(path):
    manifest = load(path)
    assert manifest["apiVersion"] in {"ray.io/v1", "v1"} and manifest["kind"]
    assert manifest["metadata"]["name"] and manifest["spec"]
    if manifest["kind"] == "RayJob":
        assert manifest["spec"]["entrypoint"].startswith("fedray sweep ")
        assert "--address auto" in manifest["spec"]["entrypoint"]
    for spec in ray_cluster_specs(manifest):
        assert spec["rayVersion"] == fedray_ray_version()
        head = spec["headGroupSpec"]
        assert "rayStartParams" in head and pod_containers(head["template"])
        assert spec["workerGroupSpecs"]
        for group in spec["workerGroupSpecs"]:
            assert group["groupName"] and "rayStartParams" in group
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            assert pod_containers(group["template"])


def test_kuberay_pods_mount_declared_volumes_and_the_shipped_claim():
    claim = load(CLUSTER / "kuberay" / "results-pvc.yaml")
    assert claim["kind"] == "PersistentVolumeClaim"
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # trials write from every node
    for path in MANIFESTS:
        for spec in ray_cluster_specs(load(path)):
            for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
                pod = group["template"]["spec"]
                volumes = {v["name"]: v for v in pod.get("volumes", [])}
                for container in pod["containers"]:
                    assert container["name"] and container["image"]
                    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
                    assert set(mounts) <= set(volumes), path.name
                    assert "/results" in mounts.values(), path.name
                claims = [
                    v["persistentVolumeClaim"]["claimName"]
                    for v in volumes.values()
                    if "persistentVolumeClaim" in v
                ]
                assert claims == [claim["metadata"]["name"]], path.name


def test_kuberay_sweep_entrypoint_names_a_shipped_sweep():
    entry = load(CLUSTER / "kuberay" / "rayjob-sweep.yaml")["spec"]["entrypoint"].split()
    shipped = Path(entry[2]).relative_to("/opt/fedray")  # the Dockerfile's WORKDIR
    assert (REPO / shipped).is_file()
    assert "WORKDIR /opt/fedray" in (CLUSTER / "Dockerfile").read_text()


def test_every_image_is_the_dockerfile_image():
    version = dockerfile_image_version()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert version == project["version"]
    images = [load(p)["docker"]["image"] for p in LAUNCHERS]
    for path in MANIFESTS:
        for spec in ray_cluster_specs(load(path)):
            groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
            images += [c["image"] for g in groups for c in pod_containers(g["template"])]
    assert len(images) >= 2 + 4
    assert len(set(images)) == 1 and images[0].endswith(f"/fedray:{version}"), images
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert images[0] in dockerfile  # the build command in its header tags this very image
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in dockerfile


# --------------------------------------------------------------------------- two nodes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of the session ``sid``, read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def two_node_cluster():
    """A Ray head and a second node, 1 CPU each, started here with ``ray start --block``.

    Each node runs in its own session (start_new_session), so stopping means signalling exactly
    the sessions this fixture created — never `ray stop`, which would stop every Ray on the
    machine. Token auth with a fresh token keeps other users' drivers out.
    """
    tmp = tempfile.mkdtemp(prefix="frc-", dir="/tmp")  # short: Unix socket paths <= 107 chars
    port = free_port()
    # conftest keeps single-node Rays on loopback with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, but
    # `ray start --address` refuses to join a cluster in that mode; multi-node Ray 2.60 binds on
    # every interface, so the token below is what keeps this cluster private.
    base_env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env = {
        **base_env,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    ray_cli = str(Path(sys.executable).with_name("ray"))

    def start(name: str, args: list[str]) -> subprocess.Popen:
        ports = []
        for flag in (
            "--ray-client-server-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--metrics-export-port",
            "--runtime-env-agent-port",
        ):  # fixed defaults would collide with other Ray instances on this machine
            ports += [flag, str(free_port())]
        cmd = [ray_cli, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1"]
        cmd += ["--object-store-memory", str(100 * 2**20), "--disable-usage-stats", *ports, *args]
        with open(f"{tmp}/{name}.log", "w") as log:  # the child keeps its own descriptor
            return subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    nodes = []
    try:
        nodes.append(
            start(
                "head",
                ["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", tmp],
            )
        )
        nodes.append(start("worker", ["--address", f"127.0.0.1:{port}"]))
        wait = (
            "import ray, time\n"
            f"ray.init(address='127.0.0.1:{port}', logging_level='ERROR')\n"
            "deadline = time.time() + 60\n"
            "while ray.cluster_resources().get('CPU', 0) < 2 and time.time() < deadline:\n"
            "    time.sleep(0.2)\n"
            "print(sum(n['Alive'] for n in ray.nodes()), ray.cluster_resources().get('CPU'))\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", wait], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.stdout.split() == ["2", "2.0"], proc.stdout + proc.stderr[-2000:]
        yield f"127.0.0.1:{port}", env, nodes
    finally:
        for node in nodes:
            node.send_signal(signal.SIGTERM)  # `ray start --block` drains and stops its node
        for node in nodes:
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)  # our own session only
                node.wait(10)
        leftovers = {}
        deadline = time.time() + 15
        while time.time() < deadline:
            leftovers = {n.pid: session_pids(n.pid) for n in nodes if session_pids(n.pid)}
            if not leftovers:
                break
            time.sleep(0.5)
        for sid in leftovers:
            os.killpg(sid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
        assert not leftovers, f"Ray processes outlived their node: {leftovers}"


TWO_NODE_CONFIG = {
    "seed": 5,
    "rounds": 3,
    "clients_per_round": 6,
    "workload": {"eval_clients": 10, "max_samples": 300},
    "clients": {"num_clients": 40, "profile": {"dropout": 0.1}},
    "execution": {"clients_per_task": 2},
}


@pytest.mark.slow
def test_a_two_node_cluster_gives_the_local_tables(two_node_cluster, ray_session, tmp_path):
    address, env, _ = two_node_cluster
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(TWO_NODE_CONFIG))
    # 2 workers of 1 CPU on two 1-CPU nodes: one pool actor per node.
    cmd = [sys.executable, "-m", "fedray.cli", "run", str(config), "--address", address]
    cmd += ["--workers", "2", "--out", str(tmp_path), "--name", "cluster", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = fedray.Result.from_path(tmp_path / "cluster")
    assert remote.summary["num_workers"] == 2

    local = fedray.run(
        config_from_dict(TWO_NODE_CONFIG | {"output": {"root": str(tmp_path), "name": "local"}}),
        progress=False,
    )

    for table in ("rounds", "clients"):
        a = getattr(remote, table).drop(columns=list(NONDETERMINISTIC_COLUMNS), errors="ignore")
        b = getattr(local, table).drop(columns=list(NONDETERMINISTIC_COLUMNS), errors="ignore")
        assert len(a) > 0
        pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.slow
def test_losing_the_worker_node_mid_run_finishes_on_the_head(
    two_node_cluster, ray_session, tmp_path
):
    # Prepare: one pool actor per node; a run long enough to lose a node in its middle.
    address, env, nodes = two_node_cluster
    cfg = TWO_NODE_CONFIG | {"rounds": 400, "output": {"checkpoint_every": 10}}
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "fedray.cli", "run", str(config), "--address", address]
    cmd += ["--workers", "2", "--out", str(tmp_path), "--name", "lost", "--quiet"]
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    # Execute: once the rounds run, the worker node dies outright (its whole session)
    deadline = time.time() + 180
    while not (tmp_path / "lost" / "checkpoint" / "state.pt").exists():
        assert driver.poll() is None and time.time() < deadline, driver.stderr.read()[-3000:]
        time.sleep(0.05)
    os.killpg(nodes[1].pid, signal.SIGKILL)
    _, err = driver.communicate(timeout=600)

    # Assert: the run finished on the head node alone, with the tables of a local run
    assert driver.returncode == 0, err.decode()[-3000:]
    lost = fedray.Result.from_path(tmp_path / "lost")
    assert lost.summary["worker_restarts"] >= 1
    local = fedray.run(
        config_from_dict(cfg | {"output": {"root": str(tmp_path), "name": "local"}}),
        progress=False,
    )
    for table in ("rounds", "clients"):
        a = getattr(lost, table).drop(columns=list(NONDETERMINISTIC_COLUMNS), errors="ignore")
        b = getattr(local, table).drop(columns=list(NONDETERMINISTIC_COLUMNS), errors="ignore")
        pd.testing.assert_frame_equal(a, b, check_exact=True)
