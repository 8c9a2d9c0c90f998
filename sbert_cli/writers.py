"""Vectors -> files: Parquet, .npy (+ ids sidecar) or JSON lines, written to a temporary name and renamed on success."""

from __future__ import annotations

import json
import os
import socket
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


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: expected {' or '.join(DTYPES)}")
    return dtype


def output_spec(path: str, dtype: str = "float32") -> OutputSpec:
    """Check the output path and pick its format from the extension."""
    check_dtype(dtype)
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


def describe_model(info: Any, dtype: str) -> dict[str, str]:
    """The Parquet schema metadata saying what the vectors are (an encoder.ModelInfo in, strings out)."""
    from sbert_cli import __version__

    return {
        "sbert.model": info.name,
        "sbert.dim": str(info.dim),
        "sbert.pooling": info.pooling,
        "sbert.normalize": str(info.normalize).lower(),
        "sbert.max_length": str(info.max_length),
        "sbert.precision": info.precision,
        "sbert.dtype": dtype,
        "sbert.version": __version__,
    }


def default_output_path(input_path: str) -> str:
    """data/input.jsonl -> data/input.embeddings.parquet"""
    source = Path(input_path)
    return str(source.with_name(f"{source.stem}.embeddings.parquet"))


def temporary_path(path: str) -> str:
    """A hidden name beside the target, so the final rename stays on one filesystem and is atomic."""
    target = Path(path)
    return str(target.with_name(f".{target.name}.sbert-tmp-{os.getpid()}"))


class EmbeddingWriter:
    """Receives (ids, vectors) windows in input order; finish() makes the result visible, abort() removes it.

    With `stats_max_length` set (--with-stats), each row also gets its untruncated token count and
    whether it was truncated to that length.
    """

    def __init__(self, spec: OutputSpec, dim: int, metadata: dict[str, str], stats_max_length: int | None = None) -> None:
        self.spec = spec
        self.dim = dim
        self.metadata = metadata
        self.stats_max_length = stats_max_length
        self.rows = 0
        self.dtype = np.dtype(spec.dtype)

    def write(self, ids: list[Any], vectors: np.ndarray, n_tokens: list[int] | None = None) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class _FileWriter(EmbeddingWriter):
    """Shared temp-file bookkeeping: every file goes to a temporary name and is renamed at finish()."""

    def __init__(self, spec: OutputSpec, dim: int, metadata: dict[str, str], stats_max_length: int | None = None) -> None:
        super().__init__(spec, dim, metadata, stats_max_length)
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

    def __init__(self, spec: OutputSpec, dim: int, metadata: dict[str, str], stats_max_length: int | None = None) -> None:
        super().__init__(spec, dim, metadata, stats_max_length)
        self._temp = self._temporary(spec.path)
        self._writer: Any = None
        self._id_type: Any = None

    def write(self, ids: list[Any], vectors: np.ndarray, n_tokens: list[int] | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        id_array = _id_array(pa, ids, self._id_type, self.rows)
        arrays = [id_array, embedding_array(vectors, self.dtype)]
        names = ["id", "embedding"]
        if self.stats_max_length is not None and n_tokens is not None:
            counts = np.asarray(n_tokens, dtype=np.int32)
            arrays += [pa.array(counts), pa.array(counts > self.stats_max_length)]
            names += ["n_tokens", "truncated"]
        table = pa.Table.from_arrays(arrays, names=names)
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

            fields = [("id", pa.int64()), ("embedding", pa.list_(pa.from_numpy_dtype(self.dtype), self.dim))]
            if self.stats_max_length is not None:
                fields += [("n_tokens", pa.int32()), ("truncated", pa.bool_())]
            schema = pa.schema(fields, metadata=self.metadata)
            self._writer = pq.ParquetWriter(self._temp, schema)
        self._writer.close()


def embedding_array(vectors: np.ndarray, dtype: Any) -> Any:
    """[rows, dim] vectors as an Arrow fixed_size_list<float>[dim] column, the embedding column's type."""
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


class NpyWriter(_FileWriter):
    """float32/float16 [rows, dim] in input order, streamed; ids go to a JSON-lines sidecar."""

    def __init__(self, spec: OutputSpec, dim: int, metadata: dict[str, str], stats_max_length: int | None = None) -> None:
        if stats_max_length is not None:
            raise UsageError(f"{spec.path}: --with-stats needs a .parquet or .jsonl output, which have room for the columns")
        super().__init__(spec, dim, metadata)
        with _output_errors(spec.path):
            self._ids_file: IO[str] = open(self._temporary(spec.ids_path), "w", encoding="utf-8")
            self._array_file: IO[bytes] = open(self._temporary(spec.path), "wb")
            self._array_file.write(_npy_header(self.dtype, (0, dim)))

    def write(self, ids: list[Any], vectors: np.ndarray, n_tokens: list[int] | None = None) -> None:
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

    def __init__(self, spec: OutputSpec, dim: int, metadata: dict[str, str], stats_max_length: int | None = None) -> None:
        super().__init__(spec, dim, metadata, stats_max_length)
        self._owns_stream = spec.path != STDOUT
        if self._owns_stream:
            with _output_errors(spec.path):
                self._stream: IO[str] = open(self._temporary(spec.path), "w", encoding="utf-8")
        else:
            self._stream = sys.stdout

    def write(self, ids: list[Any], vectors: np.ndarray, n_tokens: list[int] | None = None) -> None:
        rows = np.asarray(vectors, dtype=self.dtype).tolist()
        objects = [{"id": value, "embedding": row} for value, row in zip(ids, rows)]
        if self.stats_max_length is not None and n_tokens is not None:
            for obj, count in zip(objects, n_tokens):
                obj["n_tokens"], obj["truncated"] = count, count > self.stats_max_length
        lines = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects)
        with _output_errors(self.spec.path):
            self._stream.write(lines)
            if not self._owns_stream:
                self._stream.flush()  # a pipeline reader gets each window as soon as it is ready
        self.rows += len(ids)

    def _close(self) -> None:
        if self._owns_stream:
            self._stream.close()


