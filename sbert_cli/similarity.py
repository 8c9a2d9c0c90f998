"""Vector maths in numpy: the similarity functions sentence-transformers offers, Pearson and Spearman (ties get
average ranks)."""

from __future__ import annotations

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`; a zero vector gives 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def similarity_rows(a: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
    """Each row of `a` against the same row of `b` by a model's similarity function, as sentence-transformers'
    similarity_pairwise gives it: cosine, dot product, and the negated euclidean and manhattan distances (so
    that higher is more similar for every one)."""
    if name == "cosine":
        return cosine_rows(a, b)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if name == "dot":
        return np.einsum("ij,ij->i", a, b)
    if name == "euclidean":
        return -np.linalg.norm(a - b, axis=1)
    if name == "manhattan":
        return -np.abs(a - b).sum(axis=1)
    raise ValueError(f"unknown similarity function {name!r}")


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    y = np.asarray(y, dtype=np.float64) - np.mean(y)
    x_scale, y_scale = np.max(np.abs(x), initial=0.0), np.max(np.abs(y), initial=0.0)
    if x_scale == 0 or y_scale == 0:
        return float("nan")
    # Scale to [-1, 1] before squaring: squares of tiny deviations would underflow to zero.
    x, y = x / x_scale, y / y_scale
    return float(np.clip(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)), -1.0, 1.0))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (scipy's rankdata 'average')."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the average rank of that run.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_ranks = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation: Pearson of average ranks."""
    return pearson(average_ranks(x), average_ranks(y))
