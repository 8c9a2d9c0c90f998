"""--engine ray on a local 2-CPU Ray: the same ids and vectors as --engine local, every row exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sbert_cli.similarity import cosine_rows
from tests.conftest import sample_texts
from tests.test_cli import error_of, run
from tests.test_datasets import assert_readers_see
from tests.test_unattended import EXPECTED_REJECTS, MIXED_LINES

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="the Ray tests need the extra: pip install -e '.[ray]' (make test-ray)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


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


def test_directory_of_parquet_shards(local_ray, tmp_path: Path, tiny_model_dir: Path) -> None:
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
    result = run(
        "encode", shards, "-o", tmp_path / "ray-out", "--engine", "ray", "--model", tiny_model_dir,
        "--id-column", "key", "--chunk-size", "10", "--shard-rows", "40",
    )
    assert result.exit_code == 0, result.output
    vectors = read_dir(tmp_path / "ray-out")
    assert len(vectors) == 100
    assert_same(vectors, local)
    schema = pq.read_schema(sorted((tmp_path / "ray-out").glob("*.parquet"))[0])
    assert str(schema.field("embedding").type) == "fixed_size_list<element: float>[32]"
    assert schema.metadata[b"sbert.model"] == str(tiny_model_dir).encode()
    assert "sbert: 100 rows, " in result.stderr


def test_one_jsonl_file_gets_row_number_ids(local_ray, tmp_path: Path, tiny_model_dir: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts_for(60, "行")), encoding="utf-8")
    assert run("encode", source, "-o", tmp_path / "local.parquet", "--model", tiny_model_dir, "-q").exit_code == 0
    result = run("encode", source, "-o", tmp_path / "ray-out", "--engine", "ray", "--model", tiny_model_dir, "--chunk-size", "7", "-q")
    assert result.exit_code == 0, result.output
    vectors = read_dir(tmp_path / "ray-out")
    assert sorted(vectors) == list(range(60))
    assert_same(vectors, read_file(tmp_path / "local.parquet"))


def test_bad_rows_follow_on_error(local_ray, tmp_path: Path, tiny_model_dir: Path) -> None:
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(MIXED_LINES) + "\n", encoding="utf-8")
    common = ["encode", source, "--engine", "ray", "--model", tiny_model_dir, "--id-column", "id", "-q"]
    failed = run(*common, "-o", tmp_path / "fail-out")
    assert failed.exit_code == 1
    assert error_of(failed) == f"sbert: error: {source}:2: 'text' is null"
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


def test_from_a_store_prefix_into_a_store(local_ray, bucket, tmp_path: Path, tiny_model_dir: Path) -> None:
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
    result = run(
        "encode", bucket.url("in/"), "-o", bucket.url("ray-out/"), "--engine", "ray", "--model", tiny_model_dir,
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
