"""`python -m qsweep <command>` (or `qsweep <command>`): work on what sweeps recorded.

Sweeps themselves run through Hydra: `python run.py -m ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import List, Optional

from qsweep import console


def _sweep_jobs(store, sweep_run_id: str) -> list:
    """What the sweep's summary showed: the earlier runs its skipped jobs stand for, then the jobs it ran."""
    from qsweep import tracking

    return tracking.skipped_jobs(store, sweep_run_id) + tracking.sweep_jobs(store, sweep_run_id)


def _report(args: argparse.Namespace) -> int:
    from qsweep import report, tracking
    from qsweep.config import TrackingConfig

    parent = None
    if args.sweep:  # a run id names one run of the whole store: its own experiment holds its jobs
        store = tracking.open_for_reading(tracking.store_uri(TrackingConfig(uri=args.tracking_uri)))
        parent = tracking.get_run(store, args.sweep)
        store = dataclasses.replace(store, experiment_id=parent.experiment_id)
        jobs, source = _sweep_jobs(store, args.sweep), f"sweep {parent.name}"
    else:
        experiment = args.experiment or "qsweep"
        store = tracking.open_store(TrackingConfig(uri=args.tracking_uri, experiment=experiment), create=False)
        if args.filter or args.experiment:
            jobs = report.latest_per_config(tracking.find_jobs(store, args.filter or ""))
            source = f"experiment {experiment}" + (f", runs where {args.filter}" if args.filter else "")
        else:
            parent = tracking.latest_sweep(store)
            if parent is None:
                console.refuse(f"no sweep in experiment 'qsweep' of {store.uri}; run `python run.py -m ...` first, "
                               "or pick runs with --sweep / --experiment / --filter", prefix="qsweep report")
                return 2
            jobs, source = _sweep_jobs(store, parent.run_id), f"sweep {parent.name}"
    if not jobs:
        console.refuse(f"no job runs in {source}", prefix="qsweep report")
        return 2
    if parent:
        overrides = parent.tags.get(tracking.TAG_SWEEP_OVERRIDES)
        source += f" (`{overrides}`)" if overrides else ""
    from qsweep.charts import slug

    out = Path(args.out) if args.out else Path("reports") / slug(parent.name if parent else source)
    path = report.write_report(store, jobs, out, source, parent and parent.run_id, log=not args.no_log)
    console.show(report.summary(jobs), gap=False)
    console.say(f"{path} and {len(list(out.glob('*.png')))} charts"
                + (f"; logged to run {parent.run_id} (artifacts report/)" if parent and not args.no_log else ""),
                prefix="qsweep report", gap=True)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from qsweep import reproduce

    try:
        result = reproduce.reproduce(args.hash, args.tracking_uri, args.experiment, args.run_id,
                                     args.allow_new_hash)
    except reproduce.ReproduceError as err:
        console.refuse(str(err), prefix="qsweep reproduce")
        return 1
    console.show(result.report)
    return 0 if result.new.status == "FINISHED" else 1


def _recommend_jobs(args: argparse.Namespace):
    """The store and the runs `recommend` chooses from, as `report` selects them (--sweep, --experiment, else
    the latest sweep), and what they are; None (after saying why) when there are none."""
    from qsweep import console, report, tracking
    from qsweep.config import TrackingConfig

    if args.sweep:
        store = tracking.open_for_reading(tracking.store_uri(TrackingConfig(uri=args.tracking_uri)))
        parent = tracking.get_run(store, args.sweep)
        store = dataclasses.replace(store, experiment_id=parent.experiment_id)
    else:
        store = tracking.open_store(TrackingConfig(uri=args.tracking_uri, experiment=args.experiment or "qsweep"),
                                    create=False)
        parent = None if args.experiment else tracking.latest_sweep(store)
        if parent is None and not args.experiment:
            console.refuse(f"no sweep in experiment 'qsweep' of {store.uri}; run `python run.py -m ...` first, or "
                           "pick runs with --sweep / --experiment", prefix="qsweep recommend")
            return None
    jobs = (_sweep_jobs(store, parent.run_id) if parent
            else report.latest_per_config(tracking.find_jobs(store)))
    source = f"sweep {parent.name}" if parent else f"experiment {args.experiment}"
    if not jobs:
        console.refuse(f"no job runs in {source}", prefix="qsweep recommend")
        return None
    return store, jobs, source


