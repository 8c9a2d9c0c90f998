"""Every file the tool reads, in any format io.formats lists, from a file, an object store or stdin, streamed as numbered rows.

The formats each have a module (delimited, jsonl, parquet_rows) speaking the vocabulary of rows.py and a line in
that table; inputs.py finds the files an INPUT names; this module opens them, picks the format and turns fields into records.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import IO, Any

from sbert_cli.choices import Quoting
from sbert_cli.errors import InputDataError, UsageError
from sbert_cli.io.formats import INPUT_FORMATS, named_formats, sniff_format
from sbert_cli.io.inputs import InputFile, chain_files, detect_format
from sbert_cli.io.rows import MISSING, STDIN, BadRow, Extent, Fields, Record, TableSpec, json_type
from sbert_cli.io.storage import StorePath, is_url, open_input, store_error

__all__ = [
    "INPUT_FORMATS", "MISSING", "STDIN", "BadRow", "Extent", "Record", "TableSpec", "InputSpec",
    "detect_format", "iter_rows", "iter_fields", "sniff_format", "split_window",
]


@dataclass(frozen=True)
class InputSpec:
    """What `encode` reads: INPUT as given (or '-' for stdin), its files and their one format, and which columns
    hold text and id. Without `files`, `path` is the one file."""

    path: str
    format: str
    text_column: str = "text"
    id_column: str | None = None
    files: tuple[InputFile, ...] = ()
    quoting: Quoting = "auto"  # auto: CSV's fields may be quoted, a TSV's quotes are text
    encoding: str = "utf-8"  # of CSV, TSV and JSON lines files
    root: str | None = None  # a directory, prefix or glob's base: ids without --id-column are path:row (inputs.row_id)

    @property
    def row_ids_root(self) -> str | None:
        """The root rows' ids are named from, when ids are not an id column's."""
        return self.root if self.id_column is None else None

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == STDIN else self.path

    @property
    def table(self) -> TableSpec:
        columns = (self.text_column,) if self.id_column is None else (self.text_column, self.id_column)
        return TableSpec(
            self.path, self.format, columns, ("--text-column NAME", "--id-column NAME"), self.id_column,
            string_columns=(self.text_column,), quoting=None if self.quoting == "auto" else self.quoting == "csv", encoding=self.encoding,
        )


def iter_rows(spec: InputSpec, extent: Extent | None = None) -> Iterator[Record | BadRow]:
    """Every data row of an encode input in order, as a Record or, when it cannot be encoded, a BadRow.

    Ids are all strings or all integers, as the first good row's: the output's id column has one type.
    """
    id_kind: str | None = None
    for item in _input_fields(spec, extent or Extent()):
        if isinstance(item, BadRow):
            yield item
            continue
        text = item.values[0]
        record_id: Any = item.row if item.id is None else item.id
        if spec.id_column is not None:
            record_id = item.values[1]
            problem = f"no field '{spec.id_column}'" if record_id is MISSING else _id_problem(record_id)
            kind = _ID_KINDS[type(record_id)] if not problem else None
            if kind is not None and id_kind not in (None, kind):
                problem = f"id is {kind}, but the ids before it are {_PLURAL[id_kind]}; use ids of one type"
            if problem:
                yield BadRow(item.row, item.where, None, problem)
                continue
        problem = f"no field '{spec.text_column}'" if text is MISSING else _text_problem(spec.text_column, text)
        if problem:
            yield BadRow(item.row, item.where, record_id, problem)
            continue
        if spec.id_column is not None:
            id_kind = id_kind or _ID_KINDS[type(record_id)]
        yield Record(item.row, record_id, text)


def _input_fields(spec: InputSpec, extent: Extent) -> Iterator[Fields | BadRow]:
    """The fields of INPUT's files, one after the other, rows numbered on across them."""
    if not spec.files:
        return iter_fields(spec.table, extent)
    table = spec.table
    return chain_files(spec.files, lambda file, inner: iter_fields(replace(table, path=file.path), inner), extent, spec.row_ids_root)


def split_window(window: list[Record | BadRow], skip_bad_rows: bool) -> tuple[list[Record], list[BadRow]]:
    """A window's good rows and bad rows; a bad row raises InputDataError unless they are being skipped."""
    records = [item for item in window if isinstance(item, Record)]
    rejects = [item for item in window if isinstance(item, BadRow)]
    if rejects and not skip_bad_rows:
        raise InputDataError(rejects[0].message())
    return records, rejects


def iter_fields(table: TableSpec, extent: Extent | None = None) -> Iterator[Fields | BadRow]:
    """The requested columns of every data row, or a BadRow for a row that cannot be read."""
    with _open_binary(table, extent or Extent()) as (stream, fmt, extent):
        try:
            yield from INPUT_FORMATS[fmt].fields(table, stream, extent)
        except OSError as exc:  # a store's connection lost mid-file: one line, not a traceback
            error = store_error(exc, table.path, InputDataError)
            if error is None:
                raise
            raise error from None


@contextmanager
def _open_binary(table: TableSpec, extent: Extent) -> Iterator[tuple[IO[bytes], str, Extent]]:
    if table.path == STDIN:
        with _open_stdin(table.format) as (stream, fmt):
            yield stream, fmt, extent
        return
    if is_url(table.path):
        source = StorePath.parse(table.path)
        with open_input(source, random_access=INPUT_FORMATS[table.format].seekable) as stream:
            extent.total, extent.unit, extent.position = source.info().size, "bytes", stream.tell
            yield stream, table.format, extent
        return
    if os.path.isdir(table.path):
        raise UsageError(f"{table.path}: is a directory; pass a {named_formats()} file")
    try:
        stream = open(table.path, "rb")
    except FileNotFoundError:
        raise UsageError(f"{table.path}: no such file; check the path") from None
    except OSError as exc:
        raise InputDataError(f"{table.path}: cannot open ({exc.strerror})") from None
    with stream:
        extent.total, extent.unit, extent.position = os.fstat(stream.fileno()).st_size, "bytes", stream.tell
        yield stream, table.format, extent


@contextmanager
def _open_stdin(fmt: str) -> Iterator[tuple[IO[bytes], str]]:
    stdin = sys.stdin.buffer
    if not hasattr(stdin, "peek"):
        stdin = io.BufferedReader(stdin)  # type: ignore[arg-type]
    if fmt == "auto":
        fmt = sniff_format(stdin.peek(4096)[:4096])
    if not INPUT_FORMATS[fmt].seekable:
        yield stdin, fmt
        return
    # A format that seeks (Parquet, to its footer) cannot read a pipe; spool stdin to disk, not memory, to keep memory bounded.
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(stdin, spool, 1 << 20)
        spool.seek(0)
        yield spool, fmt


def _text_problem(column: str, value: Any) -> str | None:
    if value is None:
        return f"'{column}' is null"
    if not isinstance(value, str):
        return f"'{column}' is {json_type(value)}, not a string"
    return None


_ID_KINDS = {str: "a string", int: "an integer"}
_PLURAL = {"a string": "strings", "an integer": "integers"}
_INT64 = range(-(2**63), 2**63)


def _id_problem(value: Any) -> str | None:
    if value is None:
        return "id is null"
    if type(value) not in _ID_KINDS:
        return f"id is {json_type(value)}; ids must be strings or integers"
    if isinstance(value, int) and value not in _INT64:
        return "id is an integer beyond 64 bits; write it as a string"
    return None
