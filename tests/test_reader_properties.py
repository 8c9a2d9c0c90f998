"""Property tests of the readers on hostile bytes: only our error type, and every row exactly once."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sbert_cli.errors import SbertError
from sbert_cli.io.readers import BadRow, InputSpec, Record, iter_rows

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

hostile_bytes = st.one_of(
    st.binary(max_size=400),
    st.lists(
        st.sampled_from([b"\xef\xbb\xbf", b"\r\n", b"\n", b"\x00", b'"', b",", b"\t", b"{", b"}", b'"text"', b":",
                         b"\xff\xfe", b"\xe4\xb8", "中文".encode(), b"null", b"text", b"a" * 3000]),
        max_size=60,
    ).map(b"".join),
)


def rows_of(tmp_path: Path, fmt: str, data: bytes, **options: str) -> list[Record | BadRow]:
    path = tmp_path / f"input.{fmt}"
    path.write_bytes(data)
    try:
        return list(iter_rows(InputSpec(str(path), fmt, **options)))
    except SbertError:
        return []  # a file-level problem (no header, wrong column): one of our errors, never another type


@SETTINGS
@given(data=hostile_bytes, fmt=st.sampled_from(["csv", "tsv", "jsonl", "parquet"]))
def test_only_our_errors_and_each_row_once(tmp_path_factory: pytest.TempPathFactory, data: bytes, fmt: str) -> None:
    rows = rows_of(tmp_path_factory.mktemp("p"), fmt, data)
    assert [item.row for item in rows] == list(range(len(rows)))  # none twice, none skipped
    for item in rows:
        assert isinstance(item, (Record, BadRow))
        if isinstance(item, Record):
            assert isinstance(item.text, str)
        else:
            assert item.reason and "\n" not in item.message()


@SETTINGS
@given(data=hostile_bytes)
def test_jsonl_accounts_for_every_nonblank_line(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    rows = rows_of(tmp_path_factory.mktemp("j"), "jsonl", b'{"text": "first"}\n' + data)
    assert len(rows) == sum(1 for line in (b'{"text": "first"}\n' + data).split(b"\n") if line.strip())


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@SETTINGS
@given(
    values=st.lists(texts, min_size=1, max_size=30),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    delimiter=st.sampled_from([",", "\t"]),
    line_end=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
)
def test_csv_round_trips_whatever_the_quoting(
    tmp_path_factory: pytest.TempPathFactory, values: list[str], quoting: int, delimiter: str, line_end: str, bom: bool
) -> None:
    # A lone \r is left unquoted by csv.writer when the line end is \n, which no CSV reader can read back.
    values = [v.replace("\r", "") for v in values]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting, lineterminator=line_end)
    writer.writerow(["id", "text"])
    for i, value in enumerate(values):
        writer.writerow([i, value])
    data = ("\ufeff" if bom else "") + buffer.getvalue()
    # A TSV that quotes as CSV does is read with --quoting csv (a TSV's quotes are text by default).
    rows = rows_of(tmp_path_factory.mktemp("c"), "tsv" if delimiter == "\t" else "csv", data.encode("utf-8"), quoting="csv")
    assert all(isinstance(item, Record) for item in rows)
    assert [item.text for item in rows] == values


def test_empty_files(tmp_path: Path) -> None:
    for fmt in ("csv", "tsv"):
        with pytest.raises(SbertError):
            rows_of_raising(tmp_path, fmt, b"")
    assert rows_of(tmp_path, "jsonl", b"") == []
    assert rows_of(tmp_path, "jsonl", b"\n \n\r\n") == []


def rows_of_raising(tmp_path: Path, fmt: str, data: bytes) -> list:
    path = tmp_path / f"input.{fmt}"
    path.write_bytes(data)
    return list(iter_rows(InputSpec(str(path), fmt)))


def test_very_long_line(tmp_path: Path) -> None:
    long_text = "长" * 2_000_000
    rows = rows_of(tmp_path, "csv", f"text\n{long_text}\n".encode())
    assert len(rows) == 1 and rows[0].text == long_text


def test_nul_bytes_are_text_not_errors(tmp_path: Path) -> None:
    rows = rows_of(tmp_path, "csv", b"text\na\x00b\n")
    assert [r.text for r in rows] == ["a\x00b"]
