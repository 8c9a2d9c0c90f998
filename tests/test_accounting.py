"""Every row accounted for: with --on-error skip, rows written + rows rejected = the data rows of the file.

Random files are built from segments whose rows are known by construction, written to disk, encoded by the command
in-process (the fake encoder) and read back: the output's ids (row numbers) and the rejects' rows together are
exactly 0..N-1, the written rows are exactly the good segments' rows, with their texts' vectors, in order.

What "the data rows" are, per format and quoting mode (lines are physical lines, split at LF; a line is blank when
nothing is left of it without its LF or CRLF):

* CSV, and TSV with --quoting csv: the records RFC 4180 finds after the header line (a record ends at a line end
  outside quotes, so a quoted field may hold separators, quotes written twice and line ends), blank lines not
  counted. A record that breaks the quoting rules (text after a closing quote, a lone CR in an unquoted field) is
  one row, ending at the end of the line where the break is. A quote still open at the end of the file: each
  non-blank line from the first line of its record to the end of the file is a row.
* TSV (--quoting auto or none), and CSV with --quoting none: each non-blank line after the header line; quotes are
  text.
* JSON lines: each line that is not whitespace alone (malformed JSON, a non-object and a null text included).

A row is good, and written, when it has the header's number of fields, its lines are in the encoding (UTF-8 or
GB18030 here) and its text is a string; every other row is a reject.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import FakeEncoder, expected_fake_vectors
from tests.test_cli import read_output, run
from tests.test_tsv_and_encoding import no_raw_controls, rejects_of

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

PIECES = ["a", "中", "\U00020000", '"', ",", "\t", " ", "'", "；", "\n", "\r\n"]
LINE_ENDS = ["\n", "\r\n"]
ENCODINGS = ["utf-8", "gb18030"]


def text_of(*left_out: str, min_size: int = 0) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from([piece for piece in PIECES if piece not in left_out]), min_size=min_size, max_size=8).map("".join)


class Built:
    """A file being built: its bytes, how many data rows, and the good rows (row number, text)."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.data = b""
        self.rows = 0
        self.good: list[tuple[int, str]] = []

    def add(self, text: str, rows: int = 0, good: str | None = None) -> None:
        self.data += text.encode(self.encoding)
        if good is not None:
            self.good.append((self.rows, good))
        self.rows += rows

    def add_undecodable(self, prefix: str, end: str) -> None:
        self.data += prefix.encode(self.encoding) + b"\xff\xfe" + end.encode(self.encoding)  # 0xFF: in neither encoding
        self.rows += 1


@st.composite
def quoted_files(draw: st.DrawFn, delimiter: str) -> Built:
    """CSV quoting: good records written by csv.writer (quotes, separators and line ends in their texts), blank lines,
    a row with text after a closing quote, one of three fields, one not in the encoding; perhaps an unclosed quote last."""
    built = Built(draw(st.sampled_from(ENCODINGS)))
    end = draw(st.sampled_from(LINE_ENDS))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    built.add(("\ufeff" if draw(st.booleans()) else "") + f"id{delimiter}text{end}")
    kinds = ["good"] + draw(st.lists(st.sampled_from(["good", "good", "blank", "after quote", "three fields", "undecodable"]), max_size=12))
    for kind in kinds:
        if kind == "good":
            text = draw(text_of())
            buffer = io.StringIO()
            csv.writer(buffer, delimiter=delimiter, quoting=quoting, lineterminator=end).writerow([built.rows, text])
            built.add(buffer.getvalue(), 1, text)
        elif kind == "blank":
            built.add(draw(st.sampled_from(LINE_ENDS)))
        elif kind == "after quote":  # "abc"x: csv.reader stops at x; the rest of the line is part of the bad row
            inside = draw(text_of('"', "\n", "\r\n"))
            after = draw(text_of("\n", "\r\n", min_size=1).filter(lambda text: text[0] not in ('"', delimiter)))
            built.add(f'{built.rows}{delimiter}"{inside}"{after}{end}', 1)
        elif kind == "three fields":
            built.add(f"{built.rows}{delimiter}x{delimiter}y{end}", 1)
        else:
            built.add_undecodable(f"{built.rows}{delimiter}", end)
    if draw(st.booleans()):  # a quote opened and never closed: its line and each non-blank line after it
        opening = draw(text_of('"', "\n", "\r\n"))
        tail = draw(st.lists(text_of('"', "\n", "\r\n"), max_size=5))
        last_end = draw(st.sampled_from(["", *LINE_ENDS]))
        lines = [f'{built.rows}{delimiter}"{opening}', *tail]
        built.add("".join(line + end for line in lines[:-1]) + lines[-1] + last_end, sum(1 for line in lines if line))
    return built


