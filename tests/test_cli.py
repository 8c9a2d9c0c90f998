"""The commands as a user runs them: formats x file/stdin x outputs, exit codes and whole error lines."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import sbert_cli.encoder
from sbert_cli import cli
from sbert_cli.plan import BatchShape
from sbert_cli.similarity import cosine_rows
from tests.conftest import SAMPLE_DATA, FakeEncoder, expected_fake_vectors, sample_texts
from tests.test_readers import write_tsv

runner = CliRunner()
SAMPLE_IDS = [f"s{i:03d}" for i in range(1, len(sample_texts()) + 1)]


def run(*args: str, input: bytes | None = None):
    return runner.invoke(cli.app, [str(a) for a in args], input=input)


def read_output(path: Path | None, stdout: str) -> tuple[list, np.ndarray]:
    """(ids, vectors) from whichever output format a run wrote."""
    if path is None:
        rows = [json.loads(line) for line in stdout.splitlines()]
        return [r["id"] for r in rows], np.asarray([r["embedding"] for r in rows], dtype=np.float32)
    if path.suffix == ".npy":
        ids = [json.loads(line) for line in path.with_suffix(".ids.jsonl").read_text(encoding="utf-8").splitlines()]
        return ids, np.load(path)
    table = pq.read_table(path)
    return table.column("id").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)


@pytest.fixture(scope="module")
def reference(minilm_dir: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu").encode(sample_texts(), batch_size=16)


@pytest.fixture
def cached_loads(monkeypatch: pytest.MonkeyPatch):
    """Load each model once for the module's many invocations; the load path itself is tested in test_encoder."""
    monkeypatch.setattr(sbert_cli.encoder, "open_model", _cached_open)


class _LoadOnce:
    def __init__(self, handle) -> None:
        self.handle, self.info, self.directory, self._encoder = handle, handle.info, handle.directory, None

    def load(self):
        if self._encoder is None:
            self._encoder = self.handle.load()
        return self._encoder


@functools.lru_cache(maxsize=4)
def _cached_open(options):
    return _LoadOnce(_real_open(options))


_real_open = sbert_cli.encoder.open_model


@pytest.mark.slow
@pytest.mark.parametrize("output", ["parquet", "npy", "stdout"])
@pytest.mark.parametrize("source", ["file", "stdin"])
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_encode_matches_sentence_transformers(
    fmt: str, source: str, output: str, tmp_path: Path, minilm_dir: Path, reference: np.ndarray, cached_loads
) -> None:
    path = write_tsv(tmp_path / "sentences.tsv") if fmt == "tsv" else SAMPLE_DATA / f"sentences.{fmt}"
    out = None if output == "stdout" else tmp_path / f"vectors.{output}"
    args = ["encode", "-" if source == "stdin" else path, "-o", out or "-", "--model", minilm_dir, "--id-column", "id", "-q", "--precision", "fp32"]
    result = run(*args, "--batch-size", "7", input=path.read_bytes() if source == "stdin" else None)
    assert result.exit_code == 0, result.output
    ids, vectors = read_output(out, result.stdout)
    assert ids == SAMPLE_IDS
    assert vectors.shape == reference.shape
    assert cosine_rows(vectors, reference).min() >= 0.99999


@pytest.mark.slow
def test_default_output_and_metadata(tmp_path: Path, minilm_dir: Path, cached_loads) -> None:
    source = tmp_path / "input.jsonl"
    source.write_bytes((SAMPLE_DATA / "sentences.jsonl").read_bytes())
    result = run("encode", source, "--model", minilm_dir)
    assert result.exit_code == 0, result.output
    out = tmp_path / "input.embeddings.parquet"
    schema = pq.read_schema(out)
    assert str(schema.field("embedding").type) == "fixed_size_list<element: float>[384]"
    metadata = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert metadata["sbert.model"] == str(minilm_dir)
    assert (metadata["sbert.dim"], metadata["sbert.pooling"], metadata["sbert.normalize"]) == ("384", "mean", "true")
    assert pq.read_table(out).column("id").to_pylist() == list(range(len(SAMPLE_IDS)))
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"sbert: {len(SAMPLE_IDS)} rows, dim 384, ")
    assert summary.endswith(f"rows/s, 1 truncated to 256 tokens -> {out}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.embeddings.parquet", "input.jsonl"]


