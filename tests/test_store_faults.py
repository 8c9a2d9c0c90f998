"""A flaky store survived: a fault-injecting proxy on loopback in front of the S3 server answers a share of requests
503 SlowDown or resets them. Runs finish with the rows of a clean run, or fail in one true line and the same command
finishes; a passing fault is never taken for another run; a store that keeps failing is given up in one line, and
the run leaves nothing of its own behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset
import pyarrow.parquet as pq
import pytest

from tests.conftest import Bucket, FakeEncoder, expected_fake_vectors
from tests.faulty_proxy import faulty_proxy
from tests.test_cli import error_of, run
from tests.test_unattended import start_child, wait_until

TEXTS = [f"第{i}句话，关于退款和天气" for i in range(240)]


@pytest.fixture
def source(bucket: Bucket) -> str:
    return bucket.put("in.jsonl", "".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in TEXTS).encode())


def through(proxy_url: str, monkeypatch: pytest.MonkeyPatch, retry_seconds: str = "60") -> None:
    """Point sbert at the proxy, with sbert's own retries only (the SDK tries each request once)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy_url)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.setenv("SBERT_STORE_RETRY_SECONDS", retry_seconds)


def read_back(bucket: Bucket, key: str) -> tuple[list, np.ndarray]:
    """Rows as the server holds them, read straight from it (not through the proxy)."""
    if key.endswith("/"):
        table = pyarrow.dataset.dataset(f"{bucket.name}/{key}", filesystem=bucket.fs, format="parquet").to_table()
    else:
        table = pq.read_table(pa.BufferReader(bucket.get(key)))
    return table.column("id").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)


def finish(args: list[str], tries: int = 6) -> list[str]:
    """Run until it succeeds, as cron would run the same line again; each failure must be one sbert line (no
    traceback). Returns the failure lines seen."""
    failures = []
    for _ in range(tries):
        result = run(*args)
        if result.exit_code == 0:
            return failures
        assert "Traceback" not in result.stderr, result.stderr
        line = error_of(result)
        assert line.startswith("sbert: error: ") and "another sbert run" not in line, line
        failures.append(line)
    raise AssertionError(f"not finished after {tries} runs: {failures}")


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.05, 0.3])
@pytest.mark.parametrize("output", ["out.parquet", "vecs/"])
def test_a_flaky_store_gives_the_rows_of_a_clean_run(bucket: Bucket, source: str, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch, rate: float, output: str) -> None:
    with faulty_proxy(bucket.endpoint, rate, seed=int(rate * 100)) as proxy:
        through(proxy.url, monkeypatch)
        args = ["encode", source, "-o", bucket.url(output), "--shard-rows", "60", "--chunk-size", "30", "-q"]
        failures = finish([*args, "--resume"] if output.endswith("/") else args)
        assert proxy.counts["503"] + proxy.counts["reset"] > 0  # faults were injected
    ids, vectors = read_back(bucket, output)
    assert ids == list(range(len(TEXTS)))
    np.testing.assert_array_equal(vectors, expected_fake_vectors(TEXTS))
    if rate == 0.05:
        assert failures == []  # a few percent of faults: retried within the run
    left = [key for key in bucket.listing() if key not in ("in.jsonl",) and not key.startswith("vecs")]
    assert left == [] or left == ["out.parquet"]  # no lease, no temporaries


def test_one_failed_read_of_the_lease_is_no_rival(bucket: Bucket, source: str, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 503 on reading the lease back once was taken for 'another run took it at the same moment' (exit 1), and the
    run's own lease was left behind."""
    with faulty_proxy(bucket.endpoint, 0.0, fail_first=("GET /" + bucket.name + "/.out.parquet.sbert.lock",)) as proxy:
        through(proxy.url, monkeypatch)
        result = run("encode", source, "-o", bucket.url("out.parquet"), "-q")
        assert proxy.counts["503"] == 1
    assert result.exit_code == 0, result.stderr
    assert bucket.listing() == ["in.jsonl", "out.parquet"]


def test_a_store_that_keeps_failing_is_given_up_in_one_line_leaving_nothing(bucket: Bucket, source: str, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    with faulty_proxy(bucket.endpoint, 1.0) as proxy:
        through(proxy.url, monkeypatch, retry_seconds="2")
        result = run("encode", source, "-o", bucket.url("vecs/"), "-q")
    assert result.exit_code == 1
    line = error_of(result)
    assert line.startswith(f"sbert: error: {bucket.url()}") and "s of retries" in line and "another sbert run" not in line, line
    assert bucket.listing() == ["in.jsonl"]  # no lease, no manifest, no marker


def test_a_full_local_spool_is_named_as_such_not_blamed_on_the_store(bucket: Bucket, source: str, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import tempfile

    import pyarrow.parquet

    def full(self, table, *args, **kwargs):  # what writing to a full disk raises (errno 28, as pyarrow reports it)
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pyarrow.parquet.ParquetWriter, "write_table", full)
    result = run("encode", source, "-o", bucket.url("vecs/"), "--shard-rows", "100")
    assert result.exit_code == 1
    assert error_of(result) == (
        f"sbert: error: {bucket.url('vecs/part-00000.parquet')}: cannot write its local spool file under {tempfile.gettempdir()} "
        "(No space left on device); free space there, or point TMPDIR at a disk with room for one shard (a single file: the whole "
        "output); no shard was finished; nothing was written"
    )
    assert bucket.listing() == ["in.jsonl"]


def test_a_store_lost_mid_directory_run_says_what_is_kept_and_how_to_go_on(bucket: Bucket, source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards published, then every request fails: the one line says the shards are kept and that --resume goes on,
    and the same command with --resume (a new process, as cron's next run) finishes once the store answers again."""
    with faulty_proxy(bucket.endpoint, 0.0) as proxy:
        through(proxy.url, monkeypatch, retry_seconds="1")
        args = ["encode", source, "-o", bucket.url("vecs/"), "--shard-rows", "60", "--chunk-size", "30"]
        child = start_child(args, delay=0.05)
        wait_until(lambda: "vecs/part-00001.parquet" in bucket.listing(), child)  # read straight from the server
        proxy.rate = 1.0  # the store stops answering
        _, stderr = child.communicate(timeout=120)
        assert child.returncode == 1 and "Traceback" not in stderr, stderr
        line = stderr.strip().splitlines()[-1]
        assert re.fullmatch(rf"sbert: error: .*; (1 finished shard|[23] finished shards) kept in {re.escape(bucket.url('vecs'))}; rerun with --resume to continue", line), line
        proxy.rate = 0.0
        resumed = start_child([*args, "--resume"], delay=0)
        _, stderr = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, stderr
        assert re.search(r"took over the lease of pid \d+ on .*, which is no longer running", stderr), stderr
    ids, vectors = read_back(bucket, "vecs/")
    assert ids == list(range(len(TEXTS)))
    np.testing.assert_array_equal(vectors, expected_fake_vectors(TEXTS))
