"""Shared fixtures: one local Ray instance for the whole session (2 CPUs, loopback only)."""

from __future__ import annotations

import logging
import os

# Keep every Ray the tests start (the session fixture, `ray start` nodes, fedray subprocesses) on
# 127.0.0.1: on Linux, Ray otherwise binds on all interfaces. Set before any test module imports
# ray (see fedray.api.keep_local_ray_on_loopback).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=200 * 2**20,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def small_config(tmp_path):
    """A fast, complete config as a dict; tests tweak it and call fedray.config.config_from_dict."""
    return {
        "seed": 3,
        "rounds": 3,
        "clients_per_round": 6,
        "workload": {"name": "synthetic", "eval_clients": 10, "max_samples": 400},
        "clients": {"num_clients": 40},
        "client": {"lr": 0.01, "batch_size": 10, "local_epochs": 1},
        "execution": {"clients_per_task": 2},
        "output": {"root": str(tmp_path / "results"), "name": "run"},
    }
