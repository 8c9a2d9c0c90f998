"""What a run is asked to do, parsed and checked once into frozen objects that every stage and engine reads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sbert_cli.choices import (
    BACKEND_CHOICES,
    DEFAULT_MODEL,
    PACKED_DTYPES,
    PRECISIONS,
    SCALED_DTYPES,
    SIMILARITIES,
    STDOUT,
    BackendChoice,
    Dtype,
    Engine,
    OnError,
    Precision,
    Quoting,
    Similarity,
)
from sbert_cli.errors import OutputError, UsageError
from sbert_cli.io.encodings import DEFAULT_ENCODING, ascii_compatible, check_encoding, is_utf8
from sbert_cli.io.formats import INPUT_FORMATS
from sbert_cli.io.inputs import detect_format, expand_input, is_glob, reads
from sbert_cli.io.output import OutputTarget, RunSettings
from sbert_cli.io.output_formats import OUTPUT_FORMATS, format_of_suffix, suffixes_shown
from sbert_cli.io.paths import Derived, refuse_overlap, refuse_reading_back
from sbert_cli.io.readers import STDIN, InputSpec
from sbert_cli.io.storage import StorePath, is_url, location
from sbert_cli.model.options import ModelOptions
from sbert_cli.words import or_list

if TYPE_CHECKING:
    from sbert_cli.plan import BatchPlan

# The option values every layer shares live in choices.py, the model's options in model/options.py; named here too
# for the CLI, which reads them from the job.
__all__ = [
    "BACKEND_CHOICES", "DEFAULT_MODEL", "PACKED_DTYPES", "PRECISIONS", "SCALED_DTYPES", "SIMILARITIES", "STDOUT",
    "BackendChoice", "Dtype", "EncodeJob", "Engine", "ModelOptions", "OnError", "OutputTarget", "Precision", "RayOptions", "Similarity",
]


@dataclass(frozen=True)
class RayOptions:
    """Where --engine ray runs and how its actors are sized."""

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    model_is_path: bool = False  # --model named a folder on the driver: every node must have it at the same (absolute) path


@dataclass(frozen=True)
class EncodeJob:
    """One `sbert encode` run, checked on construction: what a user asked for that cannot work fails here."""

    input: InputSpec
    output: OutputTarget
    model: ModelOptions
    plan: BatchPlan
    skip_bad_rows: bool = False
    allow_empty: bool = False  # an input without data rows makes an empty output, not an error
    shard_rows: int = 100_000
    resume: bool = False
    overwrite: bool = False
    with_stats: bool = False
    cache: str | None = None
    ray: RayOptions | None = None

    @property
    def run_settings(self) -> RunSettings:
        """The run's choices as the output takes them: plain values, not the job."""
        spec = self.input
        return RunSettings(
            spec.files, spec.format, spec.text_column, spec.id_column, self.shard_rows, self.skip_bad_rows, self.with_stats, self.resume,
            self.overwrite, spec.quoting, spec.encoding, spec.row_ids_root is not None,
        )

    def __post_init__(self) -> None:
        self._check_options()  # the options alone: no disk is touched while the job is made

    def refuse_overwrites(self) -> None:
        """Nothing sbert writes or removes may be an input, now or on the next run of a directory or glob input:
        checked once on the disk (symlinks and '..' resolved), before anything is touched."""
        inputs = [file.path for file in self.input.files] or [self.input.path]
        refuse_overlap(self.output.derived, inputs)
        refuse_reading_back(self.output.derived, self.input.path, lambda path: reads(self.input.path, path))
        if self.output.calibration is not None:
            refuse_overlap(self.output.derived, [self.output.calibration], noun="calibration", change="-o")
        if self.cache is not None:
            refuse_overlap(cache_paths(self.cache), inputs)
            refuse_overlap(self.output.derived, [self.cache], noun="cache", change="--cache")

    def _check_options(self) -> None:
        output = self.output
        if self.resume and self.overwrite:
            raise UsageError("--resume finishes an earlier run and --overwrite removes it; pass one of them")
        if self.ray is not None:
            if self.with_stats or self.cache:
                raise UsageError("--engine ray writes vectors only: --with-stats and --cache need --engine local")
            if self.allow_empty:
                raise UsageError("--allow-empty needs --engine local: Ray writes no shard for an empty input")
            if output.kind != "directory":
                raise UsageError("--engine ray needs -o DIRECTORY for its Parquet shards")
            if output.dtype in SCALED_DTYPES and output.calibration is None:
                raise UsageError(f"--dtype {output.dtype} with --engine ray needs --calibration FILE.npy: every actor must scale by the same ranges")
            return
        if output.kind == "directory":
            return
        if self.resume:
            raise UsageError("--resume needs -o DIRECTORY: only sharded output keeps a manifest to resume from")
        if self.overwrite:
            raise UsageError("--overwrite is for -o DIRECTORY: a single output file is always replaced whole")
        if self.skip_bad_rows and output.kind == "stdout":
            raise UsageError("--on-error skip needs an output file or directory to put the rejects beside; -o - has none")
        if self.with_stats and not OUTPUT_FORMATS[output.format].has_columns:
            roomy = or_list([spec.suffix for spec in OUTPUT_FORMATS.values() if spec.has_columns])
            raise UsageError(f"{output.path}: --with-stats needs a {roomy} output, which have room for the columns")


def input_spec(
    path: str, format: str | None, text_column: str, id_column: str | None, quoting: Quoting = "auto", encoding: str = DEFAULT_ENCODING
) -> InputSpec:
    """The input to read: stdin, or the files a path, directory, glob or s3:// URL names (listed now, once)."""
    check_encoding(encoding)
    if path == STDIN:
        spec = InputSpec(path, detect_format(path, format), text_column, id_column, quoting=quoting, encoding=encoding)
    else:
        files, fmt, root = expand_input(path, format)
        spec = InputSpec(path, fmt, text_column, id_column, files, quoting=quoting, encoding=encoding, root=root)
    _check_text_options(spec)
    return spec


