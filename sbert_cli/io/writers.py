"""Vectors -> files: Parquet, .npy (+ ids sidecar), JSON lines and rejects, each under a temporary name until it is
complete, then renamed into place (or, for an object store, uploaded from the local spool)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from sbert_cli.errors import InputDataError, OutputError
from sbert_cli.io.compact import VectorForm
from sbert_cli.io.paths import ids_path, quantization_path
from sbert_cli.io.pipe import confirm_delivered
from sbert_cli.io.publish import discard, publish, temporary_path
from sbert_cli.io.storage import location, store_error
from sbert_cli.choices import STDOUT

_NPY_HEADER_BYTES = 128  # room for any [rows, dim] shape; rewritten with the real row count at the end


NOTHING_WRITTEN = "nothing was written"


@dataclass(frozen=True)
class WriterSpec:
    """One file to write: where, what vectors (dim, stored dtype, metadata), and where its temporary lives.

    With `stats_max_length` set (--with-stats), each row also gets its untruncated token count and
    whether it was truncated to that length. `form` (shared by every file of a run) stores the vectors as
    --dtype says; by default, as `dtype`.
    """

    path: str
    dim: int
    metadata: dict[str, str]
    dtype: str = "float32"
    stats_max_length: int | None = None
    temp_dir: Path | None = None  # default: beside the file (a store output's: its local spool)
    on_failure: str = NOTHING_WRITTEN  # what a failed write leaves, for its error line
    form: VectorForm | None = None
    checksum: bool = False  # note the SHA-256 and size of the file before it is published (a shard's manifest entry)


class EmbeddingWriter:
    """Receives (ids, vectors) windows in input order; finish() makes the result visible, abort() removes it."""

    def __init__(self, spec: WriterSpec) -> None:
        self.spec = spec
        self.rows = 0
        self.form = spec.form if spec.form is not None else VectorForm(spec.dtype)
        self.dtype = self.form.numpy_dtype
        self.width = self.form.width(spec.dim)  # stored values a row
        self.digest: tuple[str, int] | None = None  # with spec.checksum: (SHA-256, bytes) of the published file
        self._renames: list[tuple[str, str]] = []

    def write(self, ids: list[Any], vectors: np.ndarray, n_tokens: list[int] | None = None) -> None:
        raise NotImplementedError

    def _temporary(self, final: str) -> str:
        temp = temporary_path(final, self.spec.temp_dir)
        self._renames.append((temp, final))
        return temp

    def _close(self) -> None:
        """Flush and close the open files."""

    def _write_ranges_sidecar(self) -> None:
        """A .npy or .jsonl file's int8/uint8 ranges, in NAME.quantization.json beside it (Parquet keeps them in its metadata)."""
        record = self.form.record()
        if record is not None and self.spec.path != STDOUT:
            with open(self._temporary(quantization_path(self.spec.path)), "w", encoding="utf-8") as stream:
                json.dump(record, stream)
            self._renames.insert(0, self._renames.pop())  # renamed before the vectors, as the ids are

    def finish(self) -> None:
        with output_errors(self.spec.path, self.spec.on_failure):
            self._close()
            if self.spec.checksum:
                self.digest = file_digest(next(temp for temp, final in self._renames if final == self.spec.path))
            for temp, final in self._renames:
                publish(temp, final)
        self._renames = []

    def abort(self) -> None:
        try:
            self._close()
        except Exception:  # closing a half-written file may fail too; removing it is what matters
            pass
        for temp, _ in self._renames:
            discard(temp)
        self._renames = []


