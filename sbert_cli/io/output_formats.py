"""The output formats, as one table: a format is one module (its writer) plus one entry here, and everything that
names formats (the -o suffixes, their messages, the sidecars an output creates, the sink) reads the table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sbert_cli.io.jsonl_out import JsonLinesWriter
from sbert_cli.io.npy_out import NpyWriter
from sbert_cli.io.parquet_out import ParquetWriter
from sbert_cli.io.paths import ids_path, quantization_path
from sbert_cli.io.writers import EmbeddingWriter, WriterSpec
from sbert_cli.words import or_list


@dataclass(frozen=True)
class OutputFormatSpec:
    """One output format: its name, the -o suffix that picks it, its writer, and the files it writes beside the output."""

    name: str
    suffix: str
    writer: Callable[[WriterSpec], EmbeddingWriter]
    sidecars: tuple[tuple[str, Callable[[str], str]], ...] = ()  # (role, path from the output's path)
    has_columns: bool = True  # room for --with-stats' n_tokens and truncated

    def sidecar_paths(self, path: str) -> tuple[tuple[str, str], ...]:
        return tuple((role, derive(path)) for role, derive in self.sidecars)


RANGES = ("quantization sidecar", quantization_path)  # int8/uint8 ranges, where the format has no metadata to hold them

OUTPUT_FORMATS: dict[str, OutputFormatSpec] = {
    "parquet": OutputFormatSpec("parquet", ".parquet", ParquetWriter),
    "npy": OutputFormatSpec("npy", ".npy", NpyWriter, (("ids sidecar", ids_path), RANGES), has_columns=False),
    "jsonl": OutputFormatSpec("jsonl", ".jsonl", JsonLinesWriter, (RANGES,)),
}


def format_of_suffix(suffix: str) -> str | None:
    """The format an -o suffix picks (lower case), or None."""
    return next((spec.name for spec in OUTPUT_FORMATS.values() if spec.suffix == suffix), None)


def suffixes_shown() -> str:
    """'.parquet, .npy or .jsonl', for messages."""
    return or_list([spec.suffix for spec in OUTPUT_FORMATS.values()])