def _at_least(low: float, kind=float):
    """An argparse type: a number no lower than `low` (a cap below it would make no sense)."""
    def parse(text: str):
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is below {low}: give {low} or more")
        return value
    return parse


def _recommend(args: argparse.Namespace) -> int:
    from qsweep import console, export, recommend, report, report_rows
    from qsweep.artifacts import ArtifactUnavailable

    selected = _recommend_jobs(args)
    if selected is None:
        return 2
    store, jobs, source = selected
    limits = recommend.Constraints(args.max_kl, args.max_memory_gb, args.batch_size, args.device,
                                   args.min_tokens_per_s, args.backend)
    recs = recommend.recommend(recommend.candidates(r for rows in report_rows.rows_by_model(jobs).values()
                                                    for r in rows), limits, args.objective)
    runs = {job.run_id: job for job in jobs}
    how = {c.run_id: export.how_to_run(store, runs[c.run_id]) for rec in recs for c in (rec.pick, rec.runner_up) if c}
    console.say(f"{source}, {limits.text()}, objective {args.objective}:\n"
                + recommend.render(recs, limits, report.store_option(store.uri), args.objective, how),
                prefix="qsweep recommend")
    picked = all(rec.pick for rec in recs) and bool(recs)
    if args.register:
        if len(recs) != 1 or not picked:
            console.refuse(f"--register {args.register} needs one pick, and these runs give {len(recs)} "
                           f"recommendation(s){'' if picked else ' without a pick'}: narrow them with --sweep, "
                           "--device, --backend or --batch-size, or relax the caps", prefix="qsweep recommend")
            return 1
        try:
            console.say(export.register(store, args.register, runs[recs[0].pick.run_id], limits.text(),
                                        args.objective, source), prefix="qsweep recommend")
        except ArtifactUnavailable as err:
            console.refuse(str(err), prefix="qsweep recommend")
            return 1
    return 0 if picked else 1


def _export(args: argparse.Namespace) -> int:
    from qsweep import export, tracking
    from qsweep.artifacts import ArtifactUnavailable
    from qsweep.config import TrackingConfig
    from qsweep.reproduce import ReproduceError

    try:
        store = tracking.open_for_reading(tracking.store_uri(TrackingConfig(uri=args.tracking_uri)))
        done = export.export(store, args.hash, Path(args.dest))
    except (ArtifactUnavailable, ReproduceError) as err:
        console.refuse(str(err), prefix="qsweep export")
        return 1
    console.say(done, prefix="qsweep export")
    return 0


def _model_name(text: str) -> str:
    """An argparse type: a registered model name that MLflow's filters can quote."""
    if not text.strip() or "'" in text or '"' in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a model name: give a name without quotes")
    return text


