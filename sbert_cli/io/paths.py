"""Every path sbert derives from an output's name, and the check that none of them is an input.

A run writes or removes more than its output: temporary files, the .npy ids sidecar, the rejects file, the
lock, a directory's shards and its state folder. Each is named here, once, and checked against every input
(symlinks and '..' resolved) before anything is written or removed.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sbert_cli.errors import UsageError
from sbert_cli.io.rows import STDIN

TEMPORARY_MARK = ".sbert-tmp-"


def temporary_path(path: str, directory: Path | None = None) -> str:
    """A hidden name beside the target (or in `directory`, on the same filesystem), so the final rename is atomic."""
    target = Path(path)
    return str((directory or target.parent) / f".{target.name}{TEMPORARY_MARK}{os.getpid()}")


def temporary_pattern(path: Path) -> str:
    """The glob of every run's temporary files for `path` (in its folder): what a later run may remove."""
    return f".{path.name}{TEMPORARY_MARK}*"


def ids_path(path: str) -> str:
    """The .npy sidecar holding ids, one JSON value a line: vectors.npy -> vectors.ids.jsonl."""
    return str(Path(path).with_suffix(".ids.jsonl"))


def quantization_path(path: str) -> str:
    """The sidecar of a .npy or .jsonl output holding int8/uint8 ranges: vectors.npy -> vectors.quantization.json."""
    return str(Path(path).with_suffix(".quantization.json"))


def rejects_path(path: str) -> str:
    """out.parquet -> out.rejects.jsonl (a directory keeps its rejects in its state folder)."""
    return str(Path(path).with_suffix(".rejects.jsonl"))


def file_lock_path(path: str) -> Path:
    """The lock beside a single output file: out.parquet -> .out.parquet.sbert.lock."""
    target = Path(path)
    return target.with_name(f".{target.name}.sbert.lock")


@dataclass(frozen=True)
class DirectoryLayout:
    """OUT/ holds Parquet shards and nothing else, so every dataset reader takes it whole; the manifest,
    rejects, lock and temporary files live in the sibling folder OUT.sbert/, where no reader looks."""

    data: Path

    @property
    def state(self) -> Path:
        return self.data.with_name(self.data.name + ".sbert")

    @property
    def manifest(self) -> Path:
        return self.state / "manifest.json"

    @property
    def rejects(self) -> Path:
        return self.state / "rejects"

    @property
    def lock(self) -> Path:
        return self.state / "lock"

    def shard(self, index: int) -> Path:
        return self.data / f"part-{index:05d}.parquet"

    def shard_rejects(self, index: int) -> Path:
        return self.rejects / f"part-{index:05d}.rejects.jsonl"


@dataclass(frozen=True)
class Derived:
    """What one option's target makes sbert write or remove: files by role (the target first), and folders it
    writes and removes files in."""

    owner: str  # the option that names the target: -o, --cache, --plot
    files: tuple[tuple[str, str], ...]  # (role, path as given or derived)
    folders: tuple[str, ...] = ()


def file_output_paths(path: str, format: str) -> Derived:
    """A single output file's companions: the ids sidecar (.npy), the rejects file (written with --on-error skip,
    removed after a clean run, since an earlier run's rejects no longer apply), the lock."""
    files = [("output", path)]
    if format == "npy":
        files.append(("ids sidecar", ids_path(path)))
    if format != "parquet":
        files.append(("quantization sidecar", quantization_path(path)))
    files.append(("rejects file", rejects_path(path)))
    files.append(("lock file", str(file_lock_path(path))))
    return Derived("-o", tuple(files))


def directory_output_paths(path: str) -> Derived:
    layout = DirectoryLayout(Path(path))
    return Derived("-o", (), (str(layout.data), str(layout.state)))


def refuse_overlap(derived: Derived, paths: Iterable[str], noun: str = "input", change: str | None = None) -> None:
    """One line, before anything is written, when a file sbert would write or remove for `derived` is one of
    `paths` (the inputs, or another file the run keeps, such as the cache), symlinks and '..' resolved."""
    change = change or derived.owner
    for name in paths:
        if name == STDIN:
            continue
        real = Path(name).resolve()
        for index, (role, path) in enumerate(derived.files):
            target, main = Path(path).resolve(), derived.files[0][1]
            if real == target and index == 0:
                raise UsageError(f"{path}: is the {noun} file; pass another {change}")
            if real == target:
                raise UsageError(f"{name}: is the {noun}, and {derived.owner} {main} would overwrite it as its {role}; pass another {change}")
            if real.parent == target.parent and fnmatch.fnmatchcase(real.name, temporary_pattern(target)):
                raise UsageError(f"{name}: is the {noun}, named like a temporary file of {derived.owner} {main}, which sbert removes; rename it")
        for folder in derived.folders:
            if real.is_relative_to(Path(folder).resolve()):
                where = f"{derived.owner} {derived.folders[0]}"
                raise UsageError(f"{name}: is inside {folder}, where sbert writes and removes files for {where}; pass another {change}")


def remove_leftovers(outputs: Iterable[str]) -> list[Path]:
    """Remove every run's temporary files for these outputs; call it only with the outputs' lock held."""
    removed = []
    for output in outputs:
        target = Path(output)
        for path in sorted(target.parent.glob(temporary_pattern(target))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
