"""Object stores over HTTP, against moto's S3 server on loopback: every input format from a key, a prefix and a glob;
every output kind into a bucket and read back by other readers; nothing half-written after SIGKILL; --resume; each
failure as one line."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sbert_cli.io import retry
from sbert_cli.io.publish import spool_dir
from tests.conftest import FAKE_SETUP, ROOT, Bucket, FakeEncoder, cli_child, expected_fake_vectors
from tests.test_cli import error_of, run
from tests.test_unattended import (
    read_shards,
    run_child,
    start_child,
    uninterrupted_run,
    wait_until,
    write_texts,
)

IDS = [f"r{i}" for i in range(12)]
TEXTS = [f"第{i}行" + "字" * (i % 4) for i in range(12)]


def encoded(fmt: str, ids: list[str], texts: list[str]) -> bytes:
    if fmt == "parquet":
        sink = io.BytesIO()
        pq.write_table(pa.table({"id": ids, "text": texts}), sink)
        return sink.getvalue()
    if fmt == "jsonl":
        return "".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in zip(ids, texts)).encode()
    separator = "\t" if fmt == "tsv" else ","
    return ("".join(f"{i}{separator}{t}\n" for i, t in zip(["id", *ids], ["text", *texts]))).encode()


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
@pytest.mark.parametrize("form", ["key", "prefix", "glob"])
def test_each_format_from_a_key_a_prefix_and_a_glob(bucket: Bucket, tmp_path: Path, fake_encoder: FakeEncoder, fmt: str, form: str) -> None:
    if form == "key":
        source = bucket.put(f"in/all.{fmt}", encoded(fmt, IDS, TEXTS))
    else:
        for index, (start, end) in enumerate([(0, 5), (5, 6), (6, 12)]):
            bucket.put(f"in/day={index}/part-{index}.{fmt}", encoded(fmt, IDS[start:end], TEXTS[start:end]))
        bucket.put("in/_SUCCESS", b"")
        bucket.put(f"in/day=0/.part-0.{fmt}.crc", b"\0")
        source = bucket.url("in/") if form == "prefix" else bucket.url(f"in/day=*/*.{fmt}")
    out = tmp_path / "out.parquet"
    result = run("encode", source, "-o", out, "--id-column", "id", "--chunk-size", "4")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == IDS
    np.testing.assert_array_equal(np.asarray(table.column("embedding").to_pylist(), dtype=np.float32), expected_fake_vectors(TEXTS))


def read_back(bucket: Bucket, kind: str) -> tuple[list, np.ndarray]:
    """The output as another program reads it from the bucket: pyarrow, pandas, numpy, polars."""
    import pandas
    import polars

    options = {
        "aws_endpoint_url": bucket.endpoint, "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
        "aws_region": "us-east-1", "aws_allow_http": "true",
    }
    if kind == "npy":
        ids = [json.loads(line) for line in bucket.get("out.ids.jsonl").decode().splitlines()]
        return ids, np.load(io.BytesIO(bucket.get("out.npy")))
    if kind == "jsonl":
        rows = [json.loads(line) for line in bucket.get("out.jsonl").decode().splitlines()]
        return [row["id"] for row in rows], np.asarray([row["embedding"] for row in rows], dtype=np.float32)
    import pyarrow.dataset

    key = "out.parquet" if kind == "parquet" else "vectors"
    host = bucket.endpoint.split("://")[1]
    table = pyarrow.dataset.dataset(f"{bucket.name}/{key}", filesystem=bucket.fs).to_table()
    by_uri = pyarrow.dataset.dataset(f"s3://{bucket.name}/{key}?endpoint_override={host}&scheme=http").to_table()
    frame = polars.read_parquet(bucket.url(key if kind == "parquet" else f"{key}/*.parquet"), storage_options=options)
    pandas_frame = pandas.read_parquet(f"{bucket.name}/{key}", filesystem=bucket.fs)  # pandas takes pyarrow's S3 filesystem
    assert by_uri.equals(table) and frame["id"].to_list() == table.column("id").to_pylist()
    assert pandas_frame["id"].tolist() == table.column("id").to_pylist()
    return table.column("id").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)


@pytest.mark.parametrize("kind", ["parquet", "npy", "jsonl", "directory"])
def test_each_output_kind_to_the_store(bucket: Bucket, tmp_path: Path, fake_encoder: FakeEncoder, kind: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(encoded("jsonl", IDS, TEXTS))
    target = bucket.url("vectors/") if kind == "directory" else bucket.url(f"out.{kind}")
    result = run("encode", source, "-o", target, "--id-column", "id", "--shard-rows", "5", "--chunk-size", "3")
    assert result.exit_code == 0, result.output
    ids, vectors = read_back(bucket, kind)
    assert ids == IDS
    np.testing.assert_array_equal(vectors, expected_fake_vectors(TEXTS))
    expected = {
        "parquet": ["out.parquet"], "npy": ["out.ids.jsonl", "out.npy"], "jsonl": ["out.jsonl"],
        "directory": ["vectors.sbert/manifest.json", *(f"vectors/part-{i:05d}.parquet" for i in range(3))],
    }[kind]
    assert bucket.listing() == expected  # no lease, no temporary object left behind
    assert not spool_dir(target).exists() or not any(spool_dir(target).iterdir())
    manifest = json.loads(bucket.get("vectors.sbert/manifest.json")) if kind == "directory" else None
    assert manifest is None or [shard["bytes"] for shard in manifest["shards"]] == [bucket.fs.get_file_info(f"{bucket.name}/vectors/{s['file']}").size for s in manifest["shards"]]


def test_rejects_and_resume_in_the_store(bucket: Bucket, tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    lines = encoded("jsonl", IDS, TEXTS).decode().splitlines()
    lines[3] = '{"id": "r3", "text": null}'
    source = bucket.put("in.jsonl", ("\n".join(lines) + "\n").encode())
    common = ["encode", source, "-o", bucket.url("vectors"), "--id-column", "id", "--shard-rows", "5", "--on-error", "skip"]
    assert run(*common).exit_code == 3
    assert json.loads(bucket.get("vectors.sbert/rejects/part-00000.rejects.jsonl")) == {
        "row": 3, "id": "r3", "where": f"{source}:4", "reason": "'text' is null",
    }
    again = run(*common, "--resume")
    assert again.exit_code == 0 and again.stderr.strip() == f"sbert: {bucket.url('vectors')} is complete; nothing to do"
    changed = run(*common, "--shard-rows", "6", "--resume")
    assert changed.exit_code == 2
    assert error_of(changed) == f"sbert: error: {bucket.url('vectors')}: options differ from the manifest's (shard_rows: 5 -> 6); resume with the same options"
    assert error_of(run(*common)) == (
        f"sbert: error: {bucket.url('vectors')}: holds 3 finished shards of an earlier run; pass --resume to finish it, or --overwrite to start over"
    )
    bucket.put("in.jsonl", ("\n".join(lines[:-1]) + "\n").encode())
    assert re.fullmatch(  # a store's mtime is LastModified, to the second: a rewrite within it changes only the size
        rf"sbert: error: {bucket.url('vectors')}: the input files differ from the manifest's \({source} changed \(size(, mtime_ns)?\)\); "
        "resume only with the same input files, or pass --overwrite to start over with these",
        error_of(run(*common, "--resume")),
    )
    bucket.put("other/notes.txt", b"mine")
    foreign = run("encode", source, "-o", bucket.url("other/"))
    assert error_of(foreign) == f"sbert: error: {bucket.url('other')}: holds files sbert did not write ('notes.txt'); pass an empty or new directory to -o"


def wait_for_store_shards(bucket: Bucket, count: int, child) -> None:
    def finished_enough() -> bool:
        try:
            return len(json.loads(bucket.get("killed.sbert/manifest.json"))["shards"]) >= count
        except (OSError, ValueError):
            return False

    wait_until(finished_enough, child)


@pytest.mark.slow
def test_resume_after_sigkill_in_the_store_equals_an_uninterrupted_run(bucket: Bucket, tmp_path: Path) -> None:
    args = uninterrupted_run(tmp_path)  # 600 rows, 6 shards, written locally to tmp_path/whole
    child = start_child([*args, "-o", bucket.url("killed/")], delay=0.01)
    wait_for_store_shards(bucket, 2, child)
    child.send_signal(signal.SIGKILL)
    child.wait()
    # Nothing under a final name is partial: every shard object is a whole Parquet file of 100 rows.
    shards = [key for key in bucket.listing("killed") if key.startswith("killed/")]
    assert 2 <= len(shards) < 6
    for key in shards:
        assert pq.ParquetFile(bucket.fs.open_input_file(f"{bucket.name}/{key}")).metadata.num_rows == 100
    resumed = run_child([*args, "-o", bucket.url("killed/"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "which is no longer running" in resumed.stderr  # the killed run's lease, taken over at once
    manifest = json.loads(bucket.get("killed.sbert/manifest.json"))
    assert manifest["complete"] is True and len(manifest["shards"]) == 6
    table = pq.read_table(f"{bucket.name}/killed", filesystem=bucket.fs)
    ids, vectors = table.column("id").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    whole_ids, whole_vectors = read_shards(tmp_path / "whole")
    assert ids == whole_ids
    np.testing.assert_array_equal(vectors, whole_vectors)
    assert sorted(bucket.listing("killed.sbert")) == ["killed.sbert/manifest.json"]


@pytest.mark.slow
def test_a_killed_single_file_run_leaves_no_object(bucket: Bucket, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(encoded("jsonl", [f"r{i}" for i in range(400)], [f"第{i}行" for i in range(400)]))
    target = bucket.url("out.parquet")
    child = start_child(["encode", source, "-o", target, "--chunk-size", "25", "--batch-size", "5"], delay=0.02)
    wait_until(lambda: any(spool_dir(target).glob(".out.parquet.sbert-tmp-*")), child)  # the first window is written
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert bucket.listing() == [".out.parquet.sbert.lock"]  # the killed run's lease; no object at the output key
    rerun = run_child(["encode", source, "-o", target, "--chunk-size", "25"])
    assert rerun.returncode == 0, rerun.stderr
    assert "removed 1 temporary file left by an earlier run that was killed" in rerun.stderr
    assert bucket.listing() == ["out.parquet"]
    assert pq.read_table(f"{bucket.name}/out.parquet", filesystem=bucket.fs).num_rows == 400


# --- one line for each failure ---------------------------------------------------------------------------


def test_missing_bucket_key_and_prefix(bucket: Bucket, tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    endpoint = bucket.endpoint
    source = bucket.put("in.jsonl", encoded("jsonl", IDS, TEXTS))
    cases = [
        (["s3://no-such-bucket/in.jsonl", "-o", tmp_path / "out.parquet"], f"s3://no-such-bucket/in.jsonl: bucket 'no-such-bucket' does not exist at {endpoint}; check the name, or create it"),
        ([source, "-o", "s3://no-such-bucket/out.parquet"], f"s3://no-such-bucket/out.parquet: bucket 'no-such-bucket' does not exist at {endpoint}; check the name, or create it"),
        ([bucket.url("missing.jsonl"), "-o", tmp_path / "out.parquet"], f"{bucket.url('missing.jsonl')}: no such key, and no objects under this prefix in bucket '{bucket.name}'; check the path"),
        ([bucket.url("empty/"), "-o", tmp_path / "out.parquet"], f"{bucket.url('empty/')}: holds no .csv, .tsv, .jsonl or .parquet files; check the path, or pass --format to read other names"),
        ([bucket.url("*.csv"), "-o", tmp_path / "out.parquet"], f"{bucket.url('*.csv')}: no objects match this pattern in bucket '{bucket.name}'; check the path"),
        ([source, "-o", bucket.url("in.jsonl/")], f"{bucket.url('in.jsonl')}: is an object, not a prefix; pass a new or empty prefix ending in /, or a .parquet, .npy or .jsonl key"),
    ]
    bucket.put("empty/_SUCCESS", b"")
    for args, line in cases:
        result = run("encode", *args)
        assert result.exit_code == 2, result.output
        assert error_of(result) == f"sbert: error: {line}"
    assert bucket.listing() == ["empty/_SUCCESS", "in.jsonl"]


def test_no_credentials(bucket: Bucket, tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    source = bucket.put("in.jsonl", encoded("jsonl", IDS, TEXTS))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = run("encode", source, "-o", tmp_path / "out.parquet")
    assert result.exit_code == 2
    assert error_of(result) == (
        f"sbert: error: {source}: no AWS credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
        "~/.aws/credentials or an instance role); set them, e.g. export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=..."
    )


def test_access_denied(bucket: Bucket, tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real 403 from the server: moto checks IAM policies once its authentication is switched on."""
    import boto3
    import moto.settings

    source = bucket.put("in.jsonl", encoded("jsonl", IDS, TEXTS))
    iam = boto3.client("iam", endpoint_url=bucket.endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
    user = f"lister-{bucket.name}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="list-only", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    result = run("encode", source, "-o", tmp_path / "out.parquet")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {source}: access denied (ACCESS_DENIED); check that these credentials may use bucket '{bucket.name}'"


def test_an_endpoint_that_does_not_answer(bucket: Bucket, tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("SBERT_STORE_RETRY_SECONDS", "1")  # the give-up time, one figure (60 s unless set)
    # The retries' clock moves only by their own waits: 0.25 s, then 0.5 s, and the next (1 s) would start past 1 s.
    clock = StepClock()
    monkeypatch.setattr(retry, "time", clock)
    monkeypatch.setattr(retry, "_GIVEN_UP", {})
    result = run("encode", bucket.url("in.jsonl"), "-o", tmp_path / "out.parquet")
    assert result.exit_code == 1
    assert error_of(result) == (
        f"sbert: error: {bucket.url('in.jsonl')}: http://127.0.0.1:{port} does not answer (Could not connect to server) "
        "for 1 s of retries; check AWS_ENDPOINT_URL and the network"
    )
    assert clock.waits == [0.25, 0.5]


def test_a_live_lease_refuses_a_second_run(bucket: Bucket, tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    from sbert_cli.io import lease as leases

    now = time.time()
    monkeypatch.setattr(leases, "time", SimpleNamespace(time=lambda: now))  # the lease's clock stands still: ages are exact
    source = tmp_path / "in.jsonl"
    source.write_bytes(encoded("jsonl", IDS, TEXTS))
    lease = {"token": "other", "pid": 4121, "host": "etl-2", "renewed": now - 30}
    bucket.put("vectors.sbert/lock", json.dumps(lease).encode())
    result = run("encode", source, "-o", bucket.url("vectors/"))
    assert result.exit_code == 1
    assert error_of(result) == (
        f"sbert: error: {bucket.url('vectors')}: another sbert run (pid 4121 on etl-2) holds this output's lease, renewed 30 s ago; "
        "wait for it to finish (a lease not renewed for 300 s is taken over)"
    )
    bucket.put("vectors.sbert/lock", json.dumps({**lease, "renewed": now - 299}).encode())
    assert run("encode", source, "-o", bucket.url("vectors/")).exit_code == 1  # fresh to the last second
    bucket.put("vectors.sbert/lock", json.dumps({**lease, "renewed": now - 1000}).encode())
    result = run("encode", source, "-o", bucket.url("vectors/"))
    assert result.exit_code == 0, result.output
    assert f"sbert: {bucket.url('vectors')}: took over the lease of pid 4121 on etl-2, not renewed for 1000 s" in result.stderr
    assert "vectors.sbert/lock" not in bucket.listing()


def test_evaluate_and_cache_read_from_the_store(bucket: Bucket, tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    from tests.conftest import SAMPLE_DATA

    pairs = bucket.put("sets/pairs.tsv", (SAMPLE_DATA / "pairs.tsv").read_bytes())
    local = run("evaluate", SAMPLE_DATA / "pairs.tsv", "--json", "-q")
    remote = run("evaluate", pairs, "--json", "-q")
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout)["results"][0]["spearman"] == json.loads(local.stdout)["results"][0]["spearman"]
    missing = run("evaluate", bucket.url("sets/none.tsv"))
    assert error_of(missing) == f"sbert: error: {bucket.url('sets/none.tsv')}: no such key in bucket '{bucket.name}'; check the path"
    source = bucket.put("in.jsonl", encoded("jsonl", IDS, TEXTS))
    cache = tmp_path / "cache.sqlite"
    assert run("encode", source, "-o", tmp_path / "a.parquet", "--cache", cache).exit_code == 0
    again = run("encode", source, "-o", tmp_path / "b.parquet", "--cache", cache)
    assert f"sbert: {len(IDS)} rows, {len(IDS)} from the cache, 0 encoded" in again.stderr


def test_a_lease_taken_by_another_run_stops_this_one_before_it_publishes(bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    from sbert_cli.errors import OutputError
    from sbert_cli.io import lease as leases
    from sbert_cli.io.storage import StorePath

    monkeypatch.setattr(leases, "RENEW_SECONDS", 0.05)
    path = StorePath.parse(bucket.url("out.sbert/lock"))
    notices: list[str] = []
    with leases.output_lease(path, bucket.url("out"), notices.append) as lease:
        held = json.loads(bucket.get("out.sbert/lock"))
        assert held["pid"] == os.getpid() and held["token"] == lease.token and not notices
        lease.check()  # still ours
        assert lease._thread is not None
        for _ in range(1000):  # the other run renews its lease too: a renewal of ours may overwrite one write
            bucket.put("out.sbert/lock", json.dumps({**held, "token": "theirs", "host": "etl-2", "pid": 7}).encode())
            lease._thread.join(timeout=0.1)  # the renewing thread ends only once it finds another's token
            if not lease._thread.is_alive():
                break
        assert not lease._thread.is_alive()
        with pytest.raises(OutputError) as stopped:
            lease.check()
    assert str(stopped.value) == f"{bucket.url('out')}: another sbert run (pid 7 on etl-2) took this output's lease; this run stopped without publishing more"
    assert json.loads(bucket.get("out.sbert/lock"))["token"] == "theirs"  # the winner's lease is left alone


def test_a_torn_read_of_the_lease_does_not_end_its_renewal(bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    """A renewal that reads the lease while another write lands can get bytes that are not UTF-8 (seen once in CI):
    that raised in the renewing thread, which died, so the lease was neither renewed nor checked and a theft went
    unseen. Such a read is neither ours nor theirs: the renewal asks again, keeps the lease, and still finds a thief."""
    from sbert_cli.errors import OutputError
    from sbert_cli.io import lease as leases
    from sbert_cli.io.storage import StorePath

    monkeypatch.setattr(leases, "RENEW_SECONDS", 0.05)
    path = StorePath.parse(bucket.url("out.sbert/lock"))
    with leases.output_lease(path, bucket.url("out"), lambda message: None) as lease:
        held = json.loads(bucket.get("out.sbert/lock"))
        assert lease._thread is not None
        for torn in (b'{"token": "\x86\xff', b'{"token": "th'):  # not UTF-8; not JSON
            bucket.put("out.sbert/lock", torn)
            time.sleep(0.3)  # several renewals read it
            assert lease._thread.is_alive() and lease.lost is None
            assert bucket.get("out.sbert/lock") == torn  # no answer either way: not overwritten, not given up
        for _ in range(1000):
            bucket.put("out.sbert/lock", json.dumps({**held, "token": "theirs", "host": "etl-2", "pid": 7}).encode())
            lease._thread.join(timeout=0.1)
            if not lease._thread.is_alive():
                break
        with pytest.raises(OutputError):
            lease.check()


def test_the_default_output_sits_beside_a_store_input(bucket: Bucket, fake_encoder: FakeEncoder) -> None:
    source = bucket.put("data/in.jsonl", encoded("jsonl", IDS, TEXTS))
    result = run("encode", source, "--id-column", "id")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().endswith(f"-> {bucket.url('data/in.embeddings.parquet')}")
    assert pq.read_table(f"{bucket.name}/data/in.embeddings.parquet", filesystem=bucket.fs).column("id").to_pylist() == IDS
    refused = run("encode", source, "-o", bucket.url("data/out.parquet"), "--cache", bucket.url("cache.sqlite"))
    assert refused.exit_code == 2
    assert error_of(refused) == (
        f"sbert: error: {bucket.url('cache.sqlite')}: --cache is a local SQLite file, which a bucket cannot hold; pass a local path, e.g. --cache vectors.sqlite"
    )


@pytest.mark.parametrize(
    ("endpoint", "addressing", "expected"),
    [
        ("http://minio.internal:9000", "", ("http", "minio.internal:9000", False)),
        ("https://oss-cn-hangzhou.aliyuncs.com", "", ("https", "oss-cn-hangzhou.aliyuncs.com", True)),
        ("https://oss-cn-hangzhou.aliyuncs.com/", "path", ("https", "oss-cn-hangzhou.aliyuncs.com", False)),
        ("https://cos.example.com", "virtual", ("https", "cos.example.com", True)),
    ],
)
def test_the_filesystem_follows_the_environment(bucket: Bucket, monkeypatch: pytest.MonkeyPatch, endpoint: str, addressing: str, expected: tuple) -> None:
    """AWS_ENDPOINT_URL's scheme and host, bounded retries and timeouts, virtual hosting for OSS (no request made)."""
    from sbert_cli.io.storage import StorePath

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("SBERT_S3_ADDRESSING", addressing)
    options = StorePath.parse("s3://any-bucket/key").fs.__reduce__()[1][0]
    assert (options["scheme"], options["endpoint_override"], options["force_virtual_addressing"]) == expected
    assert (options["connect_timeout"], options["request_timeout"], options["region"]) == (5.0, 30.0, "us-east-1")


def test_a_malformed_endpoint_is_one_line(bucket: Bucket, tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "minio.internal:9000")
    result = run("encode", bucket.url("in.jsonl"), "-o", tmp_path / "out.parquet")
    assert result.exit_code == 2
    assert error_of(result) == "sbert: error: AWS_ENDPOINT_URL=minio.internal:9000: expected http://HOST[:PORT] or https://HOST[:PORT]"


@pytest.mark.parametrize("kind", ["npy", "jsonl"])
def test_int8_ranges_sidecar_goes_to_the_store_beside_its_vectors(bucket: Bucket, tmp_path: Path, fake_encoder: FakeEncoder, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a sidecar path that lost its store would land here, under "s3:"
    source = tmp_path / "in.jsonl"
    source.write_bytes(encoded("jsonl", IDS, TEXTS))
    result = run("encode", source, "-o", bucket.url(f"out.{kind}"), "--id-column", "id", "--dtype", "int8")
    assert result.exit_code == 0, result.output
    assert f"out.{kind}.quantization.json" in bucket.listing()
    assert json.loads(bucket.get(f"out.{kind}.quantization.json"))["dtype"] == "int8"
    assert not (tmp_path / "s3:").exists()


class StepClock:
    """time as io.retry uses it, whose monotonic clock moves only by the waits asked of it (it records them)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


# The fake encoder, with the lease renewed every 0.05 s; at the batch that holds the text STEAL_TEXT another run's
# token is written into the lease (again every 0.02 s, as that run renews it), and the batch waits until this run's
# renewal has found it.
STEAL_SETUP = FAKE_SETUP + """
import json
import sbert_cli.io.lease as leases

leases.RENEW_SECONDS = 0.05
held = []
_real_init = leases.Lease.__init__

def _init(self, *args, **kwargs):
    _real_init(self, *args, **kwargs)
    held.append(self)

leases.Lease.__init__ = _init

class StealingFakeEncoder(FakeEncoder):
    def embed(self, ids):
        if [1, *map(ord, os.environ["STEAL_TEXT"]), 2] in [[int(value) for value in row] for row in ids]:
            [lease] = held
            while lease.lost is None:  # the other run renews its lease too (a renewal of ours may overwrite one write)
                theirs = {"token": "theirs", "pid": 7, "host": "etl-2", "renewed": time.time()}
                lease.path.write_text(json.dumps(theirs) + "\\n")
                time.sleep(0.02)
        return super().embed(ids)

sbert_cli.encoder.open_model = lambda options: FakeHandle(StealingFakeEncoder(record=False))
"""


@pytest.mark.slow
def test_a_lease_stolen_mid_run_stops_the_run_and_no_further_shard_appears(bucket: Bucket, tmp_path: Path) -> None:
    """600 rows in shards of 100, windows of 25: the lease is taken while row 150 (window 6, in shard 1) is encoded.
    By then shard 0 is published (the writer finished it before it took window 4's rows), and shard 1 is published
    only once window 8 begins, after the run has found the theft: it publishes nothing more, and leaves the lease
    to the run that took it."""
    source = tmp_path / "in.jsonl"
    texts = write_texts(source, 600)
    out = bucket.url("vectors/")
    args = ["encode", source, "-o", out, "--id-column", "id", "--shard-rows", "100", "--chunk-size", "25", "--batch-size", "5"]
    env = {**os.environ, "STEAL_TEXT": texts[150]}
    child = subprocess.run(
        [sys.executable, "-c", cli_child(STEAL_SETUP, report_rss=False), *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 1, child.stderr
    assert child.stderr.strip().splitlines()[-1] == (
        f"sbert: error: {bucket.url('vectors')}: another sbert run (pid 7 on etl-2) took this output's lease; this run stopped without publishing more"
    )
    assert bucket.listing("vectors/") == ["vectors/part-00000.parquet"]
    manifest = json.loads(bucket.get("vectors.sbert/manifest.json"))
    assert manifest["complete"] is False and [entry["file"] for entry in manifest["shards"]] == ["part-00000.parquet"]
    assert json.loads(bucket.get("vectors.sbert/lock"))["token"] == "theirs"  # the winner's lease is left alone
    assert not spool_dir(out).exists()  # its unpublished shard went with it
