"""Reader -> windows -> token-budget batches -> encoder -> writer, in input order, with per-stage timings."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import numpy as np

from sbert_cli.batching import iter_windows, plan_batches, restore_order
from sbert_cli.encoder import Encoder, Tokenized
from sbert_cli.errors import SbertError
from sbert_cli.readers import BadRow, Record, split_window

T = TypeVar("T")


# The fixed cost of one forward pass, in tokens' worth of work, used to decide where to cut batches.
# Measured: on 2 CPU cores 16-64 all cut padding from 1.30x to 1.01-1.03x and ran 1.22x faster than
# greedy filling (32 is the middle); a GPU runs a small batch almost as fast as a full one.
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


@dataclass
class EncodeStats:
    """What a run did and where its time went."""

    rows: int = 0
    rejected: int = 0
    resumed_rows: int = 0
    shards_written: int = 0
    shards_resumed: int = 0
    truncated: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(
        default_factory=lambda: {"read": 0.0, "tokenize": 0.0, "forward": 0.0, "write": 0.0}
    )

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class Interrupted(SbertError):
    """A stop was requested (SIGINT, SIGTERM): the run ended after a whole batch; nothing partial was kept."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Sink(Protocol):
    """Where a run's rows go, shard by shard (a single output file is one shard)."""

    done: set[int]

    def shard_of(self, row: int) -> int: ...

    def start_shard(self, index: int) -> None: ...

    def write(self, records: list[Record], vectors: np.ndarray, n_tokens: list[int]) -> None: ...

    def reject(self, rows: list[BadRow]) -> None: ...

    def finish_shard(self) -> None: ...


@dataclass
class _Window:
    shard: int
    rows: int
    records: list[Record]
    rejects: list[BadRow]
    tokens: Tokenized | None
    batches: list[list[int]]


StopCheck = Callable[[], None]


def plan_window(tokens: Tokenized, plan: BatchPlan) -> list[list[int]]:
    return plan_batches([len(ids) for ids in tokens.ids], plan.batch_size, plan.max_tokens, plan.batch_cost)


def embed_tokenized(
    tokens: Tokenized,
    encoder: Encoder,
    plan: BatchPlan,
    stats: EncodeStats | None = None,
    check_stop: StopCheck | None = None,
    batches: list[list[int]] | None = None,
) -> np.ndarray:
    """Vectors for one window of tokenized texts, batched longest first, returned in the window's order."""
    lengths = [len(ids) for ids in tokens.ids]
    if batches is None:
        batches = plan_window(tokens, plan)
    outputs = []
    started = time.perf_counter()
    for batch in batches:
        if check_stop is not None:
            check_stop()
        outputs.append(encoder.embed([tokens.ids[i] for i in batch]))
    if stats is not None:
        stats.stage_seconds["forward"] += time.perf_counter() - started
        stats.batches += len(batches)
        stats.real_tokens += sum(lengths)
        stats.padded_tokens += sum(lengths[batch[0]] * len(batch) for batch in batches)
        stats.truncated += sum(1 for count in tokens.n_tokens if count > encoder.info.max_length)
    return restore_order(len(lengths), batches, outputs)


def embed_texts(texts: list[str], encoder: Encoder, plan: BatchPlan = BatchPlan()) -> np.ndarray:
    """Vectors for an in-memory list of texts (for sim and evaluate), in the list's order."""
    if not texts:
        return np.zeros((0, encoder.info.dim), dtype=np.float32)
    parts = [embed_tokenized(encoder.tokenize(window), encoder, plan) for window in iter_windows(texts, plan.chunk_size)]
    return np.concatenate(parts)


