"""Token states to sentence vectors in numpy, for a backend that runs without torch (OpenVINO's): the poolings of
backends.pooling and the head steps of backends.heads but Dense, whose models go through those instead."""

from __future__ import annotations

import numpy as np

from sbert_cli.backends.pooling import Pooling
from sbert_cli.model.modules import DenseLayer, HeadLayer, NormalizeLayer, TruncateLayer

NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's: a zero vector stays zero


def runs_in_numpy(layers: tuple[HeadLayer, ...]) -> bool:
    """Whether these head layers need no torch: a Dense module's weights are read, and applied, by torch."""
    return not any(isinstance(layer, DenseLayer) for layer in layers)


def sentence_vectors(hidden: np.ndarray, mask: np.ndarray, pooling: Pooling, layers: tuple[HeadLayer, ...]) -> np.ndarray:
    """float32 sentence vectors from token states [batch, tokens, dim] and a boolean mask, as pooling.sentence_vectors
    makes them (the same operations in the same order, so the two agree to float32 rounding)."""
    vectors = pool(hidden.astype(np.float32, copy=False), mask, pooling)
    for layer in layers:
        if isinstance(layer, NormalizeLayer):
            with np.errstate(over="ignore"):  # max pooling over no counted token gives float32's lowest, as torch's does
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), NORMALIZE_EPS)
        elif isinstance(layer, TruncateLayer):
            vectors = vectors[:, : layer.dim]
        else:
            raise TypeError(f"not a head layer numpy applies: {layer!r}")
    return np.ascontiguousarray(vectors)


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: Pooling) -> np.ndarray:
    """pooling.pool over a boolean mask, rows padded on the right."""
    batch, length, _ = hidden.shape
    if pooling.skip:
        mask = mask & (np.arange(length) >= pooling.skip)
    mode = pooling.mode
    if mode in ("cls", "lasttoken"):
        rows = np.arange(batch)
        counted = mask.astype(np.int32)
        if mode == "cls":
            return hidden[rows, counted.argmax(axis=1)]
        last = length - 1 - counted[:, ::-1].argmax(axis=1)
        return hidden[rows, last] * counted.max(axis=1, keepdims=True).astype(hidden.dtype)
    weights = mask[:, :, None].astype(hidden.dtype)
    if mode == "max":
        return np.where(weights == 0, np.finfo(hidden.dtype).min, hidden).max(axis=1)
    if mode == "weightedmean":  # weights 1, 2, 3... by position, from the first (real) token on
        weights = weights * np.arange(1, length + 1, dtype=hidden.dtype)[None, :, None]
    summed = (hidden * weights).sum(axis=1)
    counts = np.maximum(weights.sum(axis=1), np.float32(1e-9))
    if mode == "mean_sqrt_len":
        return summed / np.sqrt(counts)
    return summed / counts
