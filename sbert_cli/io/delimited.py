"""CSV and TSV: a header naming the columns (or, for pair files, sniffed); every data line is a row or a bad row.

A TSV is tab-separated values as IANA's text/tab-separated-values and `cut` have them: a line is a row, split on
tabs, and a quote is an ordinary character. A CSV's fields may be quoted (RFC 4180): a quoted field holds
separators, line ends and quotes written twice. --quoting swaps either. A record that breaks the quoting rules is
one bad row, and reading goes on at the next line; a quote still open at the end of the file leaves its record's
lines and every line after them unread, and each of those lines is a bad row of its own naming the line the quote
opened on. So rows written + rows rejected = the data rows, whatever the file holds.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from itertools import chain
from typing import IO

from sbert_cli.errors import InputDataError, UsageError
from sbert_cli.io.encodings import ascii_compatible, shown, undecodable
from sbert_cli.io.rows import BadRow, Extent, Fields, InputFormatSpec, TableSpec, missing_column, text_start

# Python's csv module refuses fields over 128 KiB by default; a long paragraph is a valid row.
csv.field_size_limit(2**31 - 1)

# A record as the line readers give it: its line (the first of a good one; where a bad one goes wrong) and its
# fields ([] for a blank line) or, when it cannot be read, None and the reason.
_Record = tuple[int, "list[str] | None", "str | None"]


def _mark_undecodable(error: UnicodeError) -> tuple[str, int]:
    """Bytes not in the encoding as lone surrogates (U+DC00 + the byte), which no text decodes to: a line holding
    one is not in the encoding. For a decoder that reads ahead of the lines (UTF-16), where a line-by-line
    try/except cannot say which line was bad."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return "".join(chr(0xDC00 + byte) for byte in error.object[error.start : error.end]), error.end


_MARK = "sbert.mark-undecodable"
codecs.register_error(_MARK, _mark_undecodable)
_MARKED = re.compile("[\udc00-\udcff]")


