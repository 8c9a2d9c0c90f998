"""Nothing a user has is lost or silently wrong: no derived file overwrites an input, a closed stdout is 141,
a foreign directory is refused untouched, a killed run's leftovers go, and a failed directory run never blocks its rerun."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import FAKE_SETUP, ROOT, SAMPLE_DATA, FakeEncoder, cli_child, expected_fake_vectors
from tests.test_cli import error_of, run
from tests.test_unattended import manifest_path, read_rejects, read_shards, start_child, wait_until, write_texts

QUIET_CHILD = cli_child(FAKE_SETUP, report_rss=False)


def checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


# (input, -o, options, the error line after "sbert: error: ")
COLLISIONS = [
    ("out.parquet.rejects.jsonl", "out.parquet", [], "out.parquet.rejects.jsonl: is the input, and -o out.parquet would overwrite it as its rejects file; pass another -o"),
    ("out.parquet.rejects.jsonl", "out.parquet", ["--on-error", "skip"], "out.parquet.rejects.jsonl: is the input, and -o out.parquet would overwrite it as its rejects file; pass another -o"),
    ("emb.ids.jsonl", "emb.npy", [], "emb.ids.jsonl: is the input, and -o emb.npy would overwrite it as its ids sidecar; pass another -o"),
    ("emb.npy.rejects.jsonl", "emb.npy", [], "emb.npy.rejects.jsonl: is the input, and -o emb.npy would overwrite it as its rejects file; pass another -o"),
    (".out.parquet.sbert.lock", "out.parquet", ["--format", "jsonl"], ".out.parquet.sbert.lock: is the input, and -o out.parquet would overwrite it as its lock file; pass another -o"),
    (".out.parquet.sbert-tmp-99", "out.parquet", ["--format", "jsonl"], ".out.parquet.sbert-tmp-99: is the input, named like a temporary file of -o out.parquet, which sbert removes; rename it"),
    ("sub/../out.parquet.rejects.jsonl", "out.parquet", [], "sub/../out.parquet.rejects.jsonl: is the input, and -o out.parquet would overwrite it as its rejects file; pass another -o"),
    ("link.jsonl", "out.parquet", [], "link.jsonl: is the input, and -o out.parquet would overwrite it as its rejects file; pass another -o"),
    ("data/in.jsonl", "data", [], "data/in.jsonl: is inside data, where sbert writes and removes files for -o data; pass another -o"),
    ("data.sbert/in.jsonl", "data", ["--resume"], "data.sbert/in.jsonl: is inside data.sbert, where sbert writes and removes files for -o data; pass another -o"),
    ("in.jsonl", "out.parquet", ["--cache", "in.jsonl"], "in.jsonl: is the input file; pass another --cache"),
    ("in.jsonl", "out.parquet", ["--cache", "out.parquet"], "out.parquet: is the cache file; pass another --cache"),
    ("in.jsonl", "out.npy", ["--cache", "out.ids.jsonl"], "out.ids.jsonl: is the cache, and -o out.npy would overwrite it as its ids sidecar; pass another --cache"),
    ("in.jsonl", "data", ["--cache", "data/cache.sqlite"], "data/cache.sqlite: is inside data, where sbert writes and removes files for -o data; pass another --cache"),
]


@pytest.mark.parametrize(("source", "output", "options", "error"), COLLISIONS)
def test_no_file_sbert_writes_or_removes_is_an_input(
    tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch, source: str, output: str, options: list[str], error: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data.sbert").mkdir()
    target = tmp_path / "out.parquet.rejects.jsonl" if source == "link.jsonl" else tmp_path / source
    target.write_bytes((SAMPLE_DATA / "sentences.jsonl").read_bytes())
    if source == "link.jsonl":
        (tmp_path / source).symlink_to(target)
    before, files = checksum(target), listing(tmp_path)
    result = run("encode", source, "-o", output, *options)
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {error}"
    assert checksum(target) == before and listing(tmp_path) == files


def test_evaluate_never_writes_over_a_pair_file(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_bytes((SAMPLE_DATA / "pairs.tsv").read_bytes())
    before = checksum(pairs)
    for option in ("--plot", "--cache"):
        result = run("evaluate", pairs, option, pairs)
        assert result.exit_code == 2
        assert error_of(result) == f"sbert: error: {pairs}: is the input file; pass another {option}"
    assert checksum(pairs) == before and listing(tmp_path) == ["pairs.tsv"]


def run_piped(args: list, tmp_path: Path, read: int | None, delay: float = 0.0) -> tuple[int, bytes, str]:
    """The real command with the fake encoder, its stdout a pipe that we read `read` bytes of, then close (None:
    read everything). Returns the exit code, what was read and stderr."""
    env = {**os.environ, "FAKE_DELAY": str(delay)}
    child = subprocess.Popen(  # unbuffered: read(n) takes at most n bytes from the pipe, as `head -c` with a small n
        [sys.executable, "-c", QUIET_CHILD, *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    )
    assert child.stdout is not None and child.stderr is not None
    taken = child.stdout.read(read) if read else (b"" if read == 0 else child.stdout.readall())
    child.stdout.close()
    stderr = child.stderr.read().decode()
    child.wait(timeout=60)
    return child.returncode, taken, stderr


@pytest.mark.parametrize(
    ("rows", "read", "options"),
    [
        (50, 0, []),  # the reader is gone before the first row
        (50, 100, []),  # one window, all of it in the pipe's buffer before the reader goes
        (3000, 100, []),  # one window, more than the pipe's buffer
        (60, 100, ["--chunk-size", "10"]),  # the reader goes after the first of six windows
    ],
)
def test_a_reader_that_stops_early_makes_exit_141(tmp_path: Path, rows: int, read: int, options: list[str]) -> None:
    source = tmp_path / "in.jsonl"
    write_texts(source, rows)
    code, taken, stderr = run_piped(["encode", source, "-o", "-", *options], tmp_path, read, delay=0.01)
    assert code == 141, stderr
    assert len(taken) == read and "Traceback" not in stderr and stderr == ""


def test_a_reader_that_takes_everything_makes_exit_0(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    texts = write_texts(source, 50)
    code, taken, stderr = run_piped(["encode", source, "-o", "-", "-q"], tmp_path, None)
    assert code == 0, stderr
    vectors = np.asarray([json.loads(line)["embedding"] for line in taken.decode().splitlines()], dtype=np.float32)
    np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))


def test_sim_and_evaluate_to_a_reader_that_stops_early_exit_141(tmp_path: Path) -> None:
    code, _, stderr = run_piped(["sim", "如何申请退款？", "怎么才能把钱退回来？", "今天的天气怎么样？"], tmp_path, 2)
    assert code == 141 and stderr == ""
    code, _, stderr = run_piped(["evaluate", SAMPLE_DATA / "pairs.tsv", "-q"], tmp_path, 10)
    assert code == 141 and stderr == ""


def test_a_directory_that_is_not_an_sbert_output_is_refused_untouched(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("mine", encoding="utf-8")
    (data / "part-00000.parquet").write_bytes(b"also mine")
    result = run("encode", SAMPLE_DATA / "sentences.jsonl", "-o", f"{data}/")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {data}: holds files sbert did not write ('notes.txt'); pass an empty or new directory to -o"
    assert listing(tmp_path) == ["data", "data/notes.txt", "data/part-00000.parquet"]
    assert (data / "part-00000.parquet").read_bytes() == b"also mine"


@pytest.mark.parametrize("suffix", ["parquet", "npy"])
def test_a_killed_runs_temporary_files_go_with_the_next_run(tmp_path: Path, fake_encoder: FakeEncoder, suffix: str) -> None:
    source = tmp_path / "in.jsonl"
    texts = write_texts(source, 200)
    out = tmp_path / f"out.{suffix}"
    child = start_child(["encode", source, "-o", out, "--chunk-size", "10", "-q"], delay=0.05)
    wait_until(lambda: any(tmp_path.glob(f".out.{suffix}.sbert-tmp-*")), child)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    left = sorted(path.name for path in tmp_path.glob(".*sbert-tmp-*"))
    assert left and all(name.endswith(f"-{child.pid}") for name in left)
    result = run("encode", source, "-o", out)
    assert result.exit_code == 0, result.output
    shown = ", ".join(str(tmp_path / name) for name in left)
    noun = "file" if len(left) == 1 else "files"
    assert result.stderr.splitlines()[0] == f"sbert: removed {len(left)} temporary {noun} left by an earlier run that was killed: {shown}"
    assert not list(tmp_path.glob(".*sbert-tmp-*"))
    vectors = np.load(out) if suffix == "npy" else np.asarray(pq.read_table(out).column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))


def bad_row_input(path: Path, rows: int, bad: int | None) -> list[str]:
    texts = write_texts(path, rows)
    if bad is not None:
        lines = path.read_text(encoding="utf-8").splitlines()
        lines[bad] = '{"id": "r%d", "text": null}' % bad
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return texts


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_a_run_that_failed_before_its_first_shard_reruns_with_the_same_line(tmp_path: Path, fake_encoder: FakeEncoder, resume: list[str]) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "vecs"
    bad_row_input(source, 30, bad=5)
    line = ["encode", source, "-o", out, "--id-column", "id", "--shard-rows", "100", *resume]
    failed = run(*line)
    assert failed.exit_code == 1
    assert error_of(failed) == f"sbert: error: {source}:6: 'text' is null"
    # Nothing of the failed run is left, not even the folders it made for its output.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.jsonl"]
    texts = bad_row_input(source, 30, bad=None)
    again = run(*line)
    assert again.exit_code == 0, again.output
    ids, vectors = read_shards(out)
    assert ids == [f"r{i}" for i in range(30)]
    np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))


def test_finished_shards_of_another_input_say_how_to_start_over(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "vecs"
    write_texts(source, 50)
    line = ["encode", source, "-o", out, "--id-column", "id", "--shard-rows", "20", "-q"]
    assert run(*line).exit_code == 0
    texts = write_texts(source, 45)
    plain = run(*line)
    assert plain.exit_code == 2
    assert error_of(plain) == f"sbert: error: {out}: holds 3 finished shards of an earlier run; pass --resume to finish it, or --overwrite to start over"
    resumed = run(*line, "--resume")
    assert resumed.exit_code == 2
    assert error_of(resumed) == (
        f"sbert: error: {out}: the input differs from the manifest's (size, mtime_ns, edge_sha256 changed); "
        "resume only with the same input file, or pass --overwrite to start over with this one"
    )
    assert run(*line, "--resume", "--overwrite").exit_code == 2
    overwritten = run(*line, "--overwrite")
    assert overwritten.exit_code == 0, overwritten.output
    ids, vectors = read_shards(out)
    assert ids == [f"r{i}" for i in range(45)]
    np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))
    assert sorted(path.name for path in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]


def test_an_output_under_a_file_names_the_file(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder", encoding="utf-8")
    result = run("encode", SAMPLE_DATA / "sentences.jsonl", "-o", blocker / "out.parquet")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {blocker / 'out.parquet'}: '{blocker}' is a file, not a directory; pass another -o"
    result = run("encode", SAMPLE_DATA / "sentences.jsonl", "-o", tmp_path / "vectors", "--format", "jsonl")
    assert result.exit_code == 0
    (tmp_path / "plain").write_text("a file without an extension", encoding="utf-8")
    result = run("encode", SAMPLE_DATA / "sentences.jsonl", "-o", tmp_path / "plain")
    assert result.exit_code == 2
    assert error_of(result) == (
        f"sbert: error: {tmp_path / 'plain'}: is a file, not a directory; pass a new or empty directory, or a .parquet, .npy or .jsonl file"
    )


def test_a_full_disk_in_a_directory_run_says_the_finished_shards_are_kept(
    tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet

    source, out = tmp_path / "in.jsonl", tmp_path / "vecs"
    texts = write_texts(source, 50)
    real_write = pyarrow.parquet.ParquetWriter.write_table
    writes = []

    def write_table(self, table, *args, **kwargs):
        writes.append(1)
        if len(writes) == 3:  # the second shard's second window
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, table, *args, **kwargs)

    monkeypatch.setattr(pyarrow.parquet.ParquetWriter, "write_table", write_table)
    line = ["encode", source, "-o", out, "--id-column", "id", "--shard-rows", "20", "--chunk-size", "10"]
    result = run(*line)
    assert result.exit_code == 1
    assert error_of(result) == (
        f"sbert: error: {out / 'part-00001.parquet'}: cannot write (No space left on device); "
        f"1 finished shard kept in {out}; rerun with --resume to continue"
    )
    monkeypatch.setattr(pyarrow.parquet.ParquetWriter, "write_table", real_write)
    resumed = run(*line, "--resume")
    assert resumed.exit_code == 0, resumed.output
    ids, vectors = read_shards(out)
    assert ids == [f"r{i}" for i in range(50)]
    np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))


MIXED_IDS = ['{"id": 1, "text": "第一行"}', '{"id": "x", "text": "第二行"}', '{"id": 3, "text": "第三行"}']


def test_mixed_id_types_name_the_line_and_are_rejected_under_skip(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(MIXED_IDS) + "\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    failed = run("encode", source, "-o", out, "--id-column", "id")
    assert failed.exit_code == 1
    assert error_of(failed) == f"sbert: error: {source}:2: id is a string, but the ids before it are integers; use ids of one type"
    skipped = run("encode", source, "-o", out, "--id-column", "id", "--on-error", "skip")
    assert skipped.exit_code == 3, skipped.output
    assert pq.read_table(out).column("id").to_pylist() == [1, 3]
    assert read_rejects(tmp_path / "out.parquet.rejects.jsonl") == [
        {"row": 1, "id": None, "where": f"{source}:2", "reason": "id is a string, but the ids before it are integers; use ids of one type"}
    ]
