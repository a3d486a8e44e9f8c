"""Handing the pick over: how to run it (the printed snippets run, on a real tiny three-runtime sweep), `qsweep
export`, and `qsweep recommend --register` (on a crafted store: a model version per pick, the alias moved)."""

import hashlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from conftest import Sweep, empty_store
from test_backends import tiny_gemma  # noqa: F401  (the session's tiny Gemma checkpoint, made once)
from qsweep import artifacts, export
from qsweep.__main__ import main

# --- a crafted store: job runs as a sweep records them, each naming a (small, fake) GGUF it measured ----------


class Store:
    def __init__(self, tmp_path: Path):
        db = tmp_path / "mlflow.db"
        db.write_bytes(empty_store().read_bytes())
        self.uri, self.tmp_path = f"sqlite:///{db}", tmp_path
        self.client = MlflowClient(self.uri)
        self.experiment = self.client.create_experiment("qsweep", artifact_location=(tmp_path / "art").as_uri())

    def job(self, precision: str, decode: float, kl: float) -> SimpleNamespace:
        """A finished llama.cpp job of model m that measured <cache>/<precision>/model.gguf."""
        folder = self.tmp_path / "cache" / precision
        folder.mkdir(parents=True)
        gguf = folder / "model.gguf"
        gguf.write_bytes(os.urandom(4096))
        the_hash = hashlib.sha256(precision.encode()).hexdigest()[:12]
        tags = {"qsweep.kind": "job", "model": "m", "device": "cpu", "precision": precision, "backend": "llama-cpp",
                "runtime": f"llama.cpp {precision.upper()}", "max_new_tokens": "64", "batch_size": "1",
                "config_hash": the_hash, "setting": f"CPU {precision.upper()}",
                **artifacts.tags(SimpleNamespace(artifact=str(gguf), path=str(folder)),
                                 SimpleNamespace(tokenizer_path=None))}
        run = self.client.create_run(self.experiment, run_name=f"m-{precision}", tags=tags)
        self.client.log_batch(run.info.run_id, metrics=[Metric(name, value, 0, 0) for name, value in dict(
            decode_tokens_per_s=decode, kl_div_vs_fp32=kl, peak_rss_gb=1.0, timed_samples=8, latency_s=1.0,
            throughput_tokens_per_s=decode).items()])
        self.client.log_dict(run.info.run_id, {"threads": 2, "n_ctx": 2048}, "precision_check.json")
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return SimpleNamespace(run_id=run.info.run_id, hash=the_hash, gguf=gguf)


def test_export_links_the_artifact_beside_a_readme_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    store = Store(tmp_path)
    q8 = store.job("q8_0", 40.0, 0.002)
    dest = tmp_path / "ship"
    assert main(["export", q8.hash[:8], str(dest), "--tracking-uri", store.uri]) == 0
    assert (dest / "model.gguf").stat().st_ino == q8.gguf.stat().st_ino  # a hard link: no second copy
    readme = (dest / "README.md").read_text()
    assert f"config_hash {q8.hash}" in readme and "- decode tokens/s: 40" in readme
    assert f"--model {dest / 'model.gguf'} --n_threads 2 --n_ctx 2048" in readme  # runs the exported file
    assert f"sha256 {hashlib.sha256(q8.gguf.read_bytes()).hexdigest()}" in readme
    capsys.readouterr()

    def refused(*argv) -> str:
        assert main(list(argv)) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err, err
        return err

    assert refused("export", q8.hash, str(dest), "--tracking-uri", store.uri).endswith(
        "ship exists: give a new folder (export never writes into an existing one)")
    assert "no run with a config_hash starting with abcdef" in refused("export", "abcdef", str(tmp_path / "x"),
                                                                      "--tracking-uri", store.uri)
    q8.gguf.write_bytes(os.urandom(4096))  # the cache rewritten since it was measured
    assert "has changed since run" in refused("export", q8.hash, str(tmp_path / "y"), "--tracking-uri", store.uri)
    assert not (tmp_path / "y").exists()


