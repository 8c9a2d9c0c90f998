"""Parquet: the asked-for columns read a record batch at a time, its row count known from the footer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from sbert_cli.errors import InputDataError, UsageError
from sbert_cli.io.rows import BadRow, Extent, Fields, InputFormatSpec, TableSpec, missing_column


def parquet_fields(table: TableSpec, stream: IO[bytes], extent: Extent) -> Iterator[Fields | BadRow]:
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
        # A dotted name selects only that field of a struct column (pyarrow takes nested paths), not all of it.
        for batch in parquet.iter_batches(batch_size=8192, columns=list(dict.fromkeys(table.columns))):
            for values in zip(*(_column(batch, column).to_pylist() for column in table.columns)):
                row += 1
                yield Fields(row, f"{table.name}: row {row}", values)
            done[0] = row + 1
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{table.name}: unreadable Parquet data after row {row} ({exc})") from None


def _check_parquet_columns(table: TableSpec, schema: Any) -> None:
    import pyarrow as pa

    for column, fix in zip(table.columns, table.fixes):
        found = _find_field(list(schema), column)
        if found is None:
            raise UsageError(missing_column(table.name, "column", column, _field_names(list(schema)), fix))
        data_type = found[1]
        # Dictionary-encoded text (a pandas 'category' column) is read as its values.
        values_type = data_type.value_type if pa.types.is_dictionary(data_type) else data_type
        string_view = getattr(pa.types, "is_string_view", lambda _: False)
        is_text = pa.types.is_string(values_type) or pa.types.is_large_string(values_type) or string_view(values_type)
        if column in table.string_columns and not is_text:
            raise UsageError(f"{table.name}: column '{column}' holds {data_type}, not strings; pass {fix}")


def _find_field(fields: list[Any], name: str) -> tuple[tuple[int, ...], Any] | None:
    """Where `name` is among `fields` (a schema's, a struct's): the field indices down to it, and its type. A field
    of that very name, else a dotted path into a struct ('data.text': field 'text' of struct column 'data')."""
    import pyarrow as pa

    names = [field.name for field in fields]
    if name in names:
        index = names.index(name)
        return (index,), fields[index].type
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest name first: 'a.b' before 'a' for 'a.b.c'
        prefix = ".".join(parts[:cut])
        if prefix in names and pa.types.is_struct(fields[names.index(prefix)].type):
            index = names.index(prefix)
            inner = _find_field(list(fields[index].type), ".".join(parts[cut:]))
            if inner is not None:
                return (index, *inner[0]), inner[1]
    return None


def _field_names(fields: list[Any], prefix: str = "") -> list[str]:
    """The names a column can be asked by: a struct's fields as dotted paths ('data.text')."""
    import pyarrow as pa

    names: list[str] = []
    for field in fields:
        nested = pa.types.is_struct(field.type) and field.type.num_fields
        names += _field_names(list(field.type), f"{prefix}{field.name}.") if nested else [prefix + field.name]
    return names


def _column(batch: Any, name: str) -> Any:
    """The column `name` of a record batch, a struct's field taken out (null where the struct is null)."""
    import pyarrow.compute as pc

    found = _find_field(list(batch.schema), name)
    assert found is not None  # checked against the file's schema, and read by that name
    path = found[0]
    array = batch.column(path[0])
    for index in path[1:]:
        array = pc.struct_field(array, [index])
    return array


# Its magic bytes are the surest sign, so it is sniffed first; its footer is read first, so it needs to seek.
PARQUET = InputFormatSpec("parquet", "Parquet", (".parquet", ".pq"), sniff=lambda head: head.startswith(b"PAR1"), fields=parquet_fields, sniff_order=10, seekable=True)
