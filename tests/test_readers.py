"""Readers: every format from a file and from stdin, ids, and each bad input's whole message."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sbert_cli.errors import InputDataError, UsageError
from sbert_cli.io.readers import BadRow, InputSpec, detect_format, iter_rows, sniff_format, split_window
from tests.conftest import SAMPLE_DATA, sample_texts

FORMATS = {"csv": "sentences.csv", "jsonl": "sentences.jsonl", "parquet": "sentences.parquet"}


def write_tsv(path: Path) -> Path:
    rows = ["id\ttext"] + [f"s{i:03d}\t{text}" for i, text in enumerate(sample_texts(), 1)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def read_all(spec: InputSpec, bad: list[BadRow] | None = None):
    """The good rows, through the path encode takes: a bad row raises unless bad rows are collected."""
    records, rejects = split_window(list(iter_rows(spec)), skip_bad_rows=bad is not None)
    if bad is not None:
        bad += rejects
    return records


def with_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    class Stdin:
        buffer = io.BytesIO(data)

    monkeypatch.setattr(sys, "stdin", Stdin())


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
@pytest.mark.parametrize("source", ["file", "stdin"])
def test_each_format_reads_texts_and_ids(fmt: str, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_tsv(tmp_path / "s.tsv") if fmt == "tsv" else SAMPLE_DATA / FORMATS[fmt]
    if source == "stdin":
        with_stdin(monkeypatch, path.read_bytes())
        spec = InputSpec("-", detect_format("-", None), id_column="id")
    else:
        spec = InputSpec(str(path), detect_format(str(path), None), id_column="id")
    records = read_all(spec)
    texts = sample_texts()
    assert [r.text for r in records] == texts
    assert [r.id for r in records] == [f"s{i:03d}" for i in range(1, len(texts) + 1)]
    assert [r.row for r in records] == list(range(len(texts)))


def test_ids_default_to_row_numbers() -> None:
    records = read_all(InputSpec(str(SAMPLE_DATA / "sentences.csv"), "csv"))
    assert [r.id for r in records] == list(range(len(records)))


def test_sniffing() -> None:
    assert sniff_format(b"PAR1\x15\x04") == "parquet"
    assert sniff_format(b'\xef\xbb\xbf {"text": "a"}') == "jsonl"
    assert sniff_format(b"id\ttext\n1\ta\n") == "tsv"
    assert sniff_format(b"id,text\n1,a\n") == "csv"


def test_unknown_extension() -> None:
    with pytest.raises(UsageError) as error:
        detect_format("notes.txt", None)
    assert str(error.value) == "notes.txt: cannot tell the format from the extension '.txt'; pass --format csv|tsv|jsonl|parquet"


def test_bom_crlf_quoted_newlines_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes('\ufeffid,text\r\n1,"第一行\r\n第二行"\r\n\r\n2,"他说：""好"""\r\n3,\r\n'.encode("utf-8"))
    records = read_all(InputSpec(str(path), "csv", id_column="id"))
    assert [(r.id, r.text) for r in records] == [("1", "第一行\r\n第二行"), ("2", '他说："好"'), ("3", "")]


def test_empty_text_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": ""}\n{"text": "有"}\n', encoding="utf-8")
    assert [r.text for r in read_all(InputSpec(str(path), "jsonl"))] == ["", "有"]


def bad_input(tmp_path: Path, name: str, data: bytes, **spec) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    fmt = detect_format(str(path), None)
    with pytest.raises((InputDataError, UsageError)) as error:
        read_all(InputSpec(str(path), fmt, **spec))
    return str(error.value).replace(str(tmp_path) + "/", "")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as error:
        read_all(InputSpec(str(tmp_path / "none.csv"), "csv"))
    assert str(error.value) == f"{tmp_path / 'none.csv'}: no such file; check the path"


