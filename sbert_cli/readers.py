"""Input formats -> records: CSV, TSV, JSONL and Parquet, from a file or stdin, as a stream."""

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
from typing import IO, Any

from sbert_cli.errors import InputDataError, UsageError

FORMATS = ("csv", "tsv", "jsonl", "parquet")
STDIN = "-"

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}

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
    """A row that cannot be encoded, with where it is and why."""

    row: int
    where: str
    id: Any
    reason: str

    def message(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class InputSpec:
    """What to read: a path (or '-' for stdin), its format and which columns hold text and id."""

    path: str
    format: str
    text_column: str = "text"
    id_column: str | None = None

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == STDIN else self.path


BadRowHandler = Callable[[BadRow], None]


def detect_format(path: str, explicit: str | None) -> str:
    """The input format: --format if given, else the file extension; stdin is sniffed later."""
    if explicit is not None:
        fmt = explicit.lower()
        if fmt not in FORMATS:
            raise UsageError(f"unknown format '{explicit}'; pass --format {'|'.join(FORMATS)}")
        return fmt
    if path == STDIN:
        return "auto"
    suffix = Path(path).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    raise UsageError(
        f"{path}: cannot tell the format from the extension '{suffix}'; "
        f"pass --format {'|'.join(FORMATS)}"
    )


def sniff_format(head: bytes) -> str:
    """Guess the format of stdin from its first bytes: Parquet magic, a JSON object, tabs, else CSV."""
    if head.startswith(b"PAR1"):
        return "parquet"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"{"):
        return "jsonl"
    first_line = stripped.split(b"\n", 1)[0]
    return "tsv" if b"\t" in first_line else "csv"


def iter_rows(spec: InputSpec) -> Iterator[Record | BadRow]:
    """Every data row of the input in order, as a Record or, when it cannot be encoded, a BadRow."""
    with _open_binary(spec) as (stream, fmt):
        if fmt == "parquet":
            yield from _iter_parquet(spec, stream)
        elif fmt == "jsonl":
            yield from _iter_jsonl(spec, stream)
        else:
            yield from _iter_delimited(spec, stream, "\t" if fmt == "tsv" else ",")


def iter_records(spec: InputSpec, on_bad_row: BadRowHandler | None = None) -> Iterator[Record]:
    """The good rows in order; a bad row raises InputDataError, or goes to on_bad_row if given."""
    handle = on_bad_row if on_bad_row is not None else _raise_bad_row
    for item in iter_rows(spec):
        if isinstance(item, BadRow):
            handle(item)
        else:
            yield item


def split_window(window: list[Record | BadRow], skip_bad_rows: bool) -> tuple[list[Record], list[BadRow]]:
    """A window's good rows and bad rows; a bad row raises InputDataError unless they are being skipped."""
    records = [item for item in window if isinstance(item, Record)]
    rejects = [item for item in window if isinstance(item, BadRow)]
    if rejects and not skip_bad_rows:
        _raise_bad_row(rejects[0])
    return records, rejects


def _raise_bad_row(bad: BadRow) -> None:
    raise InputDataError(bad.message())


@contextmanager
def _open_binary(spec: InputSpec) -> Iterator[tuple[IO[bytes], str]]:
    fmt = spec.format
    if spec.path == STDIN:
        stdin = sys.stdin.buffer
        if not hasattr(stdin, "peek"):
            stdin = io.BufferedReader(stdin)  # type: ignore[arg-type]
        if fmt == "auto":
            fmt = sniff_format(stdin.peek(4096)[:4096])
        if fmt == "parquet":
            # Parquet needs to seek to its footer; spool stdin to disk, not memory, to keep memory bounded.
            with tempfile.TemporaryFile() as spool:
                shutil.copyfileobj(stdin, spool, 1 << 20)
                spool.seek(0)
                yield spool, fmt
        else:
            yield stdin, fmt
        return
    if os.path.isdir(spec.path):
        raise UsageError(f"{spec.path}: is a directory; pass a CSV, TSV, JSONL or Parquet file")
    try:
        stream = open(spec.path, "rb")
    except FileNotFoundError:
        raise UsageError(f"{spec.path}: no such file; check the path") from None
    except OSError as exc:
        raise InputDataError(f"{spec.path}: cannot open ({exc.strerror})") from None
    with stream:
        yield stream, fmt


