"""Directory outputs are Parquet datasets every reader takes whole; one --resume line finishes any interrupted run."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from sbert_cli.io.paths import DirectoryLayout
from tests.conftest import FakeEncoder, expected_fake_vectors
from tests.test_cli import error_of, run
from tests.test_unattended import (
    MIXED_LINES,
    check_manifest,
    read_shards,
    run_child,
    start_child,
    uninterrupted_run,
    wait_for_shards,
    wait_until,
    write_texts,
)


def rows_by_reader(directory: Path) -> dict[str, list[tuple]]:
    """(id, vector) rows as pandas, pyarrow.dataset and polars read the directory, sorted by id."""
    import pandas
    import polars
    import pyarrow.dataset

    frames = {
        "pandas": pandas.read_parquet(directory),
        "pyarrow.dataset": pyarrow.dataset.dataset(directory).to_table().to_pandas(),
        "polars": polars.read_parquet(directory).to_pandas(),
    }
    return {
        name: sorted((str(key), tuple(np.asarray(vector, dtype=np.float32).tolist())) for key, vector in zip(frame["id"], frame["embedding"]))
        for name, frame in frames.items()
    }


def assert_readers_see(directory: Path, ids: list, vectors: np.ndarray) -> None:
    expected = sorted((str(key), tuple(vector.tolist())) for key, vector in zip(ids, vectors))
    for name, rows in rows_by_reader(directory).items():
        assert rows == expected, name


def mixed_input(tmp_path: Path, copies: int) -> tuple[Path, list[str], list[str]]:
    """MIXED_LINES repeated with fresh ids: ids and texts of the good rows."""
    lines, ids, texts = [], [], []
    for copy in range(copies):
        for line in MIXED_LINES:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                lines.append(line)
                continue
            if isinstance(obj, dict) and "id" in obj:
                obj["id"] = f"{obj['id']}{copy}"
                if isinstance(obj.get("text"), str):
                    obj["text"] += str(copy)
                    ids.append(obj["id"])
                    texts.append(obj["text"])
            lines.append(json.dumps(obj, ensure_ascii=False))
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return source, ids, texts


def test_a_sharded_run_with_rejects_reads_as_one_dataset(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source, ids, texts = mixed_input(tmp_path, copies=5)
    out = tmp_path / "vectors"
    result = run("encode", source, "-o", f"{out}/", "--id-column", "id", "--on-error", "skip", "--shard-rows", "12")
    assert result.exit_code == 3, result.output
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i:05d}.parquet" for i in range(4)]
    layout = DirectoryLayout(out)
    assert len(list(layout.rejects.glob("*.rejects.jsonl"))) == 4
    assert f"25 rejected -> {layout.rejects}/, " in result.stderr  # one slash, though -o ended in one
    assert_readers_see(out, ids, expected_fake_vectors(texts))


@pytest.mark.slow
def test_a_resumed_run_reads_as_one_dataset(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    texts = write_texts(source, 400)
    out = tmp_path / "out"
    args = ["encode", source, "-o", out, "--id-column", "id", "--shard-rows", "100", "--chunk-size", "25", "--batch-size", "5", "--resume"]
    child = start_child(args, delay=0.01)
    wait_for_shards(out, 2, child)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done = run_child(args)
    assert done.returncode == 0, done.stderr
    assert_readers_see(out, [f"r{i}" for i in range(400)], expected_fake_vectors(texts))


@pytest.mark.slow
def test_the_same_resume_line_survives_sigkill_at_any_moment(tmp_path: Path) -> None:
    common = uninterrupted_run(tmp_path)
    out = tmp_path / "out"
    line = [*common, "-o", out, "--resume"]
    layout = DirectoryLayout(out)

    def shards_done(count: int):
        return lambda: layout.manifest.exists() and len(json.loads(layout.manifest.read_text())["shards"]) >= count

    moments = [
        None,  # at once: the process has not even started
        lambda: layout.state.exists(),  # the state folder is there, the first manifest (probably) not yet
        shards_done(0),  # right after the first manifest
        shards_done(2),
        shards_done(4),
    ]
    for moment in moments:
        child = start_child(line, delay=0.01)
        if moment is not None:
            wait_until(moment, child)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert all(p.suffix == ".parquet" for p in out.iterdir()) if out.exists() else True
    finished = run_child(line)
    assert finished.returncode == 0, finished.stderr
    assert check_manifest(out)["complete"] is True
    ids, vectors = read_shards(out)
    whole_ids, whole_vectors = read_shards(tmp_path / "whole")
    assert ids == whole_ids
    np.testing.assert_array_equal(vectors, whole_vectors)
    again = run_child(line)
    assert again.returncode == 0
    assert again.stderr.strip().splitlines()[-1] == f"sbert: {out} is complete; nothing to do"


def test_resume_starts_a_run_that_never_began(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "in.jsonl"
    texts = write_texts(source, 30)
    out = tmp_path / "never"
    result = run("encode", source, "-o", out, "--resume", "--shard-rows", "10", "--id-column", "id")
    assert result.exit_code == 0, result.output
    assert "3 shards encoded, " in result.stderr and "already done" not in result.stderr
    ids, vectors = read_shards(out)
    assert ids == [f"r{i}" for i in range(30)]
    np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))
    again = run("encode", source, "-o", out, "--resume", "--shard-rows", "10", "--id-column", "id")
    assert again.exit_code == 0
    assert again.stderr.strip() == f"sbert: {out} is complete; nothing to do"
    changed = run("encode", source, "-o", out, "--resume", "--shard-rows", "15", "--id-column", "id")
    assert changed.exit_code == 2
    assert error_of(changed) == f"sbert: error: {out}: options differ from the manifest's (shard_rows: 10 -> 15); resume with the same options"


def test_a_directory_written_by_sbert_0_1_is_moved_to_the_new_layout(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source, ids, texts = mixed_input(tmp_path, copies=2)
    out = tmp_path / "old"
    assert run("encode", source, "-o", out, "--id-column", "id", "--on-error", "skip", "--shard-rows", "8", "-q").exit_code == 3
    # Lay it out as 0.1 did: manifest.json and part-*.rejects.jsonl inside the directory, no state folder.
    layout = DirectoryLayout(out)
    manifest = json.loads(layout.manifest.read_text())
    manifest["version"] = 1
    for entry in manifest["shards"]:
        if entry["rejects_file"]:
            shutil.move(layout.state / entry["rejects_file"], out / Path(entry["rejects_file"]).name)
            entry["rejects_file"] = Path(entry["rejects_file"]).name
    (out / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(layout.state)
    result = run("encode", source, "-o", out, "--id-column", "id", "--on-error", "skip", "--shard-rows", "8", "--resume")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"sbert: {out} is complete; nothing to do"
    assert all(p.suffix == ".parquet" for p in out.iterdir())
    assert sorted(p.name for p in layout.rejects.iterdir()) == ["part-00000.rejects.jsonl", "part-00001.rejects.jsonl"]
    assert check_manifest(out)["version"] == 2
    assert_readers_see(out, ids, expected_fake_vectors(texts))
