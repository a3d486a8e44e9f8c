"""qsweep entry point: `python run.py` measures one configuration, `python run.py -m ...` sweeps."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from qsweep import console, report, signals, tracking
from qsweep.config import ConfigError, register_schemas, validate
from qsweep.environment import on_this_machine
from qsweep.job import completed_job, record_invalid, run_job

register_schemas()
signals.install()


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


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: runs are already closed as KILLED
        console.interrupted("finished runs are kept")
        sys.exit(130)
