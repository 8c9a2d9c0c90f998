"""Formats as tables: an input format added as one entry in io.formats.INPUT_FORMATS is read from files and stdin and
offered by --format; an output format added as one entry in io.output_formats.OUTPUT_FORMATS is written by -o, its
sidecar published beside it and checked against the inputs like any other."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO

import json

import numpy as np
import pytest

from sbert_cli.io import formats, output_formats
from sbert_cli.io.output_formats import OutputFormatSpec
from sbert_cli.io.writers import EmbeddingWriter, WriterSpec
from sbert_cli.io.readers import sniff_format
from sbert_cli.io.rows import MISSING, BadRow, Extent, Fields, InputFormatSpec, TableSpec
from tests.conftest import FakeEncoder, expected_fake_vectors
from tests.test_cli import error_of, read_output, run

MARK = b"#!lines\n"  # what stdin starts with to be sniffed as the format below
TEXTS = ["今天天气很好", "first line", "第三行，有逗号", "a, b\tc"]  # a comma and a tab: no CSV or TSV reading would keep these whole
on_disk: list[bool] = []  # for each stream the reader was handed, whether it is a file (stdin spooled) or not


def lines_fields(table: TableSpec, stream: IO[bytes], extent: Extent) -> Iterator[Fields | BadRow]:
    """One text a line, its mark line skipped; the text column is the line, any other column is missing."""
    on_disk.append(has_fileno(stream))
    row = -1
    for lineno, raw in enumerate(stream, 1):
        if (lineno == 1 and raw == MARK) or not raw.strip():
            continue
        row += 1
        text = raw.decode("utf-8").rstrip("\r\n")
        yield Fields(row, f"{table.name}:{lineno}", tuple(text if column == table.columns[0] else MISSING for column in table.columns))


LINES = InputFormatSpec("lines", "line-per-text", (".lines",), sniff=lambda head: head.startswith(MARK), fields=lines_fields)


@pytest.fixture
def lines_format(monkeypatch: pytest.MonkeyPatch) -> InputFormatSpec:
    """The format registered as a new one is: one entry in the table, nothing else."""
    on_disk.clear()
    monkeypatch.setitem(formats.INPUT_FORMATS, "lines", LINES)
    return LINES


def lines_bytes(texts: list[str], mark: bool = True) -> bytes:
    return (MARK if mark else b"") + "".join(f"{text}\n" for text in texts).encode("utf-8")


def write_lines(path: Path, texts: list[str]) -> Path:
    """A file found by its extension needs no mark."""
    path.write_bytes(lines_bytes(texts, mark=False))
    return path


def assert_rows(ids: list, vectors: np.ndarray, texts: list[str], expected_ids: list | None = None) -> None:
    assert ids == (expected_ids or list(range(len(texts))))
    np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))


def test_a_format_added_to_the_table_reads_a_file_by_its_extension(tmp_path: Path, fake_encoder: FakeEncoder, lines_format: InputFormatSpec) -> None:
    out = tmp_path / "out.parquet"
    result = run("encode", write_lines(tmp_path / "texts.lines", TEXTS), "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert_rows(*read_output(out, ""), TEXTS)


def test_a_format_added_to_the_table_is_sniffed_on_stdin(fake_encoder: FakeEncoder, lines_format: InputFormatSpec) -> None:
    data = lines_bytes(TEXTS)
    assert sniff_format(data) == "lines"
    result = run("encode", "-", "-o", "-", "-q", input=data)
    assert result.exit_code == 0, result.output
    assert_rows(*read_output(None, result.stdout), TEXTS)
    assert on_disk == [False]  # read from stdin as it came (the runner's has no file), not spooled


def test_format_offers_an_added_format_and_lists_it_in_errors(tmp_path: Path, fake_encoder: FakeEncoder, lines_format: InputFormatSpec) -> None:
    source = write_lines(tmp_path / "texts.txt", TEXTS)  # an extension of no format: only --format says how to read it
    result = run("encode", source, "--format", "lines", "-o", "-", "-q")
    assert result.exit_code == 0, result.output
    assert_rows(*read_output(None, result.stdout), TEXTS)
    result = run("encode", source, "-f", "xml")
    assert error_of(result) == "sbert: error: Invalid value for '--format' / '-f': 'xml' is not one of 'csv', 'tsv', 'jsonl', 'parquet', 'lines'. (see 'sbert encode --help')"
    result = run("encode", source, "-o", "-")
    assert error_of(result) == f"sbert: error: {source}: cannot tell the format from the extension '.txt'; pass --format csv|tsv|jsonl|parquet|lines"
    result = run("encode", tmp_path, "-o", tmp_path / "out.parquet")
    assert error_of(result) == f"sbert: error: {tmp_path}: holds no .csv, .tsv, .jsonl, .parquet or .lines files; check the path, or pass --format to read other names"


def test_an_added_format_reads_a_directory_numbered_across_files(tmp_path: Path, fake_encoder: FakeEncoder, lines_format: InputFormatSpec) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    write_lines(folder / "a.lines", TEXTS[:3])
    write_lines(folder / "b.lines", TEXTS[3:])
    result = run("encode", folder, "-o", "-", "-q")
    assert result.exit_code == 0, result.output
    # Rows in order across the files; each id its file below the folder and its row there.
    path_ids = [f"a.lines:{row}" for row in range(3)] + [f"b.lines:{row}" for row in range(len(TEXTS) - 3)]
    assert_rows(*read_output(None, result.stdout), TEXTS, path_ids)


def test_a_seekable_format_gets_stdin_spooled_to_disk(fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    on_disk.clear()
    monkeypatch.setitem(formats.INPUT_FORMATS, "lines", replace(LINES, seekable=True))
    result = run("encode", "-", "-o", "-", "-q", input=lines_bytes(TEXTS))
    assert result.exit_code == 0, result.output
    assert_rows(*read_output(None, result.stdout), TEXTS)
    assert on_disk == [True]  # spooled to a temporary file, which a reader may seek


def test_without_the_entry_the_format_is_unknown(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    result = run("encode", write_lines(tmp_path / "texts.lines", TEXTS), "--format", "lines")
    assert result.exit_code == 2
    assert error_of(result) == "sbert: error: Invalid value for '--format' / '-f': 'lines' is not one of 'csv', 'tsv', 'jsonl', 'parquet'. (see 'sbert encode --help')"
    assert sniff_format(lines_bytes(TEXTS)) == "csv"  # no tab on the first line, not JSON, not Parquet: CSV's catch-all


def test_the_table_is_consistent() -> None:
    """Each entry under its own name; each extension lower case, dotted and claimed once; sniffing as before."""
    table = formats.INPUT_FORMATS
    assert list(table) == ["csv", "tsv", "jsonl", "parquet"]
    assert all(name == spec.name for name, spec in table.items())
    extensions = [extension for spec in table.values() for extension in spec.extensions]
    assert len(extensions) == len(set(extensions)) and all(e.startswith(".") and e == e.lower() for e in extensions)
    assert formats.extension_formats() == {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
    assert [name for name, spec in table.items() if spec.seekable] == ["parquet"]
    assert formats.named_formats() == "CSV, TSV, JSONL or Parquet"
    cases = {b"PAR1{\t": "parquet", b'\xef\xbb\xbf {"a":\t1}': "jsonl", b"\r\n a\tb\n": "tsv", b"a,b\n\t\n": "csv", b"": "csv", b"PAR": "csv"}
    assert {head: sniff_format(head) for head in cases} == cases


def has_fileno(stream: IO[bytes]) -> bool:
    try:
        stream.fileno()
    except (OSError, ValueError):
        return False
    return True


# --- output formats -------------------------------------------------------------------------------------------


class TsvVectorWriter(EmbeddingWriter):
    """id<TAB>comma-separated values a line, and the row count in a sidecar: a format sbert does not ship."""

    def __init__(self, spec: WriterSpec) -> None:
        super().__init__(spec)
        self._stream = open(self._temporary(spec.path), "w", encoding="utf-8")
        self._count_file = self._temporary(count_path(spec.path))

    def write(self, ids: list, vectors: np.ndarray, n_tokens: list[int] | None = None) -> None:
        stored = self.form.store(vectors)
        self._stream.write("".join(f"{value}\t{','.join(repr(float(x)) for x in row)}\n" for value, row in zip(ids, stored)))
        self.rows += len(ids)

    def _close(self) -> None:
        if not self._stream.closed:
            self._stream.close()
            Path(self._count_file).write_text(f"{self.rows}\n", encoding="utf-8")


def count_path(path: str) -> str:
    return path + ".count"


VECS = OutputFormatSpec("vecs", ".vecs", TsvVectorWriter, (("row count sidecar", count_path),), has_columns=False)


@pytest.fixture
def vecs_format(monkeypatch: pytest.MonkeyPatch) -> OutputFormatSpec:
    """The output format registered as a new one is: one entry in the table, nothing else."""
    monkeypatch.setitem(output_formats.OUTPUT_FORMATS, "vecs", VECS)
    return VECS


def test_an_output_format_added_by_one_table_entry_is_written(tmp_path: Path, fake_encoder, vecs_format) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in TEXTS), encoding="utf-8")
    out = tmp_path / "out.vecs"
    result = run("encode", source, "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    rows = [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]
    assert [int(value) for value, _ in rows] == list(range(len(TEXTS)))
    vectors = np.asarray([[float(x) for x in values.split(",")] for _, values in rows], dtype=np.float32)
    np.testing.assert_array_equal(vectors, expected_fake_vectors(TEXTS))
    assert (tmp_path / "out.vecs.count").read_text(encoding="utf-8") == f"{len(TEXTS)}\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.jsonl", "out.vecs", "out.vecs.count"]  # nothing else left


def test_an_added_output_formats_sidecar_and_columns_are_read_from_the_table(tmp_path: Path, fake_encoder, vecs_format) -> None:
    source = tmp_path / "out.vecs.count"  # an input named as the new format's sidecar of -o out.vecs
    source.write_text(json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    result = run("encode", source, "--format", "jsonl", "-o", tmp_path / "out.vecs")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {source}: is the input, and -o {tmp_path / 'out.vecs'} would overwrite it as its row count sidecar; pass another -o"
    other = tmp_path / "in.jsonl"
    other.write_text(json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    result = run("encode", other, "-o", tmp_path / "out.vecs", "--with-stats")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {tmp_path / 'out.vecs'}: --with-stats needs a .parquet or .jsonl output, which have room for the columns"


def test_without_its_entry_an_output_suffix_is_refused_naming_the_table(tmp_path: Path, fake_encoder) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    result = run("encode", source, "-o", tmp_path / "out.vecs")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {tmp_path / 'out.vecs'}: unknown output extension '.vecs'; use .parquet, .npy or .jsonl, or -o - for stdout"
