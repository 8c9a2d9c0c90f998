"""The vector cache: hits equal fresh vectors bit for bit, anything that changes a vector misses, and the file survives
kills and concurrent runs; duplicate texts in a window are encoded once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, FakeEncoder, expected_fake_vectors, sample_texts, write_st_model
from tests.test_cli import error_of, run
from tests.test_unattended import run_child, start_child, wait_until, write_texts


def vectors_of(path: Path) -> np.ndarray:
    return np.asarray(pq.read_table(path).column("embedding").to_pylist(), dtype=np.float32)


def sample_input(tmp_path: Path, texts: list[str]) -> Path:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts), encoding="utf-8")
    return source


@pytest.fixture
def model_copy(tmp_path: Path, tiny_model_dir: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def encode(source: Path, out: Path, model: Path, cache: Path, *options: str):
    result = run("encode", source, "-o", out, "--model", model, "--cache", cache, "--precision", "fp32", *options)
    assert result.exit_code == 0, result.output
    return result


def test_a_hit_equals_a_fresh_encode_bit_for_bit(tmp_path: Path, model_copy: Path) -> None:
    source = sample_input(tmp_path, sample_texts())
    cache = tmp_path / "vectors.sqlite"
    first = encode(source, tmp_path / "first.parquet", model_copy, cache)
    assert f", 0 from the cache, {len(sample_texts())} encoded, " in first.stderr
    second = encode(source, tmp_path / "second.parquet", model_copy, cache)
    assert f", {len(sample_texts())} from the cache, 0 encoded, " in second.stderr
    fresh = run("encode", source, "-o", tmp_path / "fresh.parquet", "--model", model_copy, "--precision", "fp32", "-q")
    assert fresh.exit_code == 0
    assert vectors_of(tmp_path / "second.parquet").tobytes() == vectors_of(tmp_path / "fresh.parquet").tobytes()
    assert vectors_of(tmp_path / "first.parquet").tobytes() == vectors_of(tmp_path / "fresh.parquet").tobytes()


def test_a_run_the_cache_answers_loads_neither_the_model_nor_torch(tmp_path: Path, model_copy: Path) -> None:
    source = sample_input(tmp_path, sample_texts()[:10])
    cache = tmp_path / "vectors.sqlite"
    encode(source, tmp_path / "first.parquet", model_copy, cache, "--device", "cpu")
    code = (
        "import sys\nfrom sbert_cli.cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    args = ["encode", source, "-o", tmp_path / "again.parquet", "--model", model_copy, "--cache", cache, "--precision", "fp32", "--device", "cpu", "-q"]
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False False"
    assert vectors_of(tmp_path / "again.parquet").tobytes() == vectors_of(tmp_path / "first.parquet").tobytes()


@pytest.mark.parametrize("change", ["weights", "pooling", "max_length", "precision", "normalize"])
def test_anything_that_changes_a_vector_misses(tmp_path: Path, model_copy: Path, change: str) -> None:
    texts = sample_texts()[:8]
    source = sample_input(tmp_path, texts)
    cache = tmp_path / "vectors.sqlite"
    encode(source, tmp_path / "first.parquet", model_copy, cache)
    options: list[str] = []
    if change == "weights":
        config = json.loads((model_copy / "config.json").read_text())
        keep = {k: config[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings")}
        vocab = (model_copy / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
        write_st_model(model_copy, keep, vocab, max_seq_length=64, seed=1)
    elif change == "pooling":
        pooling = model_copy / "1_Pooling" / "config.json"
        config = json.loads(pooling.read_text())
        config["pooling_mode_mean_tokens"], config["pooling_mode_max_tokens"] = False, True
        pooling.write_text(json.dumps(config))
    elif change == "max_length":
        options = ["--max-length", "8"]
    elif change == "normalize":
        options = ["--normalize"]
    else:
        options = ["--precision", "bf16"]
    result = encode(source, tmp_path / "second.parquet", model_copy, cache, *options)
    assert f", 0 from the cache, {len(texts)} encoded, " in result.stderr
    assert not np.array_equal(vectors_of(tmp_path / "second.parquet"), vectors_of(tmp_path / "first.parquet"))


def test_the_same_model_files_at_another_path_hit_the_same_vectors(tmp_path: Path, model_copy: Path) -> None:
    """The key is the model's files, not where they are: a copy elsewhere (moved, or another checkout) hits."""
    texts = sample_texts()[:8]
    source = sample_input(tmp_path, texts)
    cache = tmp_path / "vectors.sqlite"
    encode(source, tmp_path / "first.parquet", model_copy, cache)
    elsewhere = Path(shutil.copytree(model_copy, tmp_path / "moved" / "model-v1"))
    result = encode(source, tmp_path / "second.parquet", elsewhere, cache)
    assert f", {len(texts)} from the cache, 0 encoded, " in result.stderr
    assert vectors_of(tmp_path / "second.parquet").tobytes() == vectors_of(tmp_path / "first.parquet").tobytes()


