"""Every file the tool reads: CSV, TSV, JSONL and Parquet, from a file or stdin, streamed as numbered rows."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, get_args

from sbert_cli.errors import InputDataError, UsageError

InputFormat = Literal["csv", "tsv", "jsonl", "parquet"]
FORMATS: tuple[str, ...] = get_args(InputFormat)
STDIN = "-"
EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()  # a JSON field that is not there
_BOM = b"\xef\xbb\xbf"
_CONVERT_HINT = "convert the file, e.g. iconv -f GBK -t UTF-8"

# Python's csv module refuses fields over 128 KiB by default; a long paragraph is a valid row.
csv.field_size_limit(2**31 - 1)


@dataclass(frozen=True, slots=True)
class Record:
    """One input row: its 0-based position among the data rows, its id and its text."""

    row: int
    id: Any
    text: str


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that cannot be used, with where it is and why."""

    row: int
    where: str
    id: Any
    reason: str

    def message(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Fields:
    """One data row's values of the requested columns (MISSING where a JSON object lacks the field)."""

    row: int
    where: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class TableSpec:
    """What to read from any input: which columns, how the user names others, and how the file is laid out."""

    path: str
    format: str
    columns: tuple[str, ...]
    fixes: tuple[str, ...]  # per column: the option that names another one ("--text-column NAME")
    id_column: str | None = None  # identifies a bad row in the rejects; without it, the row number does
    string_columns: tuple[str, ...] = ()  # Parquet columns that must hold strings
    header: str = "required"  # or "sniff": the first line is a header only when it names every column
    quoting: bool = True  # False: quotes are text, as in the published evaluation sets' TSV
    format_option: bool = True  # whether --format exists to suggest

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == STDIN else self.path


@dataclass(frozen=True)
class InputSpec:
    """What `encode` reads: a path (or '-' for stdin), its format and which columns hold text and id."""

    path: str
    format: str
    text_column: str = "text"
    id_column: str | None = None

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == STDIN else self.path

    @property
    def table(self) -> TableSpec:
        columns = (self.text_column,) if self.id_column is None else (self.text_column, self.id_column)
        return TableSpec(
            self.path, self.format, columns, ("--text-column NAME", "--id-column NAME"), self.id_column,
            string_columns=(self.text_column,),
        )


@dataclass
class Extent:
    """How far a reader has got, for a progress bar: bytes of a text file, rows of a Parquet file."""

    total: int | None = None
    unit: str = "rows"
    position: Callable[[], int] | None = None

    def now(self) -> int | None:
        """How far the reader is now; the whole input once it has finished and closed the file."""
        if self.position is None:
            return None
        try:
            return self.position()
        except (ValueError, OSError):
            return self.total


def detect_format(path: str, explicit: str | None) -> str:
    """The input format: --format if given (one of FORMATS, which the CLI offers), else the file extension; stdin is sniffed later."""
    if explicit is not None:
        return explicit
    if path == STDIN:
        return "auto"
    suffix = Path(path).suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    raise UsageError(f"{path}: cannot tell the format from the extension '{suffix}'; pass --format {'|'.join(FORMATS)}")


def sniff_format(head: bytes) -> str:
    """Guess the format of stdin from its first bytes: Parquet magic, a JSON object, tabs, else CSV."""
    if head.startswith(b"PAR1"):
        return "parquet"
    stripped = head.lstrip(_BOM + b" \t\r\n")
    if stripped.startswith(b"{"):
        return "jsonl"
    first_line = stripped.split(b"\n", 1)[0]
    return "tsv" if b"\t" in first_line else "csv"


def iter_rows(spec: InputSpec, extent: Extent | None = None) -> Iterator[Record | BadRow]:
    """Every data row of an encode input in order, as a Record or, when it cannot be encoded, a BadRow."""
    for item in iter_fields(spec.table, extent):
        if isinstance(item, BadRow):
            yield item
            continue
        text = item.values[0]
        record_id: Any = item.row
        if spec.id_column is not None:
            record_id = item.values[1]
            problem = f"no field '{spec.id_column}'" if record_id is MISSING else _id_problem(record_id)
            if problem:
                yield BadRow(item.row, item.where, None, problem)
                continue
        problem = f"no field '{spec.text_column}'" if text is MISSING else _text_problem(spec.text_column, text)
        if problem:
            yield BadRow(item.row, item.where, record_id, problem)
            continue
        yield Record(item.row, record_id, text)


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
        if fmt == "parquet":
            yield from _parquet_fields(table, stream, extent)
        elif fmt == "jsonl":
            yield from _jsonl_fields(table, stream)
        else:
            yield from _delimited_fields(table, stream, "\t" if fmt == "tsv" else ",")


@contextmanager
def _open_binary(table: TableSpec, extent: Extent) -> Iterator[tuple[IO[bytes], str, Extent]]:
    if table.path == STDIN:
        with _open_stdin(table.format) as (stream, fmt):
            yield stream, fmt, extent
        return
    if os.path.isdir(table.path):
        raise UsageError(f"{table.path}: is a directory; pass a CSV, TSV, JSONL or Parquet file")
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
    if fmt != "parquet":
        yield stdin, fmt
        return
    # Parquet needs to seek to its footer; spool stdin to disk, not memory, to keep memory bounded.
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(stdin, spool, 1 << 20)
        spool.seek(0)
        yield spool, fmt


def _utf8_reason(exc: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte {exc.start + 1} of the line); {_CONVERT_HINT}"


def _jsonl_fields(table: TableSpec, stream: IO[bytes]) -> Iterator[Fields | BadRow]:
    row = -1
    for lineno, raw in enumerate(stream, 1):
        if not raw.strip():
            continue
        row += 1
        where = f"{table.name}:{lineno}"
        unknown_id = row if table.id_column is None else None
        try:
            line = (raw[3:] if lineno == 1 and raw.startswith(_BOM) else raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            yield BadRow(row, where, unknown_id, _utf8_reason(exc))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            looks_like_csv = row == 0 and table.format_option and not line.lstrip().startswith("{")
            hint = "is this CSV? pass --format csv" if looks_like_csv else "each line must be one JSON object"
            yield BadRow(row, where, unknown_id, f"invalid JSON ({exc.msg}); {hint}")
            continue
        if not isinstance(obj, dict):
            yield BadRow(row, where, unknown_id, f"expected a JSON object, found {_json_type(obj)}")
            continue
        if row == 0:
            for column, fix in zip(table.columns, table.fixes):
                if column not in obj:
                    raise UsageError(_missing_column(where, "field", column, list(obj), fix))
        yield Fields(row, where, tuple(obj.get(column, MISSING) for column in table.columns))


def _decode_lines(table: TableSpec, stream: IO[bytes], bad_lines: set[int]) -> Iterator[str]:
    """Each physical line as text; the numbers of lines that are not UTF-8 are noted in bad_lines."""
    for lineno, raw in enumerate(stream, 1):
        if lineno == 1 and raw.startswith(_BOM):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines.add(lineno)
            yield raw.decode("utf-8", errors="replace")


def _delimited_fields(table: TableSpec, stream: IO[bytes], delimiter: str) -> Iterator[Fields | BadRow]:
    kind = "tab" if delimiter == "\t" else "comma"
    bad_lines: set[int] = set()
    quoting = csv.QUOTE_MINIMAL if table.quoting else csv.QUOTE_NONE
    reader = csv.reader(_decode_lines(table, stream, bad_lines), delimiter=delimiter, strict=True, quoting=quoting)
    try:
        first = next(reader)
    except StopIteration:
        if table.header == "sniff":
            return
        raise InputDataError(f"{table.name}: empty file; expected a header line naming the columns") from None
    except csv.Error as exc:
        raise InputDataError(f"{table.name}:1: unreadable header ({exc})") from None
    names = [name.strip() for name in first]
    has_header = table.header == "required" or all(column in names for column in table.columns)
    if has_header and bad_lines:
        raise InputDataError(f"{table.name}:1: header is not valid UTF-8; {_CONVERT_HINT}")
    if has_header:
        indices = [_column_index(table, names, column, fix) for column, fix in zip(table.columns, table.fixes)]
        width = len(first)
    else:
        indices, width = list(range(len(table.columns))), len(table.columns)
    reasons = _RowReasons(kind, width, table.quoting)
    yield from _delimited_rows(table, reader, bad_lines, indices, reasons, None if has_header else first)


@dataclass(frozen=True)
class _RowReasons:
    kind: str
    width: int
    quoting: bool

    def wrong_width(self, found: int) -> str:
        fix = "; quote fields that contain the separator" if self.quoting else ""
        return f"expected {self.width} {self.kind}-separated fields, found {found}{fix}"


def _delimited_rows(
    table: TableSpec, reader: Any, bad_lines: set[int], indices: list[int], reasons: _RowReasons, first: list[str] | None
) -> Iterator[Fields | BadRow]:
    id_index = indices[table.columns.index(table.id_column)] if table.id_column else None
    row = -1
    last_line = 0 if first is not None else reader.line_num
    while True:
        try:
            fields = first if first is not None else next(reader)
            first = None
        except StopIteration:
            return
        except csv.Error as exc:
            row += 1
            where = f"{table.name}:{reader.line_num}"
            yield BadRow(row, where, row if id_index is None else None, f"malformed {reasons.kind}-separated row ({exc})")
            last_line = reader.line_num
            continue
        first_line, last_line = last_line + 1, reader.line_num
        if not fields:
            continue  # a blank line
        row += 1
        where = f"{table.name}:{first_line}"
        record_id = row if id_index is None else (fields[id_index] if id_index < len(fields) else None)
        if any(first_line <= n <= last_line for n in bad_lines):
            yield BadRow(row, where, record_id, f"not valid UTF-8; {_CONVERT_HINT}")
            bad_lines.difference_update(range(first_line, last_line + 1))
        elif len(fields) != reasons.width:
            yield BadRow(row, where, record_id, reasons.wrong_width(len(fields)))
        else:
            yield Fields(row, where, tuple(fields[i] for i in indices))


def _column_index(table: TableSpec, header: list[str], column: str, fix: str) -> int:
    try:
        return header.index(column)
    except ValueError:
        raise UsageError(_missing_column(table.name, "column", column, header, fix)) from None


def _missing_column(where: str, noun: str, column: str, present: list[str], fix: str) -> str:
    shown = ", ".join(present[:20]) or "none"
    return f"{where}: no {noun} '{column}' (found: {shown}); pass {fix}"


def _parquet_fields(table: TableSpec, stream: IO[bytes], extent: Extent) -> Iterator[Fields | BadRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(stream)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{table.name}: not a readable Parquet file ({exc}); check --format") from None
    _check_parquet_columns(table, parquet.schema_arrow)
    done = [0]
    extent.total, extent.unit, extent.position = parquet.metadata.num_rows, "rows", lambda: done[0]
    row = -1
    try:
        for batch in parquet.iter_batches(batch_size=8192, columns=list(dict.fromkeys(table.columns))):
            for values in zip(*(batch.column(column).to_pylist() for column in table.columns)):
                row += 1
                yield Fields(row, f"{table.name}: row {row}", values)
            done[0] = row + 1
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{table.name}: unreadable Parquet data after row {row} ({exc})") from None


def _check_parquet_columns(table: TableSpec, schema: Any) -> None:
    import pyarrow as pa

    for column, fix in zip(table.columns, table.fixes):
        if column not in schema.names:
            raise UsageError(_missing_column(table.name, "column", column, schema.names, fix))
        data_type = schema.field(column).type
        string_view = getattr(pa.types, "is_string_view", lambda _: False)
        is_text = pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or string_view(data_type)
        if column in table.string_columns and not is_text:
            raise UsageError(f"{table.name}: column '{column}' holds {data_type}, not strings; pass {fix}")


def _text_problem(column: str, value: Any) -> str | None:
    if value is None:
        return f"'{column}' is null"
    if not isinstance(value, str):
        return f"'{column}' is {_json_type(value)}, not a string"
    return None


def _id_problem(value: Any) -> str | None:
    if value is None:
        return "id is null"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return f"id is {_json_type(value)}; ids must be strings or integers"
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
