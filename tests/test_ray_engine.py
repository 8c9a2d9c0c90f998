"""--engine ray on a real three-node Ray cluster on 127.0.0.1 (one CPU a node) and on a local Ray: the same ids and
vectors as --engine local, every row exactly once, each cluster failure one line, nothing left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sbert_cli.similarity import cosine_rows
from tests.conftest import sample_texts
from tests.ray_cluster import LOOPBACK_ENV, ROOT, RayCluster
from tests.test_cli import error_of, run
from tests.test_datasets import assert_readers_see
from tests.test_unattended import EXPECTED_REJECTS, MIXED_LINES

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def loopback():
    """Ray on loopback only, for every process these tests start (the CLI runs in this one)."""
    saved = {name: os.environ.get(name) for name in LOOPBACK_ENV}
    os.environ.update(LOOPBACK_ENV)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def cluster(loopback):
    """A head and two worker nodes, one CPU each, shared by this module's tests (about 10 s to start)."""
    pytest.importorskip("ray", reason="the Ray tests need the extra: pip install -e '.[ray]' (make test-ray)")
    started = RayCluster(3)
    yield started
    started.close()


@pytest.fixture
def on_cluster(cluster) -> list[str]:
    """The options that run a job on the shared cluster."""
    return ["--engine", "ray", "--ray-address", cluster.address, "--workers", "2"]


def spools() -> set[str]:
    """The spool folders on this machine: a run must leave none of its own."""
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("sbert-spool-")}


def texts_for(count: int, salt: str) -> list[str]:
    base = sample_texts()
    return [f"{salt}{i}：{base[i % len(base)]}" for i in range(count)]


def read_dir(directory: Path) -> dict:
    table = pq.read_table(sorted(directory.glob("*.parquet")))
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "a row came out twice"
    return dict(zip(ids, np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)))


def read_file(path: Path) -> dict:
    table = pq.read_table(path)
    return dict(zip(table.column("id").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)))


def assert_same(ray_vectors: dict, local_vectors: dict) -> None:
    assert set(ray_vectors) == set(local_vectors)
    keys = sorted(local_vectors, key=str)
    cosines = cosine_rows(np.stack([ray_vectors[k] for k in keys]), np.stack([local_vectors[k] for k in keys]))
    assert cosines.min() >= 0.99999


def test_directory_of_parquet_shards(on_cluster, tmp_path: Path, tiny_model_dir: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    local: dict = {}
    for index in range(4):
        texts = texts_for(25, f"片{index}-")
        path = shards / f"part-{index}.parquet"
        pq.write_table(pa.table({"key": [f"{index}-{i}" for i in range(25)], "text": texts}), path)
        out = tmp_path / f"local-{index}.parquet"
        assert run("encode", path, "-o", out, "--model", tiny_model_dir, "--id-column", "key", "-q").exit_code == 0
        local.update(read_file(out))
    result = run("encode", shards, "-o", tmp_path / "ray-out", *on_cluster, "--model", tiny_model_dir, "--id-column", "key", "--chunk-size", "10", "--shard-rows", "40")
    assert result.exit_code == 0, result.output
    vectors = read_dir(tmp_path / "ray-out")
    assert len(vectors) == 100
    assert_same(vectors, local)
    schema = pq.read_schema(sorted((tmp_path / "ray-out").glob("*.parquet"))[0])
    assert str(schema.field("embedding").type) == "fixed_size_list<element: float>[32]"
    assert schema.metadata[b"sbert.model"] == str(tiny_model_dir).encode()
    assert "sbert: 100 rows, " in result.stderr


def test_one_jsonl_file_gets_row_number_ids(tmp_path: Path, tiny_model_dir: Path) -> None:
    """On a local Ray of sbert's own (no --ray-address)."""
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts_for(60, "行")), encoding="utf-8")
    assert run("encode", source, "-o", tmp_path / "local.parquet", "--model", tiny_model_dir, "-q").exit_code == 0
    result = run("encode", source, "-o", tmp_path / "ray-out", "--engine", "ray", "--model", tiny_model_dir, "--chunk-size", "7", "-q")
    assert result.exit_code == 0, result.output
    vectors = read_dir(tmp_path / "ray-out")
    assert sorted(vectors) == list(range(60))
    assert_same(vectors, read_file(tmp_path / "local.parquet"))


