"""The pure planner, tested by its invariants over random inputs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sbert_cli.batching import iter_windows, plan_batches
from sbert_cli.plan import DEVICE_DEFAULTS, BatchPlan, BatchShape


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


def planned(lengths: list[int], batch_size: int, max_tokens: int, batch_cost: int = 0) -> list[list[int]]:
    return [batch.tolist() for batch in plan_batches(lengths, batch_size, max_tokens, batch_cost)]


def check_plan(lengths: list[int], batches: list[list[int]], batch_size: int, max_tokens: int) -> None:
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


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=600), max_size=300),
    batch_size=st.integers(min_value=1, max_value=64),
    max_tokens=st.integers(min_value=1, max_value=20_000),
    batch_cost=st.integers(min_value=0, max_value=2000),
)
def test_plan_batches_invariants(lengths: list[int], batch_size: int, max_tokens: int, batch_cost: int) -> None:
    batches = planned(lengths, batch_size, max_tokens, batch_cost)
    check_plan(lengths, batches, batch_size, max_tokens)
    # Never worse than filling batches greedily, by the cost it minimises.
    greedy = greedy_batches(lengths, batch_size, max_tokens)
    assert plan_cost(lengths, batches, batch_cost) <= plan_cost(lengths, greedy, batch_cost)


def test_plan_batches_cuts_where_padding_would_be_wasted() -> None:
    # Equal lengths: no padding either way, so as few batches as the row cap allows.
    assert sorted(map(len, planned([10] * 10, batch_size=4, max_tokens=1000, batch_cost=1))) == [2, 4, 4]
    # One long row among short ones: padding 31 rows to 100 tokens costs more than a second forward pass.
    assert planned([100] + [10] * 31, batch_size=32, max_tokens=10_000, batch_cost=32) == [[0], list(range(1, 32))]
    # With a large fixed cost per batch (a GPU), one batch is cheaper than two.
    assert planned([100] + [10] * 31, batch_size=32, max_tokens=10_000, batch_cost=5000) == [list(range(32))]
    assert planned([500, 1], batch_size=8, max_tokens=100) == [[0], [1]]  # an oversized row runs alone
    assert planned([], batch_size=8, max_tokens=100) == []


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=2, max_value=512), min_size=1, max_size=3000),
    max_tokens=st.sampled_from([65_536, 262_144]),
)
def test_large_budgets_plan_within_a_percent_of_the_exact_programme(lengths: list[int], max_tokens: int) -> None:
    """A GPU's budgets cut only at candidate positions: the plan stays valid and its cost within 1% of exact."""
    cuda = DEVICE_DEFAULTS["cuda"]
    fast = planned(lengths, cuda.batch_size, max_tokens, cuda.batch_cost)
    check_plan(lengths, fast, cuda.batch_size, max_tokens)
    # The exact programme: the same planner with every position a candidate (row caps under 64 rows are exact).
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    exact_cost = _exact_cost([lengths[i] for i in order], cuda.batch_size, max_tokens, cuda.batch_cost)
    assert plan_cost(lengths, fast, cuda.batch_cost) <= 1.01 * exact_cost


def _exact_cost(sorted_lengths: list[int], batch_size: int, max_tokens: int, batch_cost: int) -> float:
    best = [0.0] + [float("inf")] * len(sorted_lengths)
    for end in range(1, len(sorted_lengths) + 1):
        for start in range(max(0, end - batch_size), end):
            size = end - start
            padded = sorted_lengths[start] * size
            if size == 1 or padded <= max_tokens:
                best[end] = min(best[end], best[start] + padded + batch_cost)
    return best[-1]


def test_a_gpu_window_is_planned_with_every_row_once() -> None:
    rng = np.random.default_rng(0)
    lengths = np.where(rng.random(50_000) < 0.1, rng.integers(60, 257, 50_000), rng.integers(8, 40, 50_000))
    cuda = DEVICE_DEFAULTS["cuda"]
    batches = plan_batches(lengths, cuda.batch_size, cuda.max_tokens, cuda.batch_cost)
    assert sorted(np.concatenate(batches).tolist()) == list(range(50_000))
    assert max(int(lengths[b].max()) * len(b) for b in batches) <= cuda.max_tokens


def test_auto_plans_per_device() -> None:
    assert BatchPlan().for_device("cpu") == BatchPlan(chunk_size=10_000, batch_size=32, max_tokens=16_384, batch_cost=32)
    cuda = BatchPlan().for_device("cuda:1")
    assert (cuda.chunk_size, cuda.batch_size, cuda.max_tokens, cuda.batch_cost) == (50_000, 32_768, 262_144, 2048)
    # What the user passes wins on every device; the rest stays auto.
    assert BatchPlan(batch_size=512, max_tokens=131_072).for_device("cuda") == BatchPlan(50_000, 512, 131_072, 2048)
    assert BatchPlan(chunk_size=7).for_device("cpu").chunk_size == 7
    # The token budget out-of-memory leaves only ever lowers the plan's.
    plan = BatchPlan().for_device("cuda")
    assert plan.with_token_budget(100_000).max_tokens == 100_000
    assert plan.with_token_budget(10**9) == plan and plan.with_token_budget(None) == plan


def test_backend_shape_replaces_only_the_device_defaults() -> None:
    shape = BatchShape(batch_size=64, max_tokens=4096)
    assert BatchPlan().for_device("cpu").for_backend(shape) == BatchPlan(10_000, 64, 4096, 32)
    assert BatchPlan(batch_size=8).for_device("cpu").for_backend(shape) == BatchPlan(10_000, 8, 4096, 32)
    assert BatchPlan(max_tokens=999).for_device("cpu").for_backend(shape) == BatchPlan(10_000, 64, 999, 32)
    # Resolved twice (a Ray actor's plan, then embed_texts), the user's values are still the user's.
    assert BatchPlan(batch_size=8).for_device("cpu").for_device("cpu").for_backend(shape).batch_size == 8
    assert BatchPlan().for_device("cpu").for_backend(None) == BatchPlan().for_device("cpu")
    # A budget cut by out-of-memory still bounds the backend's tokens.
    assert BatchPlan().for_device("cpu").for_backend(shape).with_token_budget(1000).max_tokens == 1000


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
