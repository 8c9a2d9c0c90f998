"""Pure planning: bounded windows of rows, token-budget batches, and putting results back in input order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def iter_windows(items: Iterable[T], size: int, key: Callable[[T], int] | None = None) -> Iterator[list[T]]:
    """Consecutive lists of at most `size` items; memory holds one window, whatever the input's length.

    With `key`, a window never mixes items of different keys (e.g. shards): it is cut where the key changes.
    """
    if size < 1:
        raise ValueError("window size must be at least 1")
    iterator = iter(items)
    if key is None:
        while window := list(islice(iterator, size)):
            yield window
        return
    window: list[T] = []
    window_key = None
    for item in iterator:
        item_key = key(item)
        if window and (len(window) >= size or item_key != window_key):
            yield window
            window = []
        window_key = item_key
        window.append(item)
    if window:
        yield window


def plan_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Group row indices into batches, longest first, each under `batch_size` rows and `max_tokens`.

    Tokens are counted padded, as the model sees them: the batch's longest row times its row count
    (text-embeddings-inference counts them the same way). Sorting by exact token count makes rows of
    a batch nearly equal in length, so padding is small. A row longer than `max_tokens` gets a batch
    of its own rather than being refused.
    """
    if batch_size < 1 or max_tokens < 1:
        raise ValueError("batch_size and max_tokens must be at least 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        # Descending order: the first row of a batch is its longest.
        if current and (len(current) >= batch_size or longest * (len(current) + 1) > max_tokens):
            batches.append(current)
            current = []
        if not current:
            longest = lengths[index]
        current.append(index)
    if current:
        batches.append(current)
    return batches


def restore_order(count: int, batches: Sequence[Sequence[int]], outputs: Sequence[np.ndarray]) -> np.ndarray:
    """Stack per-batch outputs into one [count, dim] array whose row i is input row i."""
    if not outputs:
        return np.zeros((count, 0), dtype=np.float32)
    result = np.empty((count, outputs[0].shape[1]), dtype=outputs[0].dtype)
    for indices, output in zip(batches, outputs, strict=True):
        result[np.asarray(indices, dtype=np.int64)] = output
    return result
