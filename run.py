"""qsweep entry point: `python run.py` measures one configuration, `python run.py -m ...` sweeps."""

import sys

from qsweep import worker

# The workers' fork server imports torch and transformers while this process imports its own. Not in a worker
# (which imports this file as __mp_main__), nor where no worker of this process will measure (inline, or a
# launcher whose own processes run the jobs).
if __name__ == "__main__" and not any(arg.startswith(("runner.isolation=inline", "hydra/launcher="))
                                      for arg in sys.argv):
    worker.start_fork_server()

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from qsweep import console, credentials, report, signals, tracking  # noqa: E402
from qsweep.config import ConfigError, register_schemas, validate  # noqa: E402
from qsweep.environment import on_this_machine  # noqa: E402
from qsweep.job import completed_job, record_invalid, run_job  # noqa: E402

register_schemas()
signals.install()
credentials.guard_logging()  # Hydra logs each job's overrides, which may hold a password


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(raw: DictConfig):
    try:
        try:
            cfg = on_this_machine(validate(raw))  # the one conversion: library code sees RunConfig only
        except ConfigError as err:
            job = record_invalid(raw, err)
        else:
            job = (cfg.sweep.skip_completed and completed_job(cfg)) or run_job(cfg)
    except tracking.StoreUnavailable as err:  # nothing can be recorded: say why in one line
        console.refuse(str(err))
        raise SystemExit(2)
    # In a multirun the callback summarizes the sweep at its end; a single run reports itself.
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        console.show(report.summary([job]))
        console.say(tracking.run_page(tracking.store_uri(OmegaConf.to_object(raw.tracking)), job.experiment_id,
                                      job.run_id))
        if job.status not in ("FINISHED", "SKIPPED"):
            raise SystemExit(1)
    return job  # the sweep's callback counts the jobs recorded


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: runs are already closed as KILLED
        console.interrupted("finished runs are kept")
        sys.exit(130)
