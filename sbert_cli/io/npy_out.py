"""Vectors -> a .npy array in input order, streamed, with the ids in a JSON-lines sidecar."""

from __future__ import annotations

import json
from typing import IO, Any

import numpy as np

from sbert_cli.io.paths import ids_path
from sbert_cli.io.writers import EmbeddingWriter, WriterSpec, output_errors

_NPY_HEADER_BYTES = 128  # room for any [rows, dim] shape; rewritten with the real row count at the end


class NpyWriter(EmbeddingWriter):
    """[rows, width] in input order in the stored dtype, streamed; ids go to a JSON-lines sidecar, int8/uint8 ranges to
    NAME.EXT.quantization.json."""

    def __init__(self, spec: WriterSpec) -> None:
        super().__init__(spec)
        with output_errors(spec.path, spec.on_failure):
            self._ids_file: IO[str] = open(self._temporary(ids_path(spec.path)), "w", encoding="utf-8")
            self._array_file: IO[bytes] = open(self._temporary(spec.path), "wb")
            self._array_file.write(_npy_header(self.dtype, (0, self.width)))

    def write(self, ids: list[Any], vectors: np.ndarray, n_tokens: list[int] | None = None) -> None:
        with output_errors(self.spec.path, self.spec.on_failure):
            self._ids_file.write("".join(json.dumps(value, ensure_ascii=False) + "\n" for value in ids))
            self._array_file.write(self.form.store(vectors).tobytes())
        self.rows += len(ids)

    def _close(self) -> None:
        if not self._array_file.closed:
            self._array_file.seek(0)
            self._array_file.write(_npy_header(self.dtype, (self.rows, self.width)))
            self._array_file.close()
            self._write_ranges_sidecar()
        self._ids_file.close()


def _npy_header(dtype: np.dtype, shape: tuple[int, int]) -> bytes:
    """An .npy v1.0 header padded to a fixed size, so it can be rewritten once the row count is known."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    prefix = b"\x93NUMPY\x01\x00"
    room = _NPY_HEADER_BYTES - len(prefix) - 2
    body = text.encode("latin1").ljust(room - 1) + b"\n"
    return prefix + len(body).to_bytes(2, "little") + body