def make_writer(spec: OutputSpec, dim: int, metadata: dict[str, str], stats_max_length: int | None = None) -> EmbeddingWriter:
    """The writer for the spec's format; nothing is visible until its finish()."""
    kinds: dict[str, type[EmbeddingWriter]] = {"parquet": ParquetWriter, "npy": NpyWriter, "jsonl": JsonLinesWriter}
    return kinds[spec.format](spec, dim, metadata, stats_max_length)


@contextmanager
def _output_errors(path: str) -> Iterator[None]:
    """OSError while writing (disk full, permissions) -> one-line OutputError naming the file."""
    try:
        yield
    except BrokenPipeError:
        raise  # the reader of stdout went away: the CLI exits quietly
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc}); nothing was written") from None


class RejectsWriter:
    """Bad rows as JSON lines ({"row", "id", "where", "reason"}), under a temporary name until finish()."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0
        self._temp = temporary_path(path)
        self._stream: IO[str] | None = None

    def add(self, rows: list[Any]) -> None:
        if not rows:
            return
        with _output_errors(self.path):
            if self._stream is None:
                self._stream = open(self._temp, "w", encoding="utf-8")
            for bad in rows:
                line = {"row": bad.row, "id": bad.id, "where": bad.where, "reason": bad.reason}
                self._stream.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.count += len(rows)

    def finish(self) -> None:
        """Publish the rejects; with none, remove a rejects file left by an earlier run, which no longer applies."""
        with _output_errors(self.path):
            if self._stream is not None:
                self._stream.close()
                os.replace(self._temp, self.path)
            elif os.path.exists(self.path):
                os.remove(self.path)

    def abort(self) -> None:
        if self._stream is not None:
            self._stream.close()
            try:
                os.remove(self._temp)
            except FileNotFoundError:
                pass


def lock_path(target: str) -> str:
    """The lock beside a file output (.NAME.sbert.lock), or inside a directory output (.sbert.lock)."""
    path = Path(target)
    return str(path / ".sbert.lock") if path.is_dir() else str(path.with_name(f".{path.name}.sbert.lock"))


@contextmanager
def output_lock(target: str) -> Iterator[None]:
    """Refuse a second run on the same output; a lock left by a process that is gone is taken over."""
    lock = lock_path(target)
    owner = f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None:
                raise OutputError(
                    f"{target}: another sbert run (pid {holder}) is writing this output; "
                    f"wait for it, or remove {lock} if that process is gone"
                ) from None
            try:
                os.remove(lock)  # stale: its process has ended
            except FileNotFoundError:
                pass
            continue
        except OSError as exc:
            raise OutputError(f"{target}: cannot create the lock file {lock} ({exc.strerror})") from None
        with os.fdopen(fd, "w") as stream:
            stream.write(owner)
        break
    else:
        raise OutputError(f"{target}: cannot take the lock {lock}; remove it if no sbert run is writing this output")
    try:
        yield
    finally:
        try:
            with open(lock, encoding="utf-8") as stream:
                mine = stream.read() == owner
            if mine:
                os.remove(lock)
        except OSError:
            pass


def _lock_holder(lock: str) -> int | None:
    """The pid holding the lock if that process still runs (on this host), else None."""
    try:
        with open(lock, encoding="utf-8") as stream:
            pid_text, _, host = stream.read().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None  # unreadable or half-written: its writer died mid-write
    if host and host != socket.gethostname():
        return pid  # another machine's process: we cannot tell, so assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                return None  # a zombie has ended; only its parent has not reaped it
    except (OSError, IndexError):
        pass
    return pid


class FileSink:
    """One output file (plus its rejects file): the whole input is a single shard."""

    def __init__(self, writer: EmbeddingWriter, rejects: RejectsWriter | None) -> None:
        self.writer = writer
        self.rejects = rejects
        self.done: set[int] = set()

    def shard_of(self, row: int) -> int:
        return 0

    def start_shard(self, index: int) -> None:
        pass

    def finish_shard(self) -> None:
        pass

    def write(self, records: list[Any], vectors: np.ndarray, n_tokens: list[int]) -> None:
        self.writer.write([record.id for record in records], vectors, n_tokens)

    def reject(self, rows: list[Any]) -> None:
        if rows:
            if self.rejects is None:
                raise RuntimeError("bad rows reached a sink that was given no rejects file")
            self.rejects.add(rows)

    def finish(self) -> None:
        self.writer.finish()
        if self.rejects is not None:
            self.rejects.finish()

    def abort(self) -> None:
        self.writer.abort()
        if self.rejects is not None:
            self.rejects.abort()
