"""The input formats, one line each: what --format offers, the extensions, how stdin is sniffed and what reads the rows.

To add one (XML, Arrow IPC): write io/NAME.py with its reader and an InputFormatSpec (rows.py) saying its name,
extensions, sniff and whether it seeks; then add that spec here. --format, extension detection, stdin sniffing and
spooling, and the messages that list the formats all read this table when they run. Nothing here imports pyarrow.
"""

from __future__ import annotations

from sbert_cli.io.delimited import CSV, TSV
from sbert_cli.io.jsonl import JSONL
from sbert_cli.io.parquet_rows import PARQUET
from sbert_cli.io.rows import InputFormatSpec
from sbert_cli.words import or_list

# In the order --help, the --format error and the messages list them; sniffing goes by each spec's sniff_order.
INPUT_FORMATS: dict[str, InputFormatSpec] = {
    "csv": CSV,
    "tsv": TSV,
    "jsonl": JSONL,
    "parquet": PARQUET,
}


def format_names() -> tuple[str, ...]:
    """What --format takes: csv, tsv, jsonl, parquet."""
    return tuple(INPUT_FORMATS)


def extension_formats() -> dict[str, str]:
    """Each data extension (lower case, with the dot) and the format it selects: '.pq' -> 'parquet'."""
    return {extension: name for name, spec in INPUT_FORMATS.items() for extension in spec.extensions}


def named_extensions() -> str:
    """'.csv, .tsv, .jsonl or .parquet': each format by its first extension, for messages."""
    return or_list([spec.extensions[0] for spec in INPUT_FORMATS.values()])


def named_formats() -> str:
    """'CSV, TSV, JSONL or Parquet', for messages and --help."""
    return or_list([spec.title for spec in INPUT_FORMATS.values()])


def sniff_format(head: bytes) -> str:
    """Guess the format of stdin from its first bytes: each format's sniff, the most specific first (Parquet's
    magic, a JSON object, tabs), CSV taking what is left."""
    for spec in sorted(INPUT_FORMATS.values(), key=lambda spec: spec.sniff_order):
        if spec.sniff(head):
            return spec.name
    return format_names()[0]  # only a table without CSV's catch-all gets here
