"""The docs cannot drift: every shell example in README.md and docs/ that runs on sample_data or a test model is
run here as a user runs it (a shell, the installed `sbert`), and the README's error lines are what sbert says."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED_DATA

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SBERT = Path(sys.executable).parent / "sbert"  # the console script, as pip installed it

# Examples that cannot run on sample_data and a test model, by what they need; each is run elsewhere.
NOT_HERE = {
    "s3://": "an object store (tests/test_stores.py runs these paths against a local S3 server)",
    "--engine ray": "the ray extra (tests/test_ray_engine.py, make test-ray)",
    "--device cuda": "a GPU (tests/gpu_checks.sh)",
    "[--": "a template whose [brackets] list alternatives",
}
# The files the examples name, made from sample_data in the folder they run in.
SETS = {"STS-B.valid.data": "csts/STS-B.valid.data", "dev.txt": "afqmc/dev.txt", "LCQMC.valid.data": "lcqmc/LCQMC.valid.data"}


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    command: str
    shown: tuple[str, ...]  # the output the page shows under a `$ ` command

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def shell_blocks(page: Path) -> list[tuple[int, str]]:
    text = page.read_text(encoding="utf-8")
    return [(text[: block.start()].count("\n") + 2, block.group(1)) for block in re.finditer(r"```(?:sh|bash|console)\n(.*?)```", text, re.S)]


def examples() -> list[Example]:
    """Every command in a shell block that runs sbert: continuation lines joined, trailing comments dropped."""
    found = []
    for page in PAGES:
        for first_line, block in shell_blocks(page):
            lines = block.replace("\\\n", " ").splitlines()
            for offset, line in enumerate(lines):
                prompt = line.startswith("$ ")
                command = re.sub(r"\s+#[^'\"]*$", "", line[2:] if prompt else line).strip()
                if not re.match(r"(sbert |\S.*\| sbert )", command):
                    continue
                shown = tuple(lines[offset + 1 : next((i for i in range(offset + 1, len(lines)) if lines[i].startswith("$ ")), len(lines))]) if prompt else ()
                found.append(Example(str(page.relative_to(ROOT)), first_line + offset, command, shown))
    return found


def runnable(example: Example) -> str | None:
    """None, or why the example runs elsewhere."""
    return next((why for needle, why in NOT_HERE.items() if needle in example.command), None)


def test_the_docs_have_examples_and_each_is_run_or_said_where_it_runs() -> None:
    found = examples()
    assert len(found) >= 10
    assert sum(runnable(example) is None for example in found) >= 8


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding what the examples name: sample_data, data.jsonl/.csv, big.jsonl, exports/ by day, pairs.jsonl,
    and the evaluation sets (linked from ../shared/data where present)."""
    work = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "sample_data", work / "sample_data", ignore=shutil.ignore_patterns("out", "*.embeddings.*"))
    shutil.copy(ROOT / "sample_data" / "sentences.jsonl", work / "data.jsonl")
    shutil.copy(ROOT / "sample_data" / "sentences.csv", work / "data.csv")
    shutil.copy(ROOT / "sample_data" / "sentences.jsonl", work / "big.jsonl")
    lines = (ROOT / "sample_data" / "sentences.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    for day, part in ((1, lines[::2]), (2, lines[1::2])):
        (work / "exports" / f"day={day}").mkdir(parents=True)
        (work / "exports" / f"day={day}" / "part-0.jsonl").write_text("".join(part), encoding="utf-8")
    pairs = [line.split("\t") for line in (ROOT / "sample_data" / "pairs.tsv").read_text(encoding="utf-8").splitlines()]
    (work / "pairs.jsonl").write_text("".join(json.dumps({"query": a, "doc": b, "score": float(s)}, ensure_ascii=False) + "\n" for a, b, s in pairs), encoding="utf-8")
    for name, shared in SETS.items():
        if (SHARED_DATA / shared).is_file():
            (work / name).symlink_to(SHARED_DATA / shared)
    return work


@pytest.fixture
def workdir(world: Path, tmp_path: Path) -> Path:
    """The examples' folder, a copy for each example: one example's output is not another's."""
    return Path(shutil.copytree(world, tmp_path / "work", symlinks=True))


@pytest.mark.slow
@pytest.mark.parametrize("example", examples(), ids=str)
def test_a_docs_example_runs(example: Example, workdir: Path, tiny_model_dir: Path) -> None:
    why = runnable(example)
    if why is not None:
        pytest.skip(f"needs {why}")
    missing = [name for name in SETS if name in example.command and not (workdir / name).exists()]
    if missing:
        pytest.skip(f"the evaluation sets are not in {SHARED_DATA}")
    env = {**os.environ, "SBERT_MODEL": str(tiny_model_dir), "PATH": f"{SBERT.parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-o", "pipefail", "-c", example.command], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    # head closing the pipe early is the pipeline's success (sbert then exits 141, as the exit codes say)
    assert result.returncode in ((0, 141) if "| head" in example.command else (0,)), f"{example}: {example.command}\n{result.stderr}"
    if example.shown:  # the same shape of output (the numbers are the test model's)
        assert len(result.stdout.splitlines()) == len(example.shown), result.stdout


def readme_error_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"with no traceback, e\.g\.\n\n```\n(.*?)```", text, re.S)
    assert block is not None, "the README's block of error lines moved: update this test"
    return block.group(1).splitlines()


