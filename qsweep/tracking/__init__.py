"""Every MLflow call of qsweep lives in this package, one module per concern:

    store    connecting to a store and its experiment
    owners   which process owns a running run; opening a store to record in closes runs whose process died
    runs     writing job, sweep and fine-tune runs, ended by outcome; skipped-job bookkeeping
    records  reading runs back as typed RunRecords, and their artifacts
    models   a fine-tuned checkpoint as a logged model and registered model version, runs that measure it;
             a recommended pick's artifact as a registered model version with an alias
    names    the tag and artifact names (qsweep's interface)
"""

from qsweep.tracking.models import link_model, model_ready, register_artifact, register_checkpoint  # noqa: F401
from qsweep.tracking.names import *  # noqa: F401,F403
from qsweep.tracking.owners import close_orphans, host_id, open_store  # noqa: F401
from qsweep.tracking.records import (RunRecord, experiment_name, find_by_hash, find_jobs, find_runs, get_run,  # noqa: F401,E501
                                     latest_sweep, read_artifact, read_json, skipped_jobs, sweep_jobs)
from qsweep.tracking.runs import (RunWriter, delete_run, end_sweep, job_run, one_line, record_skip,  # noqa: F401
                                  start_sweep, summarize_skips, train_run)
from qsweep.tracking.store import (Store, StoreUnavailable, open_for_reading, reachable,  # noqa: F401
                                  report_command, run_page, runs_url, store_uri, ui_command)
