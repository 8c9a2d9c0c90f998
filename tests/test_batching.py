"""The pure planner, tested by its invariants over random inputs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sbert_cli.batching import iter_windows, plan_batches, restore_order


def greedy_batches(lengths: list[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """The obvious plan: fill each batch in sorted order until a limit is hit."""
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if batches and len(batches[-1]) < batch_size and lengths[batches[-1][0]] * (len(batches[-1]) + 1) <= max_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def plan_cost(lengths: list[int], batches: list[list[int]], batch_cost: int) -> int:
    return sum(lengths[batch[0]] * len(batch) + batch_cost for batch in batches)


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=600), max_size=300),
    batch_size=st.integers(min_value=1, max_value=64),
    max_tokens=st.integers(min_value=1, max_value=20_000),
    batch_cost=st.integers(min_value=0, max_value=2000),
)
def test_plan_batches_invariants(lengths: list[int], batch_size: int, max_tokens: int, batch_cost: int) -> None:
    batches = plan_batches(lengths, batch_size, max_tokens, batch_cost)
    flat = [index for batch in batches for index in batch]
    assert sorted(flat) == list(range(len(lengths)))  # every row exactly once
    assert all(batch for batch in batches)
    for batch in batches:
        assert len(batch) <= batch_size
        longest = max(lengths[i] for i in batch)
        assert lengths[batch[0]] == longest  # the first row is the longest, as the padded count assumes
        assert len(batch) == 1 or longest * len(batch) <= max_tokens
    # Longest first across batches: the next batch never starts longer than the current one ends.
    assert [lengths[i] for i in flat] == sorted((lengths[i] for i in flat), reverse=True)
    # Never worse than filling batches greedily, by the cost it minimises.
    greedy = greedy_batches(lengths, batch_size, max_tokens)
    assert plan_cost(lengths, batches, batch_cost) <= plan_cost(lengths, greedy, batch_cost)


def test_plan_batches_cuts_where_padding_would_be_wasted() -> None:
    # Equal lengths: no padding either way, so as few batches as the row cap allows.
    assert sorted(map(len, plan_batches([10] * 10, batch_size=4, max_tokens=1000, batch_cost=1))) == [2, 4, 4]
    # One long row among short ones: padding 31 rows to 100 tokens costs more than a second forward pass.
    assert plan_batches([100] + [10] * 31, batch_size=32, max_tokens=10_000, batch_cost=32) == [[0], list(range(1, 32))]
    # With a large fixed cost per batch (a GPU), one batch is cheaper than two.
    assert plan_batches([100] + [10] * 31, batch_size=32, max_tokens=10_000, batch_cost=5000) == [list(range(32))]
    assert plan_batches([500, 1], batch_size=8, max_tokens=100) == [[0], [1]]  # an oversized row runs alone
    assert plan_batches([], batch_size=8, max_tokens=100) == []


@given(items=st.lists(st.integers(), max_size=100), size=st.integers(min_value=1, max_value=30))
def test_iter_windows_keeps_every_item_in_order(items: list[int], size: int) -> None:
    windows = list(iter_windows(items, size))
    assert [item for window in windows for item in window] == items
    assert all(0 < len(window) <= size for window in windows)
    assert all(len(window) == size for window in windows[:-1])


def test_iter_windows_is_lazy() -> None:
    consumed = []

    def source():
        for i in range(100):
            consumed.append(i)
            yield i

    windows = iter_windows(source(), 10)
    next(windows)
    assert len(consumed) == 10


@given(lengths=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=80))
def test_restore_order_puts_rows_back(lengths: list[int]) -> None:
    batches = plan_batches(lengths, batch_size=7, max_tokens=120)
    outputs = [np.array([[i, lengths[i]] for i in batch], dtype=np.float32) for batch in batches]
    restored = restore_order(len(lengths), batches, outputs)
    np.testing.assert_array_equal(restored[:, 0], np.arange(len(lengths)))
    np.testing.assert_array_equal(restored[:, 1], lengths)


@given(
    rows=st.lists(st.integers(min_value=0, max_value=3), max_size=120).map(sorted),
    size=st.integers(min_value=1, max_value=17),
)
def test_keyed_windows_never_mix_keys(rows: list[int], size: int) -> None:
    windows = list(iter_windows(rows, size, key=lambda row: row))
    assert [item for window in windows for item in window] == rows
    assert all(0 < len(window) <= size and len(set(window)) == 1 for window in windows)
    # A window is only cut early where the key changes.
    for before, after in zip(windows, windows[1:]):
        assert len(before) == size or before[-1] != after[0]
