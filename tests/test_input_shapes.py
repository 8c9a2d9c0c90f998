"""The files people have: nested fields (dotted --text-column/--id-column), dictionary-encoded (pandas category)
Parquet columns, and empty inputs (--allow-empty) into every output kind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from sbert_cli.io.paths import DirectoryLayout, ids_path, rejects_path
from tests.conftest import FakeEncoder, expected_fake_vectors
from tests.test_cli import error_of, read_output, run

TEXTS = ["第一行", "今天天气很好", "一只猫", "第一行"]
IDS = ["a", "b", "c", "d"]


def write_jsonl(path: Path, objects: list[dict]) -> Path:
    path.write_text("".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects), encoding="utf-8")
    return path


def encode(source: Path, out: Path, *options: str) -> tuple[list, np.ndarray]:
    result = run("encode", source, "-o", out, "-q", *options)
    assert result.exit_code == 0, result.output
    return read_output(out, result.stdout)


def assert_plain(ids: list, vectors: np.ndarray, texts: list[str] = TEXTS, expected_ids: list = IDS) -> None:
    assert ids == expected_ids
    np.testing.assert_array_equal(vectors, expected_fake_vectors(texts))


# Dotted names: nested JSON objects and Parquet structs.


def test_a_nested_jsonl_field_encodes_as_the_same_texts_given_plainly(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"id": i, "text": t} for i, t in zip(IDS, TEXTS)])
    nested = write_jsonl(tmp_path / "nested.jsonl", [{"meta": {"key": {"id": i}}, "data": {"text": t, "lang": "zh"}} for i, t in zip(IDS, TEXTS)])
    assert_plain(*encode(plain, tmp_path / "plain.parquet", "--id-column", "id"))
    assert_plain(*encode(nested, tmp_path / "nested.parquet", "--text-column", "data.text", "--id-column", "meta.key.id"))


def test_a_parquet_struct_field_encodes_as_the_same_texts_given_plainly(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "nested.parquet"
    data = pa.array([{"text": t, "lang": "zh"} for t in TEXTS])
    pq.write_table(pa.table({"meta": pa.array([{"id": i} for i in IDS]), "data": data}), source)
    assert_plain(*encode(source, tmp_path / "out.npy", "--text-column", "data.text", "--id-column", "meta.id"))


def test_a_key_or_column_with_the_dotted_name_itself_wins(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    objects = [{"data.text": t, "data": {"text": "嵌套"}} for t in TEXTS]
    ids, vectors = encode(write_jsonl(tmp_path / "in.jsonl", objects), tmp_path / "j.parquet", "--text-column", "data.text")
    assert_plain(ids, vectors, expected_ids=[0, 1, 2, 3])
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"data": pa.array([{"text": "嵌套"}] * 4), "data.text": TEXTS}), source)
    assert_plain(*encode(source, tmp_path / "p.parquet", "--text-column", "data.text"), expected_ids=[0, 1, 2, 3])


def test_a_dotted_key_inside_a_nested_object_is_found(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    objects = [{"a": {"b.c": {"text": t}}} for t in TEXTS]
    ids, vectors = encode(write_jsonl(tmp_path / "in.jsonl", objects), tmp_path / "out.npy", "--text-column", "a.b.c.text")
    assert_plain(ids, vectors, expected_ids=[0, 1, 2, 3])


def test_a_missing_nested_field_in_the_first_object_names_the_nested_fields(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "data": {"body": "好", "tags": {"x": 1}}, "empty": {}}])
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--text-column", "data.text")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {source}:1: no field 'data.text' (found: id, data.body, data.tags.x, empty); pass --text-column NAME"


def test_a_missing_nested_field_later_is_a_bad_row(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    objects = [
        {"id": "a", "data": {"text": "好"}},
        {"id": "b", "data": {"body": "好"}},
        {"id": "c", "data": "not an object"},
        {"id": "d", "data": {"text": 5}},
        {"id": "e", "data": {"text": None}},
        {"data": {"text": "没有编号"}},
        {"id": "g", "data": {"text": "最后"}},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", objects)
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--text-column", "data.text", "--id-column", "id")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {source}:2: no field 'data.text'"
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--text-column", "data.text", "--id-column", "id", "--on-error", "skip", "-q")
    assert result.exit_code == 3, result.output
    rejects = [json.loads(line) for line in Path(rejects_path(str(tmp_path / "out.parquet"))).read_text(encoding="utf-8").splitlines()]
    assert [(r["row"], r["id"], r["reason"]) for r in rejects] == [
        (1, "b", "no field 'data.text'"),
        (2, "c", "no field 'data.text'"),
        (3, "d", "'data.text' is a number, not a string"),
        (4, "e", "'data.text' is null"),
        (5, None, "no field 'id'"),
    ]
    assert_plain(*read_output(tmp_path / "out.parquet", ""), texts=["好", "最后"], expected_ids=["a", "g"])


def test_a_missing_struct_field_names_the_nested_columns(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": IDS, "data": pa.array([{"text": t, "n": 1} for t in TEXTS]), "tags": pa.array([["x"]] * 4)}), source)
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--text-column", "data.txt")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {source}: no column 'data.txt' (found: id, data.text, data.n, tags); pass --text-column NAME"
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--text-column", "data.text", "--id-column", "data.id")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {source}: no column 'data.id' (found: id, data.text, data.n, tags); pass --id-column NAME"
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--text-column", "data.n")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {source}: column 'data.n' holds int64, not strings; pass --text-column NAME"


def test_a_null_struct_or_null_field_is_a_bad_row(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "in.parquet"
    data = pa.array([{"text": "好"}, None, {"text": None}, {"text": "最后"}], pa.struct([("text", pa.string())]))
    pq.write_table(pa.table({"id": IDS, "data": data}), source)
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--text-column", "data.text", "--id-column", "id", "--on-error", "skip", "-q")
    assert result.exit_code == 3, result.output
    rejects = [json.loads(line) for line in Path(rejects_path(str(tmp_path / "out.parquet"))).read_text(encoding="utf-8").splitlines()]
    assert [(r["row"], r["id"], r["where"], r["reason"]) for r in rejects] == [
        (1, "b", f"{source}: row 1", "'data.text' is null"),
        (2, "c", f"{source}: row 2", "'data.text' is null"),
    ]
    assert_plain(*read_output(tmp_path / "out.parquet", ""), texts=["好", "最后"], expected_ids=["a", "d"])


# Dictionary-encoded columns.


def test_a_pandas_category_column_encodes_as_plain_text(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    import pandas as pd

    frame = pd.DataFrame({"id": IDS, "text": TEXTS})
    frame.to_parquet(tmp_path / "plain.parquet")
    frame["text"] = frame["text"].astype("category")
    frame["id"] = frame["id"].astype("category")
    frame.to_parquet(tmp_path / "category.parquet")
    assert pa.types.is_dictionary(pq.read_schema(tmp_path / "category.parquet").field("text").type)
    assert_plain(*encode(tmp_path / "plain.parquet", tmp_path / "plain.npy", "--id-column", "id"))
    assert_plain(*encode(tmp_path / "category.parquet", tmp_path / "category.npy", "--id-column", "id"))


def test_dictionary_text_keeps_its_nulls_and_integer_ids_read_as_integers(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "in.parquet"
    text = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 0], pa.int32()), pa.array(["好", "天"], pa.large_string()))
    ids = pa.DictionaryArray.from_arrays(pa.array([2, 1, 0, 3], pa.int8()), pa.array([10, 20, 30, 40]))
    pq.write_table(pa.table({"text": text, "key": ids}), source)
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--id-column", "key", "--on-error", "skip", "-q")
    assert result.exit_code == 3, result.output
    rejects = [json.loads(line) for line in Path(rejects_path(str(tmp_path / "out.parquet"))).read_text(encoding="utf-8").splitlines()]
    assert [(r["row"], r["id"], r["reason"]) for r in rejects] == [(2, 10, "'text' is null")]
    assert_plain(*read_output(tmp_path / "out.parquet", ""), texts=["好", "天", "好"], expected_ids=[30, 20, 40])


def test_a_dictionary_of_numbers_is_still_not_text(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    from sbert_cli.errors import UsageError
    from sbert_cli.io.parquet_rows import _check_parquet_columns
    from sbert_cli.io.readers import InputSpec

    schema = pa.schema([("text", pa.dictionary(pa.int8(), pa.int64()))])
    with pytest.raises(UsageError) as caught:
        _check_parquet_columns(InputSpec("in.parquet", "parquet").table, schema)
    assert str(caught.value) == "in.parquet: column 'text' holds dictionary<values=int64, indices=int8, ordered=0>, not strings; pass --text-column NAME"


# Empty inputs.

EMPTY_INPUTS = {
    "csv": ("in.csv", b"id,text\n"),
    "tsv": ("in.tsv", b"id\ttext\r\n"),
    "jsonl": ("in.jsonl", b""),
    "jsonl-blank-lines": ("in.jsonl", b"\n\n"),
    "parquet": ("in.parquet", None),
    "directory": ("in", None),
}
OUTPUTS = ["out.parquet", "out.npy", "out.jsonl", "out", "-"]


def empty_input(tmp_path: Path, kind: str) -> Path:
    name, content = EMPTY_INPUTS[kind]
    path = tmp_path / name
    if kind == "parquet":
        pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), path)
    elif kind == "directory":  # a folder of partitions that are all empty
        path.mkdir()
        (path / "part-0.jsonl").write_bytes(b"")
        (path / "part-1.jsonl").write_bytes(b"\n")
    else:
        path.write_bytes(content)  # type: ignore[arg-type]
    return path


def check_empty_parquet(path: Path | list[Path]) -> None:
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert table.schema.metadata[b"sbert.dim"] == b"4" and table.schema.metadata[b"sbert.model"] == b"fake"


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("kind", list(EMPTY_INPUTS))
def test_allow_empty_writes_an_empty_output_of_the_schema(tmp_path: Path, fake_encoder: FakeEncoder, kind: str, output: str) -> None:
    source = empty_input(tmp_path, kind)
    out = tmp_path / output if output != "-" else None
    result = run("encode", source, "-o", out or "-", "--allow-empty")
    assert result.exit_code == 0, result.output
    assert fake_encoder.tokenized == []  # nothing was encoded, the model never loaded
    if out is None:
        assert result.stdout == ""
    elif output.endswith(".parquet"):
        check_empty_parquet(out)
    elif output.endswith(".npy"):
        array = np.load(out)
        assert array.shape == (0, 4) and array.dtype == np.float32
        assert Path(ids_path(str(out))).read_bytes() == b""
    elif output.endswith(".jsonl"):
        assert out.read_bytes() == b""
    else:
        check_empty_directory(out)
    if out is not None:
        assert not Path(rejects_path(str(out))).exists()
        assert re.fullmatch(r"sbert: 0 rows, (1 shard encoded, )?dim 4, .* -> .*", result.stderr.strip()), result.stderr


def check_empty_directory(out: Path) -> None:
    import pandas as pd

    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]
    check_empty_parquet(out / "part-00000.parquet")
    dataset = ds.dataset(out)
    assert dataset.to_table().num_rows == 0 and dataset.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    assert len(pd.read_parquet(out)) == 0
    manifest = json.loads(DirectoryLayout(out).manifest.read_text(encoding="utf-8"))
    assert manifest["complete"] is True
    assert [(s["file"], s["first_row"], s["end_row"], s["rows"], s["rejected"]) for s in manifest["shards"]] == [("part-00000.parquet", 0, 0, 0, 0)]


def test_an_empty_directory_output_resumes_as_complete(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = empty_input(tmp_path, "csv")
    out = tmp_path / "out"
    assert run("encode", source, "-o", out, "--allow-empty", "--resume", "-q").exit_code == 0
    again = run("encode", source, "-o", out, "--allow-empty", "--resume")
    assert again.exit_code == 0, again.output
    assert again.stderr.strip() == f"sbert: {out} is complete; nothing to do"
    check_empty_directory(out)


def test_allow_empty_with_an_id_column_and_with_stats(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = empty_input(tmp_path, "jsonl")
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--id-column", "id", "--with-stats", "--allow-empty", "-q")
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.num_rows == 0 and table.column_names == ["id", "embedding", "n_tokens", "truncated"]


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("kind", list(EMPTY_INPUTS))
def test_an_empty_input_without_allow_empty_fails_and_names_it(tmp_path: Path, fake_encoder: FakeEncoder, kind: str, output: str) -> None:
    source = empty_input(tmp_path, kind)
    result = run("encode", source, "-o", tmp_path / output if output != "-" else "-")
    assert result.exit_code == 1
    assert error_of(result) == f"sbert: error: {source}: no rows to encode; pass --allow-empty if an empty input is fine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]
    assert result.stdout == ""


def test_allow_empty_still_checks_the_columns_of_an_empty_parquet_file(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"body": pa.array([], pa.string())}), source)
    result = run("encode", source, "-o", tmp_path / "out.parquet", "--allow-empty")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {source}: no column 'text' (found: body); pass --text-column NAME"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


def test_a_directory_without_data_files_stays_an_error(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    result = run("encode", folder, "-o", tmp_path / "out.parquet", "--allow-empty")
    assert result.exit_code == 2
    assert error_of(result) == f"sbert: error: {folder}: no files in this directory; check the path"


def test_allow_empty_needs_the_local_engine(tmp_path: Path, fake_encoder: FakeEncoder) -> None:
    source = empty_input(tmp_path, "csv")
    result = run("encode", source, "-o", tmp_path / "out", "--engine", "ray", "--allow-empty")
    assert result.exit_code == 2
    assert error_of(result) == "sbert: error: --allow-empty needs --engine local: Ray writes no shard for an empty input"
