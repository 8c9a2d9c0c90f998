"""The run's two helper threads: the next window prepared ahead (prefetch) and the last one written behind (BackgroundSink)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from sbert_cli.io.readers import BadRow, Record

if TYPE_CHECKING:
    from sbert_cli.io.sinks import Sink

T = TypeVar("T")


class BackgroundSink:
    """Runs a sink's calls in order on a writer thread, so Parquet encoding and disk writes overlap the forward pass;
    it follows the shards as the run crosses from one into the next.

    One window is written at a time: write() waits until the sink is done with the previous calls, so the
    window being written is the only one behind the one being encoded. A failed call (a full disk) is
    re-raised in the caller's thread at its next call or at close().
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.seconds = 0.0
        self.shard: int | None = None  # the shard the run is in (entered, not yet ended)
        self.shards_written = self.shards_resumed = 0
        self._calls: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="sbert-writer", daemon=True)
        self._thread.start()

    def enter(self, shard: int) -> bool:
        """Move to `shard`, finishing (publishing) the shard before it first. False when an earlier run finished
        `shard` (--resume): its rows are read past, nothing is written for them."""
        if shard == self.shard:
            return shard not in self.sink.done
        self.end_shard()
        self.shard = shard
        if shard in self.sink.done:
            self.shards_resumed += 1
            return False
        self._submit(self.sink.start_shard, shard)
        return True

    def end_shard(self) -> None:
        """Finish the shard being written, if any (a shard an earlier run finished is not written again)."""
        if self.shard is not None and self.shard not in self.sink.done:
            self._submit(self.sink.finish_shard)
            self.shards_written += 1
        self.shard = None

    def write(self, records: list[Record], vectors: np.ndarray, n_tokens: list[int]) -> None:
        self._calls.join()  # the last window is written (and freed) before this one is handed over
        self._submit(self.sink.write, records, vectors, n_tokens)

    def reject(self, rows: list[BadRow]) -> None:
        if rows:
            self._submit(self.sink.reject, rows)

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
        while True:
            call = self._calls.get()
            try:
                if call is None:
                    return
                if self._error is not None or self._abandoned:
                    continue  # drain: the caller will see the failure or is aborting
                method, args = call
                started = time.perf_counter()
                try:
                    method(*args)
                except BaseException as error:  # handed to the caller's thread
                    self._error = error
                self.seconds += time.perf_counter() - started
            finally:
                del call  # a written window's arrays are freed now, not when the next call arrives
                self._calls.task_done()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Run `items` in a background thread, at most `depth` items ahead of the consumer (the one being made
    counts): the next item is started only once the consumer has taken the one before. Its exceptions
    re-raise here."""
    ready: queue.Queue[Any] = queue.Queue()
    room = threading.Semaphore(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            iterator = iter(items)
            while True:
                while not room.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                item = next(iterator, _DONE)
                ready.put(item)
                if item is _DONE:
                    return
        except BaseException as error:  # handed to the consumer, which re-raises it in the main thread
            ready.put(_Failure(error))

    thread = threading.Thread(target=produce, name="sbert-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            room.release()
            yield item
            del item  # not kept alive while the next one is awaited
    finally:
        stop.set()
        room.release()  # wake a producer waiting for room, so it sees the stop
        # Let the producer finish its current item; one blocked on a read that never returns (an idle
        # stdin) is a daemon and is left behind after a while.
        thread.join(timeout=5.0)
