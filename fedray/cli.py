"""The ``fedray`` command line.

    fedray run CONFIG [--set key=value ...] [--out DIR] [--name NAME] [--address HOST:PORT]
               [--checkpoint-every N]
    fedray run --resume RUN_DIR [CONFIG] [--set key=value ...]
    fedray study STUDY [--set key=value ...] [--out DIR]
    fedray sweep SWEEP [--set key=value ...] [--out DIR] [--resume] [--address HOST:PORT]
    fedray validate CONFIG [--set key=value ...]
    fedray report RUN [RUN ...] [--out DIR] [--metric NAME] [--target X]
    fedray report SWEEP_DIR [--out DIR]
    fedray ls [RESULTS_DIR]

User errors (bad config, file or argument) print one line and exit with code 2; a sweep whose
trials did not all complete exits with code 1 (each trial's error is in sweep.parquet). A run
stopped by SIGINT or SIGTERM checkpoints first and exits with 130 or 143.
"""

from __future__ import annotations

import argparse
import os
import sys

from fedray.errors import RunInterrupted, UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default prints the whole usage block
        self.exit(2, f"fedray: error: {message} (see 'fedray {self.prog.split()[-1]} --help')\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fedray", description="Virtual-clock federated-learning simulator on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add_overrides(p, help_text: str):
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=help_text,
        )

    def add_config_args(p, optional: bool = False):
        if optional:
            p.add_argument("config", nargs="?", help="YAML config file (see configs/)")
        else:
            p.add_argument("config", help="YAML config file (see configs/)")
        add_overrides(p, "override a config key, e.g. --set clients.num_clients=1000 (repeatable)")

    run = sub.add_parser("run", help="run a simulation and write results/<name>/")
    add_config_args(run, optional=True)
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue a checkpointed run to the tables an uninterrupted run writes",
    )
    run.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="server steps between checkpoints (output.checkpoint_every; default 10 rounds "
        "sync, 100 updates async; 0: off)",
    )
    run.add_argument("--out", help="results root directory (output.root)")
    run.add_argument("--name", help="run name; default: <timestamp>-<config name> (output.name)")
    run.add_argument("--address", help="connect to an existing Ray cluster, e.g. 127.0.0.1:6379")
    run.add_argument("--workers", type=int, help="number of pool actors (execution.num_workers)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--verbose", action="store_true", help="show Ray's own logs")

    study = sub.add_parser(
        "study", help="run a study's variants and compare them in one table and plot"
    )
    study.add_argument("study", help="study YAML file (see configs/studies/)")
    add_overrides(study, "override a key of every variant, e.g. --set rounds=10 (repeatable)")
    study.add_argument("--out", help="results root (default: the base config's output.root)")
    study.add_argument("--quiet", action="store_true", help="no progress display")
    study.add_argument("--verbose", action="store_true", help="show Ray's own logs")

    sweep = sub.add_parser("sweep", help="run a grid of overrides as trials on Ray Tune")
    sweep.add_argument("sweep", help="sweep YAML file (see sweeps/)")
    add_overrides(sweep, "override a key of every trial, e.g. --set rounds=10 (repeatable)")
    sweep.add_argument("--out", help="results root (default: the base config's output.root)")
    sweep.add_argument("--resume", action="store_true", help="continue; finished trials are kept")
    sweep.add_argument("--address", help="run the trials on an existing Ray cluster")
    sweep.add_argument("--quiet", action="store_true", help="no progress display")
    sweep.add_argument("--verbose", action="store_true", help="show Ray's own logs")

    report = sub.add_parser(
        "report", help="figures, report.html and report.md of runs (overlaid) or of a sweep"
    )
    report.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or one sweep folder")
    report.add_argument("--out", help="report folder (default: RUN/report, or next to the runs)")
    report.add_argument(
        "--metric", help="rounds.parquet column to draw (default eval_accuracy), e.g. eval_loss"
    )
    report.add_argument(
        "--target", type=float, help="metric value for the time-to-target table, e.g. 0.8"
    )
    ls = sub.add_parser("ls", help="list the runs in a results folder, newest first")
    ls.add_argument(
        "results",
        nargs="?",
        default="results",
        metavar="RESULTS_DIR",
        help="results root (default: results/)",
    )

    traces = sub.add_parser("traces", help="convert device and availability traces")
    traces_sub = traces.add_subparsers(dest="traces_command", required=True, parser_class=_Parser)
    fedscale = traces_sub.add_parser(
        "import-fedscale",
        help="FedScale's client_device_capacity / client_behave_trace -> devices.csv, "
        "availability.csv",
    )
    fedscale.add_argument("--device", help="FedScale device capacity trace (pickle or JSON)")
    fedscale.add_argument("--behaviour", help="FedScale behaviour trace (pickle or JSON)")
    fedscale.add_argument("--out", required=True, help="folder for devices.csv, availability.csv")
    fedscale.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow pickle input (a pickle can run code; only plain data is unpickled)",
    )

    validate = sub.add_parser("validate", help="check a config and print it resolved")
    add_config_args(validate)
    sub.add_parser("workloads", help="list the workloads (workload.name) with what each models")
    return parser


