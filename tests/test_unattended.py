"""Unattended runs: bad rows skipped to a rejects file, sharded output, resume after SIGKILL, SIGTERM, locks, full disk."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sbert_cli.io.manifest import file_sha256
from sbert_cli.io.paths import DirectoryLayout
from tests.conftest import FAKE_CLI_CHILD, FAKE_SETUP, ROOT, FakeEncoder, cli_child, expected_fake_vectors
from tests.test_cli import error_of, run

MIXED_LINES = [
    '{"id": "a", "text": "第一行"}',
    '{"id": "b", "text": null}',
    '{"id": "c", "text": "第三行"',
    '{"id": "d", "text": 42}',
    '{"id": "e", "text": "第五行"}',
    '{"id": "f"}',
    '["not", "an", "object"]',
    '{"id": "h", "text": "最后一行"}',
]
EXPECTED_REJECTS = [
    {"row": 1, "id": "b", "where": "{}:2", "reason": "'text' is null"},
    {"row": 2, "id": None, "where": "{}:3", "reason": "invalid JSON (Expecting ',' delimiter at the end of the line); each line must be one JSON object"},
    {"row": 3, "id": "d", "where": "{}:4", "reason": "'text' is a number, not a string"},
    {"row": 5, "id": "f", "where": "{}:6", "reason": "no field 'text'"},
    {"row": 6, "id": None, "where": "{}:7", "reason": "expected a JSON object, found an array"},
]


def mixed_file(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(MIXED_LINES) + "\n", encoding="utf-8")
    return path


def read_rejects(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_skip_writes_rejects_and_every_row_is_accounted_for(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = mixed_file(tmp_path)
    out = tmp_path / "out.parquet"
    result = run("encode", source, "-o", out, "--id-column", "id", "--on-error", "skip", "--chunk-size", "3")
    assert result.exit_code == 3, result.output
    table = pq.read_table(out)
    rejects = read_rejects(tmp_path / "out.parquet.rejects.jsonl")
    assert table.column("id").to_pylist() == ["a", "e", "h"]
    assert rejects == [{**r, "where": r["where"].format(source)} for r in EXPECTED_REJECTS]
    assert table.num_rows + len(rejects) == len(MIXED_LINES)
    np.testing.assert_array_equal(np.asarray(table.column("embedding").to_pylist()), expected_fake_vectors(["第一行", "第五行", "最后一行"]))
    assert "sbert: 3 rows, 5 rejected -> " in result.stderr


def test_fail_names_the_first_bad_row_and_writes_nothing(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = mixed_file(tmp_path)
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--id-column", "id")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {source}:2: 'text' is null"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.jsonl"]


def test_skip_needs_somewhere_to_put_rejects(fake_encoder: FakeEncoder) -> None:
    result = run("encode", "-", "-o", "-", "--on-error", "skip", input=b'{"text": "a"}\n')
    assert result.exit_code == 2
    assert error_of(result) == "sbert: error: --on-error skip needs an output file or directory to put the rejects beside; -o - has none"


def test_a_clean_rerun_removes_stale_rejects(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    out = tmp_path / "out.npy"
    (tmp_path / "out.npy.rejects.jsonl").write_text('{"row": 1}\n')
    clean = tmp_path / "clean.jsonl"
    clean.write_text('{"text": "好"}\n', encoding="utf-8")
    assert run("encode", clean, "-o", out, "--on-error", "skip", "-q").exit_code == 0
    assert not (tmp_path / "out.npy.rejects.jsonl").exists()


def test_with_stats_columns(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "x.jsonl"
    texts = ["短", "一" * 30]  # the fake encoder truncates at 16 tokens
    source.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    result = run("encode", source, "-o", tmp_path / "x.parquet", "--with-stats")
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "x.parquet")
    assert table.column("n_tokens").to_pylist() == [3, 32]
    assert table.column("truncated").to_pylist() == [False, True]
    assert "1 truncated to 16 tokens" in result.stderr
    result = run("encode", source, "-o", "-", "--with-stats", "-q")
    assert [(r["n_tokens"], r["truncated"]) for r in map(json.loads, result.stdout.splitlines())] == [(3, False), (32, True)]
    result = run("encode", source, "-o", tmp_path / "x.npy", "--with-stats")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {tmp_path / 'x.npy'}: --with-stats needs a .parquet or .jsonl output, which have room for the columns"


# --- sharded output ----------------------------------------------------------------------------------


def write_texts(path: Path, count: int) -> list[str]:
    texts = [f"第{i}行" + "字" * (i % 9) for i in range(count)]
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return texts


def read_shards(directory: Path) -> tuple[list, np.ndarray]:
    table = pq.read_table(sorted(directory.glob("part-*.parquet")))
    return table.column("id").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)


def manifest_path(directory: Path) -> Path:
    return DirectoryLayout(directory).manifest


def check_manifest(directory: Path) -> dict:
    """Every shard the manifest lists exists with its checksum; the directory holds nothing but shards."""
    manifest = json.loads(manifest_path(directory).read_text())
    for entry in manifest["shards"]:
        assert file_sha256(directory / entry["file"]) == entry["sha256"]
        assert pq.read_metadata(directory / entry["file"]).num_rows == entry["rows"]
    assert all(p.name.startswith("part-") and p.suffix == ".parquet" for p in directory.iterdir())
    return manifest


def test_directory_output_writes_shards_and_manifest(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "in.jsonl"
    texts = write_texts(source, 250)
    out = tmp_path / "out"
    result = run("encode", source, "-o", out, "--id-column", "id", "--shard-rows", "100", "--chunk-size", "30")
    assert result.exit_code == 0, result.output
    manifest = check_manifest(out)
    assert manifest["complete"] is True
    assert [(s["file"], s["first_row"], s["end_row"], s["rows"]) for s in manifest["shards"]] == [
        ("part-00000.parquet", 0, 100, 100),
        ("part-00001.parquet", 100, 200, 100),
        ("part-00002.parquet", 200, 250, 50),
    ]
    assert manifest["input"]["size"] == source.stat().st_size and manifest["options"]["shard_rows"] == 100
    ids, vectors = read_shards(out)
    assert ids == [f"r{i}" for i in range(250)]
    np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))
    assert "3 shards encoded, " in result.stderr and "already done" not in result.stderr
    again = run("encode", source, "-o", out, "--id-column", "id", "--shard-rows", "100")
    assert again.exit_code == 2
    assert error_of(again) == f"sbert: error: {out}: holds 3 finished shards of an earlier run; pass --resume to finish it, or --overwrite to start over"


def test_the_summary_counts_in_words(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    """'1 row', '1 shard', and nothing about resumed shards when none were."""
    source = tmp_path / "in.jsonl"
    write_texts(source, 1)
    for out, shards in ((tmp_path / "one.parquet", ""), (tmp_path / "shards", "1 shard encoded, ")):
        result = run("encode", source, "-o", out)
        assert result.exit_code == 0, result.output
        summary = rf"sbert: 1 row, {shards}dim 4, fp32 on cpu, \d+\.\d s, \d+\.\d rows/s, 0 truncated to 16 tokens -> {re.escape(str(out))}"
        assert re.fullmatch(summary, result.stderr.strip()), result.stderr


def test_resume_refuses_a_changed_input_or_options(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "in.jsonl"
    write_texts(source, 50)
    out = tmp_path / "out"
    assert run("encode", source, "-o", out, "--shard-rows", "20", "-q").exit_code == 0
    result = run("encode", source, "-o", out, "--shard-rows", "25", "--resume")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {out}: options differ from the manifest's (shard_rows: 20 -> 25); resume with the same options"
    with source.open("a", encoding="utf-8") as stream:
        stream.write('{"text": "新的一行"}\n')
    result = run("encode", source, "-o", out, "--shard-rows", "20", "--resume")
    assert result.exit_code == 2
    assert error_of(result) == (
        f"sbert: error: {out}: the input differs from the manifest's (size, mtime_ns, edge_sha256 changed); "
        "resume only with the same input file, or pass --overwrite to start over with this one"
    )


def run_child(args: list) -> subprocess.CompletedProcess:
    """The real command with the fake encoder, in a process of its own, to the end."""
    return subprocess.run([sys.executable, "-c", FAKE_CLI_CHILD, *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def start_child(args: list, delay: float, **env: str) -> subprocess.Popen:
    env = {**os.environ, "FAKE_DELAY": str(delay), **env}
    return subprocess.Popen(
        [sys.executable, "-c", FAKE_CLI_CHILD, *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_until(ready, child: subprocess.Popen, timeout: float = 60) -> None:
    """Poll until `ready()` while the child runs: signals are sent mid-run, never during start-up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        assert child.poll() is None, child.communicate()
        time.sleep(0.02)
    raise AssertionError("the child never got that far")


