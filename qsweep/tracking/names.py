"""The names qsweep gives to what it records: part of its interface (filters, the UI, old stores)."""

PARENT_RUN_ENV = "QSWEEP_PARENT_RUN_ID"  # set by the sweep callback, read by every job of the sweep

TAG_HASH = "config_hash"
TAG_ERROR = "error"
TAG_KIND = "qsweep.kind"  # job, sweep or train_merge
TAG_OWNER = "qsweep.owner"  # host id:pid:start time of the process that must end the run
TAG_SKIPPED_PREFIX = "qsweep.skipped."  # on a sweep run: qsweep.skipped.<config_hash> = the run it points to
TAG_WEIGHTS = "weights_sha256"  # local checkpoints (folder, GGUF file): what they held when measured
TAG_WEIGHTS_ORIGIN = "weights_quantized_from"  # weights dequantized from a quantized file: its type (Q4_K_M)
TAG_REPRODUCES = "reproduces"  # on a reproduction: the run it measured again
TAG_SWEEP_OVERRIDES = "sweep_overrides"
TAG_SKIPPED_JOBS = "skipped_jobs"
TAG_NOTE = "mlflow.note.content"  # the run's description, Markdown in the UI
# A run that measures a fine-tuned checkpoint: which fine-tune made it, as an MLflow logged model and
# registered model version (from the folder's train_merge.json)
TAG_FINE_TUNE_RUN = "fine_tune_run"
TAG_LOGGED_MODEL = "logged_model_id"
TAG_MODEL_VERSION = "model_version"  # <registered model name>/<version>

# What a job run is tagged with (identity.run_tags): what it measured, to filter runs and build the report's rows
TAG_MODEL = "model"
TAG_PRECISION = "precision"
TAG_QUANT_TYPE = "quant_type"  # int4 only: nf4 or fp4
TAG_COMPILE = "compile"  # true when generation.compile
TAG_DEVICE = "device"
TAG_BACKEND = "backend"
TAG_RUNTIME = "runtime"  # the runtime and its weight format, e.g. "transformers float16"
TAG_WEIGHTS_KIND = "weights"  # random or pretrained
TAG_MAX_NEW_TOKENS = "max_new_tokens"
TAG_BATCH_SIZE = "batch_size"
TAG_PROMPT_TOKENS = "prompt_tokens"  # a number, or "text" for the text prompts
TAG_SETTING = "setting"  # the label shown in the UI, e.g. "CPU INT4 FP4 compiled"
# What it found (results.record)
TAG_PRECISION_CHECK = "precision_check"
TAG_CONVERSION = "conversion"  # made or reused: the backend's files from the checkpoint
# same, or "differs: <texts>": the runtime's own tokenizer against the checkpoint's (runtimes with their own)
TAG_RUNTIME_TOKENIZER = "runtime_tokenizer"
TAG_QUALITY = "quality"  # measured or not_applicable
TAG_DEGENERATE_REASON = "degenerate_reason"
TAG_QUALITY_REFERENCE = "quality_reference"
TAG_QUALITY_SCORES = "quality_scores"
TAG_QUALITY_UNAVAILABLE = "quality_unavailable"  # why a model has no fp32 reference (a GGUF transformers cannot read)
TAG_QUALITY_TEXT = "quality_text"  # the text scored: builtin, wikitext-2 or the file's path
TAG_QUALITY_TEXT_SHA256 = "quality_text_sha256"  # its content's SHA-256
# The measured artifact (artifacts.py): the file or folder the runtime loaded, what it held then, the tokenizer
TAG_ARTIFACT = "artifact"  # the GGUF file, the CTranslate2 folder or the checkpoint folder
TAG_ARTIFACT_STAMP = "artifact_stamp"  # its bytes and newest modification time when measured
TAG_ARTIFACT_TOKENIZER = "artifact_tokenizer"  # the folder of the tokenizer it was run with ("" for none)
# A fine-tune run (train_merge) and the model it logged
TAG_BASE_CHECKPOINT = "base_checkpoint"
TAG_BASE_MODEL = "base_model"
TAG_DATA_FILE = "data_file"
TAG_DATA_SHA256 = "data_sha256"
TAG_ADAPTER = "adapter"
TAG_CHECKPOINT = "checkpoint"  # the merged checkpoint folder (on the fine-tune run and its logged model)
TAG_QUANTIZATION = "quantization"  # the fine-tune's base: none, or int4 (QLoRA)

# Params: a job run's config flattened (config.flatten); the ones qsweep reads back
PARAM_QUANT_TYPE = "precision.quant_type"
PARAM_QUANTIZATION = "precision.quantization"
PARAM_COMPILE = "generation.compile"
PARAM_DTYPE = "precision.dtype"
PARAM_DOUBLE_QUANT = "precision.double_quant"

# A registered pick (recommend --register): the alias moved to it, and the model version's own tags
ALIAS_RECOMMENDED = "recommended"
TAG_ARTIFACT_SHA256 = "artifact_sha256"  # of the GGUF, or of every file of a folder in name order
TAG_PICKED_FROM_RUN = "run_id"  # the job run that measured it
TAG_PICKED_FROM = "sweep"  # the runs recommend chose among: "sweep <name>" or "experiment <name>"
TAG_OBJECTIVE = "objective"  # speed, quality or memory
TAG_CONSTRAINTS = "constraints"  # the caps it met, as recommend says them

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

# Energy (qsweep/trackers/energy.py): which counter measured it, or why no energy metric was recorded.
TAG_ENERGY_SOURCE = "energy_source"  # nvml, or rapl and its domains
TAG_ENERGY_UNAVAILABLE = "energy_unavailable"  # the reason, one line
# Memory (qsweep/trackers/memory.py): set only where peak RSS is not the region's own (no kernel peak to reset)
TAG_MEMORY_PEAK = "memory_peak"
# Settings this machine only emulates (emulation.py): on a job run, why; absent when native or unknown
TAG_EMULATED = "qsweep.emulated"
