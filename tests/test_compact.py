"""Compact vectors: --truncate-dim and --dtype int8/uint8/binary/ubinary give sentence-transformers' truncate_dim and
quantize_embeddings; int8/uint8 ranges (first window or --calibration) are recorded and held across --resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sbert_cli.embedding import embed_texts
from sbert_cli.encoder import load_encoder
from sbert_cli.io.manifest import DirectoryLayout
from sbert_cli.quantize import quantize, ranges_of
from sbert_cli.similarity import cosine_rows
from tests import test_cli
from tests.conftest import SAMPLE_DATA, FakeEncoder, expected_fake_vectors, sample_texts
from tests.test_cli import error_of, run

QUANTISED = ["int8", "uint8", "binary", "ubinary"]
cached_loads = test_cli.cached_loads  # the fixture: a test's CLI runs of one model load it once


def st_quantize(vectors: np.ndarray, dtype: str, ranges: np.ndarray | None = None) -> np.ndarray:
    from sentence_transformers import quantize_embeddings

    return quantize_embeddings(vectors, precision=dtype, ranges=ranges)


@pytest.mark.parametrize("dtype", QUANTISED)
def test_quantize_is_sentence_transformers_step_for_step(dtype: str) -> None:
    rng = np.random.default_rng(7)
    calibration = rng.normal(size=(40, 37)).astype(np.float32)
    vectors = rng.normal(scale=1.5, size=(60, 37)).astype(np.float32)  # some outside the ranges: clipped
    ranges = ranges_of(calibration)
    ours, theirs = quantize(vectors, dtype, ranges), st_quantize(vectors, dtype, ranges)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def read_stored(path: Path) -> tuple[np.ndarray, dict | None]:
    """The stored vectors of a .parquet, .npy or .jsonl output, and its int8/uint8 ranges record."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        record = (table.schema.metadata or {}).get(b"sbert.quantization")
        return np.asarray(table.column("embedding").to_pylist()), json.loads(record) if record else None
    sidecar = path.with_name(path.name + ".quantization.json")
    record = json.loads(sidecar.read_text()) if sidecar.exists() else None
    if path.suffix == ".npy":
        return np.load(path), record
    return np.asarray([json.loads(line)["embedding"] for line in path.read_text().splitlines()]), record