def _cli_overrides(args) -> list[str]:
    extra = []
    if getattr(args, "out", None):
        extra.append(f"output.root={args.out}")
    if getattr(args, "name", None):
        extra.append(f"output.name={args.name}")
    if getattr(args, "address", None):
        extra.append(f"execution.address={args.address}")
    if getattr(args, "workers", None) is not None:
        extra.append(f"execution.num_workers={args.workers}")
    if getattr(args, "overwrite", False):
        extra.append("output.overwrite=true")
    if getattr(args, "checkpoint_every", None) is not None:
        extra.append(f"output.checkpoint_every={args.checkpoint_every}")
    return args.overrides + extra


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.config is None and not args.resume:
        parser.error("run needs a CONFIG file, or --resume RUN_DIR")
    try:
        if args.command == "workloads":
            from fedray.config import WORKLOAD_MODELS

            for name, model in WORKLOAD_MODELS.items():
                # the first sentence of the config class's docstring, however it is wrapped
                paragraph = " ".join(model.__doc__.strip().split("\n\n")[0].split())
                print(f"{name:<14} {paragraph.split('. ')[0].rstrip('.')}.")
            return 0
        if args.command == "report":
            import time

            from fedray.report import report

            t0 = time.perf_counter()
            out = report(args.runs, out=args.out, metric=args.metric, target=args.target)
            print(f"fedray: report -> {out}/report.html ({time.perf_counter() - t0:.1f} s)")
            return 0
        if args.command == "traces":
            from fedray.traces import import_fedscale

            for path in import_fedscale(
                args.out, args.device, args.behaviour, trust_pickle=args.trust_pickle
            ):
                print(f"fedray: wrote {path}")
            return 0
        if args.command == "ls":
            from fedray.report.listing import format_rows, list_runs

            rows = list_runs(args.results)
            print(format_rows(rows) if rows else f"fedray: no runs in {args.results}")
            return 0
        if args.command == "study":
            from fedray.study import run_study

            out = run_study(
                args.study,
                root=args.out,
                extra=args.overrides,
                progress=not args.quiet,
                verbose=args.verbose,
            )
            print(f"fedray: study done -> {out} (study.parquet, *.png)")
            return 0
        if args.command == "sweep":
            import pandas as pd

            from fedray.sweep import run_sweep

            address = [f"execution.address={args.address}"] if args.address else []
            out = run_sweep(
                args.sweep,
                root=args.out,
                extra=args.overrides + address,
                resume=args.resume,
                progress=not args.quiet,
                verbose=args.verbose,
            )
            status = pd.read_parquet(out / "sweep.parquet", columns=["status"]).status
            counts = ", ".join(f"{n} {state}" for state, n in status.value_counts().items())
            print(f"fedray: sweep done ({counts}) -> {out}/sweep.parquet")
            return 0 if (status == "completed").all() else 1
        from fedray.config import dump_config, load_config

        if args.command == "run" and args.resume:
            from fedray.resume import resume_config

            cfg, finished = resume_config(args.resume, args.config, _cli_overrides(args))
            if finished:
                print(f"fedray: {args.resume} already finished; nothing to resume")
                return 0
        else:
            cfg = load_config(args.config, overrides=_cli_overrides(args))
        if args.command == "validate":
            sys.stdout.write(dump_config(cfg))
            return 0
        from fedray.api import run

        result = run(
            cfg,
            progress=not args.quiet,
            verbose=args.verbose,
            resume=bool(getattr(args, "resume", None)),
        )
    except UserError as err:
        print(f"fedray: error: {err}", file=sys.stderr)
        return err.exit_code
    except RunInterrupted as stop:
        print(f"fedray: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("fedray: interrupted", file=sys.stderr)
        return 130
    summary = result.summary
    final = summary.get("final", {})
    acc = final.get("eval_accuracy")
    privacy = summary.get("privacy")
    # A private run's guarantee belongs next to its accuracy: the two are the trade-off.
    guarantee = f", ε {privacy['epsilon']:.3g} at δ {privacy['delta']:g}" if privacy else ""
    print(
        f"fedray: {summary['rounds_completed']} rounds, sim {summary['sim_time_s']:.1f}s, "
        f"wall {summary['wall_time_s']:.1f}s (+{summary['startup_s']:.1f}s start-up), "
        f"eval_accuracy {acc:.4f}{guarantee} -> {result.path}"
        if acc is not None
        else f"fedray: done -> {result.path}"
    )
    clipped = result.rounds.get("secagg_clipped")
    if clipped is not None and clipped.fillna(0).sum() > 0:
        # silently changed sums would read as a result: say so where the user looks
        print(
            f"fedray: warning: secure aggregation clipped {int(clipped.sum())} uploads into "
            "secure_aggregation.clip_range (a weight n_k or a weighted coordinate beyond it); "
            "raise clip_range (per round: rounds.parquet secagg_clipped)",
            file=sys.stderr,
        )
    return 0


def console_main(argv: list[str] | None = None, on_done=None) -> None:
    """The ``fedray`` command: :func:`main`, then an exit that skips the interpreter's teardown.
    Everything a command writes is closed by then and the atexit hooks (logging's, Ray's) still
    run; tearing down torch's and Ray's modules and Ray's core worker would take ~1 s more."""
    code = main(argv)
    if on_done is not None:  # benchmarks/bench_startup.py's clock
        on_done(code)
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