def test_bad_rows_follow_on_error(on_cluster, tmp_path: Path, tiny_model_dir: Path) -> None:
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(MIXED_LINES) + "\n", encoding="utf-8")
    common = ["encode", source, *on_cluster, "--model", tiny_model_dir, "--id-column", "id", "-q"]
    failed = run(*common, "-o", tmp_path / "fail-out")
    assert failed.exit_code == 1
    assert error_of(failed) == f"sbert: error: {source}:2: 'text' is null"
    assert not (tmp_path / "fail-out").exists() and not (tmp_path / "fail-out.sbert").exists()  # nothing left behind
    skipped = run(*common, "-o", tmp_path / "skip-out", "--on-error", "skip")
    assert skipped.exit_code == 3, skipped.output
    written = read_dir(tmp_path / "skip-out")
    assert sorted(written) == ["a", "e", "h"]
    assert_readers_see(tmp_path / "skip-out", list(written), np.stack(list(written.values())))
    (rejects_file,) = (tmp_path / "skip-out.sbert" / "rejects").glob("*.rejects.jsonl")
    rejects = [json.loads(line) for line in rejects_file.read_text(encoding="utf-8").splitlines()]
    assert rejects == [{**r, "where": r["where"].format(source)} for r in EXPECTED_REJECTS]


@pytest.mark.parametrize("cores", [2, 16])
def test_too_many_workers_for_a_local_ray(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, cores: int) -> None:
    """As many workers as the process has cores leaves none for reading: refused, whatever this machine has (the
    cores sbert sees are set here), before Ray starts."""
    import sbert_cli.model.device
    from sbert_cli.job import RayOptions
    from sbert_cli.ray_engine import plan_resources

    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "好"}\n', encoding="utf-8")
    assert plan_resources(RayOptions(), cores=cores) == cores - 1
    monkeypatch.setattr(sbert_cli.model.device, "available_cores", lambda: cores)
    result = run("encode", source, "-o", tmp_path / "out", "--engine", "ray", "--workers", str(cores), "--model", tiny_model_dir)
    assert result.exit_code == 2
    assert error_of(result) == (
        f"sbert: error: --workers {cores} x --cpus-per-worker 1 needs {cores + 1} CPUs with one for reading, "
        f"and this machine has {cores}; pass --workers {cores - 1}"
    )