def _check_text_options(spec: InputSpec) -> None:
    """--quoting is for CSV and TSV; --encoding for them and JSON lines, which are split into lines on their bytes.
    Stdin's format is known only once it is sniffed: its options are taken as they come."""
    if spec.format == "auto":
        return
    title = INPUT_FORMATS[spec.format].title
    if spec.quoting != "auto" and spec.format not in ("csv", "tsv"):
        raise UsageError(f"--quoting {spec.quoting} is for CSV and TSV input; drop it for {title} input")
    if not is_utf8(spec.encoding) and spec.format not in ("csv", "tsv", "jsonl"):
        raise UsageError(f"--encoding {spec.encoding} is for CSV, TSV and JSON lines; {title} text is UTF-8, drop it")
    if spec.format == "jsonl" and not ascii_compatible(spec.encoding):
        raise UsageError(
            f"--encoding {spec.encoding}: JSON lines are split on the newline byte, which {spec.encoding} does not keep; "
            f"convert the file, e.g. iconv -f {spec.encoding.upper()} -t UTF-8"
        )


def is_directory_output(path: str) -> bool:
    """-o names a directory when it is one, ends in a slash, or has no extension."""
    if is_url(path):
        return path.endswith("/") or not StorePath.parse(path).suffix
    return path != STDOUT and (Path(path).is_dir() or path.endswith(("/", os.sep)) or not Path(path).suffix)


def output_target(output: str | None, input_path: str, dtype: str, calibration: str | None = None) -> OutputTarget:
    """Check -o and pick its kind and format: the default is <input stem>.embeddings.parquet beside the input."""
    _check_calibration(output, dtype, calibration)
    if output is None:
        output = _default_output(input_path)
    if output == STDOUT:
        return OutputTarget.chosen(output, "stdout", "jsonl", dtype, calibration)
    if is_url(output):
        return _store_target(output, dtype, calibration)
    _refuse_file_in_the_way(output)
    if is_directory_output(output):
        return OutputTarget.chosen(str(Path(output)), "directory", "parquet", dtype, calibration)
    path = Path(output)
    format = _output_format(output)
    if not path.parent.is_dir():
        raise UsageError(f"{output}: directory '{path.parent}' does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"{output}: directory '{path.parent}' is not writable")
    return OutputTarget.chosen(output, "file", format, dtype, calibration)


def _check_calibration(output: str | None, dtype: str, calibration: str | None) -> None:
    if calibration is not None:
        if dtype not in SCALED_DTYPES:
            raise UsageError(f"--calibration {calibration}: only --dtype int8 or uint8 use ranges; drop it or pass one of those")
        if not Path(calibration).is_file():
            raise UsageError(f"--calibration {calibration}: no such file; pass a .npy of vectors")
    elif dtype in SCALED_DTYPES and output == STDOUT:
        raise UsageError(f"--dtype {dtype} to stdout leaves no place for its ranges; pass --calibration FILE.npy, or -o a file")


def _default_output(input_path: str) -> str:
    """<input stem>.embeddings.parquet beside the input file, directory or prefix; a glob or stdin names no place."""
    if input_path == STDIN:
        raise UsageError("reading stdin needs -o: a " + suffixes_shown() + " file, or - for JSON lines on stdout")
    source = location(input_path)
    if is_glob(input_path) or not source.name:
        raise UsageError(f"{input_path}: names many files and no place for their vectors; pass -o FILE.parquet or -o DIRECTORY/")
    return str(source.with_name(f"{source.stem}.embeddings.parquet"))


def _output_format(output: str) -> str:
    """The output format -o's suffix names (io.output_formats)."""
    suffix = location(output).suffix.lower()
    format = format_of_suffix(suffix)
    if format is None:
        raise UsageError(f"{output}: unknown output extension '{suffix}'; use {suffixes_shown()}, or -o - for stdout")
    return format


def _store_target(output: str, dtype: str, calibration: str | None) -> OutputTarget:
    """An s3:// output: its bucket must exist (a store has no folders to create; the checks of a local parent do
    not apply), and a directory output's key must not be an object."""
    target = StorePath.parse(output)
    target.require_bucket()
    if is_directory_output(output):
        if target.is_file():
            raise UsageError(f"{target}: is an object, not a prefix; pass a new or empty prefix ending in /, or a {suffixes_shown()} key")
        return OutputTarget.chosen(str(target), "directory", "parquet", dtype, calibration)
    return OutputTarget.chosen(str(target), "file", _output_format(output), dtype, calibration)


def _refuse_file_in_the_way(output: str) -> None:
    """A file where -o needs a directory: the output itself (a directory output) or one of its parents."""
    path = Path(output)
    if is_directory_output(output) and path.exists() and not path.is_dir():
        raise UsageError(f"{output}: is a file, not a directory; pass a new or empty directory, or a {suffixes_shown()} file")
    for folder in path.parents:
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{output}: '{folder}' is a file, not a directory; pass another -o")


def refuse_evaluate_overwrites(files: list[str], plot: str | None, cache: str | None) -> None:
    """evaluate writes the plot and the cache: neither may be one of its pair files."""
    if plot is not None:
        refuse_overlap(Derived("--plot", (("plot", plot),)), files)
    if cache is not None:
        refuse_overlap(cache_paths(cache), files)


def cache_paths(cache: str) -> Derived:
    """The SQLite cache and the files SQLite keeps beside it."""
    return Derived("--cache", tuple(("cache", cache + suffix) for suffix in ("", "-wal", "-shm", "-journal")))
