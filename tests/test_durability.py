"""Durability of what sbert publishes, checked at the system calls: every file reaches its final name with its data
synced before the rename and its folder synced after it; a directory's manifest lists only shards that are already
durable; a shard a power cut left torn or changed is encoded again on --resume; a failed rename leaves nothing."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset
import pytest

from sbert_cli.io.publish import TEMPORARY_MARK
from tests.conftest import FakeEncoder
from tests.test_cli import error_of, run
from tests.test_evaluate import write_pairs
from tests.test_unattended import check_manifest, write_texts

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names an fsync'ed descriptor through /proc/self/fd (Linux)")


# --- the trace: fsync and rename calls in the order they were made -------------------------------------------------


@dataclass(frozen=True)
class Event:
    kind: str  # "fsync" (recorded once the call returned) or "rename" (recorded as it is called: os.replace, os.rename)
    path: str  # fsync: the file or folder behind the descriptor; rename: the destination
    source: str | None = None  # rename: the file renamed
    directory: bool = False
    inode: int = 0  # of the file synced, or of the source renamed
    size: int = 0
    mtime_ns: int = 0
    manifest: dict | None = None  # a rename onto manifest.json: the JSON it is about to publish


class Trace:
    """os.fsync, os.replace and os.rename (Path.rename calls it) wrapped to record each call, from any thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()
        real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

        def fsync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            status = os.fstat(fd)
            real_fsync(fd)
            self._add(Event("fsync", path, None, stat.S_ISDIR(status.st_mode), status.st_ino, status.st_size, status.st_mtime_ns))

        def renaming(real: Any) -> Any:
            def rename(source: Any, destination: Any, *args: Any, **kwargs: Any) -> None:
                status = os.stat(source)
                target = os.path.realpath(os.fspath(destination))
                manifest = json.loads(Path(source).read_text(encoding="utf-8")) if os.path.basename(target) == "manifest.json" else None
                self._add(Event("rename", target, os.path.realpath(os.fspath(source)), stat.S_ISDIR(status.st_mode),
                                status.st_ino, status.st_size, status.st_mtime_ns, manifest))
                return real(source, destination, *args, **kwargs)

            return rename

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", renaming(real_replace))
        monkeypatch.setattr(os, "rename", renaming(real_rename))

    def _add(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def renames(self) -> list[tuple[int, Event]]:
        return [(index, event) for index, event in enumerate(self.events) if event.kind == "rename"]

    def published(self) -> set[str]:
        """Every final name something was renamed onto."""
        return {event.path for _, event in self.renames() if TEMPORARY_MARK not in os.path.basename(event.path)}

    def check_published(self) -> None:
        """Each rename onto a final name: the source (that inode, as it is now) synced before it, the folder synced
        after it and before the next rename."""
        renames = self.renames()
        assert renames, "nothing was renamed into place"
        for position, (index, event) in enumerate(renames):
            if TEMPORARY_MARK in os.path.basename(event.path):
                continue
            synced = [
                earlier for earlier in self.events[:index]
                if earlier.kind == "fsync" and earlier.path == event.source and earlier.inode == event.inode
                and earlier.size == event.size and earlier.mtime_ns == event.mtime_ns
            ]
            assert synced, f"{event.source} renamed to {event.path} with its data not synced since it was last written"
            following = renames[position + 1][0] if position + 1 < len(renames) else len(self.events)
            folder = os.path.dirname(event.path)
            assert any(
                later.kind == "fsync" and later.directory and later.path == folder for later in self.events[index + 1:following]
            ), f"{event.path}: its folder {folder} was not synced after the rename (before the next one)"

    def check_manifests(self, data: Path, state: Path) -> int:
        """Each manifest published lists only shards (and rejects files) renamed into place and their folder synced
        before it. Returns how many manifests were published."""
        count = 0
        for index, event in self.renames():
            if event.manifest is None:
                continue
            count += 1
            listed = [str(data / entry["file"]) for entry in event.manifest["shards"]]
            listed += [str(state / entry["rejects_file"]) for entry in event.manifest["shards"] if entry["rejects_file"]]
            for path in listed:
                self._check_durable_before(os.path.realpath(path), index)
        return count

    def _check_durable_before(self, path: str, index: int) -> None:
        placed = [position for position, event in enumerate(self.events[:index]) if event.kind == "rename" and event.path == path]
        assert placed, f"the manifest lists {path} before it was renamed into place"
        folder = os.path.dirname(path)
        assert any(
            event.kind == "fsync" and event.directory and event.path == folder for event in self.events[placed[-1] + 1:index]
        ), f"the manifest lists {path} before its folder {folder} was synced"


def user_files(folder: Path, inputs: set[str]) -> set[str]:
    """What a user sees under `folder` after the run: every file but the inputs and the lock."""
    return {
        os.path.realpath(path) for path in folder.rglob("*")
        if path.is_file() and path.name not in inputs and path.name != "lock"
    }


def temporaries(folder: Path) -> list[Path]:
    return sorted(folder.rglob(f"*{TEMPORARY_MARK}*"))


def write_rows(path: Path, count: int, bad: int | None = None) -> None:
    """`count` JSON-lines rows; row `bad` has no text field, so --on-error skip rejects it."""
    lines = [json.dumps({"id": f"r{i}", "text": f"第{i}行" + "字" * (i % 5)}, ensure_ascii=False) for i in range(count)]
    if bad is not None:
        lines[bad] = json.dumps({"id": f"r{bad}"})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# (options after -o, the files a user finds: relative to tmp_path, the exit code)
OUTPUTS = {
    "parquet": (["-o", "x.parquet"], ["x.parquet"], 0),
    "npy": (["-o", "x.npy"], ["x.npy", "x.ids.jsonl"], 0),
    "jsonl": (["-o", "x.jsonl"], ["x.jsonl"], 0),
    "npy-int8": (["-o", "x.npy", "--dtype", "int8"], ["x.npy", "x.ids.jsonl", "x.npy.quantization.json"], 0),
    "rejects": (["-o", "x.parquet", "--on-error", "skip"], ["x.parquet", "x.parquet.rejects.jsonl"], 3),
    "directory": (
        ["-o", "out/", "--shard-rows", "10", "--on-error", "skip"],
        [*(f"out/part-{i:05d}.parquet" for i in range(4)), "out.sbert/rejects/part-00001.rejects.jsonl", "out.sbert/manifest.json"],
        3,
    ),
}


@pytest.mark.parametrize("kind", list(OUTPUTS))
def test_every_published_file_is_synced_renamed_then_its_folder_synced(
    tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    options, finals, code = OUTPUTS[kind]
    source = tmp_path / "in.jsonl"
    write_rows(source, 35, bad=13 if "skip" in options else None)
    monkeypatch.chdir(tmp_path)
    trace = Trace(monkeypatch)
    result = run("encode", source, "--chunk-size", "4", *options)
    assert result.exit_code == code, result.output
    trace.check_published()
    expected = {os.path.realpath(tmp_path / name) for name in finals}
    assert trace.published() == expected
    assert user_files(tmp_path, {"in.jsonl"}) == expected
    assert not temporaries(tmp_path)
    if kind == "directory":
        manifests = trace.check_manifests(tmp_path / "out", tmp_path / "out.sbert")
        assert manifests == 1 + 4 + 1  # the empty one, one a shard, the complete one
        assert json.loads((tmp_path / "out.sbert" / "manifest.json").read_text())["complete"] is True


@pytest.mark.parametrize("kind", ["npy", "npy-int8"])
def test_an_npy_arrays_sidecars_are_renamed_into_place_before_the_array(
    tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A reader that finds x.npy finds the ids (and int8 ranges) that belong to it: the array is renamed last."""
    options, finals, _ = OUTPUTS[kind]
    source = tmp_path / "in.jsonl"
    write_rows(source, 35)
    monkeypatch.chdir(tmp_path)
    trace = Trace(monkeypatch)
    result = run("encode", source, "--chunk-size", "4", *options)
    assert result.exit_code == 0, result.output
    order = [os.path.basename(event.path) for _, event in trace.renames() if TEMPORARY_MARK not in os.path.basename(event.path)]
    assert order[-1] == "x.npy" and sorted(order) == sorted(finals)


def test_the_plot_is_synced_renamed_then_its_folder_synced(tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs the plot extra")
    pairs = write_pairs(tmp_path / "pairs.tsv", [("甲", "乙", 1), ("丙", "丁", 2), ("戊", "己", 3), ("庚", "辛", 4)])
    trace = Trace(monkeypatch)
    result = run("evaluate", pairs, "--plot", tmp_path / "out.png", "-q")
    assert result.exit_code == 0, result.output
    trace.check_published()
    expected = {os.path.realpath(tmp_path / "out.png")}
    assert trace.published() == expected
    assert user_files(tmp_path, {"pairs.tsv"}) == expected
    assert not temporaries(tmp_path)


# --- a shard a power cut left torn, changed or gone: encoded again and published by --resume ------------------------


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def flip_middle(path: Path) -> None:
    """Different bytes of the same size, written in place: only the SHA-256 tells."""
    with open(path, "r+b") as stream:
        middle = path.stat().st_size // 2
        stream.seek(middle)
        chunk = stream.read(16)
        stream.seek(middle)
        stream.write(bytes(byte ^ 0xFF for byte in chunk))


def read_dataset(directory: Path) -> tuple[list, np.ndarray]:
    table = pyarrow.dataset.dataset(directory, format="parquet").to_table()
    return table.column("id").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)


SUMMARY = re.compile(
    r"sbert: 1000 rows, 1 shard encoded, 2 already done \(2000 rows\), dim 4, fp32 on cpu, \d+\.\d s, \d+\.\d rows/s, "
    r"0 truncated to 16 tokens -> (?P<where>.+)"
)


@pytest.mark.parametrize("damage", [truncate, flip_middle, Path.unlink], ids=["truncated", "same-size-changed", "missing"])
def test_resume_encodes_a_damaged_shard_again(tmp_path: Path, fake_encoder: FakeEncoder, damage: Any) -> None:
    source = tmp_path / "in.jsonl"
    write_texts(source, 3000)
    line = ["encode", source, "--id-column", "id", "--shard-rows", "1000"]
    reference = tmp_path / "reference"
    assert run(*line, "-o", f"{reference}/", "-q").exit_code == 0
    out = tmp_path / "out"
    assert run(*line, "-o", f"{out}/", "-q").exit_code == 0
    shard = out / "part-00001.parquet"
    before = shard.read_bytes()
    damage(shard)
    resumed = run(*line, "-o", f"{out}/", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert shard.is_file() and shard.read_bytes() == before  # the same rows, encoded again to the same bytes
    ids, vectors = read_dataset(out)
    expected_ids, expected_vectors = read_dataset(reference)
    assert ids == expected_ids == [f"r{i}" for i in range(3000)]
    np.testing.assert_array_equal(vectors, expected_vectors)
    manifest = check_manifest(out)
    assert manifest["complete"] is True and [entry["file"] for entry in manifest["shards"]] == [f"part-{i:05d}.parquet" for i in range(3)]
    assert not temporaries(tmp_path)
    summaries = [text for text in resumed.stderr.splitlines() if text.startswith("sbert: ")]
    assert len(summaries) == 1 and (match := SUMMARY.fullmatch(summaries[0])), resumed.stderr
    assert Path(match["where"]).resolve() == out.resolve()


# --- a rename that fails: nothing of the run is left ----------------------------------------------------------------


def test_a_failed_rename_leaves_no_temporary_and_no_output(tmp_path: Path, fake_encoder: FakeEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    import sbert_cli.io.publish

    source, out = tmp_path / "in.jsonl", tmp_path / "x.parquet"
    write_rows(source, 20)
    real_replace = os.replace
    failed = []

    def replace(temporary: Any, final: Any) -> None:
        if Path(final) == out and not failed:
            failed.append(final)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(temporary, final)

    monkeypatch.setattr(sbert_cli.io.publish.os, "replace", replace)
    result = run("encode", source, "-o", out)
    assert failed and result.exit_code != 0
    assert error_of(result) == f"sbert: error: {out}: cannot write (No space left on device); nothing was written"
    assert [text for text in result.stderr.splitlines() if text.startswith("sbert: error:")] == [error_of(result)]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.jsonl"]
