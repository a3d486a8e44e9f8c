"""qsweep entry point: `python run.py` measures one configuration, `python run.py -m ...` sweeps."""

import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from qsweep import report, tracking
from qsweep.config import register_schemas
from qsweep.job import run_job

register_schemas()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# SIGTERM unwinds like Ctrl-C, so the current run and the sweep end as KILLED instead of RUNNING.
signal.signal(signal.SIGTERM, _interrupt)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        store, run_id, ok = run_job(cfg)
    except tracking.StoreUnavailable as err:  # nothing can be recorded: say why in one line
        print(f"qsweep: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    # In a multirun the callback summarizes the sweep at its end; a single run reports itself.
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        print("\n" + report.summary([tracking.get_job(store, run_id)]), flush=True)
        if not ok:
            raise SystemExit(1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: runs are already closed as KILLED
        print("qsweep: interrupted; finished runs are kept", file=sys.stderr)
        sys.exit(130)
