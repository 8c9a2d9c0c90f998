"""JSON lines: one object a line, its fields by name; a line that is not an object is a bad row, not a failure."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from sbert_cli.errors import UsageError
from sbert_cli.io.encodings import undecodable
from sbert_cli.io.rows import BOM, MISSING, BadRow, Extent, Fields, InputFormatSpec, TableSpec, json_type, missing_column, text_start


def utf8_reason(exc: UnicodeDecodeError, options: bool = True) -> str:
    """A line not in the file's encoding (UTF-8 unless --encoding names another): where on the line, and the fix."""
    return undecodable(exc.encoding, options, f" (byte {exc.start + 1} of the line)")


def json_error(exc: json.JSONDecodeError, line: str) -> str:
    """What is wrong and where on the line: 'Invalid control character at column 12', or 'at the end of the line'.
    The exception's own text counts lines within the one line parsed ('line 1'; 'line 2' past its newline),
    which the file:line before it would contradict."""
    what = exc.msg.removesuffix(" at")
    if exc.pos >= len(line.rstrip()):
        return f"{what} at the end of the line"
    return f"{what} at column {exc.pos + 1}"


def jsonl_fields(table: TableSpec, stream: IO[bytes]) -> Iterator[Fields | BadRow]:
    row = -1
    for lineno, raw in enumerate(stream, 1):
        if not raw.strip():
            continue
        row += 1
        where = f"{table.name}:{lineno}"
        unknown_id = row if table.id_column is None else None
        try:
            line = (raw[3:] if lineno == 1 and raw.startswith(BOM) else raw).decode(table.encoding)
        except UnicodeDecodeError as exc:
            yield BadRow(row, where, unknown_id, utf8_reason(exc, table.format_option))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            looks_like_csv = row == 0 and table.format_option and not line.lstrip().startswith("{")
            hint = "is this CSV? pass --format csv" if looks_like_csv else "each line must be one JSON object"
            yield BadRow(row, where, unknown_id, f"invalid JSON ({json_error(exc, line)}); {hint}")
            continue
        if not isinstance(obj, dict):
            yield BadRow(row, where, unknown_id, f"expected a JSON object, found {json_type(obj)}")
            continue
        values = tuple(field_value(obj, column) for column in table.columns)
        if row == 0:
            for column, fix, value in zip(table.columns, table.fixes, values):
                if value is MISSING:
                    raise UsageError(missing_column(where, "field", column, field_names(obj), fix))
        yield Fields(row, where, values)


def field_value(obj: dict[str, Any], name: str) -> Any:
    """A field by name: the key of that name, else a dotted path through nested objects ('data.text' in
    {"data": {"text": ...}}); a key that holds the dots itself wins. MISSING when there is neither."""
    if name in obj:
        return obj[name]
    if "." not in name:
        return MISSING
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest key first: 'a.b' before 'a' for 'a.b.c'
        inner = obj.get(".".join(parts[:cut]))
        if isinstance(inner, dict):
            value = field_value(inner, ".".join(parts[cut:]))
            if value is not MISSING:
                return value
    return MISSING


def field_names(obj: dict[str, Any], prefix: str = "") -> list[str]:
    """The names a field can be asked by: a nested object's fields as dotted paths ('data.text')."""
    names: list[str] = []
    for key, value in obj.items():
        names += field_names(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [prefix + key]
    return names


def _jsonl_fields(table: TableSpec, stream: IO[bytes], extent: Extent) -> Iterator[Fields | BadRow]:
    return jsonl_fields(table, stream)  # progress is the file's bytes, which the opener tracks


# Sniffed by a first character of '{': after Parquet's magic, before TSV (a JSON line may hold a tab).
JSONL = InputFormatSpec("jsonl", "JSONL", (".jsonl", ".ndjson"), sniff=lambda head: text_start(head).startswith(b"{"), fields=_jsonl_fields, sniff_order=20)
