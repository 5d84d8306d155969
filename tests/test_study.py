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


def test_a_grid_study_writes_one_rows_by_columns_table_per_metric(ray_session, tmp_path):
    # Prepare: 2 noise multipliers × with and without clipping-only privacy
    grid = {
        "rows": {"z0.5": {"privacy.noise_multiplier": 0.5}, "z2": {"privacy.noise_multiplier": 2}},
        "columns": {"C0.1": {"privacy.clip_norm": 0.1}, "C1": {"privacy.clip_norm": 1.0}},
        "metrics": ["eval_accuracy", "dp_epsilon", "cum_bytes_up"],
    }
    study = write_study(tmp_path, {}, grid=grid)
    base = yaml.safe_load((tmp_path / "base.yaml").read_text())
    base["privacy"] = {"clip_norm": 1.0, "noise_multiplier": 1.0}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))

    # Execute
    out = run_study(study, root=tmp_path / "res", progress=False)

    # Assert: variants row-column, a table per metric, its cells the runs' last values
    table = pd.read_parquet(out / "study.parquet")
    assert sorted(table.variant.unique()) == ["z0.5-C0.1", "z0.5-C1", "z2-C0.1", "z2-C1"]
    eps = pd.read_csv(out / "table_dp_epsilon.csv", index_col=0)
    assert list(eps.index) == ["z0.5", "z2"] and list(eps.columns) == ["C0.1", "C1"]
    last = table[table.variant == "z2-C1"].dp_epsilon.iloc[-1]
    assert eps.loc["z2", "C1"] == pytest.approx(last)
    assert eps.loc["z0.5", "C1"] > eps.loc["z2", "C1"]  # less noise, more ε
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "table.csv", index_col=0),
        pd.read_csv(out / "table_eval_accuracy.csv", index_col=0),
    )
    md = (out / "table.md").read_text()
    assert "**dp_epsilon** (final)" in md and "| z2 |" in md


@pytest.mark.parametrize(
    "variants, extra, message",
    [
        ({"a": {"rounds": 0}}, {}, "rounds = 0"),
        ({}, {}, "variants"),
        ({"a": {}}, {"plots": {"x": ["accuracy"]}}, "plots.x 'accuracy' is not one of"),
        ({"../a": {}}, {}, "must be a plain folder name"),
        (
            {},
            {"grid": {"rows": {"a": {}}, "columns": {"b": {}}, "metrics": ["accuracy"]}},
            "grid metric 'accuracy' is not a column of rounds.parquet",
        ),
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
