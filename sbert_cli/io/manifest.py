"""A directory output's record of itself: its layout, the manifest of finished shards, and what makes --resume safe."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sbert_cli.errors import InputDataError, UsageError
from sbert_cli.io.readers import STDIN
from sbert_cli.io.writers import TEMPORARY_MARK, output_errors, temporary_path

MANIFEST_VERSION = 2
_EDGE_BYTES = 1 << 20  # the input is identified by size, mtime and a hash of its first and last MiB


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

    def create(self) -> None:
        """The output directory and its state folder, made when missing; a failure is one line naming it."""
        with output_errors(str(self.data)):
            for folder in (self.data, self.state, self.rejects):
                folder.mkdir(parents=True, exist_ok=True)

    def shard(self, index: int) -> Path:
        return self.data / f"part-{index:05d}.parquet"

    def shard_rejects(self, index: int) -> Path:
        return self.rejects / f"part-{index:05d}.rejects.jsonl"


@dataclass(frozen=True)
class InputIdentity:
    """Enough to tell that a resumed run reads the same input, without hashing all of it."""

    path: str
    size: int
    mtime_ns: int
    edge_sha256: str


@dataclass
class ShardEntry:
    """One finished shard: input rows [first_row, end_row), how many were written and rejected, its checksum."""

    file: str
    first_row: int
    end_row: int
    rows: int
    rejected: int
    sha256: str
    rejects_file: str | None = None  # relative to the state folder


@dataclass
class Manifest:
    input: dict[str, Any]
    options: dict[str, Any]
    shards: list[ShardEntry] = field(default_factory=list)
    complete: bool = False
    version: int = MANIFEST_VERSION
    quantization: dict[str, Any] | None = None  # int8/uint8 ranges, fixed by the first shard for every later one


def identify_input(path: str) -> InputIdentity:
    if path == STDIN:
        return InputIdentity(STDIN, -1, -1, "")
    stat = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        digest.update(stream.read(_EDGE_BYTES))
        if stat.st_size > _EDGE_BYTES:
            stream.seek(max(_EDGE_BYTES, stat.st_size - _EDGE_BYTES))
            digest.update(stream.read(_EDGE_BYTES))
    return InputIdentity(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, digest.hexdigest())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(path: Path) -> Manifest | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest(
            input=data["input"],
            options=data["options"],
            shards=[ShardEntry(**entry) for entry in data["shards"]],
            complete=bool(data.get("complete", False)),
            version=int(data.get("version", 1)),
            quantization=data.get("quantization"),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputDataError(f"{path}: unreadable manifest ({exc}); write into an empty directory instead") from None


def save_manifest(layout: DirectoryLayout, manifest: Manifest) -> None:
    """Atomically: a reader (or a crash) sees the old manifest or the new one, never half of one."""
    temp = temporary_path(str(layout.manifest))
    with output_errors(str(layout.manifest)):
        with open(temp, "w", encoding="utf-8") as stream:
            json.dump(asdict(manifest), stream, indent=2, ensure_ascii=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, layout.manifest)


def recorded_precision(layout: DirectoryLayout) -> str | None:
    """The precision an earlier run of this directory encoded at, if it left a manifest."""
    for path in (layout.manifest, layout.data / "manifest.json"):
        manifest = load_manifest(path) if path.is_file() else None
        if manifest is not None:
            return manifest.options.get("precision")
    return None


def prepare_directory(layout: DirectoryLayout, identity: InputIdentity, options: dict[str, Any], resume: bool) -> Manifest:
    """The manifest to write under, with the lock held: a fresh one, or the earlier run's once it matches this run.

    With --resume, a directory with nothing to resume (missing, empty, killed before its first manifest)
    starts a fresh run, so the same cron line is right every time; without it, earlier shards are refused.
    """
    _migrate_first_layout(layout)
    _remove_stale_temporaries(layout)
    earlier = load_manifest(layout.manifest)
    if earlier is None and not any(layout.data.glob("part-*.parquet")):
        manifest = Manifest(input=asdict(identity), options=options)
        save_manifest(layout, manifest)
        return manifest
    if not resume:
        raise UsageError(f"{layout.data}: holds shards of an earlier run; pass --resume to finish it, or choose an empty directory")
    if earlier is None:
        raise UsageError(f"{layout.data}: holds Parquet files that no sbert manifest describes; choose an empty directory")
    _check_same_run(layout, earlier, identity, options)
    intact = [entry for entry in earlier.shards if _shard_is_intact(layout, entry)]
    if earlier.complete and len(intact) == len(earlier.shards):
        return earlier
    earlier.shards, earlier.complete = intact, False
    save_manifest(layout, earlier)
    return earlier


def _check_same_run(layout: DirectoryLayout, earlier: Manifest, identity: InputIdentity, options: dict[str, Any]) -> None:
    if identity.path == STDIN:
        raise UsageError("--resume needs the input as a file: stdin cannot be checked against the manifest")
    changed = [key for key, value in asdict(identity).items() if earlier.input.get(key) != value]
    if changed:
        raise UsageError(
            f"{layout.data}: the input differs from the manifest's ({', '.join(changed)} changed); "
            "resume only with the same input file, or write into an empty directory"
        )
    differing = sorted(key for key in set(options) | set(earlier.options) if options.get(key) != earlier.options.get(key))
    if differing:
        shown = ", ".join(f"{key}: {earlier.options.get(key)!r} -> {options.get(key)!r}" for key in differing)
        raise UsageError(f"{layout.data}: options differ from the manifest's ({shown}); resume with the same options")


def _shard_is_intact(layout: DirectoryLayout, entry: ShardEntry) -> bool:
    path = layout.data / entry.file
    if not path.is_file() or file_sha256(path) != entry.sha256:
        return False
    return entry.rejects_file is None or (layout.state / entry.rejects_file).is_file()


def _remove_stale_temporaries(layout: DirectoryLayout) -> None:
    """Temporary files of a run that was killed; we hold the lock, so none belongs to a live run."""
    for folder in (layout.state, layout.data):
        for path in folder.glob(f".*{TEMPORARY_MARK}*"):
            path.unlink(missing_ok=True)


def _migrate_first_layout(layout: DirectoryLayout) -> None:
    """sbert 0.1 kept manifest.json, rejects and its lock inside the directory: move them to the state folder."""
    old = layout.data / "manifest.json"
    manifest = load_manifest(old)
    if manifest is None or layout.manifest.exists():
        return
    with output_errors(str(layout.state)):
        for entry in manifest.shards:
            if entry.rejects_file is not None:
                moved = layout.rejects / Path(entry.rejects_file).name
                if (layout.data / entry.rejects_file).exists():
                    os.replace(layout.data / entry.rejects_file, moved)
                entry.rejects_file = str(moved.relative_to(layout.state))
        manifest.version = MANIFEST_VERSION
        save_manifest(layout, manifest)
        old.unlink()
        (layout.data / ".sbert.lock").unlink(missing_ok=True)
