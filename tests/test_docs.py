"""Docs that cannot drift: every `python run.py ...`, `python -m qsweep ...` and `python -m train_merge ...` command in
README.md, every guide and report under docs/ and benchmarks/RESULTS.md, in a shell block or a code span of the
prose, composes (Hydra's compose API, every job of a sweep validated; no model loaded) and its flags parse
(qsweep's own argparse parser); every relative link and image resolves, anchors included; docs/metrics.md is
what `python -m qsweep.docs` makes of the names the code records. Each check is shown failing on a bad document."""

import contextlib
import dataclasses
import functools
import io
import re
import shlex
from pathlib import Path

import pytest

from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import ROOT
from plan import compose, master  # benchmarks/gpu/plan.py: Hydra's compose API, a sweep's own config
from qsweep.config import ConfigError, validate

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}  # a ```text block may show a command that is meant to fail
UNPARSABLE = "<unparsable>"
COMMAND_START = re.compile(r"^(\w+=\S+\s+)*(\S*python3?\s+(run\.py|-m\s+[\w.]+)|qsweep\s+\w|make\s+\w)")


# ---------------------------------------------------------------- extraction

def strip_comment(line: str) -> str:
    """The line without its shell comment: a `#` at the start of a word, outside quotes (URLs keep their `#`)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def argv_of(command: str) -> list:
    """The command's words; one with unbalanced quotes is a failing command, not a failed collection."""
    try:
        return shlex.split(command)
    except ValueError as err:
        return [UNPARSABLE, f"{command.strip()}: {err}"]


def code_blocks(text: str):
    """(first line number, info string, lines) of every fenced code block."""
    block, start, info = None, 0, ""
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and block is None:
            block, start, info = [], number + 1, fence.group(1)
        elif fence:
            yield start, info, block
            block = None
        elif block is not None:
            block.append(line)


def commands(text: str):
    """(line number, argv) of every command in the shell code blocks: continuation lines joined, `$ ` prompts
    and comments dropped; in a transcript (lines with `$ `) only the prompted lines."""
    for start, info, lines in code_blocks(text):
        if info not in SHELL_BLOCKS:
            continue
        transcript = any(line.lstrip().startswith("$ ") for line in lines)
        pending, first = "", None
        for number, line in enumerate(lines, start):
            line = strip_comment(line.strip()).rstrip()
            if transcript:
                if not line.startswith("$ ") and not pending:
                    continue
                line = line[2:] if line.startswith("$ ") else line
            first = first or number
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line, pending = pending + line, ""
            if COMMAND_START.match(line.strip()):
                for part in re.split(r"\s(?:&&|;|\|\|)\s", line):
                    if COMMAND_START.match(part.strip()):
                        yield first, argv_of(part)
            first = None


