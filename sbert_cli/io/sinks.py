"""Where a run's vectors go: one protocol, a sink for a single output and one for a directory of shards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sbert_cli.io.compact import VectorForm
from sbert_cli.io.lease import output_lease
from sbert_cli.io.lock import output_lock
from sbert_cli.io.manifest import (
    Manifest,
    ShardEntry,
    create_layout,
    identify_input,
    prepare_directory,
    refuse_foreign_files,
    remove_stale_temporaries,
    save_manifest,
)
from sbert_cli.io.paths import DirectoryLayout, file_lock_path, remove_leftovers, spool_dir
from sbert_cli.io.readers import BadRow, Record
from sbert_cli.io.storage import StorePath, location
from sbert_cli.io.writers import NOTHING_WRITTEN, WRITERS, EmbeddingWriter, ParquetWriter, RejectsWriter, WriterSpec
from sbert_cli.job import EncodeJob
from sbert_cli.model.description import ModelInfo
from sbert_cli.words import plural


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
    return metadata


def run_options(job: EncodeJob, info: ModelInfo) -> dict[str, Any]:
    """What a resumed run must share with the run that started a directory (the manifest's options). The prompt,
    --truncate-dim and --calibration are there only when set, so a directory begun before they existed resumes."""
    options: dict[str, Any] = {
        "model": info.name, "dim": info.dim, "pooling": info.pooling, "normalize": info.normalize,
        "max_length": info.max_length, "precision": info.precision, "format": job.input.format,
        "text_column": job.input.text_column, "id_column": job.input.id_column, "dtype": job.output.dtype,
        "shard_rows": job.shard_rows, "on_error": "skip" if job.skip_bad_rows else "fail", "with_stats": job.with_stats,
    }
    extra = {"prompt": info.prompt or None, "truncate_dim": info.truncate_dim, "calibration": job.output.calibration}
    return options | {key: value for key, value in extra.items() if value is not None}


@contextmanager
def open_sink(job: EncodeJob, info: ModelInfo, notice: Callable[[str], None]) -> Iterator[Sink]:
    """The job's sink, with its output locked against a second run; on any failure the sink is aborted.

    With the lock held, temporary files of an earlier run on the same output are the leftovers of a run that
    was killed (a live one would hold the lock): they are removed, and `notice` is told once. An output in an
    object store is written in a local spool folder and uploaded, guarded by a lease instead of a lock.
    """
    output = job.output
    stats_length = info.max_length if job.with_stats else None
    form = VectorForm.for_output(output.dtype, output.calibration, info.dim)
    spec = WriterSpec(output.path, info.dim, describe_vectors(info, output.dtype), output.dtype, stats_length, form=form)
    if output.kind == "stdout":
        yield from _guarded(FileSink(replace(spec, on_failure="the output stopped there"), output.format, None))
        return
    if output.kind == "file":
        with _one_run(file_lock_path(output.path), output.path, True, notice) as check, _spool(output.path) as temp_dir:
            _tell_removed(remove_leftovers(path for role, path in output.derived().files if role != "lock file"), notice)
            sink = FileSink(replace(spec, temp_dir=temp_dir), output.format, RejectsWriter(output.rejects_path, temp_dir), check)
            yield from _guarded(sink)
        return
    layout = DirectoryLayout.at(output.path)
    refuse_foreign_files(layout)
    create_layout(layout)
    with _one_run(layout.lock, str(layout.data), False, notice) as check, _spool(output.path) as spool:
        _tell_removed(remove_stale_temporaries(layout, spool), notice)
        manifest = prepare_directory(layout, identify_input(job.input.files), run_options(job, info), job.resume, job.overwrite)
        temp_dir = spool or Path(layout.state)
        yield from _guarded(ShardedSink(layout, manifest, job.shard_rows, replace(spec, temp_dir=temp_dir, checksum=True), check))


@contextmanager
def _one_run(lock: Path | StorePath, target: str, remove: bool, notice: Callable[[str], None]) -> Iterator[Callable[[], None]]:
    """The kernel's flock on a disk; a lease in an object store. Yields the check made before each publication."""
    if isinstance(lock, StorePath):
        with output_lease(lock, target, notice) as lease:
            yield lease.check
    else:
        with output_lock(lock, target, remove=remove):
            yield lambda: None


@contextmanager
def _spool(output: str) -> Iterator[Path | None]:
    """A store output's local spool folder for the run (None for a local output, whose temporaries sit beside it)."""
    if not isinstance(location(output), StorePath):
        yield None
        return
    folder = spool_dir(output)
    try:
        yield folder
    finally:
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: a file it still holds is removed by the next run on this output


def _tell_removed(paths: list[Path], notice: Callable[[str], None]) -> None:
    if paths:
        shown = ", ".join(str(path) for path in sorted(paths))
        notice(f"sbert: removed {plural(len(paths), 'temporary file')} left by an earlier run that was killed: {shown}")


def _guarded(sink: Sink) -> Iterator[Sink]:
    try:
        yield sink
    except BaseException:
        sink.abort()
        raise


class FileSink:
    """One output file or stdout (plus its rejects file): the whole input is a single shard."""

    done: frozenset[int] = frozenset()
    complete = False

    def __init__(self, spec: WriterSpec, format: str, rejects: RejectsWriter | None, check: Callable[[], None] = lambda: None) -> None:
        self.writer: EmbeddingWriter = WRITERS[format](spec)
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
