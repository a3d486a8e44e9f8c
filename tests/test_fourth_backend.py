"""A fourth backend is one module and one YAML: tests/toy_backend registers itself from a test folder
(its YAML found through hydra.searchpath), is validated by its own options class, and runs as a job
through the same contract as the others, with no edit of qsweep/config.py or qsweep/backends/."""

import pytest

from conftest import ROOT, compose_run
from qsweep import backends, tracking
from qsweep.config import ConfigError
from qsweep.confighash import config_hash

TOY = [f"hydra.searchpath=[file://{ROOT / 'tests' / 'toy_backend' / 'conf'}]", "backend=toy", "model=tiny-gpt2",
       "device=cpu"]


def test_the_toy_backend_is_validated_by_its_own_options():
    import toy_backend

    cfg = compose_run(*TOY, "backend.step=3")
    assert type(cfg.backend) is toy_backend.ToyConfig and cfg.backend.step == 3
    assert backends.get("toy") is toy_backend
    assert config_hash(cfg) != config_hash(compose_run(*TOY))  # its options are part of what is measured
    with pytest.raises(ConfigError, match="Value 'many' of type 'str' could not be converted to Integer"):
        compose_run(*TOY, "backend.step=many")
    with pytest.raises(ConfigError, match="backend.gguf_type is for backend=llama-cpp, not toy"):
        compose_run(*TOY, "+backend.gguf_type=Q4_0")
    with pytest.raises(ConfigError, match=r"backend.setp: .*did you mean backend.step\?"):
        compose_run(*TOY, "+backend.setp=2")


def test_the_toy_backend_runs_as_a_job(tmp_path):
    from qsweep.job import run_job

    cfg = compose_run(*TOY, "backend.step=2", "runner.isolation=inline", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                      "generation.max_new_tokens=5", "generation.repeats=1", "generation.warmup=0")
    run = run_job(cfg)
    assert run.status == "FINISHED", run.tags.get(tracking.TAG_ERROR)
    assert run.tags["backend"] == "toy" and run.tags["runtime"] == "toy step 2"
    assert run.metrics["tokens_per_s"] > 0 and run.metrics["load_time_s"] >= 0
    refused = run_job(compose_run(*TOY, "precision=int8", "runner.isolation=inline",
                                  f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"))
    assert refused.status == "FAILED" and "backend=toy cannot run precision=int8" in refused.tags[tracking.TAG_ERROR]


def test_config_and_backends_package_name_no_backend_option():
    for path in (ROOT / "qsweep" / "config.py", ROOT / "qsweep" / "backends" / "__init__.py"):
        text = path.read_text()
        assert "toy" not in text and "gguf_type" not in text and "compute_type" not in text, path
