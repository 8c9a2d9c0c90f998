"""Many-file inputs on the local engine: a directory (Hive folders included) or a glob reads as the one file it
was split from: every row once, in order, ids stable, bad rows named with their file, --resume checking the set."""

from __future__ import annotations

import json
import os
from itertools import pairwise
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sbert_cli.io.readers import iter_rows
from sbert_cli.io.rows import Extent
from sbert_cli.job import input_spec
from tests.conftest import FakeEncoder
from tests.test_cli import error_of, read_output, run
from tests.test_unattended import read_rejects

# 20 rows of which three are bad (a null text, malformed JSON, a number): they must be named with their file.
LINES = [json.dumps({"id": f"r{i}", "text": f"第{i}行" + "长" * (i % 5)}, ensure_ascii=False) for i in range(20)]
LINES[4], LINES[11], LINES[17] = '{"id": "r4", "text": null}', '{"id": "r11", "text": "坏" "x"}', '{"id": "r17", "text": 7}'


def write_rows(path: Path, fmt: str, lines: list[str]) -> None:
    """The same rows as JSON lines, CSV (bad rows become a wrong field count) or Parquet (good rows only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return
    good = [json.loads(line) for line in lines if _good(line)]
    if fmt == "parquet":
        columns = {"id": [row["id"] for row in good], "text": [row["text"] for row in good]}
        pq.write_table(pa.table(columns, schema=pa.schema([("id", pa.string()), ("text", pa.string())])), path)
        return
    body = "".join(f"{row['id']},{row['text']}\n" if _good(line) else "bad,row,three\n" for line, row in zip(lines, _all(lines)))
    path.write_text("id,text\n" + body, encoding="utf-8")


def _good(line: str) -> bool:
    try:
        return isinstance(json.loads(line).get("text"), str)
    except ValueError:
        return False


def _all(lines: list[str]) -> list[dict]:
    return [json.loads(line) if _good(line) else {} for line in lines]


def split_input(root: Path, fmt: str, cuts: tuple[int, ...]) -> list[Path]:
    """LINES cut at `cuts` into files in Hive folders, sorted as they were cut, among files sbert must skip."""
    bounds = [0, *cuts, len(LINES)]
    files = []
    for index, (start, end) in enumerate(pairwise(bounds)):
        path = root / f"day=2024-01-{index + 1:02d}" / f"part-{index:05d}.{fmt}"
        write_rows(path, fmt, LINES[start:end])
        files.append(path)
    (root / "_SUCCESS").write_text("")
    (root / "_committed_1234").write_text("{}")
    (root / "day=2024-01-01" / f".part-00000.{fmt}.crc").write_bytes(b"\0crc")
    (root / "_temporary" / "0").mkdir(parents=True)
    (root / "_temporary" / "0" / f"part-99999.{fmt}").write_text("half-written")
    (root / "README.txt").write_text("not data")
    return files


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("cuts", [(), (1,), (4, 5, 11), (7, 7, 19)])
@pytest.mark.parametrize("form", ["directory", "glob"])
def test_a_split_input_reads_as_the_whole(tmp_path: Path, fake_encoder: FakeEncoder, fmt: str, cuts: tuple[int, ...], form: str) -> None:
    whole = tmp_path / f"whole.{fmt}"
    write_rows(whole, fmt, LINES)
    files = split_input(tmp_path / "split", fmt, cuts)
    source = f"{tmp_path / 'split'}/" if form == "directory" else str(tmp_path / "split" / "day=*" / f"*.{fmt}")
    options = ["--on-error", "skip", "--chunk-size", "3", "-q"]
    code = 0 if fmt == "parquet" else 3  # Parquet holds the good rows only; JSON lines and CSV hold the three bad ones
    assert run("encode", whole, "-o", tmp_path / "from-whole.parquet", *options).exit_code == code
    result = run("encode", source, "-o", tmp_path / "from-split.parquet", *options)
    assert result.exit_code == code, result.output
    ids, vectors = read_output(tmp_path / "from-split.parquet", "")
    whole_ids, whole_vectors = read_output(tmp_path / "from-whole.parquet", "")
    # The whole file's ids are its row numbers; the split's, each row's file below the input's root and its row there.
    path_ids = split_ids(tmp_path / "split", files, cuts, fmt)
    assert ids == [path_ids[row] for row in whole_ids] and len(set(ids)) == len(ids)
    np.testing.assert_array_equal(vectors, whole_vectors)
    if fmt != "parquet":
        rejects = read_rejects(tmp_path / "from-split.parquet.rejects.jsonl")
        expected = read_rejects(tmp_path / "from-whole.parquet.rejects.jsonl")
        assert [(r["row"], r["id"], r["reason"]) for r in rejects] == [(r["row"], path_ids[r["id"]], r["reason"]) for r in expected]
        assert [r["where"] for r in rejects] == [_where(files, cuts, fmt, r["row"]) for r in expected]


def split_ids(root: Path, files: list[Path], cuts: tuple[int, ...], fmt: str) -> list[str]:
    """Every data row's id in the split input, in order: '<path below root>:<row in its file>' (Parquet holds good rows only)."""
    bounds = [0, *cuts, len(LINES)]
    ids = []
    for path, (start, end) in zip(files, pairwise(bounds)):
        count = sum(map(_good, LINES[start:end])) if fmt == "parquet" else end - start
        ids += [f"{path.relative_to(root).as_posix()}:{row}" for row in range(count)]
    return ids


