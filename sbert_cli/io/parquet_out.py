"""Vectors -> a Parquet file: id + embedding (fixed_size_list), model facts in the schema metadata; also a shard."""

from __future__ import annotations

from typing import Any

import numpy as np

from sbert_cli.errors import InputDataError
from sbert_cli.io.writers import EmbeddingWriter, WriterSpec, output_errors


class ParquetWriter(EmbeddingWriter):
    """id + embedding (fixed_size_list<float>[dim]), model facts in the schema metadata, a row group per window."""

    def __init__(self, spec: WriterSpec) -> None:
        super().__init__(spec)
        self._temp = self._temporary(spec.path)
        self._writer: Any = None
        self._id_type: Any = None

    def write(self, ids: list[Any], vectors: np.ndarray, n_tokens: list[int] | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        id_array = _id_array(pa, ids, self._id_type, self.rows)
        arrays = [id_array, embedding_array(self.form.store(vectors), self.dtype)]
        names = ["id", "embedding"]
        if self.spec.stats_max_length is not None and n_tokens is not None:
            counts = np.asarray(n_tokens, dtype=np.int32)
            arrays += [pa.array(counts), pa.array(counts > self.spec.stats_max_length)]
            names += ["n_tokens", "truncated"]
        table = pa.Table.from_arrays(arrays, names=names)
        with output_errors(self.spec.path, self.spec.on_failure):
            metadata = {**self.spec.metadata, **self.form.metadata()}  # int8/uint8 ranges are known from the first window on
            if self._writer is None:
                self._id_type = id_array.type
                self._writer = pq.ParquetWriter(self._temp, table.schema.with_metadata(metadata), **vector_column_options(names))
            self._writer.write_table(table.replace_schema_metadata(metadata))
        self.rows += len(ids)

    def _close(self) -> None:
        if self._writer is None:  # no rows: still write a valid, empty file
            import pyarrow as pa
            import pyarrow.parquet as pq

            fields = [("id", pa.int64()), ("embedding", pa.list_(pa.from_numpy_dtype(self.dtype), self.width))]
            if self.spec.stats_max_length is not None:
                fields += [("n_tokens", pa.int32()), ("truncated", pa.bool_())]
            self._writer = pq.ParquetWriter(self._temp, pa.schema(fields, metadata=self.spec.metadata), **vector_column_options([name for name, _ in fields]))
        self._writer.close()


def vector_column_options(names: list[str]) -> dict[str, Any]:
    """ParquetWriter options: dictionary encoding and min/max statistics for every column but the vectors. Neither
    helps a column of distinct floats, and trying both halved the write speed of a window's vectors."""
    others = [name for name in names if name != "embedding"]
    return {"use_dictionary": others, "write_statistics": others}


def embedding_array(vectors: np.ndarray, dtype: Any) -> Any:
    """[rows, width] stored vectors as an Arrow fixed_size_list<type>[width] column, the embedding column's type
    (float, halffloat, int8 or uint8; width is dim, or dim / 8 packed)."""
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