@st.composite
def plain_files(draw: st.DrawFn, delimiter: str) -> Built:
    """Quotes as text: a line a row. Good lines (quotes anywhere in the text), blank lines, lines with too many or
    too few fields, a line not in the encoding; the last line perhaps without its line end."""
    built = Built(draw(st.sampled_from(ENCODINGS)))
    built.add(("\ufeff" if draw(st.booleans()) else "") + f"id{delimiter}text" + draw(st.sampled_from(LINE_ENDS)))
    kinds = ["good"] + draw(st.lists(st.sampled_from(["good", "good", "blank", "three fields", "one field", "undecodable"]), max_size=12))
    for index, kind in enumerate(kinds):
        end = draw(st.sampled_from(LINE_ENDS if index < len(kinds) - 1 else ["", *LINE_ENDS]))
        text = draw(text_of("\n", "\r\n", delimiter))
        if kind == "good":
            built.add(f"{built.rows}{delimiter}{text}{end}", 1, text)
        elif kind == "blank":
            built.add(end)
        elif kind == "three fields":
            built.add(f"{built.rows}{delimiter}{text}{delimiter}{text}{end}", 1)
        elif kind == "one field":
            built.add(draw(text_of("\n", "\r\n", delimiter, min_size=1)) + end, 1)
        else:
            built.add_undecodable(f"{built.rows}{delimiter}", end)
    return built


@st.composite
def jsonl_files(draw: st.DrawFn) -> Built:
    """JSON lines: good objects, blank lines (spaces, tabs, CR), malformed JSON, a raw tab in a string, an array, a
    null text, a line not in the encoding."""
    built = Built(draw(st.sampled_from(ENCODINGS)))
    kinds = ["good"] + draw(st.lists(st.sampled_from(["good", "good", "blank", "cut short", "raw tab", "array", "null", "undecodable"]), max_size=12))
    for kind in kinds:
        end = draw(st.sampled_from(LINE_ENDS))
        text = draw(text_of())
        if kind == "good":
            built.add(json.dumps({"text": text}, ensure_ascii=False) + end, 1, text)
        elif kind == "blank":
            built.add(draw(st.sampled_from(["", " ", "\t ", "\r"])) + "\n")
        elif kind == "cut short":
            built.add(json.dumps({"text": text}, ensure_ascii=False)[:-2] + end, 1)
        elif kind == "raw tab":
            built.add('{"text": "a\tb"}' + end, 1)
        elif kind == "array":
            built.add(json.dumps([text], ensure_ascii=False) + end, 1)
        elif kind == "null":
            built.add('{"text": null}' + end, 1)
        else:
            built.add_undecodable('{"text": "', '"}' + end)
    return built


def check_accounting(folder: Path, built: Built, suffix: str, *options: str) -> None:
    source = folder / f"input.{suffix}"
    source.write_bytes(built.data)
    out = folder / "out.npy"  # with its ids beside it: the quickest output to write and read back
    result = run("encode", source, "-o", out, "--on-error", "skip", "--encoding", built.encoding, *options)
    no_raw_controls(result.stderr)
    rejected = rejects_of(folder) if any(folder.glob("*.rejects.jsonl")) else []
    assert result.exit_code == (3 if rejected else 0), result.output
    ids, vectors = read_output(out, "")
    assert len(ids) + len(rejected) == built.rows
    assert sorted(ids + [reject["row"] for reject in rejected]) == list(range(built.rows))
    assert ids == [row for row, _ in built.good]
    np.testing.assert_array_equal(vectors, expected_fake_vectors([text for _, text in built.good]))
    for reject in rejected:
        assert reject["reason"] and not [ch for ch in reject["reason"] if ch < " "]


@SETTINGS
@given(built=quoted_files(","))
def test_csv(tmp_path_factory: pytest.TempPathFactory, fake_encoder: FakeEncoder, built: Built) -> None:
    check_accounting(tmp_path_factory.mktemp("csv"), built, "csv")


@SETTINGS
@given(built=quoted_files("\t"))
def test_tsv_quoted_as_csv(tmp_path_factory: pytest.TempPathFactory, fake_encoder: FakeEncoder, built: Built) -> None:
    check_accounting(tmp_path_factory.mktemp("tsvq"), built, "tsv", "--quoting", "csv")


@SETTINGS
@given(built=plain_files("\t"), quoting=st.sampled_from([(), ("--quoting", "none"), ("--quoting", "auto")]))
def test_tsv(tmp_path_factory: pytest.TempPathFactory, fake_encoder: FakeEncoder, built: Built, quoting: tuple[str, ...]) -> None:
    check_accounting(tmp_path_factory.mktemp("tsv"), built, "tsv", *quoting)


@SETTINGS
@given(built=plain_files(","))
def test_csv_with_quotes_as_text(tmp_path_factory: pytest.TempPathFactory, fake_encoder: FakeEncoder, built: Built) -> None:
    check_accounting(tmp_path_factory.mktemp("csvn"), built, "csv", "--quoting", "none")


@SETTINGS
@given(built=jsonl_files())
def test_json_lines(tmp_path_factory: pytest.TempPathFactory, fake_encoder: FakeEncoder, built: Built) -> None:
    check_accounting(tmp_path_factory.mktemp("jsonl"), built, "jsonl")
