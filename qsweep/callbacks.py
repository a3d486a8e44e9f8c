"""Hydra callback for multiruns: opens the sweep's parent run, and closes it with a summary.

Jobs never raise (a failure becomes a FAILED run), so Hydra always reaches on_multirun_end; a sweep
cut short by Ctrl-C or SIGTERM still closes its parent run as KILLED at exit, and one that never
started a job (a bad override) leaves no run behind. A job skipped by sweep.skip_completed creates no
run: it tags the sweep's run with the earlier run it points to (whichever process or node ran it), and
the summary lists it as SKIPPED. A store that goes away mid-sweep stops it: the jobs recorded before are
kept, and the sweep says which were not.

Hydra saves each job's config and overrides (.hydra/*.yaml, multirun.yaml) before any callback runs: they are
rewritten redacted as the job starts, so no password given in an override stays in the output folder.
"""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from qsweep import console, credentials, identity, report, results, signals, tracking
from qsweep.config import TrackingConfig


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            self.store = tracking.open_store(OmegaConf.to_object(config.tracking) if "tracking" in config
                                             else TrackingConfig())
            overrides = " ".join(config.hydra.overrides.task)
            self.sweep_run_id = tracking.start_sweep(
                self.store, f"sweep-{time.strftime('%Y%m%d-%H%M%S')}", {tracking.TAG_SWEEP_OVERRIDES: overrides})
        except tracking.StoreUnavailable as err:
            console.refuse(str(err))
            raise SystemExit(2)
        self.started, self.recorded = [], {}  # jobs this process saw start, and recorded (label: status)
        os.environ[tracking.PARENT_RUN_ENV] = self.sweep_run_id
        atexit.register(self._on_abort)
        self.total_jobs = _count_jobs(config)
        console.say(f"sweep run {self.sweep_run_id} in {self.store.uri}"
                    + (f", {self.total_jobs} jobs" if self.total_jobs else ""))

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        """One line per job: which one of how many, and what it is about to do."""
        signals.raise_if_swallowed()
        _redact_hydra_files(config)
        if not hasattr(self, "sweep_run_id"):  # a single run: nothing to count
            return
        self.started.append(_label(config))
        gen = config.generation
        number = f"{config.hydra.job.num + 1}" + (f"/{self.total_jobs}" if self.total_jobs else "")
        console.say(f"job {number}: {identity.run_name(config)}: "
                    + ("skipped if already finished, else " if config.sweep.skip_completed else "")
                    + f"load, {gen.warmup} warm-up + {len(gen.prompts)} prompts x {gen.repeats} timed repeats")

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus

        if (hasattr(self, "sweep_run_id") and job_return.status == JobStatus.COMPLETED
                and isinstance(job_return.return_value, tracking.RunRecord)):
            self.recorded[_label(config)] = job_return.return_value.status

    def _on_abort(self) -> None:
        """At exit of a sweep that never reached on_multirun_end (interrupt, bad override, a store gone)."""
        if not tracking.reachable(self.store):
            self._say_unrecorded()
            return
        if tracking.get_run(self.store, self.sweep_run_id).status != "RUNNING":
            return
        jobs = self._close_interrupted_jobs()
        if jobs:
            tracking.end_sweep(self.store, self.sweep_run_id, "KILLED")
            console.show("qsweep: sweep interrupted\n" + report.summary(jobs))
            console.say((f"{self.total_jobs - len(jobs)} of {self.total_jobs} jobs never started. "
                         if self.total_jobs and self.total_jobs > len(jobs) else "")
                        + "To finish the sweep, run the same command with sweep.skip_completed=true: it measures "
                        "only the jobs without a FINISHED run")
        else:  # no job ever started (e.g. a typo in an override): an empty parent is only noise
            tracking.delete_run(self.store, self.sweep_run_id)

    def _say_unrecorded(self) -> None:
        """The tracking server went away: which jobs this process saw recorded, and which not."""
        lost = [label for label in self.started if label not in self.recorded]
        never = (self.total_jobs or len(self.started)) - len(self.started)
        console.refuse(f"the MLflow server {self.store.uri} went away during the sweep. Recorded: "
                       + (", ".join(f"{label} {status}" for label, status in self.recorded.items()) or "none")
                       + ". Not recorded: " + (", ".join(lost) or "none")
                       + (f", and {never} job(s) never started" if never else "")
                       + ". Once it answers again, run the same command with sweep.skip_completed=true: it "
                         "measures only the jobs without a FINISHED run")

    def _close_interrupted_jobs(self) -> list:
        """Jobs that a parallel launcher (joblib) ran in its workers, which are stopped with the sweep: once
        a worker is gone, its job run ends KILLED. Jobs on other hosts (SLURM) end by themselves."""
        for _ in range(20):
            tracking.close_orphans(self.store, self.sweep_run_id)
            jobs = tracking.sweep_jobs(self.store, self.sweep_run_id)
            if all(job.status != "RUNNING" for job in jobs):
                break
            time.sleep(0.25)  # the launcher's workers may take a moment to exit
        return jobs

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not tracking.reachable(self.store):
            atexit.unregister(self._on_abort)  # said once, here
            self._say_unrecorded()
            raise SystemExit(1)
        measured = tracking.sweep_jobs(self.store, self.sweep_run_id)
        failed = sum(job.status != "FINISHED" for job in measured)
        skipped = tracking.skipped_jobs(self.store, self.sweep_run_id)
        if skipped:
            tracking.summarize_skips(self.store, self.sweep_run_id, skipped)
        jobs = skipped + measured  # a resumed sweep skips its first jobs and measures the rest
        tracking.end_sweep(self.store, self.sweep_run_id, "FAILED" if failed else "FINISHED")
        os.environ.pop(tracking.PARENT_RUN_ENV, None)
        table = report.summary(jobs)
        tracking.RunWriter(self.store, self.sweep_run_id).describe(table)
        console.show(table)
        wall_s = time.time() - tracking.get_run(self.store, self.sweep_run_id).start_time / 1000
        time_line = results.time_line(measured, wall_s)
        if time_line:  # jobs measured in this sweep (not all skipped)
            console.say(time_line)
        console.say(f"charts and report.md: {tracking.report_command(self.store, self.sweep_run_id)}")
        console.say(f"the runs in the MLflow UI ({tracking.ui_command(self.store.uri)}): "
                    f"{tracking.runs_url(self.store)}")
        if failed:
            raise SystemExit(1)


def _label(config: DictConfig) -> str:
    return f"job {config.hydra.job.num + 1} ({identity.run_name(config)})"


def _redact_hydra_files(config: DictConfig) -> None:
    """The job's .hydra/config.yaml, hydra.yaml and overrides.yaml, and a sweep's multirun.yaml, redacted."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    files = []
    if config.hydra.output_subdir is not None:
        folder = Path(config.hydra.runtime.output_dir) / config.hydra.output_subdir
        files += [folder / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        files.append(Path(config.hydra.sweep.dir) / "multirun.yaml")
    credentials.redact_files(files)


def _count_jobs(config: DictConfig):
    """How many jobs Hydra's basic sweeper will launch (sweeper params + command-line overrides), or None."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return None
        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
        overrides = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception:  # another sweeper, or an override this cannot expand: jobs are numbered without n
        return None