def test_duplicate_texts_are_encoded_once(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    texts = [f"第{i % 7}句" for i in range(50)]
    source = sample_input(tmp_path, texts)
    result = run("encode", source, "-o", tmp_path / "out.parquet", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(fake_encoder.tokenized) == sorted(set(texts))
    np.testing.assert_array_equal(vectors_of(tmp_path / "out.parquet"), expected_fake_vectors(texts))


def test_the_summary_counts_hits_and_a_cache_only_run_never_loads(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    cache = tmp_path / "c.sqlite"
    first_texts = [f"文本{i}" for i in range(20)]
    assert run("encode", sample_input(tmp_path, first_texts), "-o", tmp_path / "a.parquet", "--cache", cache).exit_code == 0
    loads = fake_encoder.handle.loads  # type: ignore[attr-defined]
    again = run("encode", sample_input(tmp_path, first_texts + first_texts[:5]), "-o", tmp_path / "b.parquet", "--cache", cache)
    assert again.exit_code == 0
    assert "sbert: 25 rows, 25 from the cache, 0 encoded, " in again.stderr
    assert fake_encoder.handle.loads == loads  # type: ignore[attr-defined]
    grown = run("encode", sample_input(tmp_path, first_texts + ["新的一行", "再一行"]), "-o", tmp_path / "c.parquet", "--cache", cache)
    assert "sbert: 22 rows, 20 from the cache, 2 encoded, " in grown.stderr
    np.testing.assert_array_equal(vectors_of(tmp_path / "c.parquet"), expected_fake_vectors(first_texts + ["新的一行", "再一行"]))


@pytest.mark.slow
def test_sigkill_during_a_run_leaves_a_cache_the_next_run_reads(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    texts = write_texts(source, 400)
    cache = tmp_path / "c.sqlite"
    args = ["encode", source, "-o", tmp_path / "out.parquet", "--cache", cache, "--chunk-size", "20", "--batch-size", "5"]

    def stored() -> int:
        try:
            with sqlite3.connect(cache) as db:
                return int(db.execute("SELECT count(*) FROM vectors").fetchone()[0])
        except sqlite3.Error:
            return 0

    child = start_child(args, delay=0.01)
    wait_until(lambda: stored() >= 100, child)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = run_child(args)
    assert done.returncode == 0, done.stderr
    assert ", 400 encoded" not in done.stderr and ", 0 from the cache" not in done.stderr
    np.testing.assert_array_equal(vectors_of(tmp_path / "out.parquet"), expected_fake_vectors(texts))


@pytest.mark.slow
def test_two_runs_can_write_one_cache_at_once(tmp_path: Path) -> None:
    cache = tmp_path / "c.sqlite"
    children = []
    for name in ("a", "b"):
        source = tmp_path / f"{name}.jsonl"
        write_texts(source, 300)
        args = ["encode", source, "-o", tmp_path / f"{name}.parquet", "--cache", cache, "--chunk-size", "10", "--batch-size", "5"]
        children.append(start_child(args, delay=0.002))
    for child in children:
        _, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr
    np.testing.assert_array_equal(vectors_of(tmp_path / "a.parquet"), vectors_of(tmp_path / "b.parquet"))
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT count(*) FROM vectors").fetchone()[0] == 300


def _open_cache_when_released(path: str, start, results) -> None:
    from sbert_cli.cache import CacheFile

    start.wait()
    try:
        CacheFile(path).close()
        results.put("opened")
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {exc}")


def test_runs_that_create_one_cache_together_all_open_it(tmp_path: Path) -> None:
    """Cron jobs started in the same second on a cache that does not exist yet: every one opens it (SQLite refuses
    the switch to WAL at once while another connection is in the file, without waiting; it is retried)."""
    import multiprocessing

    # Children forked from a server with nothing running but the cache module loaded: quick to start, and no
    # thread of the test process (moto's server) is copied into them holding a lock.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["sbert_cli.cache", "tests.test_cache"])
    runs = 6  # four together met the refusal in about a third of tries; six, in nearly every one
    for attempt in range(12):
        path = str(tmp_path / f"c{attempt}.sqlite")
        start, results = context.Barrier(runs), context.Queue()
        processes = [context.Process(target=_open_cache_when_released, args=(path, start, results)) for _ in range(runs)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        assert [results.get(timeout=5) for _ in processes] == ["opened"] * runs
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert dict(db.execute("SELECT name, value FROM sbert_cache"))["format"]


def test_a_foreign_or_damaged_file_is_refused_untouched(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = sample_input(tmp_path, ["一", "二"])
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a database, but somebody's notes\n" * 100)
    foreign = tmp_path / "app.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    for path, reason in ((text_file, "not an sbert cache, or damaged (file is not a database)"), (foreign, "not an sbert cache")):
        before = path.read_bytes()
        result = run("encode", source, "-o", tmp_path / "out.parquet", "--cache", path)
        assert result.exit_code == 1
        assert error_of(result) == f"sbert: error: {path}: {reason}; pass another --cache file (it was not changed)"
        assert path.read_bytes() == before
    assert not (tmp_path / "out.parquet").exists()


def test_a_cache_in_a_place_that_cannot_hold_one_says_where_to_put_it(tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    source = sample_input(tmp_path, ["一", "二"])
    out = tmp_path / "out.parquet"
    missing = tmp_path / "no" / "such" / "c.sqlite"
    result = run("encode", source, "-o", out, "--cache", missing)
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {missing}: directory '{missing.parent}' does not exist; create it, or pass a --cache path in an existing directory"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: let os.access answer for this directory as it would for anyone else
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: access(path, mode, **kwargs) and not (Path(path) == locked and mode & os.W_OK))
    result = run("encode", source, "-o", out, "--cache", locked / "c.sqlite")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {locked / 'c.sqlite'}: directory '{locked}' is not writable; pass a --cache path in a writable directory"
    assert not out.exists() and list(locked.iterdir()) == []


def test_cache_info_and_prune(tmp_path: Path, model_copy: Path) -> None:
    source = sample_input(tmp_path, sample_texts()[:6])
    cache = tmp_path / "vectors.sqlite"
    encode(source, tmp_path / "a.parquet", model_copy, cache)
    encode(source, tmp_path / "b.parquet", model_copy, cache, "--max-length", "8")
    info = run("cache", "info", cache)
    assert info.exit_code == 0, info.output
    lines = info.stdout.splitlines()
    assert lines[0].startswith(f"{cache}: 12 vectors, ")
    assert sum(str(model_copy) in line for line in lines) == 2
    assert error_of(run("cache", "prune", cache)) == "sbert: error: cache prune needs --keep-model NAME or --unused-days N; see 'sbert cache info' for the models"
    pruned = run("cache", "prune", cache, "--keep-model", "another/model")
    assert pruned.exit_code == 0
    assert pruned.stderr.startswith("sbert: removed 12 vectors; ")
    assert run("cache", "info", cache).stdout.splitlines()[0].startswith(f"{cache}: 0 vectors, ")
    assert error_of(run("cache", "info", tmp_path / "none.sqlite")) == f"sbert: error: {tmp_path / 'none.sqlite'}: no such cache file; check the path"


def test_prune_unused_days_removes_exactly_what_was_not_used_for_that_long(tmp_path: Path, model_copy: Path) -> None:
    """Three profiles of 6 vectors: used 10 days ago, used 2 days ago (made 30 days ago), and just now. --unused-days 5
    removes the first alone; what is left still answers its runs."""
    import time

    source = sample_input(tmp_path, sample_texts()[:6])
    cache = tmp_path / "vectors.sqlite"
    runs = {"old": ["--max-length", "8"], "recent": ["--max-length", "9"], "now": []}
    for name, options in runs.items():
        encode(source, tmp_path / f"{name}.parquet", model_copy, cache, *options)
    now = time.time()
    with sqlite3.connect(cache) as db:
        for max_length, created, used in ((8, now - 30 * 86400, now - 10 * 86400), (9, now - 30 * 86400, now - 2 * 86400)):
            rows = db.execute("UPDATE profiles SET created = ?, used = ? WHERE json_extract(description, '$.max_length') = ?", (created, used, max_length))
            assert rows.rowcount == 1
    db.close()
    pruned = run("cache", "prune", cache, "--unused-days", "5")
    assert pruned.exit_code == 0, pruned.output
    assert pruned.stderr.startswith("sbert: removed 6 vectors; ")
    with sqlite3.connect(cache) as db:
        left = sorted(json.loads(text)["max_length"] for (text,) in db.execute("SELECT description FROM profiles"))
        assert db.execute("SELECT count(*) FROM vectors").fetchone() == (12,)
    db.close()
    assert left == [9, 64]  # --max-length 9, and the model's own 64
    for name, hits in (("recent", 6), ("now", 6), ("old", 0)):
        result = encode(source, tmp_path / f"{name}-again.parquet", model_copy, cache, *runs[name])
        assert f", {hits} from the cache, {6 - hits} encoded, " in result.stderr


def test_ray_refuses_a_cache(tmp_path: Path) -> None:
    source = sample_input(tmp_path, ["一"])
    result = run("encode", source, "-o", tmp_path / "out", "--engine", "ray", "--cache", tmp_path / "c.sqlite")
    assert result.exit_code == 2
    assert error_of(result) == "sbert: error: --engine ray writes vectors only: --with-stats and --cache need --engine local"
