"""TSV read as TSV (quotes are text), --quoting, an unclosed quote accounted for line by line, errors without raw
control characters, and --encoding (GB18030 beyond GBK, UTF-16): through the command, with the fake encoder."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from sbert_cli.io.readers import BadRow, InputSpec, Record, iter_rows
from tests.conftest import FakeEncoder, expected_fake_vectors
from tests.test_cli import error_of, read_output, run

QUOTED_TEXTS = ['"引用"开头的句子', '他说："好"。', 'a "b" c', '"', '结尾的引号"', "普通的句子"]


def encoded(tmp_path: Path, source: Path, *options: str, name: str = "out.parquet") -> tuple[list, np.ndarray]:
    out = tmp_path / name
    result = run("encode", source, "-o", out, "-q", *options)
    assert result.exit_code == 0, result.output
    return read_output(out, "")


def rejects_of(folder: Path) -> list[dict]:
    """The rejects beside an output in `folder`, whatever the output side names the file."""
    (path,) = folder.glob("*.rejects.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def no_raw_controls(stderr: str) -> None:
    """Each message one line: no control character (tab, CR, a lone LF inside a message, ...) except the line ends."""
    for line in stderr.splitlines():
        assert not [ch for ch in line if unicodedata.category(ch) == "Cc"], repr(line)
    assert "\r" not in stderr and "\t" not in stderr


# --- TSV as TSV ------------------------------------------------------------------------------------------


def test_a_tsv_with_quotes_in_its_text_encodes_as_the_same_texts_given_plainly(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    tsv = tmp_path / "quotes.tsv"
    tsv.write_text("id\ttext\n" + "".join(f"q{i}\t{text}\n" for i, text in enumerate(QUOTED_TEXTS)), encoding="utf-8")
    jsonl = tmp_path / "plain.jsonl"
    jsonl.write_text("".join(json.dumps({"id": f"q{i}", "text": text}, ensure_ascii=False) + "\n" for i, text in enumerate(QUOTED_TEXTS)), encoding="utf-8")
    ids, vectors = encoded(tmp_path, tsv, "--id-column", "id", name="tsv.parquet")
    plain_ids, plain_vectors = encoded(tmp_path, jsonl, "--id-column", "id", name="jsonl.parquet")
    assert ids == plain_ids == [f"q{i}" for i in range(len(QUOTED_TEXTS))]
    np.testing.assert_array_equal(vectors, plain_vectors)
    np.testing.assert_array_equal(vectors, expected_fake_vectors(QUOTED_TEXTS))
    assert fake_encoder.tokenized == QUOTED_TEXTS * 2  # the quotes are in the texts, as written


def test_quoting_csv_reads_a_tsv_that_quotes_as_csv_does(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    texts = ["有\t制表符", "两行\n文字", '他说："好"', "普通"]
    tsv = tmp_path / "quoted.tsv"
    tsv.write_text('id\ttext\n1\t"有\t制表符"\n2\t"两行\n文字"\n3\t"他说：""好"""\n4\t普通\n', encoding="utf-8")
    _, vectors = encoded(tmp_path, tsv, "--quoting", "csv")
    np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))
    # Read as TSV, the same file's quotes are text: the quoted tab makes a third field, a row that is rejected.
    result = run("encode", tsv, "-o", tmp_path / "plain.parquet", "-q")
    assert result.exit_code == 1
    assert error_of(result) == (
        f"sbert: error: {tsv}:2: expected 2 tab-separated fields, found 3; pass --quoting csv if fields that hold tabs are quoted"
    )