def inline_commands(text: str):
    """(line number, argv) of every command written in the prose as a code span (`python run.py ...`)."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*```", line):
            fenced = not fenced
        elif not fenced:
            for span in re.findall(r"`([^`]+)`", line):
                # `qsweep export` or `python run.py ...` names a command, it does not give one to run
                named_only = "..." in span or re.fullmatch(r"(python3? -m )?qsweep \w+", span.strip())
                if COMMAND_START.match(span.strip()) and not named_only:
                    yield number, argv_of(span)


def documented_commands():
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for line, argv in sorted([*commands(text), *inline_commands(text)]):
            found.append(pytest.param(argv, id=f"{doc.relative_to(ROOT)}:{line}"))
    return found


# ---------------------------------------------------------------- checks

def check_command(argv: list) -> str:
    """Raise when the command would be refused before it ran; returns what was checked."""
    assert argv[0] != UNPARSABLE, f"not a shell command: {argv[1]}"
    while re.match(r"^\w+=", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if argv[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert argv[1] in targets, f"make {argv[1]}: no such target in the Makefile ({', '.join(targets)})"
        return "make"
    if argv[0] == "qsweep":
        argv = ["python", "-m", "qsweep", *argv[1:]]
    if argv[1] == "run.py":
        return check_sweep(argv[2:])
    module, args = argv[2], argv[3:]
    if module == "train_merge":
        from train_merge.config import register_schemas, validate as validate_train

        register_schemas()
        validate_train(compose("train_merge", args))
        return "train_merge"
    if module in ("qsweep", "qsweep.docs"):
        if module == "qsweep":
            from qsweep.__main__ import build_parser
        else:
            from qsweep.docs.__main__ import build_parser
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            try:
                build_parser().parse_args(args)
            except SystemExit as exit:  # argparse's refusal: raise with its message instead
                raise AssertionError(stderr.getvalue().strip().splitlines()[-1]) from exit
        return module
    return "not checked"  # python -m pytest and the like


def check_sweep(overrides: list) -> str:
    """Each value of the command's sweep composes and validates, as run.py would before loading anything: job k
    takes the k-th value of every comma list (an experiment's sweeper params included), so every value is in
    some job without composing the whole grid."""
    cli = [o for o in overrides if o not in ("-m", "--multirun")]
    preset = any(o.lstrip("+").startswith("experiment=") for o in cli)  # sweeper params come from experiments only
    params = [f"{k}={v}" for k, v in (master(cli).hydra.sweeper.get("params") or {}).items()] if preset else []
    parsed = OverridesParser.create().parse_overrides(params + cli)
    values = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
              else [o.input_line] for o in parsed]
    jobs = {tuple(vals[k % len(vals)] for vals in values) for k in range(max(map(len, values), default=1))}
    for job in jobs:
        composed_and_validated(job)
    return f"{len(jobs)} jobs"


@functools.lru_cache(maxsize=None)
def composed_and_validated(job: tuple):
    return validate(compose("config", list(job)))


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and GitLab make it."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set:
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slug(h) for h in re.findall(r"^#+\s+(.*)$", prose, re.M)}


def broken_links(doc: Path) -> list:
    """Every relative link or image of `doc` (outside code) whose file, or anchor in a Markdown file, is missing."""
    text = doc.read_text()
    prose = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", text, flags=re.S))
    broken = []
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", prose):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading with that anchor")
    return broken


# ---------------------------------------------------------------- the docs as they are

@pytest.mark.parametrize("argv", documented_commands())
def test_every_documented_command_composes_and_parses(argv, monkeypatch):
    for name in re.findall(r"\$\{oc\.env:(\w+)", " ".join(argv)):  # a secret the guide exports just before
        monkeypatch.setenv(name, "documented-secret")
    check_command(argv)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(doc):
    assert broken_links(doc) == []


def test_the_docs_have_commands_and_the_readme_shows_cis_test_command():
    """A silent extractor would pass every doc: the README's own commands are found; and the README shows the
    test command that .ci/run runs."""
    readme = [argv for _, argv in commands((ROOT / "README.md").read_text())]
    assert ["python", "run.py", "-m", "precision=fp32,fp16,int8,int4", "model=gpt2,distilgpt2"] in readme
    assert any(argv[:3] == ["python", "-m", "qsweep"] and argv[3] == "recommend" for argv in readme)
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("make ")]
    assert ci and all(shlex.split(line) in readme for line in ci), ci


def test_the_metric_reference_is_generated_from_the_code():
    from qsweep.docs import reference

    assert (ROOT / "docs" / "metrics.md").read_text() == reference.render(), \
        "docs/metrics.md is stale: run `python -m qsweep.docs`"


def test_the_reference_names_exactly_the_metrics_a_job_logs():
    """results.record on a result with every field set logs exactly the metrics the reference names."""
    from qsweep import results, trackers
    from qsweep.backends import PrecisionCheck
    from qsweep.docs import reference
    from qsweep.quality import QualityMetrics, QualityResult

    def filled(cls):
        return cls(**{f.name: 1 for f in dataclasses.fields(cls) if f.name != "tags"})

    class Run:
        def __init__(self):
            self.metrics = set()

        def log_files(self, files): pass

        def log_table(self, table, name): pass

        def log(self, *groups, tags=None):
            self.metrics |= {k for g in groups for k in (dataclasses.asdict(g) if dataclasses.is_dataclass(g) else g)}

    text = {"prompt": "p", "output": "o", "prompt_ids": [1], "output_ids": [2], "fp32_output_ids": [2]}
    result = results.JobResult(
        filled(results.LoadMetrics), filled(results.measure.SpeedMetrics), PrecisionCheck("ok", {}), [text], {},
        QualityResult(filled(QualityMetrics), "none", "self", [[2]], "measured",
                      {"text": "builtin", "text_sha256": "0" * 64}), "made", filled(results.JobPhases),
        [filled(t.result_type) for t in trackers.REGISTRY])
    run = Run()
    results.record(run, result, results.JobPhases(), 0.0)
    assert run.metrics == {name for _, cls in reference.metric_groups() for name in reference.fields(cls)}


# ---------------------------------------------------------------- each check, failing

def doc_with(tmp_path, body: str) -> Path:
    doc = tmp_path / "guide.md"
    doc.write_text(f"# Guide\n\n## A section\n\n{body}\n")
    (tmp_path / "there.md").write_text("# There\n\n## Its part\n")
    return doc


def test_a_misspelt_override_fails(tmp_path):
    doc = doc_with(tmp_path, "```bash\npython run.py -m precision=fp32,int8 \\\n    generation.max_new_tokns=8\n```")
    [(line, argv)] = list(commands(doc.read_text()))
    assert line == 6 and argv[-1] == "generation.max_new_tokns=8"  # the continuation line is part of it
    with pytest.raises(Exception, match="max_new_tokns"):
        check_command(argv)
    check_command(argv[:-1] + ["generation.max_new_tokens=8"])
    with pytest.raises(ConfigError, match="did you mean generation.max_new_tokens"):  # forced in with +
        check_command(argv[:-1] + ["+generation.max_new_tokns=8"])


def test_a_misspelt_command_in_the_prose_fails(tmp_path):
    doc = doc_with(tmp_path, "Then `python -m qsweep recommend --max-kll 0.01` picks one; `qsweep export` copies "
                             "it; `python run.py -m precision=fp32,int9 model=gpt2` and `python run.py ...` too.")
    found = list(inline_commands(doc.read_text()))
    assert [argv[:4] for _, argv in found] == [["python", "-m", "qsweep", "recommend"],
                                               ["python", "run.py", "-m", "precision=fp32,int9"]]
    with pytest.raises(AssertionError, match="unrecognized arguments: --max-kll"):
        check_command(found[0][1])
    with pytest.raises(Exception, match="int9"):
        check_command(found[1][1])


def test_a_misspelt_option_of_a_sweep_value_fails_in_its_own_job():
    check_command(["python", "run.py", "-m", "precision=fp32,int8", "hydra/launcher=joblib"])
    with pytest.raises(Exception, match="int9"):
        check_command(["python", "run.py", "-m", "precision=fp32,int9"])  # the second job's value
    with pytest.raises(ConfigError):  # composes, but a value validation refuses
        check_command(["python", "run.py", "generation.max_new_tokens=0"])
    check_command(["python", "run.py", "~experiment"])  # a deletion, as Hydra reads it
    with pytest.raises(Exception, match="quality.windowz"):
        check_command(["python", "run.py", "~quality.windowz"])


def test_a_misspelt_flag_fails(tmp_path):
    doc = doc_with(tmp_path, "```\n$ python -m qsweep recommend --max-kll 0.01\nqsweep recommend: output\n```")
    [(_, argv)] = list(commands(doc.read_text()))
    with pytest.raises(AssertionError, match="unrecognized arguments: --max-kll"):
        check_command(argv)
    check_command(["qsweep", "recommend", "--max-kl", "0.01", "--sweep", "RUN_ID"])
    with pytest.raises(AssertionError, match="invalid choice"):
        check_command(["qsweep", "reprodce", "6cf837"])
    with pytest.raises(AssertionError, match="no such target"):
        check_command(["make", "tests"])
    [(_, argv)] = list(commands("```bash\npython -m qsweep report --filter \"tags.model = 'gpt2'\n```"))
    with pytest.raises(AssertionError, match="not a shell command.*No closing quotation"):
        check_command(argv)


def test_a_broken_link_or_image_fails(tmp_path):
    doc = doc_with(tmp_path, "[ok](there.md#its-part), [self](#a-section), ![missing](img/front.png), "
                             "[gone](gone.md), [bad anchor](there.md#nothing), `[code](not/a/link.md)`, "
                             "[web](https://example.com/x.md)")
    assert broken_links(doc) == ["img/front.png: no such file", "gone.md: no such file",
                                 "there.md#nothing: no heading with that anchor"]


def test_a_metric_without_an_entry_fails(monkeypatch):
    from qsweep.docs import meanings, reference

    @dataclasses.dataclass
    class NewMetrics:
        future_metric_gb: float

    with pytest.raises(reference.MissingMeaning, match="metric future_metric_gb .* without a line"):
        reference.render(reference.metric_groups() + [("New", NewMetrics)])
    monkeypatch.setitem(meanings.METRICS, "retired_metric_s", "no longer recorded")
    with pytest.raises(reference.MissingMeaning, match="retired_metric_s, which the code no longer records"):
        reference.render()


def test_a_fine_tune_metric_is_read_from_its_log_call(tmp_path):
    from qsweep.docs import reference

    source = tmp_path / "pipeline.py"
    source.write_text('run.log_metrics({"a_loss": 1, "b": 2}, step=1)\nrun.log_metrics({"a_loss": 3})\nlog({"c": 1})')
    assert reference.train_metrics(source) == ["a_loss", "b"]