@pytest.mark.parametrize("suffix", ["parquet", "npy", "jsonl"])
@pytest.mark.parametrize("dtype", QUANTISED)
def test_each_dtype_in_each_format_is_what_sentence_transformers_quantizes(dtype: str, suffix: str, tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    out = tmp_path / f"v.{suffix}"
    result = run("encode", SAMPLE_DATA / "sentences.csv", "-o", out, "--dtype", dtype, "--chunk-size", "7", "-q")
    assert result.exit_code == 0, result.output
    stored, record = read_stored(out)
    floats = expected_fake_vectors(sample_texts())
    if dtype in ("int8", "uint8"):
        ranges = ranges_of(floats[:7])  # the first window's, held for every later window
        assert record == {"dtype": dtype, "min": ranges[0].tolist(), "max": ranges[1].tolist(), "calibration": "first window"}
        np.testing.assert_array_equal(stored, st_quantize(floats, dtype, ranges))
    else:
        assert record is None
        np.testing.assert_array_equal(stored, st_quantize(floats, dtype))
    if suffix == "npy":
        assert np.load(out).dtype == np.dtype("uint8" if dtype.startswith("u") else "int8")
    if suffix == "parquet":
        width = 1 if dtype.endswith("binary") else 4  # the fake's 4 dimensions: one byte of bits
        assert str(pq.read_schema(out).field("embedding").type) == f"fixed_size_list<element: {np.dtype('uint8' if dtype.startswith('u') else 'int8')}>[{width}]"
        assert pq.read_schema(out).metadata[b"sbert.dtype"] == dtype.encode()


def test_calibration_file_sets_the_ranges(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    calibration = tmp_path / "calibration.npy"
    vectors = np.random.default_rng(0).uniform(0, 500, size=(30, 4)).astype(np.float32)
    np.save(calibration, vectors)
    out = tmp_path / "v.npy"
    result = run("encode", SAMPLE_DATA / "sentences.csv", "-o", out, "--dtype", "uint8", "--calibration", calibration, "-q")
    assert result.exit_code == 0, result.output
    stored, record = read_stored(out)
    assert record is not None and record["calibration"] == str(calibration)
    np.testing.assert_array_equal(stored, st_quantize(expected_fake_vectors(sample_texts()), "uint8", ranges_of(vectors)))


def test_resume_keeps_the_first_runs_ranges(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    out = tmp_path / "vectors"
    args = ["encode", SAMPLE_DATA / "sentences.csv", "-o", f"{out}/", "--dtype", "int8", "--shard-rows", "10", "--chunk-size", "10", "-q"]
    assert run(*args).exit_code == 0
    layout = DirectoryLayout(out)
    manifest = json.loads(layout.manifest.read_text())
    first_shard, last = out / manifest["shards"][0]["file"], manifest["shards"][-1]
    before = pq.read_table(out / last["file"])
    # As if the run had died before its last shard: resume must scale it by the ranges the others were scaled by.
    (out / last["file"]).unlink()
    manifest["shards"], manifest["complete"] = manifest["shards"][:-1], False
    layout.manifest.write_text(json.dumps(manifest))
    result = run(*args, "--resume")
    assert result.exit_code == 0, result.output
    after = pq.read_table(out / last["file"])
    assert after.column("embedding").equals(before.column("embedding"))
    recorded = json.loads(layout.manifest.read_text())["quantization"]
    assert after.schema.metadata[b"sbert.quantization"] == pq.read_schema(first_shard).metadata[b"sbert.quantization"]
    assert json.loads(after.schema.metadata[b"sbert.quantization"]) == recorded


def test_compact_usage_errors_are_one_line(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = SAMPLE_DATA / "sentences.csv"
    cases = [
        (["-o", "-", "--dtype", "int8"], "sbert: error: --dtype int8 to stdout leaves no place for its ranges; pass --calibration FILE.npy, or -o a file"),
        (["-o", tmp_path / "v.npy", "--calibration", source], f"sbert: error: --calibration {source}: only --dtype int8 or uint8 use ranges; drop it or pass one of those"),
        (["-o", f"{tmp_path}/ray/", "--engine", "ray", "--dtype", "uint8"], "sbert: error: --dtype uint8 with --engine ray needs --calibration FILE.npy: every actor must scale by the same ranges"),
    ]
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 5), np.float32))
    cases.append((["-o", tmp_path / "v.npy", "--dtype", "int8", "--calibration", wrong], f"sbert: error: --calibration {wrong}: holds a float32 array of shape (3, 5); pass at least 2 float vectors of this run's 4 dimensions"))
    for args, line in cases:
        result = run("encode", source, *args)
        assert result.exit_code == 2, result.output
        assert error_of(result) == line


@pytest.fixture(scope="module")
def st_minilm(minilm_dir: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


def test_truncate_dim_matches_sentence_transformers(minilm_dir: Path, st_minilm) -> None:
    model = st_minilm
    texts = sample_texts()[:16]
    for normalize in (False, True):
        encoder = load_encoder(str(minilm_dir), device="cpu", precision="fp32", truncate_dim=128, normalize=normalize)
        assert (encoder.info.dim, encoder.info.normalize) == (128, normalize)
        ours = embed_texts(texts, encoder)
        theirs = model.encode(texts, truncate_dim=128, normalize_embeddings=normalize)
        assert ours.shape == theirs.shape == (16, 128)
        assert cosine_rows(ours, theirs).min() >= 0.99999
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(theirs, axis=1), rtol=1e-5)
    result = run("sim", "甲", "乙", "--model", minilm_dir, "--truncate-dim", "1000")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: --truncate-dim 1000: {minilm_dir} gives 384-dimensional vectors; pass --truncate-dim 384 or less"


@pytest.mark.usefixtures("cached_loads")
def test_minilm_quantised_output_is_sentence_transformers(minilm_dir: Path, tmp_path: Path, st_minilm) -> None:
    texts = sample_texts()
    theirs = st_minilm.encode(texts, truncate_dim=256)
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, theirs)
    floats_out, int8_out, binary_out = tmp_path / "f.npy", tmp_path / "q.npy", tmp_path / "b.parquet"
    common = ["encode", SAMPLE_DATA / "sentences.jsonl", "--model", minilm_dir, "--precision", "fp32", "--truncate-dim", "256", "-q"]
    assert run(*common, "-o", floats_out).exit_code == 0
    assert run(*common, "-o", int8_out, "--dtype", "int8", "--calibration", calibration).exit_code == 0
    assert run(*common, "-o", binary_out, "--dtype", "binary").exit_code == 0
    ours = np.load(floats_out)
    ranges = ranges_of(theirs)
    np.testing.assert_array_equal(np.load(int8_out), st_quantize(ours, "int8", ranges))  # the same floats: the same integers
    codes = np.load(int8_out).astype(np.int16) - st_quantize(theirs, "int8", ranges)  # ST's own floats: at most a step apart
    assert np.abs(codes).max() <= 1 and (codes != 0).mean() < 0.02
    bits, _ = read_stored(binary_out)
    np.testing.assert_array_equal(bits, st_quantize(ours, "binary"))
    flipped = np.unpackbits((bits.astype(np.int16) + 128).astype(np.uint8)) != np.unpackbits(st_quantize(theirs, "ubinary"))
    assert flipped.mean() < 0.001


