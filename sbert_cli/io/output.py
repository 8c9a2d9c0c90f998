"""An output as one object: held against a second run, cleaned of what a killed run left, and asked by the run what
an earlier run finished, what it was run with, and whether this run may continue it; then written through its sink."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sbert_cli.io.compact import VectorForm
from sbert_cli.io.lease import output_lease
from sbert_cli.io.lock import output_lock
from sbert_cli.io.manifest import (
    Manifest,
    create_layout,
    identify_input,
    load_manifest,
    migrate_first_layout,
    prepare_directory,
    refuse_foreign_files,
    remove_unused_layout,
)
from sbert_cli.io.output_formats import OUTPUT_FORMATS
from sbert_cli.io.paths import Derived, DirectoryLayout, directory_output_paths, file_lock_path, file_output_paths, rejects_path
from sbert_cli.io.publish import ANY_TEMPORARY, remove_leftovers, spool_dir, temporary_pattern
from sbert_cli.io.sinks import FileSink, ShardedSink, Sink, describe_vectors
from sbert_cli.io.storage import is_url, location
from sbert_cli.io.writers import RejectsWriter, WriterSpec
from sbert_cli.words import plural

if TYPE_CHECKING:
    from sbert_cli.io.inputs import InputFile
    from sbert_cli.model.description import ModelInfo


@dataclass(frozen=True)
class OutputTarget:
    """Where vectors go: a file (.parquet, .npy, .jsonl), stdout ('-'), or a directory of Parquet shards; with every
    path the output derives, named once when it is chosen (OutputTarget.chosen), so a run only reads them."""

    path: str
    kind: str  # file | stdout | directory
    format: str  # parquet | npy | jsonl
    dtype: str = "float32"
    calibration: str | None = None  # .npy of vectors whose per-dimension ranges scale int8/uint8
    derived: Derived = Derived("-o", ())  # every file and folder this output writes or removes
    lock: str | None = None  # the lock file on a disk; the lease object in a store
    spool: str | None = None  # a store output's local folder, where its files are written before their upload
    leftovers: tuple[tuple[str, str], ...] = ()  # (folder, glob) where a killed run's temporaries may be
    layout: DirectoryLayout | None = None  # a directory output's shards and state folder

    @classmethod
    def chosen(cls, path: str, kind: str, format: str, dtype: str = "float32", calibration: str | None = None) -> OutputTarget:
        """The output -o names, with the paths it derives."""
        if kind == "stdout":
            return cls(path, kind, format, dtype, calibration)
        spool = str(spool_dir(path)) if is_url(path) else None
        if kind == "directory":
            layout = DirectoryLayout.at(path)
            folders = [spool] if spool is not None else [str(layout.state), str(layout.data), str(layout.rejects)]
            leftovers = tuple((folder, ANY_TEMPORARY) for folder in folders)
            return cls(path, kind, format, dtype, calibration, directory_output_paths(path), str(layout.lock), spool, leftovers, layout)
        derived = file_output_paths(path, OUTPUT_FORMATS[format].sidecar_paths(path))
        folder = spool or str(location(path).parent)
        leftovers = tuple((folder, temporary_pattern(location(file).name)) for role, file in derived.files if role != "lock file")
        return cls(path, kind, format, dtype, calibration, derived, str(file_lock_path(path)), spool, leftovers)

    @property
    def rejects_path(self) -> str:
        """out.parquet -> out.parquet.rejects.jsonl (a directory keeps its rejects in its state folder)."""
        return rejects_path(self.path)

    @property
    def shown(self) -> str:
        return "stdout" if self.kind == "stdout" else str(location(self.path))


@dataclass(frozen=True)
class RunSettings:
    """What the run writing an output was asked, as plain values: what a directory records, and a resume must match."""

    input_files: tuple[InputFile, ...] = ()
    input_format: str = "auto"
    text_column: str = "text"
    id_column: str | None = None
    shard_rows: int = 100_000
    skip_bad_rows: bool = False
    with_stats: bool = False
    resume: bool = False
    overwrite: bool = False
    quoting: str = "auto"
    encoding: str = "utf-8"
    path_ids: bool = False  # ids are '<path below the input>:<row>' (a directory, prefix or glob without --id-column)

    def recorded(self, info: ModelInfo, dtype: str, calibration: str | None) -> dict[str, Any]:
        """The manifest's options. The prompt, --truncate-dim, --calibration, --quoting and --encoding are there only
        when set, so a directory begun before they existed resumes."""
        options: dict[str, Any] = {
            "model": info.name, "dim": info.dim, "pooling": info.pooling, "normalize": info.normalize,
            "max_length": info.max_length, "precision": info.precision, "format": self.input_format,
            "text_column": self.text_column, "id_column": self.id_column, "dtype": dtype,
            "shard_rows": self.shard_rows, "on_error": "skip" if self.skip_bad_rows else "fail", "with_stats": self.with_stats,
        }
        extra = {
            "prompt": info.prompt or None, "truncate_dim": info.truncate_dim, "calibration": calibration,
            "quoting": None if self.quoting == "auto" else self.quoting, "encoding": None if self.encoding == "utf-8" else self.encoding,
            # A directory begun when a many-file input's ids were row numbers is not resumed with path ids mixed in.
            "ids": "path:row" if self.path_ids else None,
        }
        return options | {key: value for key, value in extra.items() if value is not None}


class Output:
    """An opened output. The run asks it which precision to run at, then writes through its sink."""

    def __init__(self, target: OutputTarget, run: RunSettings, check: Callable[[], None] = lambda: None, spool: Path | None = None) -> None:
        self.target, self.run, self.check, self.spool = target, run, check, spool

    def precision(self, asked: str) -> str:
        """The precision to encode at: what was asked, unless an earlier run this one continues chose it."""
        return asked

    def spec(self, info: ModelInfo) -> WriterSpec:
        target = self.target
        form = VectorForm.for_output(target.dtype, target.calibration, info.dim)
        stats_length = info.max_length if self.run.with_stats else None
        return WriterSpec(target.path, info.dim, describe_vectors(info, target.dtype), target.dtype, stats_length, temp_dir=self.spool, form=form)

    def new_sink(self, info: ModelInfo) -> Sink:
        spec = self.spec(info)
        if self.target.kind == "stdout":
            return FileSink(replace(spec, on_failure="the output stopped there"), self.target.format, None)
        return FileSink(spec, self.target.format, RejectsWriter(self.target.rejects_path, self.spool), self.check)

    @contextmanager
    def sink(self, info: ModelInfo) -> Iterator[Sink]:
        """The sink for vectors of a model described by `info`; aborted (nothing of it shown) if the run fails."""
        sink = self.new_sink(info)
        try:
            yield sink
        except BaseException:
            sink.abort()
            raise


class DirectoryOutput(Output):
    """A directory of Parquet shards with its state folder: what an earlier run finished is read when it is opened."""

    def __init__(self, target: OutputTarget, run: RunSettings, check: Callable[[], None], spool: Path | None, layout: DirectoryLayout) -> None:
        super().__init__(target, run, check, spool)
        self.layout = layout
        migrate_first_layout(layout)
        self.earlier: Manifest | None = load_manifest(layout.manifest)

    def precision(self, asked: str) -> str:
        # A resumed directory keeps the precision it started with, even on a machine that would pick another.
        if self.run.resume and asked == "auto" and self.earlier is not None:
            return str(self.earlier.options.get("precision") or asked)
        return asked

    def new_sink(self, info: ModelInfo) -> Sink:
        run, target = self.run, self.target
        recorded = run.recorded(info, target.dtype, target.calibration)
        manifest = prepare_directory(self.layout, self.earlier, identify_input(run.input_files), recorded, run.resume, run.overwrite)
        spec = replace(self.spec(info), temp_dir=self.spool or Path(self.layout.state), checksum=True)  # type: ignore[arg-type]
        return ShardedSink(self.layout, manifest, run.shard_rows, spec, self.check)


@contextmanager
def open_output(target: OutputTarget, run: RunSettings, notice: Callable[[str], None]) -> Iterator[Output]:
    """The output, held for this run alone (the kernel's flock on a disk; a lease in an object store).

    With it held, temporary files of an earlier run on the same output are the leftovers of a run that was killed
    (a live one would hold it): they are removed, and `notice` is told once. A store output is written in a local
    spool folder and uploaded; the folder is removed when the run ends.
    """
    if target.kind == "stdout" or target.lock is None:
        yield Output(target, run)
        return
    layout = target.layout
    made: list[Path] = []
    if layout is not None:
        refuse_foreign_files(layout)
        made = create_layout(layout)
    held_for = target.path if layout is None else str(layout.data)
    with _held(target.lock, held_for, layout is None, notice) as check, _spool(target.spool) as spool:
        try:
            _tell_removed(remove_leftovers(target.leftovers), notice)
            yield Output(target, run, check, spool) if layout is None else DirectoryOutput(target, run, check, spool, layout)
        finally:
            if layout is not None:
                remove_unused_layout(layout, made)  # a run that published nothing leaves no empty folders (lock still held)


@contextmanager
def _held(lock: str, target: str, remove: bool, notice: Callable[[str], None]) -> Iterator[Callable[[], None]]:
    """Yields the check made before each publication (a lease can be lost; a flock cannot)."""
    if is_url(lock):
        with output_lease(location(lock), target, notice) as lease:  # type: ignore[arg-type]
            yield lease.check
    else:
        with output_lock(Path(lock), target, remove=remove):
            yield lambda: None


@contextmanager
def _spool(spool: str | None) -> Iterator[Path | None]:
    """A store output's local spool folder, made for the run and removed after it (None for a local output, whose
    temporaries sit beside it)."""
    if spool is None:
        yield None
        return
    os.makedirs(spool, exist_ok=True)
    try:
        yield Path(spool)
    finally:
        try:
            os.rmdir(spool)
        except OSError:
            pass  # not empty: a file it still holds is removed by the next run on this output


def _tell_removed(paths: list[Path], notice: Callable[[str], None]) -> None:
    if paths:
        shown = ", ".join(str(path) for path in sorted(paths))
        notice(f"sbert: removed {plural(len(paths), 'temporary file')} left by an earlier run that was killed: {shown}")
