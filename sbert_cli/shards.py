"""Directory output: Parquet shards, a manifest of what is finished, and the checks that make --resume safe."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sbert_cli.errors import InputDataError, UsageError
from sbert_cli.readers import STDIN, BadRow, Record
from sbert_cli.writers import OutputSpec, ParquetWriter, RejectsWriter, _output_errors, temporary_path

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_EDGE_BYTES = 1 << 20  # the input is identified by size, mtime and a hash of its first and last MiB


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
    rejects_file: str | None = None


@dataclass
class Manifest:
    input: dict[str, Any]
    options: dict[str, Any]
    shards: list[ShardEntry] = field(default_factory=list)
    complete: bool = False
    version: int = MANIFEST_VERSION


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


def is_directory_output(path: str) -> bool:
    """-o names a directory when it is one, ends in a slash, or has no extension."""
    return path != "-" and (Path(path).is_dir() or path.endswith(("/", os.sep)) or not Path(path).suffix)


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(directory: Path) -> Manifest | None:
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest(
            input=data["input"],
            options=data["options"],
            shards=[ShardEntry(**entry) for entry in data["shards"]],
            complete=bool(data.get("complete", False)),
            version=int(data.get("version", MANIFEST_VERSION)),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputDataError(f"{path}: unreadable manifest ({exc}); write into an empty directory instead") from None


def save_manifest(directory: Path, manifest: Manifest) -> None:
    """Atomically: a reader (or a crash) sees the old manifest or the new one, never half of one."""
    path = directory / MANIFEST
    temp = temporary_path(str(path))
    with _output_errors(str(path)):
        with open(temp, "w", encoding="utf-8") as stream:
            json.dump(asdict(manifest), stream, indent=2, ensure_ascii=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)


def remove_stale_temporaries(directory: Path) -> int:
    """Temporary files of a run that was killed; we hold the lock, so none belongs to a live run."""
    removed = 0
    for path in directory.glob(".*.sbert-tmp-*"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def prepare_directory(directory: Path, identity: InputIdentity, options: dict[str, Any], resume: bool) -> Manifest:
    """A manifest to write under: a fresh one, or the earlier run's after checking it matches this run."""
    with _output_errors(str(directory)):
        directory.mkdir(parents=True, exist_ok=True)
    earlier = load_manifest(directory)
    if not resume:
        if earlier is not None or any(directory.glob("part-*.parquet")):
            raise UsageError(
                f"{directory}: holds shards of an earlier run; pass --resume to finish it, or choose an empty directory"
            )
        manifest = Manifest(input=asdict(identity), options=options)
        save_manifest(directory, manifest)
        return manifest
    if earlier is None:
        raise UsageError(f"{directory}: no {MANIFEST} to resume from; run without --resume first")
    if identity.path == STDIN:
        raise UsageError("--resume needs the input as a file: stdin cannot be checked against the manifest")
    changed = [key for key, value in asdict(identity).items() if earlier.input.get(key) != value]
    if changed:
        raise UsageError(
            f"{directory}: the input differs from the manifest's ({', '.join(changed)} changed); "
            "resume only with the same input file, or write into an empty directory"
        )
    differing = sorted(key for key in set(options) | set(earlier.options) if options.get(key) != earlier.options.get(key))
    if differing:
        shown = ", ".join(f"{key}: {earlier.options.get(key)!r} -> {options.get(key)!r}" for key in differing)
        raise UsageError(f"{directory}: options differ from the manifest's ({shown}); resume with the same options")
    earlier.shards = [entry for entry in earlier.shards if _shard_is_intact(directory, entry)]
    earlier.complete = False
    save_manifest(directory, earlier)
    return earlier


def _shard_is_intact(directory: Path, entry: ShardEntry) -> bool:
    path = directory / entry.file
    if not path.is_file() or file_sha256(path) != entry.sha256:
        return False
    return entry.rejects_file is None or (directory / entry.rejects_file).is_file()


class ShardedSink:
    """Writes each shard under a temporary name, renames it when complete, then records it in the manifest."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        shard_rows: int,
        dim: int,
        metadata: dict[str, str],
        dtype: str,
        stats_max_length: int | None,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.shard_rows = shard_rows
        self.dim = dim
        self.metadata = metadata
        self.dtype = dtype
        self.stats_max_length = stats_max_length
        self.done = {entry.first_row // shard_rows for entry in manifest.shards}
        self.written = 0
        self._index: int | None = None
        self._writer: ParquetWriter | None = None
        self._rejects: RejectsWriter | None = None
        self._rows_seen = 0

    def shard_of(self, row: int) -> int:
        return row // self.shard_rows

    def start_shard(self, index: int) -> None:
        path = self.directory / shard_name(index)
        self._index = index
        self._rows_seen = 0
        self._writer = ParquetWriter(OutputSpec(str(path), "parquet", self.dtype), self.dim, self.metadata, self.stats_max_length)
        self._rejects = RejectsWriter(str(path.with_suffix(".rejects.jsonl")))

    def write(self, records: list[Record], vectors: np.ndarray, n_tokens: list[int]) -> None:
        assert self._writer is not None
        self._writer.write([record.id for record in records], vectors, n_tokens)
        self._rows_seen += len(records)

    def reject(self, rows: list[BadRow]) -> None:
        assert self._rejects is not None
        self._rejects.add(rows)
        self._rows_seen += len(rows)

    def finish_shard(self) -> None:
        assert self._writer is not None and self._rejects is not None and self._index is not None
        self._writer.finish()
        self._rejects.finish()
        path = Path(self._writer.spec.path)
        first = self._index * self.shard_rows
        self.manifest.shards.append(
            ShardEntry(
                file=path.name,
                first_row=first,
                end_row=first + self._rows_seen,
                rows=self._writer.rows,
                rejected=self._rejects.count,
                sha256=file_sha256(path),
                rejects_file=Path(self._rejects.path).name if self._rejects.count else None,
            )
        )
        self.manifest.shards.sort(key=lambda entry: entry.first_row)
        save_manifest(self.directory, self.manifest)
        self.written += 1
        self._writer = self._rejects = None

    def finish(self) -> None:
        self.manifest.complete = True
        save_manifest(self.directory, self.manifest)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
        if self._rejects is not None:
            self._rejects.abort()
        self._writer = self._rejects = None

