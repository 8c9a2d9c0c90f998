"""Where a run's vectors go: one protocol, a sink for a single output and one for a directory of shards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from sbert_cli.io.manifest import Manifest, ShardEntry, save_manifest
from sbert_cli.io.paths import DirectoryLayout
from sbert_cli.io.output_formats import OUTPUT_FORMATS
from sbert_cli.io.parquet_out import ParquetWriter
from sbert_cli.io.readers import BadRow, Record
from sbert_cli.io.storage import location
from sbert_cli.io.writers import NOTHING_WRITTEN, EmbeddingWriter, RejectsWriter, WriterSpec
from sbert_cli.words import plural

if TYPE_CHECKING:
    from sbert_cli.model.description import ModelInfo


class Sink(Protocol):
    """A run's output, written shard by shard (a single output file is one shard); nothing shows until finish()."""

    done: frozenset[int]  # shards an earlier run finished (--resume): the pipeline reads past them
    complete: bool  # an earlier run finished everything: there is nothing to do
    rejects_shown: str  # where bad rows go, for the summary

    def shard_of(self, row: int) -> int: ...

    def start_shard(self, index: int) -> None: ...

    def write(self, records: list[Record], vectors: np.ndarray, n_tokens: list[int]) -> None: ...

    def reject(self, rows: list[BadRow]) -> None: ...

    def finish_shard(self) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


def describe_vectors(info: ModelInfo, dtype: str) -> dict[str, str]:
    """The Parquet schema metadata saying what the vectors are (int8/uint8 ranges are added by the writer once known)."""
    from sbert_cli import __version__

    metadata = {
        "sbert.model": info.name,
        "sbert.dim": str(info.dim),
        "sbert.pooling": info.pooling,
        "sbert.normalize": str(info.normalize).lower(),
        "sbert.max_length": str(info.max_length),
        "sbert.precision": info.precision,
        "sbert.dtype": dtype,
        "sbert.prompt": info.prompt,
        "sbert.similarity": info.similarity,
        "sbert.version": __version__,
    }
    if info.truncate_dim is not None:
        metadata["sbert.truncate_dim"] = str(info.truncate_dim)
    metadata.update({f"sbert.{name}": value for name, value in info.quality})
    return metadata


class FileSink:
    """One output file or stdout (plus its rejects file): the whole input is a single shard."""

    done: frozenset[int] = frozenset()
    complete = False

    def __init__(self, spec: WriterSpec, format: str, rejects: RejectsWriter | None, check: Callable[[], None] = lambda: None) -> None:
        self.writer: EmbeddingWriter = OUTPUT_FORMATS[format].writer(spec)
        self.rejects = rejects
        self.rejects_shown = rejects.path if rejects is not None else ""
        self.check = check

    def shard_of(self, row: int) -> int:
        return 0

    def start_shard(self, index: int) -> None:
        pass

    def finish_shard(self) -> None:
        pass

    def write(self, records: list[Record], vectors: np.ndarray, n_tokens: list[int]) -> None:
        self.writer.write([record.id for record in records], vectors, n_tokens)

    def reject(self, rows: list[BadRow]) -> None:
        if rows:
            if self.rejects is None:
                raise RuntimeError("bad rows reached a sink that was given no rejects file")
            self.rejects.add(rows)

    def finish(self) -> None:
        self.check()
        self.writer.finish()
        if self.rejects is not None:
            self.rejects.finish()

    def abort(self) -> None:
        self.writer.abort()
        if self.rejects is not None:
            self.rejects.abort()


class ShardedSink:
    """Writes each shard under a temporary name, renames it into place when complete, then records it in the manifest."""

    def __init__(self, layout: DirectoryLayout, manifest: Manifest, shard_rows: int, spec: WriterSpec, check: Callable[[], None]) -> None:
        self.layout = layout
        self.check = check
        self.manifest = manifest
        self.shard_rows = shard_rows
        self.spec = spec
        self.done = frozenset(entry.first_row // shard_rows for entry in manifest.shards)
        if spec.form is not None:
            spec.form.restore(manifest.quantization)  # --resume: the ranges the earlier shards were scaled by
        self.complete = manifest.complete
        self.rejects_shown = f"{layout.rejects}/"
        self._index: int | None = None
        self._writer: ParquetWriter | None = None
        self._rejects: RejectsWriter | None = None
        self._rows_seen = 0

    def shard_of(self, row: int) -> int:
        return row // self.shard_rows

    def start_shard(self, index: int) -> None:
        self._index = index
        self._rows_seen = 0
        on_failure = self._on_failure()
        self._writer = ParquetWriter(replace(self.spec, path=str(self.layout.shard(index)), on_failure=on_failure))
        self._rejects = RejectsWriter(str(self.layout.shard_rejects(index)), self.spec.temp_dir, on_failure)

    def _on_failure(self) -> str:
        """What a failed write leaves: the shards finished so far stay, and --resume goes on from them."""
        count = len(self.manifest.shards)
        if not count:
            return f"no shard was finished; {NOTHING_WRITTEN}"
        return f"{plural(count, 'finished shard')} kept in {self.layout.data}; rerun with --resume to continue"

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
        self.check()
        self._writer.finish()
        self._rejects.finish()
        assert self._writer.digest is not None
        sha256, size = self._writer.digest
        first = self._index * self.shard_rows
        rejects_file = str(location(self._rejects.path).relative_to(self.layout.state)) if self._rejects.count else None  # type: ignore[arg-type]
        name = location(self._writer.spec.path).name
        entry = ShardEntry(name, first, first + self._rows_seen, self._writer.rows, self._rejects.count, sha256, rejects_file, size)
        on_failure = self._on_failure()
        self.manifest.shards = sorted([*self.manifest.shards, entry], key=lambda shard: shard.first_row)
        self.manifest.quantization = self._writer.form.record()
        save_manifest(self.layout, self.manifest, on_failure)
        self._writer = self._rejects = None

    def finish(self) -> None:
        self.check()  # as before each shard: a run that lost its lease marks nothing complete
        self.manifest.complete = True
        save_manifest(self.layout, self.manifest)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
        if self._rejects is not None:
            self._rejects.abort()
        self._writer = self._rejects = None
        if not self.manifest.shards:
            # Nothing was finished: leave no manifest either, so the directory holds nothing of this run.
            self.layout.manifest.unlink(missing_ok=True)
