"""Which config a ``fedray run --resume RUN_DIR`` continues with, and what it refuses.

A run resumes with the config it was started with (``RUN_DIR/config.yaml``). A config file or
``--set`` overrides given with ``--resume`` may change only how the run executes
(``execution.*``: worker count, cluster address, ...) and where it writes (``output.*``): the tables
are identical for any number of workers, so those keys cannot change a result. Any other
difference is refused with the keys named, since the tables would then mix two experiments.
"""

from __future__ import annotations

from pathlib import Path

from fedray.config import Config, config_from_dict, load_config
from fedray.errors import UserError
from fedray.results.writer import CONFIG_FILE, SUMMARY_FILE
from fedray.sim import checkpoint

# Top-level sections a resumed run may change: they cannot change the tables.
MAY_CHANGE = ("execution", "output")


def _flatten(data, prefix: str = "") -> dict:
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in out.items()}


def differing_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between two configs, except ``execution``/``output``."""
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k.split(".")[0] not in MAY_CHANGE and a.get(k) != b.get(k)]


def resume_config(
    run_dir: str | Path, config: str | None, overrides: list[str]
) -> tuple[Config, bool]:
    """The config to resume ``run_dir`` with, and whether the run already finished."""
    import json

    run_dir = Path(run_dir).resolve()  # `--resume .` names its folder too
    stored_file = run_dir / CONFIG_FILE
    if not stored_file.is_file():
        raise UserError(
            f"{str(run_dir)!r} is not a fedray run folder (no {CONFIG_FILE}); pass the folder "
            "that fedray run wrote, e.g. results/<name>"
        )
    stored = load_config(stored_file)
    try:
        status = json.loads((run_dir / SUMMARY_FILE).read_text()).get("status")
    except (OSError, ValueError):
        status = None
    if status == "completed":
        return stored, True
    given = load_config(config, overrides) if config else None
    if given is None and overrides:
        given = config_from_dict(stored.model_dump(mode="json"), overrides)
    if given is not None:
        changed = differing_keys(stored, given)
        if changed:
            shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
            raise UserError(
                f"the config differs from the one {str(run_dir)!r} was started with ({shown}); "
                "a resumed run must keep it — drop those changes or start a new run"
            )
        stored.execution = given.execution
    if not checkpoint.exists(run_dir):
        raise UserError(
            f"{str(run_dir)!r} has no checkpoint; it cannot be resumed — start it again"
        )
    stored.output.root, stored.output.name = run_dir.parent, run_dir.name
    return stored, False