def test_jsonl_errors(tmp_path: Path) -> None:
    assert bad_input(tmp_path, "a.jsonl", b'{"text": "ok"}\n{"text": "x" "y"}\n') == (
        "a.jsonl:2: invalid JSON (Expecting ',' delimiter at column 14); each line must be one JSON object"
    )
    assert bad_input(tmp_path, "b.jsonl", b"id,text\n1,a\n") == (
        "b.jsonl:1: invalid JSON (Expecting value at column 1); is this CSV? pass --format csv"
    )
    assert bad_input(tmp_path, "c.jsonl", b'{"text": "ok"}\n\n{"text": null}\n') == "c.jsonl:3: 'text' is null"
    assert bad_input(tmp_path, "d.jsonl", b'{"text": "ok"}\n{"text": 5}\n') == "d.jsonl:2: 'text' is a number, not a string"
    assert bad_input(tmp_path, "e.jsonl", b'{"body": "ok"}\n') == (
        "e.jsonl:1: no field 'text' (found: body); pass --text-column NAME"
    )
    assert bad_input(tmp_path, "f.jsonl", b'{"text": "ok"}\n{"body": "x"}\n') == "f.jsonl:2: no field 'text'"
    assert bad_input(tmp_path, "g.jsonl", b'{"text": "ok"}\n["x"]\n') == "g.jsonl:2: expected a JSON object, found an array"
    assert bad_input(tmp_path, "h.jsonl", b'{"text": "ok"}\n{"text": "\xd6\xd0\xce\xc4"}\n') == (
        "h.jsonl:2: not valid UTF-8 (byte 11 of the line); pass --encoding gb18030 (or the file's encoding)"
    )
    assert bad_input(tmp_path, "i.jsonl", b'{"text": "ok", "id": 1}\n{"text": "x", "id": null}\n', id_column="id") == (
        "i.jsonl:2: id is null"
    )


def test_csv_errors(tmp_path: Path) -> None:
    assert bad_input(tmp_path, "a.csv", b"id,text\n1,ok\n2,a,b\n") == (
        "a.csv:3: expected 2 comma-separated fields, found 3; quote fields that contain the separator"
    )
    assert bad_input(tmp_path, "b.csv", b"id,body\n1,ok\n") == "b.csv: no column 'text' (found: id, body); pass --text-column NAME"
    assert bad_input(tmp_path, "c.csv", b"id,text\n1,ok\n", id_column="key") == (
        "c.csv: no column 'key' (found: id, text); pass --id-column NAME"
    )
    assert bad_input(tmp_path, "d.csv", b"") == "d.csv: empty file; expected a header line naming the columns"
    assert bad_input(tmp_path, "e.csv", b"text\nok\n\xd6\xd0\xce\xc4\n") == (
        "e.csv:3: not valid UTF-8; pass --encoding gb18030 (or the file's encoding)"
    )
    assert bad_input(tmp_path, "f.tsv", b"id\ttext\n1\tok\n2\n") == "f.tsv:3: expected 2 tab-separated fields, found 1"
    assert bad_input(tmp_path, "g.tsv", b"id\ttext\n1\tok\n2\ta\tb\n") == (
        "g.tsv:3: expected 2 tab-separated fields, found 3; pass --quoting csv if fields that hold tabs are quoted"
    )


def test_parquet_errors(tmp_path: Path) -> None:
    def parquet(name: str, table: pa.Table) -> bytes:
        pq.write_table(table, tmp_path / name)
        return (tmp_path / name).read_bytes()

    assert bad_input(tmp_path, "a.parquet", parquet("a.parquet", pa.table({"text": ["ok", None]}))) == "a.parquet: row 1: 'text' is null"
    assert bad_input(tmp_path, "b.parquet", parquet("b.parquet", pa.table({"body": ["ok"]}))) == (
        "b.parquet: no column 'text' (found: body); pass --text-column NAME"
    )
    assert bad_input(tmp_path, "c.parquet", parquet("c.parquet", pa.table({"text": [1, 2]}))) == (
        "c.parquet: column 'text' holds int64, not strings; pass --text-column NAME"
    )
    assert bad_input(tmp_path, "d.parquet", b"this is not parquet").startswith("d.parquet: not a readable Parquet file (")


def test_bad_rows_go_to_the_handler_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    lines = ['{"text": "a"}', '{"text": null}', "not json", '{"text": "b"}', '{"text": 3}', '{"text": "c"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bad: list[BadRow] = []
    good = read_all(InputSpec(str(path), "jsonl"), bad)
    assert [(r.row, r.text) for r in good] == [(0, "a"), (3, "b"), (5, "c")]
    assert [b.row for b in bad] == [1, 2, 4]
    assert len(good) + len(bad) == len(lines)


def test_parquet_ids_keep_their_type(tmp_path: Path) -> None:
    pq.write_table(pa.table({"key": [10, 20], "text": ["甲", "乙"]}), tmp_path / "x.parquet")
    records = read_all(InputSpec(str(tmp_path / "x.parquet"), "parquet", id_column="key"))
    assert [(r.id, r.text) for r in records] == [(10, "甲"), (20, "乙")]


def test_json_ids_must_be_strings_or_integers(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"id": 1.5, "text": "a"}) + "\n")
    with pytest.raises(InputDataError) as error:
        read_all(InputSpec(str(path), "jsonl", id_column="id"))
    assert str(error.value) == f"{path}:1: id is a number; ids must be strings or integers"
