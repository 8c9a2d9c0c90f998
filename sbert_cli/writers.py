"""Vectors -> files: Parquet, .npy (+ ids sidecar) or JSON lines, written to a temporary name and renamed on success."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from sbert_cli.errors import InputDataError, OutputError, UsageError

STDOUT = "-"
OUTPUT_FORMATS = {".parquet": "parquet", ".npy": "npy", ".jsonl": "jsonl"}
DTYPES = ("float32", "float16")
_NPY_HEADER_BYTES = 128  # room for any [rows, dim] shape; rewritten with the real row count at the end


@dataclass(frozen=True)
class OutputSpec:
    """Where vectors go: a path ('-' is JSON lines on stdout), its format and the stored dtype."""

    path: str
    format: str
    dtype: str = "float32"

    @property
    def ids_path(self) -> str:
        """The .npy sidecar holding ids, one JSON value a line: vectors.npy -> vectors.ids.jsonl."""
        return str(Path(self.path).with_suffix(".ids.jsonl"))


def output_spec(path: str, dtype: str = "float32") -> OutputSpec:
    """Check the output path and pick its format from the extension."""
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: expected {' or '.join(DTYPES)}")
    if path == STDOUT:
        return OutputSpec(path, "jsonl", dtype)
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UsageError(f"{path}: unknown output extension '{suffix}'; use .parquet, .npy or .jsonl, or -o - for stdout")
    parent = Path(path).parent
    if Path(path).is_dir():
        raise UsageError(f"{path}: is a directory; name an output file ending in .parquet, .npy or .jsonl")
    if not parent.is_dir():
        raise UsageError(f"{path}: directory '{parent}' does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: directory '{parent}' is not writable")
    return OutputSpec(path, OUTPUT_FORMATS[suffix], dtype)


def default_output_path(input_path: str) -> str:
    """data/input.jsonl -> data/input.embeddings.parquet"""
    source = Path(input_path)
    return str(source.with_name(f"{source.stem}.embeddings.parquet"))


def temporary_path(path: str) -> str:
    """A hidden name beside the target, so the final rename stays on one filesystem and is atomic."""
    target = Path(path)
    return str(target.with_name(f".{target.name}.sbert-tmp-{os.getpid()}"))


class EmbeddingWriter:
    """Receives (ids, vectors) windows in input order; finish() makes the result visible, abort() removes it."""

    def __init__(self, spec: OutputSpec, dim: int, metadata: dict[str, str]) -> None:
        self.spec = spec
        self.dim = dim
        self.metadata = metadata
        self.rows = 0
        self.dtype = np.dtype(spec.dtype)

    def write(self, ids: list[Any], vectors: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class _FileWriter(EmbeddingWriter):
    """Shared temp-file bookkeeping: every file goes to a temporary name and is renamed at finish()."""

    def __init__(self, spec: OutputSpec, dim: int, metadata: dict[str, str]) -> None:
        super().__init__(spec, dim, metadata)
        self._renames: list[tuple[str, str]] = []

    def _temporary(self, final: str) -> str:
        temp = temporary_path(final)
        self._renames.append((temp, final))
        return temp

    def _close(self) -> None:
        """Flush and close the open files."""

    def finish(self) -> None:
        with _output_errors(self.spec.path):
            self._close()
            for temp, final in self._renames:
                os.replace(temp, final)
        self._renames = []

    def abort(self) -> None:
        try:
            self._close()
        except Exception:  # closing a half-written file may fail too; removing it is what matters
            pass
        for temp, _ in self._renames:
            try:
                os.remove(temp)
            except FileNotFoundError:
                pass
        self._renames = []


class ParquetWriter(_FileWriter):
    """id + embedding (fixed_size_list<float>[dim]), model facts in the schema metadata, a row group per window."""

    def __init__(self, spec: OutputSpec, dim: int, metadata: dict[str, str]) -> None:
        super().__init__(spec, dim, metadata)
        self._temp = self._temporary(spec.path)
        self._writer: Any = None
        self._id_type: Any = None

    def write(self, ids: list[Any], vectors: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        id_array = _id_array(pa, ids, self._id_type, self.rows)
        values = pa.array(np.ascontiguousarray(vectors, dtype=self.dtype).reshape(-1))
        embedding = pa.FixedSizeListArray.from_arrays(values, self.dim)
        table = pa.Table.from_arrays([id_array, embedding], names=["id", "embedding"])
        with _output_errors(self.spec.path):
            if self._writer is None:
                self._id_type = id_array.type
                schema = table.schema.with_metadata(self.metadata)
                self._writer = pq.ParquetWriter(self._temp, schema)
            self._writer.write_table(table.replace_schema_metadata(self.metadata))
        self.rows += len(ids)

    def _close(self) -> None:
        if self._writer is None:  # no rows: still write a valid, empty file
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema(
                [("id", pa.int64()), ("embedding", pa.list_(pa.from_numpy_dtype(self.dtype), self.dim))],
                metadata=self.metadata,
            )
            self._writer = pq.ParquetWriter(self._temp, schema)
        self._writer.close()


def _id_array(pa: Any, ids: list[Any], id_type: Any, first_row: int) -> Any:
    try:
        return pa.array(ids, type=id_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        kinds = sorted({type(value).__name__ for value in ids})
        raise InputDataError(
            f"ids from row {first_row} on mix types ({', '.join(kinds)}) or differ from earlier ids ({id_type}); "
            "use an id column of one type"
        ) from None


class NpyWriter(_FileWriter):
    """float32/float16 [rows, dim] in input order, streamed; ids go to a JSON-lines sidecar."""

    def __init__(self, spec: OutputSpec, dim: int, metadata: dict[str, str]) -> None:
        super().__init__(spec, dim, metadata)
        with _output_errors(spec.path):
            self._ids_file: IO[str] = open(self._temporary(spec.ids_path), "w", encoding="utf-8")
            self._array_file: IO[bytes] = open(self._temporary(spec.path), "wb")
            self._array_file.write(_npy_header(self.dtype, (0, dim)))

    def write(self, ids: list[Any], vectors: np.ndarray) -> None:
        with _output_errors(self.spec.path):
            self._ids_file.write("".join(json.dumps(value, ensure_ascii=False) + "\n" for value in ids))
            self._array_file.write(np.ascontiguousarray(vectors, dtype=self.dtype).tobytes())
        self.rows += len(ids)

    def _close(self) -> None:
        if not self._array_file.closed:
            self._array_file.seek(0)
            self._array_file.write(_npy_header(self.dtype, (self.rows, self.dim)))
            self._array_file.close()
        self._ids_file.close()


def _npy_header(dtype: np.dtype, shape: tuple[int, int]) -> bytes:
    """An .npy v1.0 header padded to a fixed size, so it can be rewritten once the row count is known."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    prefix = b"\x93NUMPY\x01\x00"
    room = _NPY_HEADER_BYTES - len(prefix) - 2
    body = text.encode("latin1").ljust(room - 1) + b"\n"
    return prefix + len(body).to_bytes(2, "little") + body