def test_from_a_store_prefix_into_a_store(on_cluster, bucket, tmp_path: Path, tiny_model_dir: Path) -> None:
    """Ray's tasks read the objects with sbert's readers and Ray writes the shards through the same filesystem:
    staged in the state prefix, each published under its final name only once all are written."""
    local: dict = {}
    for index in range(3):
        texts = texts_for(20, f"桶{index}-")
        lines = "".join(json.dumps({"key": f"{index}-{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts))
        bucket.put(f"in/part-{index}.jsonl", lines.encode())
        (tmp_path / f"part-{index}.jsonl").write_text(lines, encoding="utf-8")
        out = tmp_path / f"local-{index}.parquet"
        assert run("encode", tmp_path / f"part-{index}.jsonl", "-o", out, "--model", tiny_model_dir, "--id-column", "key", "-q").exit_code == 0
        local.update(read_file(out))
    bucket.put("in/_SUCCESS", b"")
    before = spools()
    result = run(
        "encode", bucket.url("in/"), "-o", bucket.url("ray-out/"), *on_cluster, "--model", tiny_model_dir,
        "--id-column", "key", "--chunk-size", "10", "--shard-rows", "25",
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(f"{bucket.name}/ray-out", filesystem=bucket.fs)
    vectors = dict(zip(table.column("id").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)))
    assert len(vectors) == table.num_rows == 60
    assert_same(vectors, local)
    assert all(key.startswith("ray-out/") and key.endswith(".parquet") for key in bucket.listing("ray-out"))
    assert bucket.fs.get_file_info(f"{bucket.name}/ray-out.sbert/staging").type.name == "NotFound"
    assert "sbert: 60 rows, " in result.stderr
    assert spools() <= before  # no empty spool folder on the driver or the nodes (one machine here)


def write_partitions(root: Path, sizes: dict[str, int]) -> dict[str, list[str]]:
    """Hive-partitioned JSON lines with repeated part names and mixed sizes: {relative path: texts}."""
    written = {}
    for relative, count in sizes.items():
        texts = texts_for(count, relative.replace("/", "-"))
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
        written[relative] = texts
    return written


PARTITIONS = {"day=1/part-0.jsonl": 37, "day=1/part-1.jsonl": 3, "day=2/part-0.jsonl": 61, "day=2/hour=5/part-0.jsonl": 1, "day=3/part-0.jsonl": 18}


def test_partitioned_input_ids_equal_the_local_engines(on_cluster, bucket, tmp_path: Path, tiny_model_dir: Path) -> None:
    """Part files of one name in different partitions: every id distinct, '<path below the input>:<row>', the same
    on both engines, from a bucket into a bucket; no spool folder left."""
    written = write_partitions(tmp_path / "in", PARTITIONS)
    for relative in written:
        bucket.put(f"in/{relative}", (tmp_path / "in" / relative).read_bytes())
    local = run("encode", tmp_path / "in", "-o", tmp_path / "local.parquet", "--model", tiny_model_dir, "-q")
    assert local.exit_code == 0, local.output
    expected = read_file(tmp_path / "local.parquet")
    assert sorted(expected) == sorted(f"{relative}:{row}" for relative, texts in written.items() for row in range(len(texts)))
    before = spools()
    result = run("encode", bucket.url("in/"), "-o", bucket.url("vectors/"), *on_cluster, "--model", tiny_model_dir, "--chunk-size", "16")
    assert result.exit_code == 0, result.output
    table = pq.read_table(f"{bucket.name}/vectors", filesystem=bucket.fs)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == sum(PARTITIONS.values())
    assert_same(dict(zip(ids, np.asarray(table.column("embedding").to_pylist(), dtype=np.float32))), expected)
    assert spools() <= before
    assert not [key for key in bucket.listing() if "staging" in key]


def test_repeated_ids_fail_or_are_counted(on_cluster, tmp_path: Path, tiny_model_dir: Path) -> None:
    """--id-column ids that repeat across files: --on-error fail stops (nothing published on Ray; locally nothing
    after the repeat), skip keeps the rows and the summary counts them; both engines."""
    for name, keys in {"a.jsonl": ["x", "y", "z"], "b.jsonl": ["y", "w", "x", "y"]}.items():
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_text("".join(json.dumps({"id": k, "text": f"{k}{i}"}) + "\n" for i, k in enumerate(keys)), encoding="utf-8")
    common = ["encode", tmp_path / "in", "--model", tiny_model_dir, "--id-column", "id"]
    ray_failed = run(*common, "-o", tmp_path / "ray-fail", *on_cluster)
    assert ray_failed.exit_code == 1
    assert error_of(ray_failed) == (
        f"sbert: error: {tmp_path / 'in'}: 3 rows repeat an earlier row's id ('y', 'x'); ids must be unique: fix the input, "
        "or pass --on-error skip to keep the rows and count the repeats"
    )
    assert not (tmp_path / "ray-fail").exists()
    local_failed = run(*common, "-o", tmp_path / "local-fail.parquet")
    assert local_failed.exit_code == 1
    assert error_of(local_failed) == (
        f"sbert: error: {tmp_path / 'in'}: row 3: id 'y' repeats an earlier row's; ids must be unique: fix the input, "
        "or pass --on-error skip to keep the rows and count the repeats"
    )
    for engine, out in ((on_cluster, "ray-skip"), ([], "local-skip.parquet")):
        kept = run(*common, "-o", tmp_path / out, "--on-error", "skip", *engine)
        assert kept.exit_code == 0, kept.output
        assert "7 rows, 3 rows repeat an earlier row's id ('y', 'x')" in kept.stderr


def test_an_address_where_nothing_answers(tmp_path: Path, tiny_model_dir: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "好"}\n', encoding="utf-8")
    started = time.monotonic()
    result = run("encode", source, "-o", tmp_path / "out", "--engine", "ray", "--ray-address", "127.0.0.1:1", "--model", tiny_model_dir)
    assert time.monotonic() - started < 30
    assert result.exit_code == 4
    assert error_of(result) == (
        "sbert: error: --ray-address 127.0.0.1:1: nothing answers there after 20 s; start it (ray start --head) or pass the address `ray start` printed"
    )
    assert result.stderr.count("\n") == 1  # the error line alone
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.sbert").exists()


def test_auto_with_no_cluster_running(tmp_path: Path, tiny_model_dir: Path) -> None:
    """--ray-address auto where `ray start` left nothing on this machine (Ray's record is under RAY_TMPDIR)."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "好"}\n', encoding="utf-8")
    ray_tmp = Path(tempfile.mkdtemp(prefix="sr", dir="/tmp"))
    started = time.monotonic()
    child = sbert_child(
        "encode", source, "-o", tmp_path / "out", "--engine", "ray", "--ray-address", "auto", "--model", tiny_model_dir,
        env={"RAY_TMPDIR": str(ray_tmp)}, drop=("RAY_ADDRESS",),
    )
    _, stderr = child.communicate(timeout=60)
    assert time.monotonic() - started < 30
    assert child.returncode == 4
    assert stderr.splitlines() == [
        "sbert: error: --ray-address auto: no Ray cluster is running on this machine; start it (ray start --head) or pass the address `ray start` printed"
    ]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.sbert").exists()
    os.rmdir(ray_tmp)


def test_a_running_cluster_named_by_none(cluster, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ray start` records its cluster for the machine; a run without --ray-address says so and starts its own Ray
    (Ray would refuse ray.init(num_cpus=...) with a traceback)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="sr", dir="/tmp"))  # short: Ray's socket paths live under it
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text(cluster.address)  # what `ray start --head` writes
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "好"}\n{"text": "坏"}\n', encoding="utf-8")
    result = run("encode", source, "-o", tmp_path / "out", "--engine", "ray", "--model", tiny_model_dir)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == (
        f"sbert: a Ray cluster is running at {cluster.address}; this run starts a local Ray of its own "
        f"(pass --ray-address {cluster.address} to run on that one)"
    )
    assert "Traceback" not in result.stderr
    assert sorted(read_dir(tmp_path / "out")) == [0, 1]


def sbert_child(*args: object, env: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> subprocess.Popen:
    """The command as a user runs it, in a process of its own (a lost cluster must not take the test with it)."""
    environment = {name: value for name, value in {**os.environ, **LOOPBACK_ENV, **(env or {})}.items() if name not in drop}
    return subprocess.Popen(
        [sys.executable, "-m", "sbert_cli", *map(str, args)], cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_authentication_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A cluster that wants a token the run does not have: one line within seconds, not 20 s of retries."""
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0123456789abcdef" * 4}
    guarded = RayCluster(1, env=token)
    try:
        source = tmp_path / "in.jsonl"
        source.write_text('{"text": "好"}\n', encoding="utf-8")
        started = time.monotonic()
        child = sbert_child(
            "encode", source, "-o", tmp_path / "out", "--engine", "ray", "--ray-address", guarded.address, "--model", tiny_model_dir,
            env={"HOME": str(tmp_path)}, drop=tuple(token),  # no token, and no ~/.ray/auth_token either
        )
        _, stderr = child.communicate(timeout=120)
        assert time.monotonic() - started < 30
    finally:
        guarded.close()
    assert child.returncode == 4, stderr
    assert stderr.splitlines() == [
        f"sbert: error: the Ray cluster at {guarded.address} refused this run's authentication token; set RAY_AUTH_TOKEN "
        "(or ~/.ray/auth_token) to the cluster's token (ray get-auth-token on the head)"
    ]
    assert not (tmp_path / "out").exists()


def test_a_model_the_workers_cannot_load(on_cluster, tmp_path: Path, tiny_model_dir: Path) -> None:
    """Named once, with the node, whatever the number of actors that fail."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "好"}\n', encoding="utf-8")
    missing = tmp_path / "model"
    missing.mkdir()  # the driver has it (empty here); the workers look for the model there
    result = run("encode", source, "-o", tmp_path / "out", *on_cluster, "--model", missing)
    assert result.exit_code == 1
    line = error_of(result)
    assert line.startswith(f"sbert: error: on Ray node 127.0.0.1: ") and str(missing) in line, line
    assert result.stderr.count("sbert: error:") == 1
    assert not (tmp_path / "out").exists()


def test_a_cluster_too_small_for_the_workers(cluster, tmp_path: Path, tiny_model_dir: Path) -> None:
    """Three one-CPU nodes hold three actors but then no reading task: Ray Data would wait for room forever."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "好"}\n', encoding="utf-8")
    started = time.monotonic()
    result = run("encode", source, "-o", tmp_path / "out", "--engine", "ray", "--ray-address", cluster.address, "--workers", "3", "--model", tiny_model_dir)
    assert time.monotonic() - started < 30
    assert result.exit_code == 4
    assert error_of(result) == (
        f"sbert: error: the Ray cluster at {cluster.address} has room for 2 workers of --cpus-per-worker 1 beside a CPU for reading "
        "(3 CPUs on 3 nodes), not 3; pass --workers 2, or add nodes"
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.sbert").exists()


def test_a_node_that_cannot_import_sbert(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A worker node whose Python has no sbert (its raylet's PYTHONPATH puts a package first that fails as a missing
    one does): named once, with the node and the fix, whatever the number of tasks that fail there."""
    pytest.importorskip("ray", reason="the Ray tests need the extra: pip install -e '.[ray]' (make test-ray)")
    console = Path(sys.executable).parent / "sbert"
    if not console.exists():
        pytest.skip(f"sbert is not installed as a command beside {sys.executable} (pip install -e .)")
    shadow = tmp_path / "no-sbert" / "sbert_cli"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'sbert_cli\'", name="sbert_cli")\n', encoding="utf-8")
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts_for(40, "n")), encoding="utf-8")
    # The head has no CPU for tasks: the actor and every read task go to the worker nodes, which have no sbert.
    broken = RayCluster(3, head_cpus=0, node_env={"PYTHONPATH": str(shadow.parent)})
    try:
        started = time.monotonic()
        # The installed command, run from a folder without sbert's source: Ray puts the driver's folder on its
        # workers' path, which from the repository's root would let them import sbert anyway.
        child = subprocess.Popen(
            [str(console), "encode", source, "-o", tmp_path / "out", "--engine", "ray", "--ray-address", broken.address, "--workers", "1", "--model", tiny_model_dir],
            cwd=tmp_path, env={**os.environ, **LOOPBACK_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            _, stderr = child.communicate(timeout=120)
        finally:
            child.kill()  # our own child, should it hang
        assert time.monotonic() - started < 45
    finally:
        broken.close()
    assert child.returncode == 4, stderr
    assert stderr.strip().splitlines()[-1] == (
        "sbert: error: a Ray worker on Ray node 127.0.0.1 cannot import sbert (No module named 'sbert_cli'); install it there too "
        "(pip install 'sbert-cli[ray]' on every node, or the same image for every node)"
    )
    assert stderr.count("sbert: error:") == 1 and "Traceback" not in stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.sbert").exists()


def test_a_model_folder_the_nodes_do_not_have(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The model is a folder on the driver's disk only: the cluster runs where that folder is not (a mount namespace
    of its own that sees it empty, as other machines would); named once, with the node and the fix."""
    pytest.importorskip("ray", reason="the Ray tests need the extra: pip install -e '.[ray]' (make test-ray)")
    if subprocess.run(["unshare", "--user", "--map-current-user", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare cannot make a user and mount namespace here, so no node can be without the driver's folder")
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "driver-only" / "model"))
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "好"}\n{"text": "坏"}\n', encoding="utf-8")
    elsewhere = RayCluster(2, hidden=model.parent)
    try:
        started = time.monotonic()
        result = run("encode", source, "-o", tmp_path / "out", "--engine", "ray", "--ray-address", elsewhere.address, "--workers", "1", "--model", model)
        assert time.monotonic() - started < 45
    finally:
        elsewhere.close()
    assert result.exit_code == 1, result.output
    assert error_of(result) == (
        f"sbert: error: --model {model}: no such folder on Ray node 127.0.0.1; put the model at the same path on every node "
        "(or on storage they all mount), or pass a hub id"
    )
    assert result.stderr.count("sbert: error:") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.sbert").exists()


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds:.0f} s for {what}"
        time.sleep(0.2)


def published_rounds(out: Path) -> int:
    manifest = out.parent / f"{out.name}.sbert" / "manifest.json"
    try:
        return len({(entry["first_row"], entry["end_row"]) for entry in json.loads(manifest.read_text())["shards"]})
    except (OSError, ValueError, KeyError):
        return 0


ROUNDS = {"SBERT_RAY_ROUND_BYTES": "1"}  # a round a file


def eight_rounds(tmp_path: Path, tiny_model_dir: Path, smallest: int, bad_days: tuple[int, ...] = ()) -> int:
    """Eight Hive partitions of growing size in tmp_path/in (eight rounds under ROUNDS), a line that is not JSON at
    the end of each of `bad_days`, and the local engine's output of them in tmp_path/local.parquet (--on-error skip),
    which an interrupted and resumed run must equal; returns the good rows."""
    sizes = {f"day={day}/part-0.jsonl": smallest + 6 * day for day in range(8)}
    write_partitions(tmp_path / "in", sizes)
    for day in bad_days:
        with open(tmp_path / "in" / f"day={day}" / "part-0.jsonl", "a", encoding="utf-8") as part:
            part.write("not json\n")
    local = run("encode", tmp_path / "in", "-o", tmp_path / "local.parquet", "--model", tiny_model_dir, "-q", "--on-error", "skip")
    assert local.exit_code == (3 if bad_days else 0), local.output  # 3: done, with rows in the rejects
    return sum(sizes.values())


@dataclass(frozen=True)
class RandomMoment:
    """When a test kills something mid-run: after a random number of rounds published, then up to a second more.
    Its text (the seed, the rounds) goes into every failure message."""

    seed: int
    rounds: int

    @classmethod
    def wait(cls, child: subprocess.Popen, out: Path, least: int) -> RandomMoment:
        import random

        seed = random.randrange(1 << 30)
        chance = random.Random(seed)
        moment = cls(seed, chance.randrange(least, 6))
        wait_for(lambda: published_rounds(out) >= moment.rounds or child.poll() is not None, 120, f"{moment.rounds} rounds published ({moment})")
        time.sleep(chance.uniform(0, 1.0))
        assert child.poll() is None, f"the run ended before the kill ({moment}): {child.communicate()[1]}"
        return moment

    def __str__(self) -> str:
        return f"seed {self.seed}: after {self.rounds} rounds"


def test_head_lost_then_resumed_on_a_new_cluster_that_loses_a_node(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The head killed at a random moment mid-run: one line within about 30 s that says what is published and that
    --resume finishes; the same command with --resume on a new cluster encodes only the rounds not published, and
    survives one of its worker nodes killed mid-run; the rows are those of an uninterrupted (local) run."""
    pytest.importorskip("ray", reason="the Ray tests need the extra: pip install -e '.[ray]' (make test-ray)")
    total = eight_rounds(tmp_path, tiny_model_dir, 30)
    out = tmp_path / "out"
    first = RayCluster(3)
    try:
        command = ["encode", tmp_path / "in", "-o", out, "--engine", "ray", "--ray-address", first.address, "--workers", "2", "--model", tiny_model_dir]
        child = sbert_child(*command, env=ROUNDS)
        moment = RandomMoment.wait(child, out, least=1)
        first.kill_head()
        killed = time.monotonic()
        _, stderr = child.communicate(timeout=60)
        assert time.monotonic() - killed < 30
    finally:
        first.close()
    assert child.returncode == 4, stderr
    line = stderr.strip().splitlines()[-1]
    done = published_rounds(out)
    published = sum(pq.read_metadata(path).num_rows for path in out.glob("part-*.parquet"))
    assert line == (
        f"sbert: error: the Ray cluster at {first.address} stopped answering mid-run; {done} of 8 rounds ({published} rows) are published "
        f"in {out}; run the same command with --resume once the cluster is back to finish the rest"
    )
    assert "Traceback" not in stderr and moment.rounds <= done < 8, moment
    assert not (tmp_path / "out.sbert" / "staging").exists()
    second = RayCluster(3)
    try:
        command = ["encode", tmp_path / "in", "-o", out, "--engine", "ray", "--ray-address", second.address, "--workers", "1", "--model", tiny_model_dir, "--resume"]
        child = sbert_child(*command, env=ROUNDS)
        wait_for(lambda: published_rounds(out) > done or child.poll() is not None, 120, "a round published")
        second.kill_node()  # a worker node lost mid-run: Ray moves its work; the run goes on
        _, stderr = child.communicate(timeout=300)
    finally:
        second.close()
    assert child.returncode == 0, stderr
    assert f"{done} of 8 rounds already done ({published} rows)" in stderr
    assert f"sbert: {total - published} rows, " in stderr  # only what was not published is encoded again
    vectors = read_dir(out)
    assert len(vectors) == total
    assert_same(vectors, read_file(tmp_path / "local.parquet"))
    again = sbert_child(*command, env=ROUNDS)
    assert again.communicate(timeout=120)[1].strip() == f"sbert: {out} is complete; nothing to do"


def test_driver_killed_at_a_random_moment_then_resumed(cluster, tmp_path: Path, tiny_model_dir: Path) -> None:
    """The command killed outright (kill -9, as a cron timeout or the OOM killer does) at a random moment: its driver
    goes with it (nothing goes on publishing unseen, the output is not left busy), and the same command with --resume
    on the same cluster finishes with the rows of an uninterrupted run, encoding only what was not published."""
    total = eight_rounds(tmp_path, tiny_model_dir, 20, bad_days=(0, 7))
    out = tmp_path / "out"
    command = [
        "encode", tmp_path / "in", "-o", out, "--engine", "ray", "--ray-address", cluster.address, "--workers", "2", "--model", tiny_model_dir,
        "--on-error", "skip",
    ]
    child = sbert_child(*command, env=ROUNDS)
    moment = RandomMoment.wait(child, out, least=0)
    drivers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(child.pid)], capture_output=True, text=True).stdout.split()]
    child.kill()
    child.wait()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in drivers), 10, f"the driver to go with the command ({moment})")
    done = published_rounds(out)
    assert done < 8, moment
    published = sum(pq.read_metadata(path).num_rows for path in out.glob("part-*.parquet")) if out.exists() else 0

    resumed = sbert_child(*command, "--resume", env=ROUNDS)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 3, f"{moment}: {stderr}"  # done, with rows in the rejects
    if done:
        assert f"{done} of 8 rounds already done ({published} rows)" in stderr, f"{moment}: {stderr}"
    # Only what was not published is encoded again, and only its rejects are this run's: day=0's bad line is in
    # the first round (published before the kill unless nothing was), day=7's in the last (never published).
    rejected = (0 if done else 1) + 1
    assert f"sbert: {total - published} rows, {rejected} rejected -> {tmp_path / 'out.sbert' / 'rejects'}/, " in stderr, f"{moment}: {stderr}"
    assert sum(path.read_text().count("\n") for path in (tmp_path / "out.sbert" / "rejects").glob("*.rejects.jsonl")) == 2
    assert_same(read_dir(out), read_file(tmp_path / "local.parquet"))
    assert not (tmp_path / "out.sbert" / "staging").exists()


def test_an_actor_per_gpu_by_default() -> None:
    """Several GPUs, a local Ray and no --workers: a worker per GPU reserving one; otherwise what was asked."""
    from sbert_cli.job import RayOptions
    from sbert_cli.ray_engine import per_gpu

    assert per_gpu(RayOptions(), gpus=4) == RayOptions(workers=4, gpus_per_worker=1.0)
    assert per_gpu(RayOptions(), gpus=1) == RayOptions()
    assert per_gpu(RayOptions(workers=2), gpus=4) == RayOptions(workers=2)
    assert per_gpu(RayOptions(gpus_per_worker=0.5), gpus=4) == RayOptions(gpus_per_worker=0.5)
    assert per_gpu(RayOptions(address="head:6379"), gpus=4) == RayOptions(address="head:6379")


class _SeenDevices:
    """Stands in for the encoder actor: reports the GPUs Ray gave it."""

    def __call__(self, batch: dict) -> dict:
        batch["devices"] = np.asarray([os.environ.get("CUDA_VISIBLE_DEVICES", "")] * len(batch["id"]))
        batch["actor"] = np.asarray([os.getpid()] * len(batch["id"]))
        return batch


def test_each_gpu_actor_sees_its_own_gpu(loopback, tmp_path: Path) -> None:
    """On a CPU machine, GPUs declared to Ray (ray start --num-gpus 2): the pool sbert plans for two GPUs places an
    actor on each, and each sees only its own in CUDA_VISIBLE_DEVICES."""
    ray = pytest.importorskip("ray", reason="the Ray tests need the extra: pip install -e '.[ray]' (make test-ray)")
    import ray.data

    from sbert_cli.io.inputs import InputFile
    from sbert_cli.job import RayOptions
    from sbert_cli.ray_engine import RayPlan, actor_pool, per_gpu

    options = per_gpu(replace_cpus(RayOptions(), 0.25), gpus=2)  # a quarter CPU each: the one CPU a node has fits both
    plan = RayPlan(("x",), options.workers or 1, 1, options)
    with_gpus = RayCluster(1, num_gpus=2)
    try:
        ray.init(address=with_gpus.address, include_dashboard=False, log_to_driver=False)
        try:
            # from_items: blocks made by the driver, no read task needing the CPU the actors hold
            items = ray.data.from_items([{"id": index} for index in range(40)], override_num_blocks=8)
            rows = items.map_batches(_SeenDevices, batch_size=5, **actor_pool(plan)).take_all()
        finally:
            ray.shutdown()
    finally:
        with_gpus.close()
    devices = {}
    for row in rows:
        devices.setdefault(row["actor"], set()).add(row["devices"])
    assert sorted(device for seen in devices.values() for device in seen) == ["0", "1"]
    assert all(len(seen) == 1 for seen in devices.values())


def replace_cpus(options, cpus: float):
    from dataclasses import replace

    return replace(options, cpus_per_worker=cpus)