def encode_rows(
    rows: Iterable[Record | BadRow],
    encoder: Encoder,
    sink: Sink,
    plan: BatchPlan,
    skip_bad_rows: bool = False,
    check_stop: StopCheck | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> EncodeStats:
    """Stream rows through the encoder into the sink, shard by shard; memory holds a few windows, never the input.

    A bad row fails the run unless `skip_bad_rows`, when it goes to the sink's rejects. Shards the sink
    already has (a resumed run) are read past without tokenizing or encoding.
    """
    stats = EncodeStats()
    started = time.perf_counter()

    def windows() -> Iterator[_Window]:
        source = iter_windows(rows, plan.chunk_size, key=lambda item: sink.shard_of(item.row))
        while True:
            t0 = time.perf_counter()
            window = next(source, None)
            t1 = time.perf_counter()
            stats.stage_seconds["read"] += t1 - t0
            if window is None:
                return
            shard = sink.shard_of(window[0].row)
            if shard in sink.done:
                yield _Window(shard, len(window), [], [], None, [])
                continue
            records, rejects = split_window(window, skip_bad_rows)
            tokens = encoder.tokenize([record.text for record in records]) if records else None
            batches = plan_window(tokens, plan) if tokens is not None else []
            stats.stage_seconds["tokenize"] += time.perf_counter() - t1
            yield _Window(shard, len(window), records, rejects, tokens, batches)

    current: int | None = None
    resumed: set[int] = set()
    # Reading and tokenizing the next window, and writing the last one, overlap this one's forward pass.
    writer = BackgroundSink(sink)
    try:
        for window in prefetch(windows(), depth=1):
            if window.shard in sink.done:
                resumed.add(window.shard)
                stats.resumed_rows += window.rows
                continue
            if window.shard != current:
                if current is not None:
                    writer.finish_shard()
                    stats.shards_written += 1
                writer.start_shard(window.shard)
                current = window.shard
            writer.reject(window.rejects)
            stats.rejected += len(window.rejects)
            if window.tokens is not None:
                vectors = embed_tokenized(window.tokens, encoder, plan, stats, check_stop, window.batches)
                writer.write(window.records, vectors, window.tokens.n_tokens)
                stats.rows += len(window.records)
            if on_rows is not None:
                on_rows(window.rows)
            if check_stop is not None:
                check_stop()
        if current is not None:
            writer.finish_shard()
            stats.shards_written += 1
        writer.close()
    except BaseException:
        writer.abandon()
        raise
    stats.stage_seconds["write"] = writer.seconds
    stats.shards_resumed = len(resumed)
    stats.seconds = time.perf_counter() - started
    return stats


class BackgroundSink:
    """Runs a sink's calls in order on a writer thread, so Parquet encoding and disk writes overlap the forward pass.

    A failed call (a full disk) is re-raised in the caller's thread at its next call or at close().
    """

    def __init__(self, sink: Sink, depth: int = 2) -> None:
        self.sink = sink
        self.seconds = 0.0
        self._calls: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="sbert-writer", daemon=True)
        self._thread.start()

    def start_shard(self, index: int) -> None:
        self._submit(self.sink.start_shard, index)

    def write(self, records: list[Record], vectors: np.ndarray, n_tokens: list[int]) -> None:
        self._submit(self.sink.write, records, vectors, n_tokens)

    def reject(self, rows: list[BadRow]) -> None:
        if rows:
            self._submit(self.sink.reject, rows)

    def finish_shard(self) -> None:
        self._submit(self.sink.finish_shard)

    def close(self) -> None:
        """Wait until every call has run; re-raise the first failure."""
        self._calls.put(None)
        self._thread.join()
        self._raise_failure()

    def abandon(self) -> None:
        """Stop without running what is still queued: the run failed and the caller aborts the sink."""
        self._abandoned = True
        self._calls.put(None)
        self._thread.join()

    def _submit(self, method: Callable[..., None], *args: Any) -> None:
        self._raise_failure()
        self._calls.put((method, args))

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            if self._error is not None or self._abandoned:
                continue  # drain: the caller will see the failure or is aborting
            method, args = call
            started = time.perf_counter()
            try:
                method(*args)
            except BaseException as error:  # handed to the caller's thread
                self._error = error
            self.seconds += time.perf_counter() - started


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Run `items` in a background thread, at most `depth` items ahead; its exceptions re-raise here."""
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(_DONE)
        except BaseException as error:  # handed to the consumer, which re-raises it in the main thread
            slots.put(_Failure(error))

    thread = threading.Thread(target=produce, name="sbert-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        # Unblock a producer waiting on a full queue and let it finish its current item; one blocked
        # on a read that never returns (an idle stdin) is a daemon and is left behind after a while.
        deadline = time.monotonic() + 5.0
        while thread.is_alive() and time.monotonic() < deadline:
            try:
                slots.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)