def _where(files: list[Path], cuts: tuple[int, ...], fmt: str, row: int) -> str:
    """file:line of input row `row` in the split files (CSV's header is line 1)."""
    index = sum(1 for cut in cuts if cut <= row)
    start = ([0, *cuts])[index]
    return f"{files[index]}:{row - start + (2 if fmt == 'csv' else 1)}"


def test_a_bad_row_fails_naming_its_file_and_line(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    files = split_input(tmp_path / "in", "jsonl", (3, 10))
    result = run("encode", f"{tmp_path / 'in'}/", "-o", tmp_path / "out.parquet", "--id-column", "id")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {files[1]}:2: 'text' is null"
    assert not (tmp_path / "out.parquet").exists()


def test_files_are_read_one_after_another(tmp_path: Path) -> None:
    """Memory and open files stay those of one file, whatever the number of files."""
    for index in range(40):
        write_rows(tmp_path / "in" / f"part-{index:03d}.jsonl", "jsonl", [json.dumps({"text": f"{index}-{i}"}) for i in range(3)])
    spec = input_spec(str(tmp_path / "in"), None, "text", None)
    before = len(os.listdir("/proc/self/fd"))
    opened = []
    for record in iter_rows(spec):
        opened.append(len(os.listdir("/proc/self/fd")) - before)
        assert record.id == f"part-{record.row // 3:03d}.jsonl:{record.row % 3}"
    assert len(opened) == 120 and max(opened) <= 1
    assert [record.text for record in iter_rows(spec)][:4] == ["0-0", "0-1", "0-2", "1-0"]


def test_one_format_for_all_files(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    write_rows(tmp_path / "in" / "a.jsonl", "jsonl", LINES[:2])
    write_rows(tmp_path / "in" / "b.csv", "csv", LINES[:2])
    result = run("encode", tmp_path / "in", "-o", tmp_path / "out.parquet")
    assert result.exit_code == 2
    assert error_of(result) == (
        f"sbert: error: {tmp_path / 'in'}: holds files of more than one format ({tmp_path / 'in' / 'b.csv'} is csv, "
        f"{tmp_path / 'in' / 'a.jsonl'} is jsonl); pass a glob that selects one, e.g. '{tmp_path / 'in'}/**/*.jsonl'"
    )
    result = run("encode", str(tmp_path / "in" / "*.jsonl"), "-o", tmp_path / "out.parquet", "-q")
    assert result.exit_code == 0, result.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "_SUCCESS").write_text("")
    (tmp_path / "other" / "notes.txt").write_text("")
    result = run("encode", tmp_path / "other", "-o", tmp_path / "out.parquet")
    assert error_of(result) == (
        f"sbert: error: {tmp_path / 'other'}: holds no .csv, .tsv, .jsonl or .parquet files; check the path, or pass --format to read other names"
    )
    result = run("encode", str(tmp_path / "none" / "*.jsonl"), "-o", tmp_path / "out.parquet")
    assert error_of(result) == f"sbert: error: {tmp_path / 'none' / '*.jsonl'}: no files match; check the path"
    result = run("encode", str(tmp_path / "in" / "*.jsonl"))
    assert error_of(result) == f"sbert: error: {tmp_path / 'in' / '*.jsonl'}: names many files and no place for their vectors; pass -o FILE.parquet or -o DIRECTORY/"


def test_an_empty_file_among_many_holds_no_rows(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    write_rows(tmp_path / "in" / "a.csv", "csv", LINES[:2])
    (tmp_path / "in" / "b.csv").write_bytes(b"")  # an empty partition
    write_rows(tmp_path / "in" / "c.csv", "csv", LINES[2:4])
    result = run("encode", tmp_path / "in", "-o", "-", "-q")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == ["a.csv:0", "a.csv:1", "c.csv:0", "c.csv:1"]


@pytest.mark.parametrize(
    ("output", "written"),
    [("in/out.parquet", "in/out.parquet"), ("in/sub/vectors", "in/sub/vectors/part-00000.parquet"), ("out.npy", None)],
)
def test_an_output_the_next_run_would_read_is_refused(tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch, output: str, written: str | None) -> None:
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "in" / "a.parquet", "parquet", LINES[:2])
    result = run("encode", "in", "-o", output, "-q")
    if written is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2
    tail = "" if written == output else f", and -o {output} writes it as its shards"
    assert error_of(result) == f"sbert: error: {written}: is inside the input in, which would read it on the next run{tail}; pass another -o outside the input"
    # A glob that cannot take the file is fine: *.parquet does not reach into a sub-folder.
    assert run("encode", "in/*.parquet", "-o", "in/sub/vectors", "-q").exit_code == 0


def test_resume_names_the_file_added_removed_or_changed(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    files = split_input(tmp_path / "in", "jsonl", (3, 10))
    good = [line for line in LINES if _good(line)]
    for path in files:
        write_rows(path, "jsonl", good[:4])
    common = ["encode", f"{tmp_path / 'in'}/", "-o", tmp_path / "out", "--shard-rows", "5", "-q"]
    assert run(*common).exit_code == 0
    assert run(*common, "--resume").exit_code == 0  # the same set: nothing to do

    def refused() -> str:
        result = run(*common, "--resume")
        assert result.exit_code == 2
        return error_of(result)

    tail = "; resume only with the same input files, or pass --overwrite to start over with these"
    added = tmp_path / "in" / "day=2024-01-04" / "part-00003.jsonl"
    write_rows(added, "jsonl", good[:1])
    assert refused() == f"sbert: error: {tmp_path / 'out'}: the input files differ from the manifest's ({added} added){tail}"
    added.unlink()
    stat = files[1].stat()
    write_rows(files[1], "jsonl", good[:5])
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert refused() == f"sbert: error: {tmp_path / 'out'}: the input files differ from the manifest's ({files[1]} changed (size)){tail}"
    files[1].unlink()
    assert refused() == f"sbert: error: {tmp_path / 'out'}: the input files differ from the manifest's ({files[1]} removed){tail}"


def test_a_parquet_set_reports_progress_in_bytes(tmp_path: Path) -> None:
    for index in range(3):
        write_rows(tmp_path / "in" / f"p{index}.parquet", "parquet", LINES[:6])
    spec = input_spec(str(tmp_path / "in"), None, "text", None)
    extent = Extent()
    seen = [extent.now() for _ in iter_rows(spec, extent)]
    assert extent.unit == "bytes" and extent.total == sum(file.size for file in spec.files)
    assert seen == sorted(seen) and extent.now() == extent.total and len(spec.files) == 3
