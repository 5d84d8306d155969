"""Codecs inside real runs: bytes charged per client, upload time, error-feedback state."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fedray
from fedray.config import config_from_dict


@pytest.fixture
def mlp_config(small_config):
    # A model large enough (≈ 16k parameters) that the upload dominates the task at 1 Mbit/s.
    small_config["workload"].update(model="mlp", hidden=256)
    small_config["clients"]["profile"] = {"up_mbps": 1, "down_mbps": 50, "speed": 1000}
    return small_config


def run(cfg: dict, name: str, **compression):
    cfg = {**cfg, "compression": compression, "output": {**cfg["output"], "name": name}}
    return fedray.run(config_from_dict(cfg), progress=False)


def test_compressed_upload_is_smaller_by_the_codec_factor(ray_session, mlp_config):
    plain = run(mlp_config, "plain")
    half = run(mlp_config, "fp16", uplink="fp16", downlink="fp16")
    d = 60 * 256 + 256 + 256 * 10 + 10
    done = plain.clients.status == "completed"
    # Byte-exact: a one-byte header plus 4 (float32) or 2 (fp16) bytes per parameter.
    assert set(plain.clients.loc[done, "bytes_up"]) == {1 + 4 * d}
    assert set(half.clients.loc[done, "bytes_up"]) == {1 + 2 * d}
    assert set(half.clients["bytes_down"]) == {1 + 2 * d}
    r = half.rounds
    np.testing.assert_array_equal(r["bytes_up_raw"], plain.rounds["bytes_up"])
    np.testing.assert_allclose(r["compression_ratio"], (1 + 4 * d) / (1 + 2 * d))
    # upload_s = bytes·8 / bandwidth + latency: the transfer part halves (minus the header byte)
    latency = 0.05
    ratio = (half.clients.upload_s - latency) / (plain.clients.upload_s - latency)
    np.testing.assert_allclose(ratio, (1 + 2 * d) / (1 + 4 * d), rtol=1e-9)
    assert half.rounds["sim_time_s"].iloc[-1] < plain.rounds["sim_time_s"].iloc[-1]
    # clients train from the model as decoded from the fp16 broadcast, not the exact one
    down_only = run(mlp_config, "down", downlink="fp16")
    assert not down_only.rounds["eval_loss"].equals(plain.rounds["eval_loss"])
    assert (down_only.rounds["bytes_up"] == plain.rounds["bytes_up"]).all()


def test_topk_with_error_feedback_is_deterministic_across_workers(ray_session, mlp_config):
    mlp_config.update(rounds=4, clients_per_round=8)
    mlp_config["clients"]["num_clients"] = 12  # clients come back, so residuals are reused
    spec = {"name": "topk", "fraction": 0.02, "error_feedback": True}
    mlp_config["execution"]["client_state_mb"] = 0  # every residual spills to disk and back
    one = run(
        {
            **mlp_config,
            "execution": {**mlp_config["execution"], "num_workers": 1, "clients_per_task": 3},
        },
        "ef1",
        uplink=spec,
    )
    two = run(
        {
            **mlp_config,
            "execution": {**mlp_config["execution"], "num_workers": 2, "clients_per_task": 3},
        },
        "ef2",
        uplink=spec,
    )
    cols = [c for c in one.rounds.columns if c != "wall_time_s"]
    pd.testing.assert_frame_equal(one.rounds[cols], two.rounds[cols], check_exact=True)
    assert (one.rounds["compression_ratio"] > 10).all()
    no_feedback = run(mlp_config, "noef", uplink={**spec, "error_feedback": False})
    assert not no_feedback.rounds["eval_loss"].equals(one.rounds["eval_loss"])
    assert not (one.path / ".client_state").exists()  # spilled state is cleaned up


def test_bare_codec_name_and_bad_option_messages():
    assert config_from_dict({"compression": {"uplink": "bf16"}}).compression.uplink.name == "bf16"
    with pytest.raises(fedray.ConfigError, match="topk needs exactly one of fraction"):
        config_from_dict({"compression": {"uplink": "topk"}})
    with pytest.raises(fedray.ConfigError, match="sparsifiers apply to updates"):
        config_from_dict({"compression": {"downlink": {"name": "randk", "k": 5}}})
