"""Pair files -> Spearman and Pearson (x100) of cosine similarity against gold labels, each sentence encoded once."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sbert_cli.encoder import Encoder
from sbert_cli.errors import InputDataError, UsageError
from sbert_cli.pipeline import BatchPlan, embed_texts
from sbert_cli.similarity import cosine_rows, pearson, spearman

DEFAULT_COLUMNS = ("sentence1", "sentence2", "label")


@dataclass(frozen=True)
class PairSet:
    """One evaluation file: sentence pairs and their gold scores."""

    name: str
    path: str
    first: list[str]
    second: list[str]
    labels: np.ndarray


@dataclass(frozen=True)
class PairScore:
    """How well cosine similarity ranks one file's pairs (both correlations x100)."""

    name: str
    path: str
    pairs: int
    spearman: float
    pearson: float


def parse_columns(value: str | None) -> tuple[str, str, str] | None:
    """'--columns s1,s2,label' -> ('s1', 's2', 'label')."""
    if value is None:
        return None
    names = tuple(part.strip() for part in value.split(","))
    if len(names) != 3 or not all(names):
        raise UsageError(f"--columns {value}: expected three names, e.g. --columns sentence1,sentence2,label")
    return names  # type: ignore[return-value]


def read_pairs(path: str, columns: tuple[str, str, str] | None = None) -> PairSet:
    """Read a pair file: headerless `s1, s2, label` TSV/CSV, or named columns of CSV/TSV/JSONL/Parquet."""
    source = Path(path)
    if not source.is_file():
        raise UsageError(f"{path}: no such file; check the path")
    suffix = source.suffix.lower()
    if suffix in (".parquet", ".pq"):
        rows = _parquet_rows(path, columns or DEFAULT_COLUMNS)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path, columns or DEFAULT_COLUMNS)
    else:
        rows = _delimited_rows(path, "," if suffix == ".csv" else "\t", columns)
    first: list[str] = []
    second: list[str] = []
    labels: list[float] = []
    for where, a, b, label in rows:
        for value in (a, b):
            if not isinstance(value, str):
                raise InputDataError(f"{where}: sentence is {'null' if value is None else type(value).__name__}, not a string")
        try:
            labels.append(float(label))
        except (TypeError, ValueError):
            raise InputDataError(f"{where}: label {label!r} is not a number; the label is the last column") from None
        first.append(a)
        second.append(b)
    if not labels:
        raise InputDataError(f"{path}: no sentence pairs found")
    return PairSet(source.stem, path, first, second, np.asarray(labels))


def _delimited_rows(
    path: str, delimiter: str, columns: tuple[str, str, str] | None
) -> Iterator[tuple[str, Any, Any, Any]]:
    with open(path, encoding="utf-8-sig", newline="") as stream:
        if delimiter == "\t":
            # The evaluation sets are raw tab-separated text: quotes are part of the sentences.
            lines: Iterator[list[str]] = (line.rstrip("\r\n").split("\t") for line in stream)
        else:
            lines = csv.reader(stream)
        indices: tuple[int, int, int] | None = None
        expected = 3
        try:
            for lineno, fields in enumerate(lines, 1):
                if not fields or fields == [""]:
                    continue
                if indices is None:
                    header = [field.strip() for field in fields]
                    if columns is not None or _looks_like_header(header):
                        indices = _header_indices(path, header, columns or DEFAULT_COLUMNS)
                        expected = len(header)
                        continue
                    indices = (0, 1, 2)
                if len(fields) != expected:
                    raise InputDataError(
                        f"{path}:{lineno}: expected {expected} fields (sentence1, sentence2, label), found {len(fields)}"
                    )
                yield f"{path}:{lineno}", fields[indices[0]], fields[indices[1]], fields[indices[2]]
        except UnicodeDecodeError:
            raise InputDataError(f"{path}: not valid UTF-8; convert the file, e.g. iconv -f GBK -t UTF-8") from None


def _looks_like_header(fields: list[str]) -> bool:
    try:
        float(fields[-1])
        return False
    except ValueError:
        return all(name in fields for name in DEFAULT_COLUMNS)


def _header_indices(path: str, header: list[str], columns: Sequence[str]) -> tuple[int, int, int]:
    missing = [name for name in columns if name not in header]
    if missing:
        raise UsageError(
            f"{path}: no column '{missing[0]}' (found: {', '.join(header)}); pass --columns SENT1,SENT2,LABEL"
        )
    return header.index(columns[0]), header.index(columns[1]), header.index(columns[2])


def _jsonl_rows(path: str, columns: Sequence[str]) -> Iterator[tuple[str, Any, Any, Any]]:
    with open(path, "rb") as stream:
        for lineno, raw in enumerate(stream, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputDataError(f"{where}: invalid JSON ({getattr(exc, 'msg', exc)})") from None
            if not isinstance(obj, dict):
                raise InputDataError(f"{where}: expected a JSON object")
            missing = [name for name in columns if name not in obj]
            if missing:
                raise UsageError(f"{where}: no field '{missing[0]}' (found: {', '.join(obj)}); pass --columns SENT1,SENT2,LABEL")
            yield where, obj[columns[0]], obj[columns[1]], obj[columns[2]]


def _parquet_rows(path: str, columns: Sequence[str]) -> Iterator[tuple[str, Any, Any, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{path}: not a readable Parquet file ({exc})") from None
    names = parquet.schema_arrow.names
    missing = [name for name in columns if name not in names]
    if missing:
        raise UsageError(f"{path}: no column '{missing[0]}' (found: {', '.join(names)}); pass --columns SENT1,SENT2,LABEL")
    row = 0
    for batch in parquet.iter_batches(columns=list(columns)):
        for a, b, label in zip(*(batch.column(name).to_pylist() for name in columns)):
            yield f"{path}: row {row}", a, b, label
            row += 1


def name_pair_sets(sets: list[PairSet]) -> list[PairSet]:
    """Column names for the table: the file stem, with its folder where two stems collide (afqmc/dev, xiaobu/dev)."""
    stems = [pair_set.name for pair_set in sets]
    named = []
    for pair_set in sets:
        name = pair_set.name
        if stems.count(name) > 1:
            name = f"{Path(pair_set.path).parent.name}/{name}"
        named.append(PairSet(name, pair_set.path, pair_set.first, pair_set.second, pair_set.labels))
    return named


def score_pair_sets(sets: list[PairSet], encoder: Encoder, plan: BatchPlan = BatchPlan()) -> list[PairScore]:
    """Encode every distinct sentence of all files once, then correlate cosine similarity with the labels."""
    index: dict[str, int] = {}
    for pair_set in sets:
        for text in pair_set.first + pair_set.second:
            index.setdefault(text, len(index))
    vectors = embed_texts(list(index), encoder, plan)
    scores = []
    for pair_set in sets:
        left = vectors[[index[text] for text in pair_set.first]]
        right = vectors[[index[text] for text in pair_set.second]]
        cosines = cosine_rows(left, right)
        scores.append(
            PairScore(
                name=pair_set.name,
                path=pair_set.path,
                pairs=len(pair_set.labels),
                spearman=100.0 * spearman(cosines, pair_set.labels),
                pearson=100.0 * pearson(cosines, pair_set.labels),
            )
        )
    return scores
