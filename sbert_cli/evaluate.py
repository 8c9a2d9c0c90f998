"""Pair files -> Spearman and Pearson (x100) of cosine similarity against gold labels, and the pairs ranked worst."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sbert_cli.errors import InputDataError, UsageError
from sbert_cli.io.readers import EXTENSIONS, MISSING, BadRow, TableSpec, iter_fields
from sbert_cli.io.storage import location
from sbert_cli.plan import BatchPlan
from sbert_cli.similarity import average_ranks, cosine_rows, pearson, spearman

if TYPE_CHECKING:
    from sbert_cli.embedding import ModelSource
    from sbert_cli.encoder import Encoder

DEFAULT_COLUMNS = ("sentence1", "sentence2", "label")
_COLUMNS_FIX = "--columns SENT1,SENT2,LABEL"


@dataclass(frozen=True)
class PairSet:
    """One evaluation file: sentence pairs and their gold scores."""

    name: str
    path: str
    first: list[str]
    second: list[str]
    labels: np.ndarray


@dataclass(frozen=True)
class WorstPair:
    """A pair whose cosine rank is far from its label's rank: where the model disagrees with the gold."""

    first: str
    second: str
    label: float
    cosine: float
    rank_gap: float  # |rank of cosine - rank of label| over the set's pairs


@dataclass(frozen=True)
class PairScore:
    """How well cosine similarity ranks one file's pairs (both correlations x100), with what the plot needs."""

    name: str
    path: str
    pairs: int
    spearman: float
    pearson: float
    cosines: np.ndarray
    labels: np.ndarray


def parse_columns(value: str | None) -> tuple[str, str, str] | None:
    """'--columns s1,s2,label' -> ('s1', 's2', 'label')."""
    if value is None:
        return None
    names = tuple(part.strip() for part in value.split(","))
    if len(names) != 3 or not all(names):
        raise UsageError(f"--columns {value}: expected three names, e.g. --columns sentence1,sentence2,label")
    return names  # type: ignore[return-value]


def pair_table(path: str, columns: tuple[str, str, str] | None) -> TableSpec:
    """How a pair file is read: by its extension (TSV when it has none of ours, as the published sets);
    headerless `s1, s2, label` unless its first line names the columns. TSV quotes are text, as in those sets."""
    fmt = EXTENSIONS.get(location(path).suffix.lower(), "tsv")
    return TableSpec(
        path, fmt, columns or DEFAULT_COLUMNS, (_COLUMNS_FIX,) * 3, string_columns=(columns or DEFAULT_COLUMNS)[:2],
        header="required" if columns or fmt not in ("csv", "tsv") else "sniff", quoting=fmt != "tsv", format_option=False,
    )


def read_pairs(path: str, columns: tuple[str, str, str] | None = None) -> PairSet:
    """Read a pair file through the readers every input uses (which also refuse a missing file); the first bad
    row fails with its place."""
    table = pair_table(path, columns)
    first: list[str] = []
    second: list[str] = []
    labels: list[float] = []
    for item in iter_fields(table):
        if isinstance(item, BadRow):
            raise InputDataError(item.message())
        a, b, label = item.values
        for column, value in zip(table.columns, (a, b)):
            if not isinstance(value, str):
                found = "missing" if value is MISSING else "null" if value is None else type(value).__name__
                raise InputDataError(f"{item.where}: sentence '{column}' is {found}, not a string")
        try:
            labels.append(float(label))
        except (TypeError, ValueError):
            which = "the label is the last column" if columns is None else f"the label column is '{columns[2]}'"
            raise InputDataError(f"{item.where}: label {label!r} is not a number; {which}") from None
        first.append(a)
        second.append(b)
    if not labels:
        raise InputDataError(f"{path}: no sentence pairs found")
    return PairSet(location(path).stem, path, first, second, np.asarray(labels))


def name_pair_sets(sets: list[PairSet]) -> list[PairSet]:
    """Column names for the table: the file stem, with its folder where two stems collide (afqmc/dev, xiaobu/dev)."""
    stems = [pair_set.name for pair_set in sets]
    named = []
    for pair_set in sets:
        name = pair_set.name
        if stems.count(name) > 1:
            name = f"{location(pair_set.path).parent.name}/{name}"
        named.append(PairSet(name, pair_set.path, pair_set.first, pair_set.second, pair_set.labels))
    return named


def score_pair_sets(sets: list[PairSet], model: Encoder | ModelSource, plan: BatchPlan = BatchPlan()) -> list[PairScore]:
    """Encode every distinct sentence of all files once, then correlate cosine similarity with the labels."""
    from sbert_cli.embedding import embed_texts

    index: dict[str, int] = {}
    for pair_set in sets:
        for text in pair_set.first + pair_set.second:
            index.setdefault(text, len(index))
    vectors = embed_texts(list(index), model, plan)
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
                cosines=cosines,
                labels=pair_set.labels,
            )
        )
    return scores


def worst_pairs(pair_set: PairSet, score: PairScore, count: int) -> list[WorstPair]:
    """The `count` pairs whose cosine rank is furthest from their label's rank, worst first."""
    gaps = np.abs(average_ranks(score.cosines) - average_ranks(pair_set.labels))
    order = np.argsort(-gaps, kind="stable")[:count]
    return [
        WorstPair(pair_set.first[i], pair_set.second[i], float(pair_set.labels[i]), float(score.cosines[i]), float(gaps[i]))
        for i in order
    ]


def score_json(score: PairScore, worst: list[WorstPair] | None) -> dict[str, Any]:
    result: dict[str, Any] = {"name": score.name, "file": score.path, "pairs": score.pairs, "spearman": score.spearman, "pearson": score.pearson}
    if worst is not None:
        result["worst"] = [vars(pair) for pair in worst]
    return result