def _decoded(stream: IO[bytes], encoding: str, bad: set[int]) -> Iterator[str]:
    """Each physical line as text, a byte-order mark at the start dropped; the numbers of lines not in the encoding
    are added to `bad` (their text has U+FFFD where the bytes were)."""
    if ascii_compatible(encoding):  # UTF-8, GB18030, Big5...: a line is what ends in the byte b'\n'
        for lineno, raw in enumerate(stream, 1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                bad.add(lineno)
                text = raw.decode(encoding, errors="replace")
            yield text.removeprefix("\ufeff") if lineno == 1 else text
        return
    wrapper = io.TextIOWrapper(stream, encoding, errors=_MARK, newline="\n")  # UTF-16, UTF-32: decoded, then split
    try:
        for lineno, text in enumerate(wrapper, 1):
            if _MARKED.search(text):
                bad.add(lineno)
                text = _MARKED.sub("\ufffd", text)
            yield text.removeprefix("\ufeff") if lineno == 1 else text
    finally:
        with suppress(ValueError):  # a stream already closed under it
            wrapper.detach()  # the opener closes the stream, not the wrapper


def _content(text: str) -> str:
    """A line without its line end (LF or CRLF); a line with nothing else is blank."""
    text = text[:-1] if text.endswith("\n") else text
    return text[:-1] if text.endswith("\r") else text


def _plain_records(texts: Iterator[str], delimiter: str) -> Iterator[_Record]:
    """Quotes are text: each line a record, split on the separator."""
    for lineno, text in enumerate(texts, 1):
        content = _content(text)
        yield lineno, content.split(delimiter) if content else [], None


@dataclass(frozen=True)
class _Reasons:
    kind: str  # 'tab' or 'comma'
    quoting: bool
    options: bool  # encode's --quoting exists to suggest (evaluate has none)

    def wrong_width(self, width: int, found: int) -> str:
        fix = ""
        if found > width and self.quoting:
            fix = "; quote fields that contain the separator"
        elif found > width and self.kind == "tab" and self.options:
            fix = "; pass --quoting csv if fields that hold tabs are quoted"
        return f"expected {width} {self.kind}-separated fields, found {found}{fix}"

    def malformed(self, error: csv.Error) -> str:
        message = str(error)
        if message.startswith("new-line character"):  # a lone CR, which csv takes for a line end
            return f"malformed {self.kind}-separated row (a carriage return inside an unquoted field); quote the field"
        fix = ""
        if "expected after" in message:  # text after a closing quote: "引用"开头的句子
            fix = "; write a quote inside a quoted field as \"\"" + (", or pass --quoting none if quotes are text" if self.options else "")
        return f"malformed {self.kind}-separated row ({shown(message)}){fix}"

    def unclosed(self, line: int, opened: int) -> str:
        fix = "; close the quote" + (", or pass --quoting none if quotes are text" if self.options else "")
        if line == opened:
            return f"unclosed quote opened on line {opened}{fix}"
        return f"line {line} not read: unclosed quote opened on line {opened}{fix}"


def _quoted_records(texts: Iterator[str], delimiter: str, reasons: _Reasons) -> Iterator[_Record]:
    """CSV quoting (csv.reader, strict). A record that breaks the rules is one bad row, blamed on the line where
    the break is; the reader goes on at the next line. A quote open at the end of the file: each non-blank line
    of its record and after it is a bad row, blamed on the line the quote opened on."""
    pending: list[str] = []  # the lines of the record being read: csv.reader asks for one line at a time, only while it goes on

    def feed() -> Iterator[str]:
        for text in texts:
            pending.append(text)
            yield text

    reader = csv.reader(feed(), delimiter=delimiter, strict=True)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            if str(error).startswith("unexpected end of data"):  # strict csv.reader says this only at the end of the file
                first = reader.line_num - len(pending) + 1
                opened = first + _unclosed_quote(pending, delimiter)
                for offset, text in enumerate(pending):
                    if _content(text):
                        yield opened, None, reasons.unclosed(first + offset, opened)
                return
            pending.clear()
            yield reader.line_num, None, reasons.malformed(error)
            continue
        first = reader.line_num - len(pending) + 1
        pending.clear()
        yield first, fields, None


def _unclosed_quote(texts: list[str], delimiter: str) -> int:
    """Which of a record's lines the quoted field still open at the end of the file opened on: the record is read
    as csv.reader read it (a quote opens a field only as its first character; "" inside is a quote)."""
    opened, quoted, at_start = 0, False, True
    for offset, text in enumerate(texts):
        i = 0
        while i < len(text):
            if quoted:
                j = text.find('"', i)
                if j < 0:
                    break
                if text.startswith('"', j + 1):
                    i = j + 2
                else:
                    quoted, at_start, i = False, False, j + 1
            elif at_start and text[i] == '"':
                quoted, opened, i = True, offset, i + 1
            else:
                j = text.find(delimiter, i)
                if j < 0:
                    break
                at_start, i = True, j + 1
    return opened


def delimited_fields(table: TableSpec, stream: IO[bytes], delimiter: str) -> Iterator[Fields | BadRow]:
    quoting = table.quoting if table.quoting is not None else delimiter != "\t"
    reasons = _Reasons("tab" if delimiter == "\t" else "comma", quoting, table.format_option)
    bad: set[int] = set()
    texts = _decoded(stream, table.encoding, bad)
    records = _quoted_records(texts, delimiter, reasons) if quoting else _plain_records(texts, delimiter)
    for header in records:
        if header[1] != []:  # blank lines before the header are skipped
            break
    else:
        if table.header == "sniff":
            return
        raise InputDataError(f"{table.name}: empty file; expected a header line naming the columns")
    line, fields, problem = header
    if fields is None and table.header == "required":
        raise InputDataError(f"{table.name}:{line}: unreadable header ({problem})")
    names = [name.strip() for name in fields or []]
    if fields is not None and (table.header == "required" or all(column in names for column in table.columns)):
        if bad:
            raise InputDataError(f"{table.name}:{line}: header is {undecodable(table.encoding, table.format_option)}")
        indices = [_column_index(table, names, column, fix) for column, fix in zip(table.columns, table.fixes)]
        yield from _delimited_rows(table, records, bad, indices, len(fields), reasons)
    else:  # a pair file without a header: its first record is a row
        columns = len(table.columns)
        yield from _delimited_rows(table, chain([header], records), bad, list(range(columns)), columns, reasons)


def _delimited_rows(
    table: TableSpec, records: Iterator[_Record], bad: set[int], indices: list[int], width: int, reasons: _Reasons
) -> Iterator[Fields | BadRow]:
    id_index = indices[table.columns.index(table.id_column)] if table.id_column else None
    row = -1
    for line, fields, problem in records:
        undecodable_line = False
        if bad:  # the lines read so far are this record's: earlier ones were cleared
            undecodable_line = True
            bad.clear()
        if fields == []:
            continue  # a blank line
        row += 1
        where = f"{table.name}:{line}"
        if fields is None:
            yield BadRow(row, where, row if id_index is None else None, problem or "")
            continue
        record_id = row if id_index is None else (fields[id_index] if id_index < len(fields) else None)
        if undecodable_line:
            yield BadRow(row, where, record_id, undecodable(table.encoding, table.format_option))
        elif len(fields) != width:
            yield BadRow(row, where, record_id, reasons.wrong_width(width, len(fields)))
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