def as_pattern(shown: str) -> str:
    """A README error line as a pattern: another run's pid and host, and a '(...)', stand for what varies."""
    varying = {r"pid \d+ on [^)\s]+": r"pid \d+ on [^)\s]+", r"\(\.\.\.\)": r"\(.*\)"}
    pieces = re.split(f"({'|'.join(varying)})", shown)
    return "".join(next((replacement for needle, replacement in varying.items() if re.fullmatch(needle, piece)), re.escape(piece)) for piece in pieces)


@pytest.mark.slow
def test_the_readme_error_lines_are_what_sbert_says(tmp_path: Path, tiny_model_dir: Path) -> None:
    from sbert_cli.io.lock import output_lock

    rows = [json.dumps({"id": f"s{n:03d}", "text": "你好"}) for n in range(1, 17)] + ['{"id": 1, "text": "a" "c"}']
    (tmp_path / "data.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "data.csv").write_text("id,text\ns001,你好\n", encoding="utf-8")
    (tmp_path / "vectors").mkdir()
    env = {**os.environ, "SBERT_MODEL": str(tiny_model_dir), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}

    def said(*args: str, model: bool = True) -> str:
        run_env = env if model else {k: v for k, v in env.items() if k != "SBERT_MODEL"}
        result = subprocess.run([str(SBERT), *args], cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=300)
        assert result.returncode != 0
        return result.stderr.strip().splitlines()[-1]

    scenarios = [
        said("encode", "data.jsonl", "-o", "a.parquet"),
        said("encode", "data.csv", "--text-column", "body", "-o", "b.parquet"),
        said("encode", "data.csv", "--on-error", "ignore", "-o", "c.parquet"),
    ]
    from sbert_cli.io.paths import DirectoryLayout

    layout = DirectoryLayout.at(str(tmp_path / "vectors"))
    Path(layout.lock).parent.mkdir(parents=True)
    with output_lock(Path(layout.lock), "vectors", remove=False):
        scenarios.append(said("encode", "data.csv", "-o", "vectors", "--id-column", "id"))
    scenarios.append(said("encode", "data.csv", "-o", "d.parquet", model=False))
    for shown, actual in zip(readme_error_lines(), scenarios, strict=True):
        assert re.fullmatch(as_pattern(shown), actual), f"README says:\n{shown}\nsbert says:\n{actual}"