def test_quoting_none_reads_a_csv_whose_quotes_are_text(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "q.csv"
    source.write_text('id,text\n1,"引用"开头\n2,"未闭合\n3,普通\n', encoding="utf-8")
    _, vectors = encoded(tmp_path, source, "--quoting", "none")
    np.testing.assert_array_equal(vectors, expected_fake_vectors(['"引用"开头', '"未闭合', "普通"]))


def test_a_quoted_tsv_read_as_tsv_keeps_its_quotes_and_stdin_is_sniffed_as_before(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    data = 'id\ttext\nq2\t"引用"开头的句子\n'.encode()
    result = run("encode", "-", "-o", "-", "-q", input=data)
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == [0]
    assert fake_encoder.tokenized == ['"引用"开头的句子']


def test_quoting_is_for_csv_and_tsv(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "a.jsonl"
    source.write_text('{"text": "好"}\n', encoding="utf-8")
    result = run("encode", source, "-o", tmp_path / "o.parquet", "--quoting", "none")
    assert result.exit_code == 2
    assert error_of(result) == "sbert: error: --quoting none is for CSV and TSV input; drop it for JSONL input"


# --- an unclosed quote: every line accounted for ---------------------------------------------------------


def test_an_unclosed_quote_rejects_each_line_it_leaves_unread(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "open.csv"
    source.write_text('id,text\n1,好\n2,"未闭合的引号\n3,后面的行\n', encoding="utf-8")
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--on-error", "skip", "--id-column", "id")
    assert result.exit_code == 3
    ids, _ = read_output(tmp_path / "out.parquet", "")
    assert ids == ["1"]
    fix = "close the quote, or pass --quoting none if quotes are text"
    assert [(r["row"], r["where"], r["reason"]) for r in rejects_of(tmp_path)] == [
        (1, f"{source}:3", f"unclosed quote opened on line 3; {fix}"),
        (2, f"{source}:3", f"line 4 not read: unclosed quote opened on line 3; {fix}"),
    ]
    assert len(ids) + len(rejects_of(tmp_path)) == 3  # three data rows: one written, two rejected
    failed = run("encode", source, "-o", tmp_path / "failed.parquet", "--id-column", "id")
    assert failed.exit_code == 1
    assert error_of(failed) == f"sbert: error: {source}:3: unclosed quote opened on line 3; {fix}"


def test_a_quote_opened_on_the_first_row_leaves_nothing_unaccounted(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "open.csv"
    source.write_text('text\n"a\nb\n\nc\n', encoding="utf-8")  # the blank line is no row, in or out of quotes
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--on-error", "skip")
    assert result.exit_code == 3
    assert read_output(tmp_path / "out.parquet", "")[0] == []
    assert [(r["row"], r["where"]) for r in rejects_of(tmp_path)] == [(0, f"{source}:2"), (1, f"{source}:2"), (2, f"{source}:2")]
    assert [r["reason"].split(";")[0] for r in rejects_of(tmp_path)] == [
        "unclosed quote opened on line 2", "line 3 not read: unclosed quote opened on line 2", "line 5 not read: unclosed quote opened on line 2",
    ]


def test_the_unclosed_quote_is_found_in_a_record_of_several_lines(tmp_path: Path) -> None:
    source = tmp_path / "multi.csv"
    source.write_text('id,text\n1,"两行\n文字",x\n2,"ok"\n3,"a\n""b""\n4,c\n', encoding="utf-8")
    rows = list(iter_rows(InputSpec(str(source), "csv")))
    assert [type(r).__name__ for r in rows] == ["BadRow", "Record", "BadRow", "BadRow", "BadRow"]
    assert rows[0].reason.startswith("expected 2 comma-separated fields, found 3")
    assert [r.where for r in rows[2:]] == [f"{source}:5"] * 3
    assert [r.reason.split(";")[0] for r in rows[2:]] == [
        "unclosed quote opened on line 5", "line 6 not read: unclosed quote opened on line 5", "line 7 not read: unclosed quote opened on line 5",
    ]
    # The record began a line before the quote that stays open: its first line is unread too, blamed on the quote.
    source.write_text('id,text,x\n1,"a\nb","c\n\nd\n', encoding="utf-8")
    assert [r.message().split(";")[0] for r in iter_rows(InputSpec(str(source), "csv"))] == [
        f"{source}:3: line 2 not read: unclosed quote opened on line 3", f"{source}:3: unclosed quote opened on line 3",
        f"{source}:3: line 5 not read: unclosed quote opened on line 3",
    ]


# --- control characters are never raw in a message -------------------------------------------------------


def test_errors_and_rejects_escape_control_characters(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    tsv = tmp_path / "q.tsv"
    tsv.write_text('id\ttext\nq1\t好\nq2\t"引用"开头的句子\n', encoding="utf-8")
    result = run("encode", tsv, "-o", tmp_path / "o.parquet", "--quoting", "csv")
    assert result.exit_code == 1
    no_raw_controls(result.stderr)
    assert error_of(result) == (
        f"sbert: error: {tsv}:3: malformed tab-separated row ('\\t' expected after '\"'); "
        'write a quote inside a quoted field as "", or pass --quoting none if quotes are text'
    )
    skipped = run("encode", tsv, "-o", tmp_path / "o.parquet", "--quoting", "csv", "--on-error", "skip")
    assert skipped.exit_code == 3
    no_raw_controls(skipped.stderr)
    (reject,) = rejects_of(tmp_path)
    assert "\t" not in reject["reason"] and "\\t" in reject["reason"]

    header = tmp_path / "h.csv"
    header.write_text('"a\tb","c\rd","e\nf",g\x1bh\n1,2,3,4\n', encoding="utf-8")
    result = run("encode", header, "-o", tmp_path / "o.parquet")
    assert result.exit_code == 2
    no_raw_controls(result.stderr)
    assert error_of(result) == f"sbert: error: {header}: no column 'text' (found: a\\tb, c\\rd, e\\nf, g\\x1bh); pass --text-column NAME"

    cr = tmp_path / "cr.csv"
    cr.write_bytes(b"text\na\rb\nok\n")
    result = run("encode", cr, "-o", tmp_path / "o.parquet")
    no_raw_controls(result.stderr)
    assert error_of(result) == f"sbert: error: {cr}:2: malformed comma-separated row (a carriage return inside an unquoted field); quote the field"


# --- --encoding ------------------------------------------------------------------------------------------

# U+20000 and U+2A6D6 (CJK Extension B) and U+9FA6 (after GBK's range) are in GB18030, not in GBK.
BEYOND_GBK = ["\U00020000字", "𪛖在扩展区", "鿦", "欧元€和中文"]


def test_gb18030_beyond_gbk_encodes_as_the_same_texts_in_utf8(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    for text in BEYOND_GBK[:3]:
        with pytest.raises(UnicodeEncodeError):
            text.encode("gbk")  # so `iconv -f GBK` would fail on the file: the message must not suggest it
    table = "id,text\n" + "".join(f"{i},{text}\n" for i, text in enumerate(BEYOND_GBK))
    gb = tmp_path / "excel.csv"
    gb.write_bytes(table.encode("gb18030"))
    utf8 = tmp_path / "utf8.csv"
    utf8.write_bytes(table.encode("utf-8"))
    _, from_gb = encoded(tmp_path, gb, "--encoding", "gb18030", name="gb.parquet")
    _, from_utf8 = encoded(tmp_path, utf8, name="utf8.parquet")
    np.testing.assert_array_equal(from_gb, from_utf8)
    np.testing.assert_array_equal(from_gb, expected_fake_vectors(BEYOND_GBK))
    result = run("encode", gb, "-o", tmp_path / "o.parquet")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {gb}:2: not valid UTF-8; pass --encoding gb18030 (or the file's encoding)"


def test_gb18030_tsv_and_json_lines(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    tsv = tmp_path / "a.tsv"
    tsv.write_bytes(("text\n" + "".join(f"{text}\n" for text in BEYOND_GBK)).encode("gb18030"))
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in BEYOND_GBK).encode("gb18030"))
    for source in (tsv, jsonl):
        _, vectors = encoded(tmp_path, source, "--encoding", "GB18030", name=f"{source.suffix[1:]}.parquet")
        np.testing.assert_array_equal(vectors, expected_fake_vectors(BEYOND_GBK))
    result = run("encode", jsonl, "-o", tmp_path / "o.parquet")
    assert error_of(result) == f"sbert: error: {jsonl}:1: not valid UTF-8 (byte 11 of the line); pass --encoding gb18030 (or the file's encoding)"


def test_a_line_not_in_the_named_encoding_is_a_bad_row(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "big5.csv"
    source.write_bytes("text\n中文\n".encode("big5") + b"\xff\xff\n" + "好\n".encode("big5"))
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--encoding", "big5", "--on-error", "skip")
    assert result.exit_code == 3
    assert [(r["where"], r["reason"]) for r in rejects_of(tmp_path)] == [
        (f"{source}:3", "not valid BIG5; pass the file's encoding with --encoding (it is not big5)")
    ]
    np.testing.assert_array_equal(read_output(tmp_path / "out.parquet", "")[1], expected_fake_vectors(["中文", "好"]))


def test_utf16_tsv_as_excel_saves_unicode_text(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    texts = ['"引用"开头', "第二行", "\U00020000"]
    source = tmp_path / "unicode.tsv"
    source.write_bytes(("id\ttext\r\n" + "".join(f"{i}\t{text}\r\n" for i, text in enumerate(texts))).encode("utf-16"))  # with its BOM
    _, vectors = encoded(tmp_path, source, "--encoding", "utf-16")
    np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))


def test_utf16_with_a_bad_line_names_that_line(tmp_path: Path) -> None:
    good = "text\n好\n".encode("utf-16-le")
    data = good + b"\x00\xd8" + "\n坏\n".encode("utf-16-le") + "也好\n".encode("utf-16-le")  # a lone high surrogate on line 3
    source = tmp_path / "u.csv"
    source.write_bytes(data)
    rows = list(iter_rows(InputSpec(str(source), "csv", encoding="utf-16-le")))
    assert [type(r).__name__ for r in rows] == ["Record", "BadRow", "Record", "Record"]
    assert [r.text for r in rows if isinstance(r, Record)] == ["好", "坏", "也好"]
    assert isinstance(rows[1], BadRow) and rows[1].message() == (
        f"{source}:3: not valid UTF-16-LE; pass the file's encoding with --encoding (it is not utf-16-le)"
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("klingon", "--encoding klingon: unknown encoding; pass one Python knows, e.g. gb18030, big5, utf-16"),
        ("base64", "--encoding base64: not a text encoding; pass one such as gb18030, big5, utf-16"),
    ],
)
def test_an_unknown_encoding_is_one_usage_line(tmp_path: Path, fake_encoder: FakeEncoder, name: str, message: str) -> None:
    source = tmp_path / "a.csv"
    source.write_text("text\n好\n", encoding="utf-8")
    result = run("encode", source, "-o", tmp_path / "o.parquet", "--encoding", name)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"sbert: error: {message}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


def test_encodings_that_do_not_fit_the_format(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"text": "好"}\n', encoding="utf-8")
    result = run("encode", jsonl, "-o", tmp_path / "o.parquet", "--encoding", "utf-16")
    assert result.exit_code == 2
    assert error_of(result) == (
        "sbert: error: --encoding utf-16: JSON lines are split on the newline byte, which utf-16 does not keep; "
        "convert the file, e.g. iconv -f UTF-16 -t UTF-8"
    )


# --- evaluate's pair files: TSV quotes are text there too ------------------------------------------------


def test_evaluate_reads_quotes_in_a_tsv_pair_file_as_text(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text('"引用"开头\t他说"好\t1\n普通\t句子\t0\n第三\t"对"\t1\n', encoding="utf-8")
    result = run("evaluate", pairs, "--json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["results"][0]["pairs"] == 3
    assert set(fake_encoder.tokenized) == {'"引用"开头', '他说"好', "普通", "句子", "第三", '"对"'}
    bad = tmp_path / "bad.csv"
    bad.write_bytes("sentence1,sentence2,label\n甲,乙,1\n".encode("gb18030"))
    result = run("evaluate", bad)
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {bad}:2: not valid UTF-8; convert the file, e.g. iconv -f GB18030 -t UTF-8"
