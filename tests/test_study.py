"""Studies: variants run into their own run directories, one table, one plot per x axis."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from fedray.errors import ConfigError
from fedray.study import run_study


def write_study(tmp_path, variants, **extra):
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "rounds": 2,
                "clients_per_round": 4,
                "workload": {"eval_clients": 8, "max_samples": 200},
                "clients": {"num_clients": 20},
            }
        )
    )
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {"name": "s", "base": "base.yaml", "variants": variants, **extra}, sort_keys=False
        )
    )
    return study


def test_study_runs_variants_and_writes_table_and_plots(ray_session, tmp_path):
    study = write_study(
        tmp_path,
        {
            "none": {"compression.uplink": "none"},
            "int8": {"compression.uplink": {"name": "int8"}},
        },
    )
    out = run_study(study, root=tmp_path / "res", progress=False)
    table = pd.read_parquet(out / "study.parquet")
    assert list(table.groupby("variant", sort=False).size().items()) == [("none", 2), ("int8", 2)]
    ratio = table.groupby("variant").compression_ratio.mean()
    assert ratio["none"] == 1.0 and ratio["int8"] > 3.5
    assert (out / "eval_accuracy_vs_cum_bytes_up.png").stat().st_size > 1000
    assert (out / "eval_accuracy_vs_sim_time_s.png").is_file()
    # finished variants with an unchanged config are reused, not rerun
    mtime = (out / "none" / "rounds.parquet").stat().st_mtime_ns
    run_study(study, root=tmp_path / "res", progress=False)
    assert (out / "none" / "rounds.parquet").stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "variants, extra, message",
    [
        ({"a": {"rounds": 0}}, {}, "rounds = 0"),
        ({}, {}, "variants"),
        ({"a": {}}, {"plots": {"x": ["accuracy"]}}, "plots.x 'accuracy' is not one of"),
        ({"../a": {}}, {}, "must be a plain folder name"),
    ],
)
def test_bad_study_files(tmp_path, variants, extra, message):
    study = write_study(tmp_path, variants, **extra)
    with pytest.raises(ConfigError, match=message):
        run_study(study, root=tmp_path / "res", progress=False)  # validates before running


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "configs" / "studies").glob("*.yaml")),
    ids=lambda p: p.stem,
)
def test_every_shipped_study_and_its_variants_validate(path):
    from fedray.config import load_config
    from fedray.study import load_study

    spec = load_study(path)
    for overrides in spec.variants.values():
        load_config(spec.base, list(overrides.items()))
