"""The output guarantees, written once and run on every place an output can go (as fsspec's abstract suites are
inherited by each filesystem): a local folder and a bucket on an S3 server (moto on loopback).

1. Atomic publish: a run killed mid-write leaves nothing under the output's name, and an output already there is left
   as it was, byte for byte; so does a run that fails.
2. Leftovers removed: the next run on the output removes what a killed run left (temporaries beside the output, or
   in a store output's spool folder) and leaves nothing but its output.
3. Resume: a directory output killed after some shards finishes with --resume, equal to an uninterrupted run.
4. One run at a time: a second run on an output held by a live one is refused at once, naming it; once the first
   finishes, the second runs.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.dataset
import pyarrow.fs
import pyarrow.parquet as pq
import pytest

from sbert_cli.io.publish import TEMPORARY_MARK, spool_dir
from tests.conftest import Bucket, FakeEncoder, expected_fake_vectors
from tests.test_cli import error_of, run
from tests.test_unattended import start_child, wait_until, write_texts

HOST = socket.gethostname()


class Place:
    """Where outputs go: a container (a local folder, or a bucket) whose folder or prefix `jobs/` the runs write
    under. Names are relative to the container, so a listing shows anything a run left beside `jobs/` too; files
    are set up and read back through plain pyarrow, not through sbert."""

    def __init__(self, fs: pyarrow.fs.FileSystem, container: str, url_prefix: str) -> None:
        self.fs, self.container, self.url_prefix = fs, container, url_prefix

    def url(self, name: str) -> str:
        """What -o is given for jobs/NAME: a local path, or s3://bucket/jobs/NAME (a trailing / kept)."""
        return f"{self.url_prefix}{self.container}/jobs/{name}"

    def listing(self) -> list[str]:
        """Every file in the container, by its name relative to it."""
        selector = pyarrow.fs.FileSelector(self.container, recursive=True, allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(info.path[len(self.container) + 1:] for info in infos if info.type == pyarrow.fs.FileType.File)

    def read(self, name: str) -> bytes:
        with self.fs.open_input_stream(f"{self.container}/{name}") as stream:
            return stream.read()

    def write(self, name: str, data: bytes) -> None:
        self.fs.create_dir(str(PurePosixPath(f"{self.container}/{name}").parent))
        with self.fs.open_output_stream(f"{self.container}/{name}") as stream:
            stream.write(data)

    def table(self, name: str) -> pa.Table:
        """A file, or a directory of shards, as any dataset reader takes it."""
        return pyarrow.dataset.dataset(f"{self.container}/{name}", filesystem=self.fs, format="parquet").to_table()

    def shards_done(self, directory: str) -> int:
        """How many shards the manifest of jobs/DIRECTORY lists (0 while it has none, or none is there yet)."""
        try:
            return len(json.loads(self.read(f"jobs/{directory}.sbert/manifest.json"))["shards"])
        except (OSError, ValueError, KeyError):
            return 0

    def temporaries(self, output: str) -> list[str]:
        """Every temporary file of any run on `output`: beside it in the container, or in its local spool folder."""
        here = [self.url(name[len("jobs/"):]) for name in self.listing() if TEMPORARY_MARK in name]
        spool = spool_dir(output)
        spooled = sorted(str(path) for path in spool.rglob(f"*{TEMPORARY_MARK}*")) if spool.is_dir() else []
        return here + spooled

    def busy(self, output: str, pid: int) -> str:
        """The regex of the whole error line of a run refused because run `pid` holds `output`."""
        raise NotImplementedError


class LocalPlace(Place):
    def __init__(self, folder: Path) -> None:
        (folder / "jobs").mkdir(parents=True)
        super().__init__(pyarrow.fs.LocalFileSystem(), str(folder), "")

    def busy(self, output: str, pid: int) -> str:
        return (
            rf"sbert: error: {re.escape(output)}: another sbert run \(pid {pid} on {re.escape(HOST)}\) is writing this output; "
            r"wait for it to finish"
        )


class StorePlace(Place):
    def __init__(self, bucket: Bucket) -> None:
        super().__init__(bucket.fs, bucket.name, "s3://")

    def busy(self, output: str, pid: int) -> str:
        return (
            rf"sbert: error: {re.escape(output)}: another sbert run \(pid {pid} on {re.escape(HOST)}\) holds this output's lease, "
            r"renewed \d+ s ago; wait for it to finish \(a lease not renewed for 300 s is taken over\)"
        )


@contextmanager
def child_run(args: list, delay: float, **env: str) -> Iterator[subprocess.Popen]:
    """The real command in a process of its own, each batch slowed by `delay`; killed (by its own handle) if it
    still runs when the block ends."""
    child = start_child(args, delay, **env)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.communicate()


def kill_mid_write(place: Place, runs: list[list]) -> None:
    """Start the runs at once, wait until each has written its first window under a temporary name, SIGKILL each."""
    children = [start_child(args, delay=0.02) for args in runs]
    try:
        for args, child in zip(runs, children):
            output = str(args[args.index("-o") + 1])
            wait_until(lambda: bool(place.temporaries(output)), child)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
            child.communicate()
    assert [child.returncode for child in children] == [-signal.SIGKILL] * len(children)


def slow_run(source: Path, output: str) -> list:
    """400 rows in windows of 25 and batches of 5: 80 batches, so a run slowed by 0.02 s a batch writes for 1.6 s."""
    return ["encode", source, "-o", output, "--id-column", "id", "--chunk-size", "25", "--batch-size", "5"]


def rows_of(table: pa.Table) -> tuple[list, np.ndarray]:
    return table.column("id").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)