class _Parser(argparse.ArgumentParser):
    """Bad input is one line, as everywhere in qsweep: argparse's usage block would bury what was wrong."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `qsweep` command line (tests/test_docs.py parses the documented commands with it)."""
    from qsweep.recommend import DEFAULT_MAX_KL, OBJECTIVES
    from qsweep.tracking.names import ALIAS_RECOMMENDED

    parser = _Parser(prog="qsweep", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    rep = commands.add_parser("report", help="tables and charts of a sweep: report.md + PNGs, logged to the sweep",
                              description="Default: the latest sweep in the store.")
    rep.add_argument("--sweep", metavar="RUN_ID", help="the sweep's parent run id (default: the latest sweep)")
    rep.add_argument("--experiment", help="every job run of this MLflow experiment (the newest run per "
                     "config_hash) instead of one sweep")
    rep.add_argument("--filter", metavar="MLFLOW_FILTER",
                     help="job runs matching an MLflow search filter, e.g. \"tags.model = 'gpt2'\"")
    rep.add_argument("--out", metavar="DIR", help="output folder (default: reports/<sweep name>)")
    rep.add_argument("--tracking-uri", help="the MLflow store (default: $MLFLOW_TRACKING_URI, else mlruns/)")
    rep.add_argument("--no-log", action="store_true", help="do not log the report to the sweep's parent run")
    rep.set_defaults(func=_report)

    again = commands.add_parser("reproduce", help="measure a recorded run again from its config_hash and compare",
                                description="Find the run with this config_hash, run the config recorded with it "
                                            "again as a new run tagged reproduces=<run id>, and compare the two.")
    again.add_argument("hash", help="the run's config_hash (a unique prefix is enough)")
    again.add_argument("--tracking-uri", help="the MLflow store to read and record in "
                                              "(default: $MLFLOW_TRACKING_URI, else this project's mlruns/)")
    again.add_argument("--experiment", help="record the new run in this experiment (default: the original's)")
    again.add_argument("--run-id", help="which run of that hash to reproduce (default: the newest FINISHED one)")
    again.add_argument("--allow-new-hash", action="store_true",
                       help="run even when today's code hashes the recorded config differently")
    again.set_defaults(func=_reproduce)

    pick = commands.add_parser("recommend", help="per model, the best setting that meets quality, memory and speed caps",
                               description="Per model: the fastest setting (decode tokens/s; throughput when the runs "
                               "vary the batch size), or the most faithful or smallest (--objective), meeting the caps; "
                               "how to run it with its runtime, the command that measures it again, and the "
                               "runner-up; ties, emulated and degenerate settings said. Exit 1 when some model has "
                               "no setting meeting the caps. Default: the latest sweep in the store.")
    pick.add_argument("--sweep", metavar="RUN_ID", help="the sweep's parent run id (default: the latest sweep)")
    pick.add_argument("--experiment", help="every job run of this MLflow experiment (the newest run per "
                      "config_hash) instead of one sweep")
    pick.add_argument("--tracking-uri", help="the MLflow store (default: $MLFLOW_TRACKING_URI, else mlruns/)")
    pick.add_argument("--max-kl", type=_at_least(0.0), default=DEFAULT_MAX_KL,
                      help=f"highest KL vs fp32 in nats (default {DEFAULT_MAX_KL:g}; not applied to a model "
                           "without KL figures, i.e. random weights)")
    pick.add_argument("--max-memory-gb", type=_at_least(0.0),
                      help="most memory the setting may need, GiB (setting_memory_gb: VRAM on cuda, RAM on the "
                           "CPU; an older run without it: its peak VRAM / RSS)")
    pick.add_argument("--batch-size", type=_at_least(1, int), help="only runs at this batch size")
    pick.add_argument("--device", choices=("cpu", "cuda"), help="only runs on this device")
    pick.add_argument("--backend", metavar="NAME", help="only runs of this backend (transformers, llama-cpp, "
                      "ctranslate2): the runtime you can deploy")
    pick.add_argument("--min-tokens-per-s", type=_at_least(0.0), metavar="X",
                      help="lowest speed: decode tokens/s per sequence (throughput when the runs vary the batch size)")
    pick.add_argument("--objective", choices=tuple(OBJECTIVES), default="speed",
                      help="what to optimise among the settings that meet every cap: " + ", ".join(
                          f"{name} ({what})" for name, what in OBJECTIVES.items()) + "; default speed")
    pick.add_argument("--register", metavar="NAME", type=_model_name,
                      help="log the pick's artifact as a new version of the MLflow registered model NAME (its "
                           f"source is the artifact where it lies: not copied) and move the alias "
                           f"'{ALIAS_RECOMMENDED}' to it")
    pick.set_defaults(func=_recommend)

    ship = commands.add_parser("export", help="a run's measured artifact (GGUF file or folder) and a README, into DEST",
                               description="Hard-link (or, across file systems, copy) the artifact that the newest "
                               "FINISHED run of the config_hash measured into DEST, with a README.md: what it is, "
                               "where it was measured, its figures, how to run it.")
    ship.add_argument("hash", help="the run's config_hash (a unique prefix is enough)")
    ship.add_argument("dest", help="a new folder (never overwritten)")
    ship.add_argument("--tracking-uri", help="the MLflow store (default: $MLFLOW_TRACKING_URI, else mlruns/)")
    ship.set_defaults(func=_export)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from qsweep.credentials import guard_logging

    guard_logging()  # MLflow or SQLAlchemy may log the store's URI
    args = build_parser().parse_args(argv)
    from qsweep import signals
    from qsweep.tracking import StoreUnavailable

    signals.install()  # like Ctrl-C: a run being measured ends as KILLED
    try:
        return args.func(args)
    except StoreUnavailable as err:  # no such store, experiment or run: one line
        console.refuse(" ".join(str(err).split()), prefix=f"qsweep {args.command}")
        return 1
    except KeyboardInterrupt:
        console.interrupted("a run being measured was ended as KILLED", prefix=f"qsweep {args.command}")
        return 130


if __name__ == "__main__":
    sys.exit(main())