class JsonLinesWriter(_FileWriter):
    """{"id": ..., "embedding": [...]} a line, to stdout (for pipelines) or to a file renamed at the end."""

    def __init__(self, spec: OutputSpec, dim: int, metadata: dict[str, str]) -> None:
        super().__init__(spec, dim, metadata)
        self._owns_stream = spec.path != STDOUT
        if self._owns_stream:
            with _output_errors(spec.path):
                self._stream: IO[str] = open(self._temporary(spec.path), "w", encoding="utf-8")
        else:
            self._stream = sys.stdout

    def write(self, ids: list[Any], vectors: np.ndarray) -> None:
        rows = np.asarray(vectors, dtype=self.dtype).tolist()
        lines = "".join(
            json.dumps({"id": value, "embedding": row}, ensure_ascii=False) + "\n" for value, row in zip(ids, rows)
        )
        with _output_errors(self.spec.path):
            self._stream.write(lines)
            if not self._owns_stream:
                self._stream.flush()  # a pipeline reader gets each window as soon as it is ready
        self.rows += len(ids)

    def _close(self) -> None:
        if self._owns_stream:
            self._stream.close()


@contextmanager
def open_writer(spec: OutputSpec, dim: int, metadata: dict[str, str]) -> Iterator[EmbeddingWriter]:
    """A writer that publishes its output only if the block completes; on any error nothing is left behind."""
    writer: EmbeddingWriter
    if spec.format == "parquet":
        writer = ParquetWriter(spec, dim, metadata)
    elif spec.format == "npy":
        writer = NpyWriter(spec, dim, metadata)
    else:
        writer = JsonLinesWriter(spec, dim, metadata)
    try:
        yield writer
    except BaseException:
        writer.abort()
        raise
    try:
        writer.finish()
    except BaseException:
        writer.abort()
        raise


@contextmanager
def _output_errors(path: str) -> Iterator[None]:
    """OSError while writing (disk full, permissions) -> one-line OutputError naming the file."""
    try:
        yield
    except BrokenPipeError:
        raise  # the reader of stdout went away: the CLI exits quietly
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc}); nothing was written") from None