def hidden(name: str) -> bool:
    return PurePosixPath(name).name.startswith(".")


class OutputGuarantees:
    """The suite; a subclass gives the `place` fixture."""

    def test_a_killed_or_failed_run_publishes_nothing_and_keeps_the_earlier_output(
        self, place: Place, tmp_path: Path, fake_encoder: FakeEncoder
    ) -> None:
        earlier = b"yesterday's output, byte for byte \x00\xff"
        place.write("jobs/out.parquet", earlier)
        out, fresh = place.url("out.parquet"), place.url("fresh.parquet")

        # A run that fails on a bad row after some windows were written: exit 1, the earlier output as it was.
        bad = tmp_path / "bad.jsonl"
        write_texts(bad, 60)
        with bad.open("a", encoding="utf-8") as stream:
            stream.write('{"id": "bad", "text": null}\n{"id": "after", "text": "后"}\n')
        failed = run("encode", bad, "-o", out, "--id-column", "id", "--chunk-size", "10")
        assert failed.exit_code == 1, failed.output
        assert error_of(failed) == f"sbert: error: {bad}:61: 'text' is null"
        assert place.read("jobs/out.parquet") == earlier
        assert place.listing() == ["jobs/out.parquet"]  # no temporary, no lock or lease
        assert not spool_dir(out).exists()

        # Runs killed mid-write: none at a new name, the earlier output untouched.
        source = tmp_path / "in.jsonl"
        write_texts(source, 400)
        try:
            kill_mid_write(place, [slow_run(source, out), slow_run(source, fresh)])
            assert place.read("jobs/out.parquet") == earlier
            assert [name for name in place.listing() if not hidden(name)] == ["jobs/out.parquet"]
        finally:
            for output in (out, fresh):  # no later run on these outputs will clean a store output's spool folder
                shutil.rmtree(spool_dir(output), ignore_errors=True)

    def test_the_next_run_removes_what_a_killed_run_left(self, place: Place, tmp_path: Path, fake_encoder: FakeEncoder) -> None:
        source = tmp_path / "in.jsonl"
        texts = write_texts(source, 400)
        out = place.url("out.parquet")
        kill_mid_write(place, [slow_run(source, out)])
        left = place.temporaries(out)
        assert len(left) == 1, left
        assert "jobs/out.parquet" not in place.listing()

        rerun = run(*slow_run(source, out))
        assert rerun.exit_code == 0, rerun.output
        assert f"sbert: removed 1 temporary file left by an earlier run that was killed: {left[0]}" in rerun.stderr.splitlines()
        assert place.temporaries(out) == []
        assert not spool_dir(out).exists()
        assert place.listing() == ["jobs/out.parquet"]  # the killed run's lock or lease is gone too
        ids, vectors = rows_of(place.table("jobs/out.parquet"))
        assert ids == [f"r{i}" for i in range(400)]
        np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))

        # A successful run with nothing to clean up leaves no spool folder either.
        fresh = place.url("fresh.parquet")
        clean = run("encode", source, "-o", fresh, "--id-column", "id", "--chunk-size", "100")
        assert clean.exit_code == 0, clean.output
        assert "removed" not in clean.stderr
        assert not spool_dir(fresh).exists()
        assert place.listing() == ["jobs/fresh.parquet", "jobs/out.parquet"]
        assert place.table("jobs/fresh.parquet").equals(place.table("jobs/out.parquet"))

    def test_resume_after_sigkill_equals_an_uninterrupted_run(self, place: Place, tmp_path: Path, fake_encoder: FakeEncoder) -> None:
        source = tmp_path / "in.jsonl"
        write_texts(source, 600)
        args = ["encode", source, "--id-column", "id", "--shard-rows", "100", "--chunk-size", "25", "--batch-size", "5"]
        whole = run(*args, "-o", place.url("whole/"))  # the child's encoder is this fake, slowed
        assert whole.exit_code == 0, whole.output

        out = place.url("killed/")
        with child_run([*args, "-o", out], delay=0.02) as child:
            wait_until(lambda: place.shards_done("killed") >= 2, child)
            child.send_signal(signal.SIGKILL)
            child.wait()
        done = place.shards_done("killed")
        assert 2 <= done < 6

        resumed = run(*args, "-o", out, "--resume")
        assert resumed.exit_code == 0, resumed.output
        # The summary's first count is the rows this run encoded; the rows of the shards it kept are in parentheses.
        encoded = "1 shard" if done == 5 else f"{6 - done} shards"
        summary = (
            rf"sbert: {600 - done * 100} rows, {encoded} encoded, {done} already done \({done * 100} rows\), dim 4, fp32 on cpu, "
            rf"\d+\.\d s, \d+\.\d rows/s, 0 truncated to 16 tokens -> {re.escape(place.url('killed'))}"
        )
        assert re.fullmatch(summary, resumed.stderr.strip().splitlines()[-1]), resumed.stderr
        ids, vectors = rows_of(place.table("jobs/killed"))
        whole_ids, whole_vectors = rows_of(place.table("jobs/whole"))
        assert ids == whole_ids == [f"r{i}" for i in range(600)]
        np.testing.assert_array_equal(vectors, whole_vectors)

        manifest = json.loads(place.read("jobs/killed.sbert/manifest.json"))
        assert manifest["complete"] is True and len(manifest["shards"]) == 6
        names = place.listing()
        assert [name for name in names if name.startswith("jobs/killed/")] == [f"jobs/killed/part-{i:05d}.parquet" for i in range(6)]
        assert {name for name in names if name.startswith("jobs/killed.sbert/")} <= {"jobs/killed.sbert/manifest.json", "jobs/killed.sbert/lock"}
        assert place.temporaries(out) == []
        assert not spool_dir(out).exists()

    def test_one_run_at_a_time(self, place: Place, tmp_path: Path, fake_encoder: FakeEncoder) -> None:
        source = tmp_path / "in.jsonl"
        texts = write_texts(source, 400)
        out = place.url("out.parquet")
        gate = tmp_path / "gate"  # the first run holds after its 10th batch (two windows) until the gate is removed
        gate.touch()
        # Only should the second run wait for the first (the promise broken) is the gate opened for it, much later.
        opener = threading.Timer(300, gate.unlink, kwargs={"missing_ok": True})
        opener.start()
        try:
            with child_run(slow_run(source, out), delay=0, FAKE_GATE=str(gate), FAKE_GATE_AFTER="10") as first:
                wait_until(lambda: bool(place.temporaries(out)), first)  # it holds the output, and is writing
                second = run(*slow_run(source, out))
                assert first.poll() is None  # refused at once, while the first still runs (no waiting for it)
                gate.unlink()
                _, first_stderr = first.communicate(timeout=60)
        finally:
            opener.cancel()
        assert second.exit_code == 1, second.output
        assert re.fullmatch(place.busy(out, first.pid), error_of(second)), error_of(second)
        assert first.returncode == 0, first_stderr
        ids, vectors = rows_of(place.table("jobs/out.parquet"))  # the refused run took nothing from the first
        assert ids == [f"r{i}" for i in range(400)]
        np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))

        again = run(*slow_run(source, out))
        assert again.exit_code == 0, again.output
        assert "removed" not in again.stderr and "took over" not in again.stderr
        assert place.listing() == ["jobs/out.parquet"]
        assert not spool_dir(out).exists()


class TestLocalDisk(OutputGuarantees):
    @pytest.fixture
    def place(self, tmp_path: Path) -> Place:
        return LocalPlace(tmp_path / "place")


class TestS3(OutputGuarantees):
    @pytest.fixture
    def place(self, bucket: Bucket) -> Place:
        """A fresh bucket on the moto server; `bucket` points the environment (children inherit it) at it."""
        return StorePlace(bucket)
