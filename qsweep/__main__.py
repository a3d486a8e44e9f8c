"""`python -m qsweep` / `qsweep`: commands on recorded runs. Sweeps themselves run with `python run.py`."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="qsweep", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    rep = commands.add_parser("reproduce", help="measure a recorded run again from its config_hash and compare",
                              description="Find the run with this config_hash, run the config recorded with it "
                                          "again as a new run tagged reproduces=<run id>, and compare the two.")
    rep.add_argument("hash", help="the run's config_hash (a unique prefix is enough)")
    rep.add_argument("--tracking-uri", help="the MLflow store to read and record in "
                                            "(default: $MLFLOW_TRACKING_URI, else this project's mlruns/)")
    rep.add_argument("--experiment", help="record the new run in this experiment (default: the original's)")
    rep.add_argument("--run-id", help="which run of that hash to reproduce (default: the newest FINISHED one)")
    rep.add_argument("--allow-new-hash", action="store_true",
                     help="run even when today's code hashes the recorded config differently")
    args = parser.parse_args(argv)

    from qsweep import reproduce, tracking  # deferred: `--help` stays fast

    try:
        result = reproduce.reproduce(args.hash, args.tracking_uri, args.experiment, args.run_id,
                                     args.allow_new_hash)
    except (reproduce.ReproduceError, tracking.StoreUnavailable) as err:
        print(f"qsweep reproduce: error: {err}", file=sys.stderr, flush=True)
        return 1
    print("\n" + result.report, flush=True)
    return 0 if result.new["status"] == "FINISHED" else 1


if __name__ == "__main__":
    sys.exit(main())
