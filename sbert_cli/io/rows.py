"""The vocabulary every reader speaks: a row, a bad row, the columns asked for, how far the reading has got, and what a format is."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from sbert_cli.io.encodings import shown

STDIN = "-"
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()  # a JSON field that is not there
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class Record:
    """One input row: its 0-based position among the data rows, its id and its text."""

    row: int
    id: Any
    text: str


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that cannot be used, with where it is and why."""

    row: int
    where: str
    id: Any
    reason: str

    def message(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Fields:
    """One data row's values of the requested columns (MISSING where a JSON object lacks the field)."""

    row: int
    where: str
    values: tuple[Any, ...]
    id: Any = None  # the row's id when there is no id column and it is not the row number (a file of many: path:row)


@dataclass(frozen=True)
class TableSpec:
    """What to read from any input: which columns, how the user names others, and how the file is laid out."""

    path: str
    format: str
    columns: tuple[str, ...]
    fixes: tuple[str, ...]  # per column: the option that names another one ("--text-column NAME")
    id_column: str | None = None  # identifies a bad row in the rejects; without it, the row number does
    string_columns: tuple[str, ...] = ()  # Parquet columns that must hold strings
    header: str = "required"  # or "sniff": the first line is a header only when it names every column
    quoting: bool | None = None  # None: the format's own (CSV quotes fields, TSV does not); False: quotes are text
    encoding: str = "utf-8"  # of a CSV, TSV or JSON lines file: any Python text codec
    format_option: bool = True  # whether encode's input options (--format, --quoting, --encoding) exist to suggest

    @property
    def name(self) -> str:
        return "<stdin>" if self.path == STDIN else self.path


@dataclass
class Extent:
    """How far a reader has got, for a progress bar: bytes of a text file, rows of a Parquet file."""

    total: int | None = None
    unit: str = "rows"
    position: Callable[[], int] | None = None

    def now(self) -> int | None:
        """How far the reader is now; the whole input once it has finished and closed the file."""
        if self.position is None:
            return None
        try:
            return self.position()
        except (ValueError, OSError):
            return self.total


@dataclass(frozen=True)
class InputFormatSpec:
    """One input format: what --format calls it, the extensions that select it, how stdin is recognised, how its
    rows are read. Its module declares it; io.formats.INPUT_FORMATS lists it."""

    name: str  # what --format takes, and the table's key
    title: str  # how messages name it: 'pass a CSV, TSV, JSONL or Parquet file'
    extensions: tuple[str, ...]  # lower case with the dot; the first is the one messages name
    sniff: Callable[[bytes], bool]  # whether stdin's first bytes look like this format
    fields: Callable[[TableSpec, IO[bytes], Extent], Iterator[Fields | BadRow]]
    sniff_order: int = 50  # lower is tried first: a format whose sniff is more specific must go before a looser one
    seekable: bool = False  # reads out of order (Parquet's footer first): stdin is spooled to disk, a store file opened for random access


def text_start(head: bytes) -> bytes:
    """A text file's first bytes from its first character: a BOM and blank space skipped, for sniffing."""
    return head.lstrip(BOM + b" \t\r\n")


def missing_column(where: str, noun: str, column: str, present: list[str], fix: str) -> str:
    """The line for a column or field that is not there; names are shown escaped, so the line stays one line."""
    found = ", ".join(shown(name) for name in present[:20]) or "none"
    return f"{where}: no {noun} '{shown(column)}' (found: {found}); pass {fix}"


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
