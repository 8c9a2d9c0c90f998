"""CSV and TSV: a header naming the columns (or, for pair files, sniffed), quoted or not; a malformed row is a bad row."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from sbert_cli.errors import InputDataError, UsageError
from sbert_cli.io.rows import BOM, CONVERT_HINT, BadRow, Extent, Fields, InputFormatSpec, TableSpec, missing_column, text_start

# Python's csv module refuses fields over 128 KiB by default; a long paragraph is a valid row.
csv.field_size_limit(2**31 - 1)


def _decode_lines(table: TableSpec, stream: IO[bytes], bad_lines: set[int]) -> Iterator[str]:
    """Each physical line as text; the numbers of lines that are not UTF-8 are noted in bad_lines."""
    for lineno, raw in enumerate(stream, 1):
        if lineno == 1 and raw.startswith(BOM):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines.add(lineno)
            yield raw.decode("utf-8", errors="replace")


def delimited_fields(table: TableSpec, stream: IO[bytes], delimiter: str) -> Iterator[Fields | BadRow]:
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
        raise InputDataError(f"{table.name}:1: header is not valid UTF-8; {CONVERT_HINT}")
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
            yield BadRow(row, where, record_id, f"not valid UTF-8; {CONVERT_HINT}")
            bad_lines.difference_update(range(first_line, last_line + 1))
        elif len(fields) != reasons.width:
            yield BadRow(row, where, record_id, reasons.wrong_width(len(fields)))
        else:
            yield Fields(row, where, tuple(fields[i] for i in indices))


def _column_index(table: TableSpec, header: list[str], column: str, fix: str) -> int:
    try:
        return header.index(column)
    except ValueError:
        raise UsageError(missing_column(table.name, "column", column, header, fix)) from None


def _csv_fields(table: TableSpec, stream: IO[bytes], extent: Extent) -> Iterator[Fields | BadRow]:
    return delimited_fields(table, stream, ",")


def _tsv_fields(table: TableSpec, stream: IO[bytes], extent: Extent) -> Iterator[Fields | BadRow]:
    return delimited_fields(table, stream, "\t")


def _tab_separated(head: bytes) -> bool:
    return b"\t" in text_start(head).split(b"\n", 1)[0]


# TSV: a tab on the first line (after Parquet and JSON lines, whose first line may hold one). CSV takes whatever
# no other format claims, so it is sniffed last.
CSV = InputFormatSpec("csv", "CSV", (".csv",), sniff=lambda head: True, fields=_csv_fields, sniff_order=100)
TSV = InputFormatSpec("tsv", "TSV", (".tsv", ".tab"), sniff=_tab_separated, fields=_tsv_fields, sniff_order=30)
