"""qsweep entry point: `python run.py` measures one configuration, `python run.py -m ...` sweeps."""

import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from qsweep import callbacks, report, tracking
from qsweep.config import register_schemas
from qsweep.job import completed_job, run_job

register_schemas()


signal.signal(signal.SIGTERM, callbacks.interrupt)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    try:
        skipped = completed_job(cfg) if cfg.sweep.skip_completed else None
        if skipped:  # nothing measured, no run created: the sweep's run records the skip for its summary
            jobs, ok = [skipped], True
        else:
            store, run_id, ok = run_job(cfg)
            jobs = [tracking.get_job(store, run_id)]
    except tracking.StoreUnavailable as err:  # nothing can be recorded: say why in one line
        print(f"qsweep: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    # In a multirun the callback summarizes the sweep at its end; a single run reports itself.
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        print("\n" + report.summary(jobs), flush=True)
        if not ok:
            raise SystemExit(1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: runs are already closed as KILLED
        print("qsweep: interrupted; finished runs are kept", file=sys.stderr)
        sys.exit(130)