def wait_for_shards(directory: Path, count: int, child: subprocess.Popen) -> None:
    def finished_enough() -> bool:
        try:
            return len(json.loads(manifest_path(directory).read_text())["shards"]) >= count
        except (OSError, ValueError):
            return False

    wait_until(finished_enough, child)


def terminate(child: subprocess.Popen, signum: int = signal.SIGTERM) -> str:
    """Signal the child; it must exit 128 + the signal and say so in its last line, which is returned."""
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 128 + signum, stderr
    return stderr.strip().splitlines()[-1]


def uninterrupted_run(tmp_path: Path) -> list:
    """600 rows in 6 shards of 100, encoded in one go into tmp_path/whole; the command without its -o."""
    source = tmp_path / "in.jsonl"
    write_texts(source, 600)
    args = ["encode", source, "--id-column", "id", "--shard-rows", "100", "--chunk-size", "25", "--batch-size", "5"]
    whole = run_child([*args, "-o", tmp_path / "whole"])
    assert whole.returncode == 0, whole.stderr
    return args


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    args = uninterrupted_run(tmp_path)

    out = tmp_path / "killed"
    child = start_child([*args, "-o", out], delay=0.01)
    wait_for_shards(out, 2, child)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done_before = len(check_manifest(out)["shards"])
    assert 2 <= done_before < 6

    resumed = run_child([*args, "-o", out, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    encoded = "1 shard" if done_before == 5 else f"{6 - done_before} shards"
    assert f"{encoded} encoded, {done_before} already done ({done_before * 100} rows)" in resumed.stderr
    manifest = check_manifest(out)
    assert manifest["complete"] is True and len(manifest["shards"]) == 6
    ids, vectors = read_shards(out)
    whole_ids, whole_vectors = read_shards(tmp_path / "whole")
    assert ids == whole_ids == [f"r{i}" for i in range(600)]
    np.testing.assert_array_equal(vectors, whole_vectors)


@pytest.mark.slow
def test_sigterm_stops_cleanly_with_143(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_texts(source, 600)
    out = tmp_path / "out"
    child = start_child(["encode", source, "-o", out, "--shard-rows", "100", "--chunk-size", "25", "--batch-size", "5"], delay=0.01)
    wait_for_shards(out, 1, child)
    assert terminate(child) == f"sbert: error: stopped by SIGTERM; finished shards are kept in {out}, rerun with --resume to finish"
    manifest = check_manifest(out)
    assert manifest["complete"] is False and 1 <= len(manifest["shards"]) < 6
    assert sorted(p.name for p in out.glob("part-*")) == [s["file"] for s in manifest["shards"]]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_on_a_file_output_leaves_nothing(tmp_path: Path, signum: int) -> None:
    source = tmp_path / "in.jsonl"
    write_texts(source, 400)
    out = tmp_path / "out.parquet"
    child = start_child(["encode", source, "-o", out, "--chunk-size", "25", "--batch-size", "5"], delay=0.02)
    wait_until(lambda: any(tmp_path.glob(".out.parquet.sbert-tmp-*")), child)  # the first window is written
    name = signal.Signals(signum).name
    assert terminate(child, signum) == f"sbert: error: stopped by {name}; no output was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


# The fake encoder with a batch that never ends, and sbert's signal handlers noted as they return: the first signal
# is seen to be taken (and the run to go on) before the second is sent.
BLOCKED_SETUP = FAKE_SETUP + """
import signal as real_signal
from pathlib import Path
import sbert_cli.signals

class NotingSignals:
    def __getattr__(self, name):
        return getattr(real_signal, name)

    @staticmethod
    def signal(signum, handler):
        if not callable(handler):
            return real_signal.signal(signum, handler)

        def noted(number, frame):
            handler(number, frame)
            with open(os.environ["SIGNALS_TAKEN"], "a") as taken:
                taken.write(f"{number}\\n")

        return real_signal.signal(signum, noted)

sbert_cli.signals.signal = NotingSignals()

class BlockedFakeEncoder(FakeEncoder):
    def embed(self, ids):
        Path(os.environ["BATCH_STARTED"]).touch()
        time.sleep(3600)  # only a stop at once ends this batch
        return super().embed(ids)

sbert_cli.encoder.open_model = lambda options: FakeHandle(BlockedFakeEncoder(record=False))
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_stops_the_run_at_once(tmp_path: Path, signum: int) -> None:
    """The first signal asks for a stop after the batch, which never ends here; the second stops the run at once."""
    source = tmp_path / "in.jsonl"
    write_texts(source, 10)
    started, taken = tmp_path / "started", tmp_path / "taken"
    env = {**os.environ, "BATCH_STARTED": str(started), "SIGNALS_TAKEN": str(taken)}
    child = subprocess.Popen(
        [sys.executable, "-c", cli_child(BLOCKED_SETUP, report_rss=False), "encode", str(source), "-o", str(tmp_path / "out.parquet")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until(started.exists, child)
        child.send_signal(signum)
        wait_until(lambda: taken.exists() and taken.read_text() == f"{int(signum)}\n", child)  # taken, and the run goes on
        name = signal.Signals(signum).name
        assert terminate(child, signum) == f"sbert: error: stopped by {name}; no output was written"
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "started", "taken"]


HOLD_LOCK = """
import sys, time
from pathlib import Path
from sbert_cli.io.lock import output_lock
with output_lock(Path(sys.argv[1]), "held", remove=False):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "in.jsonl"
    write_texts(source, 10)
    out = tmp_path / "out.parquet"
    lock = tmp_path / ".out.parquet.sbert.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = run("encode", source, "-o", out)
        assert result.exit_code == 1
        assert error_of(result) == (
            f"sbert: error: {out}: another sbert run (pid {holder.pid} on {os.uname().nodename}) is writing this output; "
            "wait for it to finish"
        )
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone, and the kernel dropped its lock with it: the next run needs no clean-up.
    assert lock.exists()
    result = run("encode", source, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.parquet"]


@pytest.mark.parametrize("suffix", ["parquet", "npy", "jsonl"])
def test_full_disk_fails_in_one_line_with_no_partial_file(tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """ENOSPC on the n-th write, as a full disk gives it; the previous output survives."""
    import builtins

    source = tmp_path / "in.jsonl"
    write_texts(source, 100)
    out = tmp_path / f"out.{suffix}"
    out.write_bytes(b"yesterday's output")
    real_open = builtins.open

    class FullDisk:
        def __init__(self, stream):
            self._stream, self._writes = stream, 0

        def write(self, data):
            self._writes += 1
            if self._writes > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self._stream.write(data)

        def __getattr__(self, name):
            return getattr(self._stream, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._stream.__exit__(*exc)

    def open_on_full_disk(file, mode="r", *args, **kwargs):
        stream = real_open(file, mode, *args, **kwargs)
        return FullDisk(stream) if "w" in mode and ".sbert-tmp-" in str(file) else stream

    import pyarrow

    monkeypatch.setattr(builtins, "open", open_on_full_disk)
    if suffix == "parquet":
        real_writer = pyarrow.parquet.ParquetWriter.write_table
        calls = []

        def write_table(self, table, *args, **kwargs):
            calls.append(1)
            if len(calls) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_writer(self, table, *args, **kwargs)

        monkeypatch.setattr(pyarrow.parquet.ParquetWriter, "write_table", write_table)
    result = run("encode", source, "-o", out, "--chunk-size", "10")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {out}: cannot write (No space left on device); nothing was written"
    assert out.read_bytes() == b"yesterday's output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", f"out.{suffix}"]