@pytest.mark.usefixtures("cached_loads")
@pytest.mark.parametrize("dtype", ["int8", "binary"])
def test_evaluate_scores_stored_vectors_like_sentence_transformers(dtype: str, minilm_dir: Path, st_minilm) -> None:
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    from sbert_cli.evaluate import read_pairs

    pairs = read_pairs(str(SAMPLE_DATA / "pairs.tsv"))
    result = run("evaluate", SAMPLE_DATA / "pairs.tsv", "--model", minilm_dir, "--precision", "fp32", "--dtype", dtype, "--truncate-dim", "128", "--json", "-q")
    ours = json.loads(result.stdout)
    evaluator = EmbeddingSimilarityEvaluator(pairs.first, pairs.second, pairs.labels.tolist(), precision=dtype, truncate_dim=128, write_csv=False)
    theirs = evaluator(st_minilm)
    assert ours["dtype"] == dtype
    assert ours["results"][0]["spearman"] == pytest.approx(100 * theirs[next(k for k in theirs if k.endswith("spearman_cosine"))], abs=0.05)


def test_the_cache_and_the_manifest_key_on_the_prompt_and_truncation(tmp_path: Path, tiny_model_dir: Path) -> None:
    cache, source = tmp_path / "cache.sqlite", SAMPLE_DATA / "sentences.csv"
    base = ["encode", source, "--model", tiny_model_dir, "--precision", "fp32", "--cache", cache]
    first = run(*base, "-o", tmp_path / "a.parquet")
    assert first.exit_code == 0, first.output
    for extra in (["--prompt", "查询："], ["--truncate-dim", "16"]):
        again = run(*base, *extra, "-o", tmp_path / "b.parquet")
        assert ", 0 from the cache, " in again.stderr  # a new prompt or length is a new profile
        assert ", 0 encoded" not in again.stderr
        repeat = run(*base, *extra, "-o", tmp_path / "b.parquet")
        assert ", 0 encoded, " in repeat.stderr
    metadata = pq.read_schema(tmp_path / "b.parquet").metadata
    assert (metadata[b"sbert.truncate_dim"], metadata[b"sbert.dim"], metadata[b"sbert.prompt"]) == (b"16", b"16", b"")
    out = tmp_path / "shards"
    assert run("encode", source, "--model", tiny_model_dir, "-o", f"{out}/", "--prompt", "查询：", "-q").exit_code == 0
    assert pq.read_schema(out / "part-00000.parquet").metadata[b"sbert.prompt"] == "查询：".encode()
    result = run("encode", source, "--model", tiny_model_dir, "-o", f"{out}/", "--resume", "-q")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {out}: options differ from the manifest's (prompt: '查询：' -> None); resume with the same options"


def test_two_outputs_in_one_folder_never_share_their_ranges(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    """x.npy then x.jsonl at int8, from different inputs: each keeps its own ranges, so x.npy still decodes to its own
    vectors (a shared x.quantization.json once made it decode at cosine 0.61)."""
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    texts_a = [f"第{i}句话，关于退款" for i in range(12)]
    texts_b = [f"completely other text number {i} " * 3 for i in range(12)]
    first.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts_a), encoding="utf-8")
    second.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts_b), encoding="utf-8")
    assert run("encode", first, "-o", tmp_path / "x.npy", "--dtype", "int8", "-q").exit_code == 0
    npy_sidecar = (tmp_path / "x.npy.quantization.json").read_bytes()
    assert run("encode", second, "-o", tmp_path / "x.jsonl", "--dtype", "int8", "-q").exit_code == 0
    assert (tmp_path / "x.npy.quantization.json").read_bytes() == npy_sidecar  # untouched by the other output
    for out, texts in ((tmp_path / "x.npy", texts_a), (tmp_path / "x.jsonl", texts_b)):
        stored, record = read_stored(out)
        ranges = ranges_of(expected_fake_vectors(texts))
        assert record is not None and record["min"] == ranges[0].tolist() and record["max"] == ranges[1].tolist()
        np.testing.assert_array_equal(stored, st_quantize(expected_fake_vectors(texts), "int8", ranges))
    assert not (tmp_path / "x.quantization.json").exists()