def test_float16_output(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    for suffix in ("parquet", "npy"):
        out = tmp_path / f"v.{suffix}"
        result = run("encode", SAMPLE_DATA / "sentences.csv", "-o", out, "--dtype", "float16", "-q")
        assert result.exit_code == 0, result.output
        ids, vectors = read_output(out, "")
        expected = expected_fake_vectors(sample_texts()).astype(np.float16)
        np.testing.assert_array_equal(np.asarray(vectors, dtype=np.float16), expected)
    assert np.load(tmp_path / "v.npy").dtype == np.float16
    assert str(pq.read_schema(tmp_path / "v.parquet").field("embedding").type) == "fixed_size_list<element: halffloat>[4]"


def test_order_and_ids_survive_sorting_and_windows(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    """Windows of 5 rows, batches of 3: rows are sorted by length inside, but come out in input order."""
    texts = [("长" * ((i * 7) % 13)) + str(i) for i in range(103)]
    source = tmp_path / "x.jsonl"
    source.write_text("".join(json.dumps({"k": f"id-{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "x.npy"
    result = run("encode", source, "-o", out, "--id-column", "k", "--chunk-size", "5", "--batch-size", "3", "-q")
    assert result.exit_code == 0, result.output
    ids, vectors = read_output(out, "")
    assert ids == [f"id-{i}" for i in range(103)]
    np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))
    assert max(fake_encoder.batches) <= 3


def test_max_tokens_caps_padded_batch_size(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "x.csv"
    source.write_text("text\n" + "\n".join("字" * 12 + f"{i:02d}" for i in range(20)) + "\n")  # 16 tokens each
    result = run("encode", source, "-o", tmp_path / "x.parquet", "--max-tokens", "64", "--batch-size", "32", "-q")
    assert result.exit_code == 0, result.output
    assert fake_encoder.batches == [4] * 5


def test_backend_batch_shape_fills_only_what_the_user_left_auto(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    """A backend that runs fastest at its own rows and tokens a batch gets them unless the user set them."""
    source = tmp_path / "x.csv"
    source.write_text("text\n" + "\n".join("字" * 12 + f"{i:02d}" for i in range(100)) + "\n")  # 16 tokens each
    fake_encoder.batch_shape = BatchShape(batch_size=10, max_tokens=48)
    assert run("encode", source, "-o", tmp_path / "a.parquet", "-q").exit_code == 0
    assert sorted(fake_encoder.batches) == [1] + [3] * 33  # 48 tokens: 3 rows of 16
    fake_encoder.batches.clear()
    assert run("encode", source, "-o", tmp_path / "b.parquet", "--max-tokens", "1000", "-q").exit_code == 0
    assert fake_encoder.batches == [10] * 10  # the user's tokens, the backend's rows
    fake_encoder.batches.clear()
    assert run("encode", source, "-o", tmp_path / "c.parquet", "--batch-size", "2", "-q").exit_code == 0
    assert fake_encoder.batches == [2] * 50  # the user's rows win; the backend's 48 tokens still hold 2 rows


@pytest.mark.slow
def test_sim_prints_one_score_per_line(minilm_dir: Path, cached_loads) -> None:
    result = run("sim", "如何申请退款？", "怎么才能把钱退回来？", "今天的天气怎么样？", "--model", minilm_dir)
    assert result.exit_code == 0, result.output
    scores = [float(line) for line in result.stdout.splitlines()]
    assert len(scores) == 2 and scores[0] > scores[1]
    assert result.stderr == ""
    as_json = json.loads(run("sim", "甲", "乙", "--model", minilm_dir, "--json").stdout)
    assert as_json["sentence"] == "甲" and as_json["similarities"][0]["sentence"] == "乙"
    assert -1.0 <= as_json["similarities"][0]["cosine"] <= 1.0


@pytest.mark.slow
def test_sim_matches_cosine_of_sentence_transformers(minilm_dir: Path, cached_loads) -> None:
    from sentence_transformers import SentenceTransformer, util

    a, b = "今天天气很好", "今天是晴天"
    expected = float(util.cos_sim(*SentenceTransformer(str(minilm_dir), device="cpu").encode([a, b]))[0][0])
    result = run("sim", a, b, "--model", minilm_dir, "--precision", "fp32")
    assert result.stdout.strip() == f"{expected:.4f}"


def test_evaluate_table_and_json(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    pairs = SAMPLE_DATA / "pairs.tsv"
    result = run("evaluate", pairs, "-q")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split("|")[1:-1] == ["          ", " pairs "]
    assert lines[2].startswith("| spearman |") and lines[4] == "| pairs    |    20 |"
    data = json.loads(run("evaluate", pairs, pairs, "--json", "-q").stdout)
    assert [r["name"] for r in data["results"]] == ["sample_data/pairs", "sample_data/pairs"]
    assert data["results"][0]["pairs"] == 20 and data["results"][0]["spearman"] == data["results"][1]["spearman"]


# --- errors: exit code and the whole line, no traceback ---------------------------------------------


def error_of(result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    return lines[-1]


def test_missing_input_file(tmp_path: Path, fake_encoder) -> None:
    result = run("encode", tmp_path / "nope.jsonl")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {tmp_path / 'nope.jsonl'}: no such file; check the path"


def test_wrong_column(fake_encoder) -> None:
    result = run("encode", SAMPLE_DATA / "sentences.csv", "--text-column", "body", "-o", "-")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {SAMPLE_DATA / 'sentences.csv'}: no column 'body' (found: id, text); pass --text-column NAME"


def test_malformed_line_leaves_no_output(tmp_path: Path, fake_encoder) -> None:
    source = tmp_path / "data.jsonl"
    source.write_text('{"text": "好"}\n' * 30 + '{"text": "坏" "x"}\n', encoding="utf-8")
    out = tmp_path / "out.parquet"
    out.write_bytes(b"previous good output")
    result = run("encode", source, "-o", out, "--chunk-size", "4")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {source}:31: invalid JSON (Expecting ',' delimiter at column 14); each line must be one JSON object"
    assert out.read_bytes() == b"previous good output"  # the earlier file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "out.parquet"]  # no temporary left


def test_invalid_json_says_where_on_the_line(tmp_path: Path, fake_encoder) -> None:
    source = tmp_path / "data.jsonl"
    source.write_text('{"text": "好"}\n{"text": "a\tb"}\n{"text": "未完"\n', encoding="utf-8")
    result = run("encode", source, "-o", tmp_path / "out.parquet")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {source}:2: invalid JSON (Invalid control character at column 12); each line must be one JSON object"
    skipped = run("encode", source, "-o", tmp_path / "out.parquet", "--on-error", "skip")
    assert skipped.exit_code == 3
    rejects = [json.loads(line)["reason"] for line in (tmp_path / "out.parquet.rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rejects == [
        "invalid JSON (Invalid control character at column 12); each line must be one JSON object",
        "invalid JSON (Expecting ',' delimiter at the end of the line); each line must be one JSON object",
    ]


def test_a_directory_input_is_read_and_one_without_data_says_what_reads_one(tmp_path: Path, fake_encoder) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "好"}\n', encoding="utf-8")
    assert run("encode", folder, "-o", tmp_path / "out.parquet", "-q").exit_code == 0
    (folder / "a.jsonl").rename(folder / "notes.txt")
    result = run("encode", folder, "-o", tmp_path / "out.parquet")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {folder}: holds no .csv, .tsv, .jsonl or .parquet files; check the path, or pass --format to read other names"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"text": null}\n', "{}:1: 'text' is null"),
        (b'{"text": ["a"]}\n', "{}:1: 'text' is an array, not a string"),
        (b"", "{}: no rows to encode; pass --allow-empty if an empty input is fine"),
        (b"\n\n", "{}: no rows to encode; pass --allow-empty if an empty input is fine"),
    ],
)
def test_bad_text_and_empty_input(tmp_path: Path, fake_encoder, content: bytes, message: str) -> None:
    source = tmp_path / "data.jsonl"
    source.write_bytes(content)
    result = run("encode", source, "-o", tmp_path / "out.npy")
    assert result.exit_code == 1
    assert error_of(result) == "sbert: error: " + message.format(source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


def test_stdin_needs_an_output(fake_encoder) -> None:
    result = run("encode", "-", input=b'{"text": "a"}\n')
    assert result.exit_code == 2
    assert error_of(result) == "sbert: error: reading stdin needs -o: a .parquet, .npy or .jsonl file, or - for JSON lines on stdout"


def test_unknown_output_extension(tmp_path: Path, fake_encoder) -> None:
    result = run("encode", SAMPLE_DATA / "sentences.csv", "-o", tmp_path / "v.txt")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {tmp_path / 'v.txt'}: unknown output extension '.txt'; use .parquet, .npy or .jsonl, or -o - for stdout"


def test_output_directory_missing(tmp_path: Path, fake_encoder) -> None:
    result = run("encode", SAMPLE_DATA / "sentences.csv", "-o", tmp_path / "no" / "v.parquet")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {tmp_path / 'no' / 'v.parquet'}: directory '{tmp_path / 'no'}' does not exist; create it first"


def test_model_that_cannot_load_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    result = run("sim", "a", "b", "--model", "someone/missing-model")
    assert result.exit_code == 1
    assert error_of(result).startswith("sbert: error: cannot load model 'someone/missing-model': not in the local Hugging Face cache")


def test_model_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SBERT_MODEL", str(tmp_path / "from-env"))
    result = run("sim", "a", "b")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: model directory '{tmp_path / 'from-env'}' does not exist; pass --model with an existing directory"


def test_sim_needs_two_sentences(fake_encoder) -> None:
    result = run("sim", "只有一句")
    assert result.exit_code == 2
    assert error_of(result) == 'sbert: error: sim needs at least two sentences: sbert sim "句子A" "句子B"'


def test_evaluate_errors(tmp_path: Path, fake_encoder) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("甲\t乙\t1\n甲\t乙\n", encoding="utf-8")
    result = run("evaluate", bad)
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {bad}:2: expected 3 tab-separated fields, found 2"
    bad.write_text("甲\t乙\thigh\n", encoding="utf-8")
    assert error_of(run("evaluate", bad)) == f"sbert: error: {bad}:1: label 'high' is not a number; the label is the last column"
    assert error_of(run("evaluate", tmp_path / "none.tsv")) == f"sbert: error: {tmp_path / 'none.tsv'}: no such file; check the path"
    result = run("evaluate", SAMPLE_DATA / "pairs.tsv", "--columns", "a,b")
    assert result.exit_code == 2
    assert error_of(result) == "sbert: error: --columns a,b: expected three names, e.g. --columns sentence1,sentence2,label"


def test_usage_errors_exit_2() -> None:
    result = run("encode", SAMPLE_DATA / "sentences.csv", "--batch-size", "0")
    assert result.exit_code == 2
    assert run("frobnicate").exit_code == 2


HEAVY_MODULES = ("numpy", "pyarrow.fs", "torch", "transformers")


@pytest.mark.parametrize("args", [["--help"], ["encode", "--help"]], ids=["sbert", "encode"])
def test_help_imports_neither_numpy_nor_pyarrow_fs_nor_torch(args: list[str]) -> None:
    """What `sbert --help` and `sbert encode --help` import, in a fresh process through the entry point's app (main
    itself leaves through os._exit, before anything could be printed after it)."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom sbert_cli.cli import app\ntry:\n    app()\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
        f"print([name for name in {HEAVY_MODULES!r} if name in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_default_model_names_agree() -> None:
    """One default model: choices.DEFAULT_MODEL is what every command's --model defaults to, what the Python API
    and ModelOptions take, what `make demo` runs and what the README names."""
    import inspect
    import re

    import typer.main

    from sbert_cli.choices import DEFAULT_MODEL
    from sbert_cli.model.options import ModelOptions
    from tests.conftest import ROOT

    group = typer.main.get_command(cli.app)
    defaults = {name: [param.default for param in group.commands[name].params if param.name == "model"] for name in ("encode", "sim", "evaluate")}
    assert defaults == {name: [DEFAULT_MODEL] for name in ("encode", "sim", "evaluate")}
    assert inspect.signature(sbert_cli.encoder.load_encoder).parameters["model"].default == DEFAULT_MODEL
    assert ModelOptions().model == DEFAULT_MODEL
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.findall(r"\$\$\{SBERT_MODEL:-([^}]*)\}", makefile) == [DEFAULT_MODEL]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = re.search(r"The default model is \[`([^`]+)`\]\(https://huggingface\.co/([^)]+)\)", readme)
    assert named is not None and named.groups() == (DEFAULT_MODEL, DEFAULT_MODEL)
