"""qsweep entry point: `python run.py` measures one configuration, `python run.py -m ...` sweeps."""

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from qsweep import report, tracking
from qsweep.config import register_schemas
from qsweep.job import run_job

register_schemas()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    store, run_id, ok = run_job(cfg)
    # In a multirun the callback summarizes the sweep at its end; a single run reports itself.
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        print("\n" + report.summary([tracking.get_job(store, run_id)]), flush=True)
        if not ok:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
