"""Vectors -> JSON lines, {"id": ..., "embedding": [...]} a line, to a file or to stdout for a pipeline."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

import numpy as np

from sbert_cli.choices import STDOUT
from sbert_cli.io.pipe import confirm_delivered
from sbert_cli.io.writers import EmbeddingWriter, WriterSpec, output_errors


class JsonLinesWriter(EmbeddingWriter):
    """{"id": ..., "embedding": [...]} a line, to stdout (for pipelines) or to a file renamed at the end."""

    def __init__(self, spec: WriterSpec) -> None:
        super().__init__(spec)
        self._owns_stream = spec.path != STDOUT
        if self._owns_stream:
            with output_errors(spec.path, spec.on_failure):
                self._stream: IO[str] = open(self._temporary(spec.path), "w", encoding="utf-8")
        else:
            self._stream = sys.stdout

    def write(self, ids: list[Any], vectors: np.ndarray, n_tokens: list[int] | None = None) -> None:
        rows = self.form.store(vectors).tolist()
        objects = [{"id": value, "embedding": row} for value, row in zip(ids, rows)]
        limit = self.spec.stats_max_length
        if limit is not None and n_tokens is not None:
            for obj, count in zip(objects, n_tokens):
                obj["n_tokens"], obj["truncated"] = count, count > limit
        lines = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects)
        with output_errors(self.spec.path, self.spec.on_failure):
            self._stream.write(lines)
            if not self._owns_stream:
                self._stream.flush()  # a pipeline reader gets each window as soon as it is ready
        self.rows += len(ids)

    def _close(self) -> None:
        if self._owns_stream and not self._stream.closed:
            self._stream.close()
            self._write_ranges_sidecar()

    def finish(self) -> None:
        super().finish()
        if not self._owns_stream:
            with output_errors(self.spec.path, self.spec.on_failure):
                confirm_delivered(self._stream)  # rows a pipe's reader never took are not written
