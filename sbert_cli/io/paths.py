"""Every path sbert derives from an output's name, and the check that none of them is an input.

A run writes or removes more than its output: temporary files, the .npy ids sidecar, the rejects file, the
lock, a directory's shards and its state folder. Each is named here, once, and checked against every input
(symlinks and '..' resolved) before anything is written or removed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sbert_cli.errors import UsageError
from sbert_cli.io.publish import temporary_pattern
from sbert_cli.io.rows import STDIN
from sbert_cli.io.storage import StorePath, location


def ids_path(path: str) -> str:
    """The .npy sidecar holding ids, one JSON value a line: vectors.npy -> vectors.ids.jsonl."""
    return str(location(path).with_suffix(".ids.jsonl"))


def quantization_path(path: str) -> str:
    """The sidecar of a .npy or .jsonl output holding int8/uint8 ranges, named from the output's whole name so that two
    outputs in one folder never share one: vectors.npy -> vectors.npy.quantization.json."""
    return str(location(path)) + ".quantization.json"


def rejects_path(path: str) -> str:
    """out.parquet -> out.parquet.rejects.jsonl, from the whole name, so out.npy's rejects are another file (a directory
    keeps its rejects in its state folder)."""
    return str(location(path)) + ".rejects.jsonl"


def file_lock_path(path: str) -> Path | StorePath:
    """The lock beside a single output file: out.parquet -> .out.parquet.sbert.lock (in a store: its lease)."""
    target = location(path)
    return target.with_name(f".{target.name}.sbert.lock")


@dataclass(frozen=True)
class DirectoryLayout:
    """OUT/ holds Parquet shards and nothing else, so every dataset reader takes it whole; the manifest,
    rejects, lock and temporary files live in the sibling folder OUT.sbert/, where no reader looks."""

    data: Path | StorePath

    @classmethod
    def at(cls, path: str) -> DirectoryLayout:
        return cls(location(path))

    @property
    def state(self) -> Path | StorePath:
        return self.data.with_name(self.data.name + ".sbert")

    @property
    def manifest(self) -> Path | StorePath:
        return self.state / "manifest.json"

    @property
    def rejects(self) -> Path | StorePath:
        return self.state / "rejects"

    @property
    def lock(self) -> Path | StorePath:
        return self.state / "lock"

    def shard(self, index: int) -> Path | StorePath:
        return self.data / f"part-{index:05d}.parquet"

    def shard_rejects(self, index: int) -> Path | StorePath:
        return self.rejects / f"part-{index:05d}.rejects.jsonl"


@dataclass(frozen=True)
class Derived:
    """What one option's target makes sbert write or remove: files by role (the target first), and folders it
    writes and removes files in."""

    owner: str  # the option that names the target: -o, --cache, --plot
    files: tuple[tuple[str, str], ...]  # (role, path as given or derived)
    folders: tuple[str, ...] = ()


def file_output_paths(path: str, sidecars: tuple[tuple[str, str], ...]) -> Derived:
    """A single output file's companions: its format's sidecars (role, path), the rejects file (written with
    --on-error skip, removed after a clean run, since an earlier run's rejects no longer apply), the lock."""
    files = [("output", path), *sidecars]
    files.append(("rejects file", rejects_path(path)))
    files.append(("lock file", str(file_lock_path(path))))
    return Derived("-o", tuple(files))


def directory_output_paths(path: str) -> Derived:
    layout = DirectoryLayout.at(path)
    return Derived("-o", (), (str(layout.data), str(layout.state)))


def refuse_overlap(derived: Derived, paths: Iterable[str], noun: str = "input", change: str | None = None) -> None:
    """One line, before anything is written, when a file sbert would write or remove for `derived` is one of
    `paths` (the inputs, or another file the run keeps, such as the cache), symlinks and '..' resolved."""
    change = change or derived.owner
    for name in paths:
        if name == STDIN:
            continue
        real = location(name).resolve()
        for index, (role, path) in enumerate(derived.files):
            target, main = location(path).resolve(), derived.files[0][1]
            if real == target and index == 0:
                raise UsageError(f"{path}: is the {noun} file; pass another {change}")
            if real == target:
                raise UsageError(f"{name}: is the {noun}, and {derived.owner} {main} would overwrite it as its {role}; pass another {change}")
            if real.parent == target.parent and fnmatch.fnmatchcase(real.name, temporary_pattern(target.name)):
                raise UsageError(f"{name}: is the {noun}, named like a temporary file of {derived.owner} {main}, which sbert removes; rename it")
        for folder in derived.folders:
            place = location(folder).resolve()
            if isinstance(real, type(place)) and real.is_relative_to(place):  # a local path is never inside a bucket
                where = f"{derived.owner} {derived.folders[0]}"
                raise UsageError(f"{name}: is inside {folder}, where sbert writes and removes files for {where}; pass another {change}")


# What a directory output writes inside its folders, as the files a directory or glob input would take.
_FOLDER_SAMPLES = (("shards", "part-00000.parquet"), ("rejects", "rejects/part-00000.rejects.jsonl"))


def refuse_reading_back(derived: Derived, pattern: str, reads: Callable[[str], bool]) -> None:
    """One line when INPUT (a directory, prefix or glob) would read, on the next run, a file this output writes."""
    main = derived.files[0][1] if derived.files else (derived.folders[0] if derived.folders else "")
    samples = [*derived.files, *((role, f"{folder}/{name}") for folder in derived.folders for role, name in _FOLDER_SAMPLES)]
    for role, path in samples:
        if reads(path):
            written = "" if path == main else f", and {derived.owner} {main} writes it as its {role}"
            raise UsageError(f"{path}: is inside the input {pattern}, which would read it on the next run{written}; pass another {derived.owner} outside the input")
