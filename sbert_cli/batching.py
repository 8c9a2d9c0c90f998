"""Pure planning: bounded windows of rows, token-budget batches, and putting results back in input order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from typing import TypeVar

import numpy as np

T = TypeVar("T")

# The fixed cost of one forward pass, in tokens' worth of work, used to decide where to cut batches: a
# CPU pays little per call beyond the arithmetic, a GPU runs a small batch almost as fast as a full one.
BATCH_COST_TOKENS = {"cpu": 32, "cuda": 2048}


@dataclass(frozen=True)
class BatchPlan:
    """How rows are grouped: windows of `chunk_size` rows, batches under `batch_size` rows and `max_tokens`."""

    chunk_size: int = 10_000
    batch_size: int = 32
    max_tokens: int = 16_384
    batch_cost: int = BATCH_COST_TOKENS["cpu"]

    def for_device(self, device: str) -> BatchPlan:
        """The same plan with the batch cost of `device` ('cpu', 'cuda', 'cuda:1')."""
        return replace(self, batch_cost=BATCH_COST_TOKENS["cuda" if device.startswith("cuda") else "cpu"])

    def cut(self, lengths: Sequence[int]) -> list[list[int]]:
        """Batches of row indices for rows of these token counts (see plan_batches)."""
        return plan_batches(lengths, self.batch_size, self.max_tokens, self.batch_cost)


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


def plan_batches(lengths: Sequence[int], batch_size: int, max_tokens: int, batch_cost: int = 0) -> list[list[int]]:
    """Group row indices into batches, longest first, each under `batch_size` rows and `max_tokens`.

    Tokens are counted padded, as the model sees them: the batch's longest row times its row count
    (text-embeddings-inference counts them the same way). Rows are sorted by exact token count, then
    cut where it is cheapest: a dynamic programme over the sorted rows minimises the padded tokens of
    all batches plus `batch_cost` token-equivalents per batch (the fixed cost of a forward pass and of
    small matrix products). Greedy filling would pad a window's short rows up to its long ones; with
    mixed lengths that wasted 30% of the work. A row longer than `max_tokens` gets a batch of its own.
    """
    if batch_size < 1 or max_tokens < 1:
        raise ValueError("batch_size and max_tokens must be at least 1")
    count = len(lengths)
    order = sorted(range(count), key=lambda i: (-lengths[i], i))
    longest = np.asarray([lengths[i] for i in order], dtype=np.float64)
    best = np.zeros(count + 1)  # best[j]: cheapest cost of batching the first j sorted rows
    start = np.zeros(count + 1, dtype=np.int64)
    for end in range(1, count + 1):
        first = max(0, end - batch_size)
        starts = np.arange(first, end)
        sizes = end - starts
        padded = longest[first:end] * sizes  # descending order: the first row of a batch is its longest
        cost = best[first:end] + padded + batch_cost
        cost[(padded > max_tokens) & (sizes > 1)] = np.inf
        pick = int(np.argmin(cost))
        best[end] = cost[pick]
        start[end] = first + pick
    batches: list[list[int]] = []
    end = count
    while end > 0:
        batches.append(order[start[end] : end])
        end = int(start[end])
    batches.reverse()
    return batches


def restore_order(count: int, batches: Sequence[Sequence[int]], outputs: Sequence[np.ndarray]) -> np.ndarray:
    """Stack per-batch outputs into one [count, dim] array whose row i is input row i."""
    if not outputs:
        return np.zeros((count, 0), dtype=np.float32)
    result = np.empty((count, outputs[0].shape[1]), dtype=outputs[0].dtype)
    for indices, output in zip(batches, outputs, strict=True):
        result[np.asarray(indices, dtype=np.int64)] = output
    return result