class ParquetWriter(EmbeddingWriter):
    """id + embedding (fixed_size_list<float>[dim]), model facts in the schema metadata, a row group per window."""

    def __init__(self, spec: WriterSpec) -> None:
        super().__init__(spec)
        self._temp = self._temporary(spec.path)
        self._writer: Any = None
        self._id_type: Any = None

    def write(self, ids: list[Any], vectors: np.ndarray, n_tokens: list[int] | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        id_array = _id_array(pa, ids, self._id_type, self.rows)
        arrays = [id_array, embedding_array(self.form.store(vectors), self.dtype)]
        names = ["id", "embedding"]
        if self.spec.stats_max_length is not None and n_tokens is not None:
            counts = np.asarray(n_tokens, dtype=np.int32)
            arrays += [pa.array(counts), pa.array(counts > self.spec.stats_max_length)]
            names += ["n_tokens", "truncated"]
        table = pa.Table.from_arrays(arrays, names=names)
        with output_errors(self.spec.path, self.spec.on_failure):
            metadata = {**self.spec.metadata, **self.form.metadata()}  # int8/uint8 ranges are known from the first window on
            if self._writer is None:
                self._id_type = id_array.type
                self._writer = pq.ParquetWriter(self._temp, table.schema.with_metadata(metadata), **vector_column_options(names))
            self._writer.write_table(table.replace_schema_metadata(metadata))
        self.rows += len(ids)

    def _close(self) -> None:
        if self._writer is None:  # no rows: still write a valid, empty file
            import pyarrow as pa
            import pyarrow.parquet as pq

            fields = [("id", pa.int64()), ("embedding", pa.list_(pa.from_numpy_dtype(self.dtype), self.width))]
            if self.spec.stats_max_length is not None:
                fields += [("n_tokens", pa.int32()), ("truncated", pa.bool_())]
            self._writer = pq.ParquetWriter(self._temp, pa.schema(fields, metadata=self.spec.metadata), **vector_column_options([name for name, _ in fields]))
        self._writer.close()


def vector_column_options(names: list[str]) -> dict[str, Any]:
    """ParquetWriter options: dictionary encoding and min/max statistics for every column but the vectors. Neither
    helps a column of distinct floats, and trying both halved the write speed of a window's vectors."""
    others = [name for name in names if name != "embedding"]
    return {"use_dictionary": others, "write_statistics": others}


def file_digest(path: str | Path) -> tuple[str, int]:
    """SHA-256 and size of a local file."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def embedding_array(vectors: np.ndarray, dtype: Any) -> Any:
    """[rows, width] stored vectors as an Arrow fixed_size_list<type>[width] column, the embedding column's type
    (float, halffloat, int8 or uint8; width is dim, or dim / 8 packed)."""
    import pyarrow as pa

    values = pa.array(np.ascontiguousarray(vectors, dtype=np.dtype(dtype)).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])


def _id_array(pa: Any, ids: list[Any], id_type: Any, first_row: int) -> Any:
    try:
        return pa.array(ids, type=id_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        kinds = sorted({type(value).__name__ for value in ids})
        raise InputDataError(
            f"ids from row {first_row} on mix types ({', '.join(kinds)}) or differ from earlier ids ({id_type}); "
            "use an id column of one type"
        ) from None


class NpyWriter(EmbeddingWriter):
    """[rows, width] in input order in the stored dtype, streamed; ids go to a JSON-lines sidecar, int8/uint8 ranges to
    NAME.quantization.json."""

    def __init__(self, spec: WriterSpec) -> None:
        super().__init__(spec)
        with output_errors(spec.path, spec.on_failure):
            self._ids_file: IO[str] = open(self._temporary(ids_path(spec.path)), "w", encoding="utf-8")
            self._array_file: IO[bytes] = open(self._temporary(spec.path), "wb")
            self._array_file.write(_npy_header(self.dtype, (0, self.width)))

    def write(self, ids: list[Any], vectors: np.ndarray, n_tokens: list[int] | None = None) -> None:
        with output_errors(self.spec.path, self.spec.on_failure):
            self._ids_file.write("".join(json.dumps(value, ensure_ascii=False) + "\n" for value in ids))
            self._array_file.write(self.form.store(vectors).tobytes())
        self.rows += len(ids)

    def _close(self) -> None:
        if not self._array_file.closed:
            self._array_file.seek(0)
            self._array_file.write(_npy_header(self.dtype, (self.rows, self.width)))
            self._array_file.close()
            self._write_ranges_sidecar()
        self._ids_file.close()


def _npy_header(dtype: np.dtype, shape: tuple[int, int]) -> bytes:
    """An .npy v1.0 header padded to a fixed size, so it can be rewritten once the row count is known."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    prefix = b"\x93NUMPY\x01\x00"
    room = _NPY_HEADER_BYTES - len(prefix) - 2
    body = text.encode("latin1").ljust(room - 1) + b"\n"
    return prefix + len(body).to_bytes(2, "little") + body


class JsonLinesWriter(EmbeddingWriter):
    """{"id": ..., "embedding": [...]} a line, to stdout (for pipelines) or to a file renamed at the end."""

    def __init__(self, spec: WriterSpec) -> None:
        super().__init__(spec)
        self._owns_stream = spec.path != STDOUT
        if self._owns_stream:
            with output_errors(spec.path, spec.on_failure):
                self._stream: IO[str] = open(self._temporary(spec.path), "w", encoding="utf-8")
        else:
            self._stream = sys.stdout

    def write(self, ids: list[Any], vectors: np.ndarray, n_tokens: list[int] | None = None) -> None:
        rows = self.form.store(vectors).tolist()
        objects = [{"id": value, "embedding": row} for value, row in zip(ids, rows)]
        limit = self.spec.stats_max_length
        if limit is not None and n_tokens is not None:
            for obj, count in zip(objects, n_tokens):
                obj["n_tokens"], obj["truncated"] = count, count > limit
        lines = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects)
        with output_errors(self.spec.path, self.spec.on_failure):
            self._stream.write(lines)
            if not self._owns_stream:
                self._stream.flush()  # a pipeline reader gets each window as soon as it is ready
        self.rows += len(ids)

    def _close(self) -> None:
        if self._owns_stream and not self._stream.closed:
            self._stream.close()
            self._write_ranges_sidecar()

    def finish(self) -> None:
        super().finish()
        if not self._owns_stream:
            with output_errors(self.spec.path, self.spec.on_failure):
                confirm_delivered(self._stream)  # rows a pipe's reader never took are not written


