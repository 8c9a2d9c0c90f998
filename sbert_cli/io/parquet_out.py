"""Vectors -> a Parquet file: id + embedding (fixed_size_list), model facts in the schema metadata; also a shard."""

from __future__ import annotations

from typing import Any

import numpy as np

from sbert_cli.io.arrow_arrays import bool_array, id_array, numeric_array
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

        ids_column = id_array(ids, self._id_type, self.rows)
        arrays = [ids_column, embedding_array(self.form.store(vectors), self.dtype)]
        names = ["id", "embedding"]
        if self.spec.stats_max_length is not None and n_tokens is not None:
            counts = np.asarray(n_tokens, dtype=np.int32)
            arrays += [numeric_array(counts), bool_array(counts > self.spec.stats_max_length)]
            names += ["n_tokens", "truncated"]
        table = pa.Table.from_arrays(arrays, names=names)
        with output_errors(self.spec.path, self.spec.on_failure):
            metadata = {**self.spec.metadata, **self.form.metadata()}  # int8/uint8 ranges are known from the first window on
            if self._writer is None:
                self._id_type = ids_column.type
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

    values = numeric_array(np.ascontiguousarray(vectors, dtype=np.dtype(dtype)).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])
