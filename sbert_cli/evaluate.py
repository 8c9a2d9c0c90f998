"""Pair files -> Spearman and Pearson (x100) of the model's similarity against gold labels, and the pairs ranked worst."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sbert_cli.errors import InputDataError, UsageError
from sbert_cli.io.formats import extension_formats
from sbert_cli.io.readers import MISSING, BadRow, TableSpec, iter_fields
from sbert_cli.io.storage import location
from sbert_cli.plan import BatchPlan
from sbert_cli.quantize import comparable
from sbert_cli.similarity import average_ranks, pearson, similarity_rows, spearman

if TYPE_CHECKING:
    from sbert_cli.embedding import ModelSource
    from sbert_cli.encoder import Encoder

DEFAULT_COLUMNS = ("sentence1", "sentence2", "label")
_COLUMNS_FIX = "--columns SENT1,SENT2,LABEL"
_COSINE_ROUNDING = 1e-12  # float64 cosines of float32 vectors: differences below this are rounding, not the model


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
    """A pair whose similarity rank is far from its label's rank: where the model disagrees with the gold."""

    first: str
    second: str
    label: float
    similarity: float
    rank_gap: float  # |rank of similarity - rank of label| over the set's pairs


@dataclass(frozen=True)
class PairScore:
    """How well the model's similarity ranks one file's pairs (both correlations x100), with what the plot needs.

    A set whose correlation is undefined (one pair, or one side constant) has None for both and the reason in
    `undefined`: NaN would print as a score and is not JSON."""

    name: str
    path: str
    pairs: int
    spearman: float | None
    pearson: float | None
    similarities: np.ndarray
    labels: np.ndarray
    similarity: str = "cosine"  # the function: cosine, dot, euclidean or manhattan
    dtype: str = "float32"  # the vectors' stored form the similarity was taken of
    undefined: str | None = None


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
    fmt = extension_formats().get(location(path).suffix.lower(), "tsv")
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
            value = float(label)
        except (TypeError, ValueError):
            which = "the label is the last column" if columns is None else f"the label column is '{columns[2]}'"
            raise InputDataError(f"{item.where}: label {label!r} is not a number; {which}") from None
        if not math.isfinite(value):
            # float() takes 'nan' and 'inf', and ranks would place them: a score from them would look valid.
            raise InputDataError(f"{item.where}: label {label!r} is not a finite number; give the pair a finite score or remove the row")
        labels.append(value)
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


def score_pair_sets(sets: list[PairSet], model: Encoder | ModelSource, plan: BatchPlan = BatchPlan(), dtype: str = "float32") -> list[PairScore]:
    """Encode every distinct sentence of all files once, then correlate the model's similarity with the labels; with a
    `dtype` other than float32, of the vectors as that --dtype stores them (quantize.comparable, per file)."""
    from sbert_cli.embedding import embed_texts

    index: dict[str, int] = {}
    for pair_set in sets:
        for text in pair_set.first + pair_set.second:
            index.setdefault(text, len(index))
    vectors = embed_texts(list(index), model, plan)
    function = model.info.similarity
    scores = []
    for pair_set in sets:
        left = vectors[[index[text] for text in pair_set.first]]
        right = vectors[[index[text] for text in pair_set.second]]
        left, right = comparable(left, right, dtype)
        similarities = similarity_rows(left, right, function)
        reason = undefined_reason(similarities, pair_set.labels, function)
        scores.append(
            PairScore(
                name=pair_set.name,
                path=pair_set.path,
                pairs=len(pair_set.labels),
                spearman=None if reason else 100.0 * spearman(similarities, pair_set.labels),
                pearson=None if reason else 100.0 * pearson(similarities, pair_set.labels),
                similarities=similarities,
                labels=pair_set.labels,
                similarity=function,
                dtype=dtype,
                undefined=reason,
            )
        )
    return scores


def undefined_reason(similarities: np.ndarray, labels: np.ndarray, function: str = "cosine") -> str | None:
    """Why neither correlation is defined for a set, or None: both need two pairs and variation on each side."""
    if len(labels) < 2:
        return f"only {len(labels)} pair"
    if np.ptp(labels) == 0:
        return "all labels are equal"
    # Identical sentences give cosines equal up to rounding (1 - 2e-16); a correlation of that noise means nothing.
    if np.ptp(similarities) <= _COSINE_ROUNDING:
        return "all cosines are equal" if function == "cosine" else f"all {function} similarities are equal"
    return None


def worst_pairs(pair_set: PairSet, score: PairScore, count: int) -> list[WorstPair]:
    """The `count` pairs whose similarity rank is furthest from their label's rank, worst first."""
    gaps = np.abs(average_ranks(score.similarities) - average_ranks(pair_set.labels))
    order = np.argsort(-gaps, kind="stable")[:count]
    return [
        WorstPair(pair_set.first[i], pair_set.second[i], float(pair_set.labels[i]), float(score.similarities[i]), float(gaps[i]))
        for i in order
    ]


def score_json(score: PairScore, worst: list[WorstPair] | None) -> dict[str, Any]:
    """One set's result for --json: an undefined correlation is null, with the reason in "undefined" (null otherwise)."""
    result: dict[str, Any] = {
        "name": score.name, "file": score.path, "pairs": score.pairs, "spearman": score.spearman, "pearson": score.pearson,
        "undefined": score.undefined,
    }
    if worst is not None:
        # Each pair's score under the function's own name ("cosine", "dot", ...), as sim's JSON has it.
        result["worst"] = [
            {"first": pair.first, "second": pair.second, "label": pair.label, score.similarity: pair.similarity, "rank_gap": pair.rank_gap} for pair in worst
        ]
    return result
