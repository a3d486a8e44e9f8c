"""The names qsweep gives to what it records: part of its interface (filters, the UI, old stores)."""

PARENT_RUN_ENV = "QSWEEP_PARENT_RUN_ID"  # set by the sweep callback, read by every job of the sweep

TAG_HASH = "config_hash"
TAG_ERROR = "error"
TAG_KIND = "qsweep.kind"  # job, sweep or train_merge
TAG_OWNER = "qsweep.owner"  # host id:pid:start time of the process that must end the run
TAG_SKIPPED_PREFIX = "qsweep.skipped."  # on a sweep run: qsweep.skipped.<config_hash> = the run it points to
TAG_WEIGHTS = "weights_sha256"  # local checkpoint folders: what the folder held when measured
TAG_REPRODUCES = "reproduces"  # on a reproduction: the run it measured again
TAG_SWEEP_OVERRIDES = "sweep_overrides"
TAG_SKIPPED_JOBS = "skipped_jobs"
TAG_NOTE = "mlflow.note.content"  # the run's description, Markdown in the UI
# A run that measures a fine-tuned checkpoint: which fine-tune made it, as an MLflow logged model and
# registered model version (from the folder's train_merge.json)
TAG_FINE_TUNE_RUN = "fine_tune_run"
TAG_LOGGED_MODEL = "logged_model_id"
TAG_MODEL_VERSION = "model_version"  # <registered model name>/<version>

KIND_JOB, KIND_SWEEP, KIND_TRAIN = "job", "sweep", "train_merge"

# Artifacts of a job run (the report and reproduce read them back).
CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
GENERATIONS_FILE = "generations.json"
GENERATIONS_MARKDOWN = "generations.md"
GENERATIONS_TABLE = "generations_table.json"  # an MLflow table: the UI compares it across runs
PRECISION_FILE = "precision_check.json"
QUALITY_FILE = "quality.json"
TRACEBACK_FILE = "traceback.txt"
SKIPPED_FILE = "skipped_jobs.json"

# Dataset inputs of a job run (mlflow.data.context of each)
CONTEXT_PROMPTS, CONTEXT_EVAL = "prompts", "evaluation"

# Settings this machine only emulates (emulation.py): on a job run, why; absent when native or unknown
TAG_EMULATED = "qsweep.emulated"
