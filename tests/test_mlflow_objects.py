"""What a job leaves in MLflow besides metrics: its generations as an MLflow table (compared across runs in
the UI) and its inputs as datasets with digests (runs on other prompts are told apart)."""

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from qsweep import quality, results

PROMPT_SETS = (["hello there", "good morning"], ["may i see the menu"])


def table(client, run_id: str) -> dict:
    """A run's generations table as {column: values}."""
    logged = json.loads(Path(client.download_artifacts(run_id, "generations_table.json")).read_text())
    return {column: list(values) for column, values in zip(logged["columns"], zip(*logged["data"]))}


def test_the_generation_table_has_a_row_per_prompt_with_fp32s_output_next_to_the_runs():
    texts = [{"prompt": "a", "output": "x y", "output_ids": [1, 2, 3], "fp32_output": "x z",
              "fp32_output_ids": [1, 2, 4]},
             {"prompt": "b", "output": "", "output_ids": [0], "fp32_output": "w", "fp32_output_ids": [5]}]
    judged = SimpleNamespace(details={"degenerate_by_prompt": ["none", "empty_output"]})
    assert results.generation_table(SimpleNamespace(texts=texts, quality=judged)) == {
        "prompt": ["a", "b"], "output": ["x y", ""], "fp32_output": ["x z", "w"], "matching_tokens": [2, 0],
        "degenerate_reason": ["none", "empty_output"]}
    plain = [{"prompt": "a", "output": "x y", "output_ids": [1, 2, 3]}]  # random weights: no quality
    random_weights = results.generation_table(SimpleNamespace(texts=plain, quality=None))
    assert random_weights["fp32_output"] == [None] and random_weights["matching_tokens"] == [None]
    assert random_weights["degenerate_reason"] == [quality.NOT_APPLICABLE]


@pytest.mark.slow
def test_each_run_has_its_generations_as_a_table_and_its_prompts_as_a_dataset(sweep):
    prompts_override = "generation.prompts=" + ",".join(f"[{','.join(p)}]" for p in PROMPT_SETS)
    result = sweep.run("-m", "model=tiny-gpt2", "device=cpu", "generation.max_new_tokens=4", "generation.repeats=1",
                       prompts_override)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client, runs = sweep.client(), sweep.runs()
    jobs = sorted((r for r in runs if r.data.tags["qsweep.kind"] == "job"), key=lambda r: r.info.start_time)
    assert len(jobs) == 2
    experiment_id = jobs[0].info.experiment_id
    assert (f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            in result.stdout)  # where to look, at the end of the sweep
    digests = []
    for run, prompts in zip(jobs, PROMPT_SETS):
        assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [{"path": "generations_table.json",
                                                                         "type": "table"}]
        rows = table(client, run.info.run_id)
        assert rows["prompt"] == prompts and all(rows["output"])
        assert rows["fp32_output"] == [None] * len(prompts)  # random weights: no quality, no fp32 reference
        assert rows["degenerate_reason"] == ["not_applicable"] * len(prompts)
        (dataset,) = run.inputs.dataset_inputs  # random weights: no evaluation text either
        assert dataset.dataset.name == "prompts" and dataset.dataset.source_type == "local"
        assert dataset.dataset.digest == hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]
        assert json.loads(dataset.dataset.profile)["num_rows"] == len(prompts)
        assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "prompts"
        assert json.loads(dataset.dataset.source)["uri"].endswith("/config.yaml")
        digests.append(dataset.dataset.digest)
    assert digests[0] != digests[1]
    found = client.search_runs([experiment_id], f"datasets.digest = '{digests[1]}'")
    assert [r.info.run_id for r in found] == [jobs[1].info.run_id]
