"""What every output format's writer shares: its spec, the temporary-then-publish life of its files, the one-line
write errors, and the rejects file. The formats themselves are modules of their own, listed in io/output_formats.py."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from sbert_cli.choices import STDOUT
from sbert_cli.errors import OutputError
from sbert_cli.io.compact import VectorForm
from sbert_cli.io.paths import quantization_path
from sbert_cli.io.publish import discard, publish, temporary_path
from sbert_cli.io.storage import is_url, location, store_error

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
        """A .npy or .jsonl file's int8/uint8 ranges, in NAME.EXT.quantization.json beside it (Parquet keeps them in its metadata)."""
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
            published: list[str] = []
            try:
                for temp, final in self._renames:  # sidecars first, the output last
                    publish(temp, final)
                    published.append(final)
            except BaseException:
                for final in published:  # no new sidecar is left beside an output that was not published
                    location(final).unlink(missing_ok=True)
                raise
        self._renames = []

    def abort(self) -> None:
        try:
            self._close()
        except Exception:  # closing a half-written file may fail too; removing it is what matters
            pass
        for temp, _ in self._renames:
            discard(temp)
        self._renames = []


def file_digest(path: str | Path) -> tuple[str, int]:
    """SHA-256 and size of a local file."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@contextmanager
def output_errors(path: str, outcome: str = NOTHING_WRITTEN) -> Iterator[None]:
    """OSError while writing (disk full, permissions) -> one-line OutputError naming the file and what is left."""
    try:
        yield
    except BrokenPipeError:
        raise  # the reader of stdout went away: the CLI exits 141
    except OSError as exc:
        if exc.errno is not None and is_url(path):
            # A local file failed on the way to the store (a store's failures carry no errno): the spool folder under
            # TMPDIR, not the store, is what to fix.
            reason = os.strerror(exc.errno)
            raise OutputError(
                f"{path}: cannot write its local spool file under {tempfile.gettempdir()} ({reason}); free space there, or "
                f"point TMPDIR at a disk with room for one shard (a single file: the whole output); {outcome}"
            ) from None
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