def _decode_lines(
    spec: InputSpec, stream: IO[bytes], bad_lines: set[int] | None = None
) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) for each physical line; bad UTF-8 is noted in bad_lines or raised."""
    for lineno, raw in enumerate(stream, 1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            if bad_lines is None:
                raise InputDataError(f"{spec.name}:{lineno}: {_utf8_reason(exc)}") from None
            bad_lines.add(lineno)
            yield lineno, raw.decode("utf-8", errors="replace")


_CONVERT_HINT = "convert the file, e.g. iconv -f GBK -t UTF-8"


def _utf8_reason(exc: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte {exc.start + 1} of the line); {_CONVERT_HINT}"


def _iter_jsonl(spec: InputSpec, stream: IO[bytes]) -> Iterator[Record | BadRow]:
    row = -1
    for lineno, raw in enumerate(stream, 1):
        if not raw.strip():
            continue
        row += 1
        where = f"{spec.name}:{lineno}"
        unknown_id = row if spec.id_column is None else None
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield BadRow(row, where, unknown_id, _utf8_reason(exc))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = (
                "is this CSV? pass --format csv"
                if row == 0 and not line.lstrip().startswith("{")
                else "each line must be one JSON object"
            )
            yield BadRow(row, where, unknown_id, f"invalid JSON ({exc.msg}); {hint}")
            continue
        if not isinstance(obj, dict):
            yield BadRow(row, where, unknown_id, f"expected a JSON object, found {_json_type(obj)}")
            continue
        if row == 0:
            for column in (spec.text_column, spec.id_column):
                if column is not None and column not in obj:
                    raise UsageError(_missing_column(where, "field", column, list(obj), column == spec.text_column))
        record_id: Any = row
        if spec.id_column is not None:
            if spec.id_column not in obj:
                yield BadRow(row, where, None, f"no field '{spec.id_column}'")
                continue
            record_id = obj[spec.id_column]
            problem = _id_problem(record_id)
            if problem:
                yield BadRow(row, where, None, problem)
                continue
        if spec.text_column not in obj:
            yield BadRow(row, where, record_id, f"no field '{spec.text_column}'")
            continue
        problem = _text_problem(spec.text_column, obj[spec.text_column])
        if problem:
            yield BadRow(row, where, record_id, problem)
            continue
        yield Record(row, record_id, obj[spec.text_column])


def _iter_delimited(spec: InputSpec, stream: IO[bytes], delimiter: str) -> Iterator[Record | BadRow]:
    kind = "tab" if delimiter == "\t" else "comma"
    bad_lines: set[int] = set()
    lines = _decode_lines(spec, stream, bad_lines)
    reader = csv.reader((text for _, text in lines), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise InputDataError(f"{spec.name}: empty file; expected a header line naming the columns") from None
    except csv.Error as exc:
        raise InputDataError(f"{spec.name}:1: unreadable header ({exc})") from None
    if bad_lines:
        raise InputDataError(f"{spec.name}:1: header is not valid UTF-8; {_CONVERT_HINT}")
    text_index = _column_index(spec, header, spec.text_column, True)
    id_index = _column_index(spec, header, spec.id_column, False) if spec.id_column else None
    row = -1
    last_line = reader.line_num
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row += 1
            unknown_id = row if id_index is None else None
            yield BadRow(row, f"{spec.name}:{reader.line_num}", unknown_id, f"malformed {kind}-separated row ({exc})")
            last_line = reader.line_num
            continue
        first_line, last_line = last_line + 1, reader.line_num
        if not fields:
            continue  # a blank line
        row += 1
        where = f"{spec.name}:{first_line}"
        record_id: Any = row if id_index is None else (fields[id_index] if id_index < len(fields) else None)
        if any(first_line <= n <= last_line for n in bad_lines):
            yield BadRow(row, where, record_id, f"not valid UTF-8; {_CONVERT_HINT}")
            bad_lines.difference_update(range(first_line, last_line + 1))
            continue
        if len(fields) != len(header):
            yield BadRow(
                row,
                where,
                record_id,
                f"expected {len(header)} {kind}-separated fields, found {len(fields)}; "
                "quote fields that contain the separator",
            )
            continue
        yield Record(row, record_id, fields[text_index])


def _column_index(spec: InputSpec, header: list[str], column: str | None, is_text: bool) -> int:
    try:
        return header.index(column)
    except ValueError:
        raise UsageError(_missing_column(spec.name, "column", column or "", header, is_text)) from None


def _missing_column(where: str, noun: str, column: str, present: list[str], is_text: bool) -> str:
    flag = "--text-column" if is_text else "--id-column"
    shown = ", ".join(present[:20]) or "none"
    return f"{where}: no {noun} '{column}' (found: {shown}); pass {flag} NAME"


def _iter_parquet(spec: InputSpec, stream: IO[bytes]) -> Iterator[Record | BadRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(stream)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{spec.name}: not a readable Parquet file ({exc}); check --format") from None
    names = parquet.schema_arrow.names
    columns = [c for c in (spec.text_column, spec.id_column) if c is not None]
    for column in columns:
        if column not in names:
            raise UsageError(_missing_column(spec.name, "column", column, names, column == spec.text_column))
    text_type = parquet.schema_arrow.field(spec.text_column).type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type) or _is_string_view(pa, text_type)):
        raise UsageError(
            f"{spec.name}: column '{spec.text_column}' holds {text_type}, not strings; pass --text-column NAME"
        )
    row = -1
    try:
        for batch in parquet.iter_batches(batch_size=8192, columns=columns):
            texts = batch.column(spec.text_column).to_pylist()
            ids = batch.column(spec.id_column).to_pylist() if spec.id_column else None
            for offset, text in enumerate(texts):
                row += 1
                where = f"{spec.name}: row {row}"
                record_id = ids[offset] if ids is not None else row
                if ids is not None:
                    problem = _id_problem(record_id)
                    if problem:
                        yield BadRow(row, where, None, problem)
                        continue
                if text is None:
                    yield BadRow(row, where, record_id, f"'{spec.text_column}' is null")
                    continue
                yield Record(row, record_id, text)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{spec.name}: unreadable Parquet data after row {row} ({exc})") from None


def _is_string_view(pa: Any, data_type: Any) -> bool:
    check = getattr(pa.types, "is_string_view", None)
    return bool(check and check(data_type))


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