WRITERS: dict[str, type[EmbeddingWriter]] = {"parquet": ParquetWriter, "npy": NpyWriter, "jsonl": JsonLinesWriter}


@contextmanager
def output_errors(path: str, outcome: str = NOTHING_WRITTEN) -> Iterator[None]:
    """OSError while writing (disk full, permissions) -> one-line OutputError naming the file and what is left."""
    try:
        yield
    except BrokenPipeError:
        raise  # the reader of stdout went away: the CLI exits 141
    except OSError as exc:
        error = store_error(exc, path, OutputError)
        if error is not None:
            raise type(error)(f"{error}; {outcome}") from None
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc}); {outcome}") from None


class RejectsWriter:
    """Bad rows as JSON lines ({"row", "id", "where", "reason"}), under a temporary name until finish()."""

    def __init__(self, path: str, temp_dir: Path | None = None, on_failure: str = NOTHING_WRITTEN) -> None:
        self.path = path
        self.on_failure = on_failure
        self.count = 0
        self._temp = temporary_path(path, temp_dir)
        self._stream: IO[str] | None = None

    def add(self, rows: list[Any]) -> None:
        if not rows:
            return
        with output_errors(self.path, self.on_failure):
            if self._stream is None:
                self._stream = open(self._temp, "w", encoding="utf-8")
            for bad in rows:
                line = {"row": bad.row, "id": bad.id, "where": bad.where, "reason": bad.reason}
                self._stream.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.count += len(rows)

    def finish(self) -> None:
        """Publish the rejects; with none, remove a rejects file left by an earlier run, which no longer applies."""
        with output_errors(self.path, self.on_failure):
            if self._stream is not None:
                self._stream.close()
                publish(self._temp, self.path)
            elif (earlier := location(self.path)).exists():
                earlier.unlink()

    def abort(self) -> None:
        if self._stream is not None:
            self._stream.close()
            discard(self._temp)
