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


# --- one vocabulary: tag and param names live in qsweep/tracking/names.py --------------------------------

RECORDS = ("tags", "params")  # what RunRecords and MLflow runs call them
SETTERS = ("set_tags", "set_tag", "log_params", "log_param", "create_run", "register_checkpoint")


def _is_record(node) -> bool:
    import ast

    return ast.unparse(node).rsplit(".", 1)[-1] in RECORDS


def _literal_names(tree):
    """(line, name) of every tag or param name written as a string: a key of a run's tags or params read
    (tags["x"], tags.get("x"), "x" in tags), a key of a dict handed to a setter, or of the dict a *_tags
    function returns."""
    import ast

    def dict_keys(node):
        return [(k.lineno, k.value) for k in node.keys if isinstance(k, ast.Constant)] if isinstance(
            node, ast.Dict) else []

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_record(node.value) and isinstance(node.slice, ast.Constant):
            yield node.lineno, node.slice.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if (node.func.attr in ("get", "pop", "setdefault") and _is_record(node.func.value) and node.args
                    and isinstance(node.args[0], ast.Constant)):
                yield node.lineno, node.args[0].value
            if node.func.attr in SETTERS:
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    yield from dict_keys(arg)
        elif isinstance(node, ast.FunctionDef) and node.name.endswith("tags"):
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return):
                    yield from dict_keys(ret.value)
        elif (isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn))
              and isinstance(node.left, ast.Constant) and _is_record(node.comparators[0])):
            yield node.lineno, node.left.value


def test_no_tag_or_param_name_is_written_as_a_string_outside_the_names_module():
    import ast

    from conftest import ROOT

    found = [f"{path.relative_to(ROOT)}:{line}: {name!r}"
             for folder in ("qsweep", "train_merge") for path in sorted((ROOT / folder).rglob("*.py"))
             if path.name != "names.py" for line, name in _literal_names(ast.parse(path.read_text()))]
    assert found == [], "use a TAG_/PARAM_ constant of qsweep/tracking/names.py:\n" + "\n".join(found)
    planted = ast.parse('run.set_tags({"x": 1})\njob.tags.get("y")\nrun.data.params["z"]\n"w" in job.tags')
    assert [name for _, name in _literal_names(planted)] == ["x", "y", "z", "w"]  # the check sees each form


def test_the_report_reads_int4s_type_and_compilation_from_tags_and_hashes_stay():
    from conftest import compose_run
    from qsweep import identity, report_rows, tracking
    from qsweep.confighash import config_hash

    def record(cfg, drop=(), params=None):
        tags = {k: str(v) for k, v in identity.run_tags(cfg).items() if k not in drop}
        tags[tracking.TAG_SETTING] = "anything"  # the UI's label is not read back
        return tracking.RunRecord("id", "run", "FINISHED", {}, tags, params or {})

    fp4, compiled = (compose_run("setting=cpu-int4", "precision.quant_type=fp4"),
                     compose_run("setting=cpu-bf16", "generation.compile=true"))
    tags = identity.run_tags(fp4)
    assert (tags[tracking.TAG_QUANT_TYPE], tags[tracking.TAG_COMPILE]) == ("fp4", "false")
    assert identity.run_tags(compiled)[tracking.TAG_COMPILE] == "true"
    assert tracking.TAG_QUANT_TYPE not in identity.run_tags(compiled)  # int4 only
    assert tags[tracking.TAG_HASH] == config_hash(fp4)  # tags are not hashed: every pinned hash stays
    assert report_rows.row(record(fp4)).setting == "CPU INT4 FP4"
    assert report_rows.row(record(compiled)).setting == "CPU BF16 compiled"
    new_tags = (tracking.TAG_QUANT_TYPE, tracking.TAG_COMPILE)  # runs from before these tags: their params
    assert report_rows.row(record(fp4, new_tags, {tracking.PARAM_QUANT_TYPE: "fp4"})).setting == "CPU INT4 FP4"
    assert report_rows.row(record(compiled, new_tags, {tracking.PARAM_COMPILE: "true"})).setting == \
        "CPU BF16 compiled"
