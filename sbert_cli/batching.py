"""Pure planning: bounded windows of rows, and token-budget batches cut where padding costs least."""

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


def plan_batches(lengths: Sequence[int] | np.ndarray, batch_size: int, max_tokens: int, batch_cost: int = 0) -> list[np.ndarray]:
    """Group row indices into batches, longest first, each under `batch_size` rows and `max_tokens`.

    Tokens are counted padded, as the model sees them: the batch's longest row times its row count
    (text-embeddings-inference counts them the same way). Rows are sorted by exact token count, then
    cut where it is cheapest: a dynamic programme over the sorted rows minimises the padded tokens of
    all batches plus `batch_cost` token-equivalents per batch (the fixed cost of a forward pass and of
    small matrix products). Greedy filling would pad a window's short rows up to its long ones; with
    mixed lengths that wasted 30% of the work. A row longer than `max_tokens` gets a batch of its own.

    Where batches hold hundreds of rows or more (a GPU's budgets), cuts are only placed at candidate
    positions (see _cut_candidates), which keeps the programme fast on windows of 50,000 rows.
    """
    if batch_size < 1 or max_tokens < 1:
        raise ValueError("batch_size and max_tokens must be at least 1")
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    count = len(lengths)
    if count == 0:
        return []
    order = np.argsort(-lengths, kind="stable")  # longest first, equal lengths in input order
    longest = lengths[order].astype(np.float64)
    cuts = _cut_candidates(longest, batch_size, max_tokens)
    best = np.zeros(len(cuts))  # best[j]: the cheapest cost of batching the sorted rows before cuts[j]
    start = np.zeros(len(cuts), dtype=np.int64)  # the candidate where the last of those batches starts
    first_start = np.searchsorted(cuts, cuts - batch_size, side="left")
    for end in range(1, len(cuts)):
        starts = np.arange(first_start[end], end)
        sizes = cuts[end] - cuts[starts]
        padded = longest[cuts[starts]] * sizes  # descending order: the first row of a batch is its longest
        cost = best[starts] + padded + batch_cost
        cost[(padded > max_tokens) & (sizes > 1)] = np.inf
        pick = int(np.argmin(cost))
        best[end] = cost[pick]
        start[end] = starts[pick]
    batches: list[np.ndarray] = []
    end = len(cuts) - 1
    while end > 0:
        batches.append(order[cuts[start[end]] : cuts[end]])
        end = int(start[end])
    batches.reverse()
    return batches


def _cut_candidates(longest: np.ndarray, batch_size: int, max_tokens: int) -> np.ndarray:
    """Positions in the sorted rows where a batch may start or end.

    Every position, when the smallest full batch is under 64 rows (a CPU's plans, which stay exact). Beyond
    that: where the token count changes, and every `step` rows within a run of equal counts, `step` being a
    64th of the smallest full batch. Moving a cut inside a run of equal counts changes the cost by at most
    `step` rows' padding, so plans stay within a fraction of a percent of the exact programme's.
    """
    count = len(longest)
    smallest_full_batch = min(batch_size, max(1, int(max_tokens // longest[0])))
    step = max(1, smallest_full_batch // 64)
    if step == 1:
        return np.arange(count + 1)
    run_starts = np.flatnonzero(np.r_[True, longest[1:] != longest[:-1]])
    run_ends = np.r_[run_starts[1:], count]
    inside = [np.arange(begin, stop, step) for begin, stop in zip(run_starts, run_ends)]
    return np.unique(np.concatenate([*inside, [count]]))
