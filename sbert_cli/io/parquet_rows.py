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
            raise UsageError(missing_column(table.name, "column", column, schema.names, fix))
        data_type = schema.field(column).type
        string_view = getattr(pa.types, "is_string_view", lambda _: False)
        is_text = pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or string_view(data_type)
        if column in table.string_columns and not is_text:
            raise UsageError(f"{table.name}: column '{column}' holds {data_type}, not strings; pass {fix}")


# Its magic bytes are the surest sign, so it is sniffed first; its footer is read first, so it needs to seek.
PARQUET = InputFormatSpec("parquet", "Parquet", (".parquet", ".pq"), sniff=lambda head: head.startswith(b"PAR1"), fields=parquet_fields, sniff_order=10, seekable=True)