def _download(uri: str, name: str, folder: Path, monkeypatch) -> Path:
    """What a deployment job gets from models:/NAME@recommended, its store given as MLFLOW_TRACKING_URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return Path(mlflow.artifacts.download_artifacts(f"models:/{name}@recommended", dst_path=str(folder)))


def _downloaded_sha256(uri: str, name: str, tmp_path: Path, monkeypatch) -> str:
    folder = _download(uri, name, tmp_path / "got", monkeypatch)
    return hashlib.sha256((Path(folder) / "model.gguf").read_bytes()).hexdigest()


def test_register_logs_a_version_per_pick_and_moves_the_alias(tmp_path, capsys, monkeypatch):
    store = Store(tmp_path)
    first = store.job("q8_0", 40.0, 0.002)
    assert main(["recommend", "--experiment", "qsweep", "--tracking-uri", store.uri, "--register", "ship-me"]) == 0
    assert "registered model ship-me version 1 (new;" in capsys.readouterr().out
    second = store.job("q4_k_m", 60.0, 0.004)  # a later sweep measures a faster setting
    assert main(["recommend", "--experiment", "qsweep", "--tracking-uri", store.uri, "--register", "ship-me"]) == 0
    assert "version 2 (new;" in capsys.readouterr().out
    assert main(["recommend", "--experiment", "qsweep", "--tracking-uri", store.uri, "--register", "ship-me"]) == 0
    assert "version 2 (already registered;" in capsys.readouterr().out

    versions = {str(v.version): v for v in store.client.search_model_versions("name = 'ship-me'")}
    assert set(versions) == {"1", "2"} and versions["1"].run_id == first.run_id  # the old version is kept
    now = store.client.get_model_version_by_alias("ship-me", "recommended")
    assert str(now.version) == "2" and now.run_id == second.run_id
    assert now.source == second.gguf.parent.as_uri()  # the artifact where it lies: not copied into the store
    tags = now.tags
    assert (tags["config_hash"], tags["runtime"], tags["objective"]) == (second.hash, "llama.cpp Q4_K_M", "speed")
    assert tags["decode_tokens_per_s"] == "60" and "KL vs fp32 <= 0.01" in tags["constraints"]
    expected = hashlib.sha256(second.gguf.read_bytes()).hexdigest()
    assert tags["artifact_sha256"] == expected == _downloaded_sha256(store.uri, "ship-me", tmp_path, monkeypatch)

    # the quality objective picks the most faithful setting, and the alias follows it back to version 1
    assert main(["recommend", "--experiment", "qsweep", "--tracking-uri", store.uri, "--objective", "quality",
                 "--register", "ship-me"]) == 0
    out = capsys.readouterr().out
    assert "(the lowest KL vs fp32 with KL vs fp32 <= 0.01, no memory cap; objective quality)" in out
    assert "version 1 (already registered;" in out
    assert str(store.client.get_model_version_by_alias("ship-me", "recommended").version) == "1"


def test_bad_recommend_options_are_one_line_each(tmp_path, capsys):
    store = Store(tmp_path)
    store.job("q8_0", 40.0, 0.002)
    with pytest.raises(SystemExit):
        main(["recommend", "--tracking-uri", store.uri, "--objective", "qualty"])
    (line,) = capsys.readouterr().err.splitlines()  # one line: no usage block above it
    assert "argument --objective: invalid choice: 'qualty' (choose from 'speed', 'quality', 'memory')" in line
    assert main(["recommend", "--experiment", "qsweep", "--tracking-uri", store.uri, "--min-tokens-per-s", "50",
                 "--register", "x"]) == 1
    out = capsys.readouterr()
    assert ("no setting meets the constraints: no run reaches 50 decode tokens/s (the fastest: 40.00, CPU Q8_0 "
            "llama.cpp Q8_0): lower --min-tokens-per-s") in out.out
    assert "--register x needs one pick" in out.err and not store.client.search_registered_models()


# --- a real tiny sweep over the three runtimes: the printed snippets run, the registered file is the measured one


@pytest.fixture(scope="module")
def three_runtimes(tmp_path_factory, tiny_gemma):
    """tiny-gemma (random weights, Gemma's tokenizer) at int8 on transformers (bitsandbytes), llama.cpp (Q8_0) and
    CTranslate2 (int8): one job each, as short as a job gets."""
    sweep = Sweep(tmp_path_factory.mktemp("handover"))
    result = sweep.run("-m", "model=gemma-3-270m", "model.name=tiny-gemma", f"model.name_or_path={tiny_gemma}",
                       "device=cpu", "device.num_threads=1", "backend=transformers,llama-cpp,ctranslate2",
                       "precision=int8", "generation.max_new_tokens=4", "generation.repeats=1", "generation.warmup=0",
                       "quality.max_tokens=128")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from qsweep import tracking

    store = tracking.open_for_reading(sweep.uri)
    jobs = {job.tags["backend"]: job for job in tracking.find_runs(store, "tags.`qsweep.kind` = 'job'")}
    return SimpleNamespace(sweep=sweep, store=store, jobs=jobs)


def _python_blocks(lines) -> list:
    text = "\n".join(lines)
    return [block.replace("\n  ", "\n").strip() for block in re.findall(r"```python\n(.*?)\n\s*```", text, re.S)]


@pytest.mark.slow
def test_each_runtimes_printed_python_runs_the_measured_artifact(three_runtimes, capsys):
    assert main(["recommend", "--tracking-uri", three_runtimes.sweep.uri, "--max-kl", "100"]) == 0
    printed = capsys.readouterr().out
    for backend, job in three_runtimes.jobs.items():
        lines = export.how_to_run(three_runtimes.store, job)
        (snippet,) = _python_blocks(lines)
        assert job.tags["artifact"] in snippet, snippet
        ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert ran.returncode == 0 and ran.stdout.strip(), (backend, snippet, ran.stderr[-2000:])
    picked = re.search(r"pick: .*config_hash (\w+)", printed).group(1)
    (job,) = [j for j in three_runtimes.jobs.values() if j.config_hash == picked]
    assert "\n".join(export.how_to_run(three_runtimes.store, job)) in printed.replace("\n    ", "\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_printed_llama_cpp_server_command_serves_a_completion(three_runtimes):
    lines = export.how_to_run(three_runtimes.store, three_runtimes.jobs["llama-cpp"])
    command = shlex.split(re.search(r"`(python -m llama_cpp\.server [^`]+)`", "\n".join(lines)).group(1))
    port = _free_port()
    command = [sys.executable, *command[1:-1], str(port)]  # the printed port may be taken here
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()[-2000:]
                time.sleep(0.5)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST",
                                         data=json.dumps({"prompt": "The capital of France is", "max_tokens": 4,
                                                          "temperature": 0}).encode(),
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert answer["usage"]["completion_tokens"] > 0 and isinstance(answer["choices"][0]["text"], str)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_registered_pick_downloads_as_the_file_that_was_measured(three_runtimes, tmp_path, monkeypatch):
    uri = three_runtimes.sweep.uri
    assert main(["recommend", "--tracking-uri", uri, "--max-kl", "100", "--register", "tiny"]) == 0
    version = three_runtimes.store.client.get_model_version_by_alias("tiny", "recommended")
    (job,) = [j for j in three_runtimes.jobs.values() if j.run_id == version.run_id]
    measured = Path(job.tags["artifact"])
    got = _download(uri, "tiny", tmp_path / "got", monkeypatch)
    got = got / measured.name if measured.is_file() else got
    assert artifacts.sha256(got) == artifacts.sha256(measured) == version.tags["artifact_sha256"]


@pytest.mark.slow
def test_an_exported_ctranslate2_folder_runs_from_its_readme(three_runtimes, tmp_path):
    job = three_runtimes.jobs["ctranslate2"]
    dest = tmp_path / "ct2"
    assert main(["export", job.config_hash, str(dest), "--tracking-uri", three_runtimes.sweep.uri]) == 0
    assert (dest / "model" / "model.bin").stat().st_ino == (Path(job.tags["artifact"]) / "model.bin").stat().st_ino
    assert (dest / "tokenizer" / "tokenizer.json").is_file()  # its converted folder has no tokenizer of its own
    (snippet,) = _python_blocks((dest / "README.md").read_text().splitlines())
    assert job.tags["artifact"] not in snippet and str(dest / "model") in snippet  # DEST's files, not the cache's
    ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr[-2000:]
