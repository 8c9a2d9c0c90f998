"""The runner: reader -> windows -> cache -> token-budget batches -> encoder -> sink, in input order; it only loops."""

from __future__ import annotations

import ctypes
import functools
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from sbert_cli.batching import BatchPlan, iter_windows
from sbert_cli.errors import InputDataError, ModelError
from sbert_cli.readers import BadRow, Extent, Record, iter_rows, split_window

if TYPE_CHECKING:
    from sbert_cli.cache import Profile, VectorCache
    from sbert_cli.encoder import Encoder, ModelHandle, ModelInfo, Tokenized
    from sbert_cli.job import EncodeJob, ModelOptions
    from sbert_cli.sinks import Sink

T = TypeVar("T")
STAGES = ("read", "cache", "tokenize", "forward", "write")


@dataclass
class EncodeStats:
    """What a run did and where its time went (stage seconds overlap: they run in separate threads)."""

    rows: int = 0
    rejected: int = 0
    resumed_rows: int = 0
    shards_written: int = 0
    shards_resumed: int = 0
    truncated: int = 0
    cached: int = 0  # rows whose vector came from the cache
    repeated: int = 0  # rows whose text came earlier in the same window
    encoded: int = 0  # texts that went through the model
    real_tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    fp32_rows: int = 0  # rows whose vectors were not finite at the run's precision, re-run at fp32
    out_of_memory: int = 0  # batches that ran out of device memory and were re-cut smaller
    token_budget: int | None = None  # the padded tokens a batch may hold after out-of-memory cut it down
    load_seconds: float = 0.0
    seconds: float = 0.0
    nothing_to_do: bool = False
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class Progress(Protocol):
    """Told after every batch how many more rows are done and how far into the input the reader is."""

    def advance(self, rows: int, position: int | None, extent: Extent) -> None: ...


def _on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Hooks:
    """How the caller watches a run: a stop check between batches (it raises to stop), progress, and where
    a notice goes (the token budget cut down by out-of-memory)."""

    check_stop: Callable[[], None] = lambda: None
    progress: Progress | None = None
    notice: Callable[[str], None] = _on_stderr


class ModelSource:
    """The run's model, loaded the first time a text must be encoded (a run the cache answers never loads it),
    and what its device has shown it can take: the token budget that out-of-memory has cut down, if it has."""

    def __init__(
        self,
        info: ModelInfo,
        load: Callable[[], Encoder],
        *,
        cache: VectorCache | None = None,
        handle: ModelHandle | None = None,
        notice: Callable[[str], None] = _on_stderr,
    ) -> None:
        self.info = info
        self.cache = cache
        self.load_seconds = 0.0
        self.token_budget: int | None = None  # None: the plan's own
        self.notice = notice  # told once when the budget is first cut down; a no-op under --quiet
        self._load = load
        self._handle = handle
        self._encoder: Encoder | None = None
        self._profile: Profile | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, model: Encoder | ModelSource) -> ModelSource:
        """A source for an encoder already loaded (the Python API, sim and evaluate's tests, Ray actors)."""
        return model if isinstance(model, ModelSource) else cls(model.info, lambda: model)

    @classmethod
    def for_handle(cls, handle: ModelHandle, cache: VectorCache | None, notice: Callable[[str], None] = _on_stderr) -> ModelSource:
        return cls(handle.info, handle.load, cache=cache, handle=handle, notice=notice)

    def plan(self, plan: BatchPlan) -> BatchPlan:
        """`plan` within the token budget the device has shown it can take."""
        return plan.with_token_budget(self.token_budget)

    def cut_budget(self, failed_tokens: int, stats: EncodeStats) -> None:
        """A batch of `failed_tokens` padded tokens ran out of device memory: batches hold at most half that from now on."""
        budget = max(1, failed_tokens // 2)
        if self.token_budget is None:
            self.notice(
                f"sbert: out of GPU memory on a batch of {failed_tokens:,} padded tokens; batches hold at most "
                f"{budget:,} padded tokens for the rest of the run"
            )
        self.token_budget = budget if self.token_budget is None else min(budget, self.token_budget)
        stats.out_of_memory += 1
        stats.token_budget = self.token_budget

    def encoder(self) -> Encoder:
        with self._lock:
            if self._encoder is None:
                started = time.perf_counter()
                self._encoder = self._load()
                self.load_seconds = time.perf_counter() - started
            return self._encoder

    def profile(self) -> Profile:
        """The cache profile: the model files' fingerprint plus every option that changes a vector."""
        assert self.cache is not None and self._handle is not None
        if self._profile is None:
            info = self.info
            description = {"pooling": info.pooling, "normalize": info.normalize, "max_length": info.max_length, "precision": info.precision}
            self._profile = self.cache.profile(info.name, self._handle.directory, description)
        return self._profile


@dataclass
class TextWork:
    """A window's texts reduced to the distinct ones, with what the cache already knows and what is left to encode."""

    slots: np.ndarray  # row -> index of its text among the distinct texts
    texts: list[str]  # the distinct texts
    vectors: np.ndarray  # [distinct, dim], filled from the cache now and by the encoder later
    n_tokens: np.ndarray  # untruncated token counts of the distinct texts
    missing: list[int]  # distinct texts the cache did not have
    plan: BatchPlan  # what the batches were cut by
    tokens: Tokenized | None = None  # of the missing texts
    batches: list[np.ndarray] = field(default_factory=list)  # indices into `tokens`


def prepare_texts(texts: list[str], source: ModelSource, plan: BatchPlan, stats: EncodeStats) -> TextWork:
    """Deduplicate, look up the cache, tokenize and batch what is left (runs ahead, in the reading thread)."""
    distinct: dict[str, int] = {}
    slots = np.fromiter((distinct.setdefault(text, len(distinct)) for text in texts), dtype=np.int64, count=len(texts))
    unique = list(distinct)
    vectors, n_tokens = np.zeros((len(unique), source.info.dim), np.float32), np.zeros(len(unique), np.int64)
    work = TextWork(slots, unique, vectors, n_tokens, list(range(len(unique))), source.plan(plan))
    stats.repeated += len(texts) - len(unique)
    if source.cache is not None and unique:
        started = time.perf_counter()
        found = source.cache.lookup(source.profile(), unique, source.info.dim)
        for index, (vector, count) in found.items():
            work.vectors[index], work.n_tokens[index] = vector, count
        work.missing = [index for index in range(len(unique)) if index not in found]
        stats.cached += int(np.isin(slots, list(found)).sum()) if found else 0
        stats.stage_seconds["cache"] += time.perf_counter() - started
    if work.missing:
        encoder = source.encoder()  # loaded on the first miss; its load time is reported apart
        started = time.perf_counter()
        work.tokens = encoder.tokenize([unique[index] for index in work.missing])
        work.n_tokens[work.missing] = work.tokens.n_tokens
        work.batches = work.plan.cut(work.tokens.lengths)
        stats.stage_seconds["tokenize"] += time.perf_counter() - started
    return work


def finish_texts(
    work: TextWork,
    source: ModelSource,
    stats: EncodeStats,
    *,
    hooks: Hooks = Hooks(),
    on_batch: Callable[[float], None] | None = None,
    name_row: Callable[[int], str] | None = None,
) -> np.ndarray:
    """Encode what prepare_texts left, store it in the cache, and return one vector per row of the window.

    `name_row` names a row of the window (by its position) in an error about it.
    """
    if work.tokens is not None:
        tokens = work.tokens
        done = 0

        def after_batch(rows: int) -> None:
            nonlocal done
            hooks.check_stop()
            return_freed_memory()
            done += rows
            if on_batch is not None:
                on_batch(min(1.0, done / len(tokens)))

        def name_missing(index: int) -> str:
            position = int(np.flatnonzero(work.slots == work.missing[index])[0])
            return name_row(position) if name_row is not None else f"text {position + 1}"

        plan = source.plan(work.plan)
        batches = work.batches if plan == work.plan else plan.cut(tokens.lengths)  # the budget was cut since
        started = time.perf_counter()
        # Without cache hits the encoder writes into the window's own array: no second copy of its vectors.
        everything = len(work.missing) == len(work.texts)
        vectors = work.vectors if everything else np.zeros((len(tokens), source.info.dim), dtype=np.float32)
        embed_tokens(tokens, batches, vectors, source, plan, stats, after_batch=after_batch, name_row=name_missing)
        if not everything:
            work.vectors[work.missing] = vectors
        stats.stage_seconds["forward"] += time.perf_counter() - started
        stats.encoded += len(tokens)
        stats.real_tokens += int(tokens.lengths.sum())
        if source.cache is not None:
            started = time.perf_counter()
            missing_texts = [work.texts[index] for index in work.missing]
            source.cache.store(source.profile(), missing_texts, work.vectors[work.missing], tokens.n_tokens)
            stats.stage_seconds["cache"] += time.perf_counter() - started
    return work.vectors if len(work.texts) == len(work.slots) else work.vectors[work.slots]  # no repeats: rows are the texts


def return_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel (glibc's malloc_trim; nothing where the C library is another).

    glibc returns only the top of its heap by itself, and a forward pass's activations of many sizes leave
    free holes below long-lived blocks (oneDNN's kernels, created as new shapes come): on bert-base, 30,000
    rows peaked at 1.73 GiB, 0.4 GiB of it free memory. Called after every batch: it costs 0.2 ms, and no
    measurable time once the pages are faulted in again.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def embed_tokens(
    tokens: Tokenized,
    batches: list[np.ndarray],
    vectors: np.ndarray,
    source: ModelSource,
    plan: BatchPlan,
    stats: EncodeStats,
    *,
    after_batch: Callable[[int], None],
    name_row: Callable[[int], str],
) -> None:
    """Every tokenized text's vector into `vectors` [texts, dim], in their order.

    A batch that runs out of device memory halves the token budget for the rest of the run and what is left is
    re-cut; only a row that cannot fit alone fails the run. A row whose vector is not finite (an fp16
    overflow) is re-run at fp32, so no NaN or inf is ever written.
    """
    lengths = tokens.lengths

    def run_within_memory(encoder: Encoder, pending: list[np.ndarray], after_batch: Callable[[int], None]) -> None:
        while pending:
            ran = encoder.embed_batches(tokens, pending, vectors, after_batch)
            stats.batches += ran
            stats.padded_tokens += sum(int(lengths[rows].max()) * len(rows) for rows in pending[:ran])
            if ran == len(pending):
                return
            failed = pending[ran]
            longest = int(lengths[failed].max())
            if len(failed) == 1:
                raise ModelError(f"{name_row(int(failed[0]))}: out of GPU memory on this text alone ({longest} tokens); pass --max-length lower")
            source.cut_budget(longest * len(failed), stats)
            rest = np.concatenate(pending[ran:])
            pending = [rest[rows] for rows in source.plan(plan).cut(lengths[rest])]

    encoder = source.encoder()
    run_within_memory(encoder, batches, after_batch)
    overflowed = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if overflowed.size:
        fp32 = encoder.at_fp32()
        if fp32 is not encoder:
            run_within_memory(fp32, [overflowed[rows] for rows in source.plan(plan).cut(lengths[overflowed])], lambda rows: None)
            stats.fp32_rows += len(overflowed)
            overflowed = overflowed[~np.isfinite(vectors[overflowed]).all(axis=1)]
        if overflowed.size:
            raise ModelError(f"{name_row(int(overflowed[0]))}: the model's vector is not finite even at fp32; its weights may be damaged")


def embed_texts(texts: list[str], model: Encoder | ModelSource, plan: BatchPlan = BatchPlan()) -> np.ndarray:
    """Vectors for an in-memory list of texts (sim, evaluate, the Python API), in the list's order."""
    source = ModelSource.of(model)
    if not texts:
        return np.zeros((0, source.info.dim), dtype=np.float32)
    stats = EncodeStats()
    plan = plan.for_device(source.info.device)
    parts: list[np.ndarray] = []
    start = 0
    for window in iter_windows(texts, plan.chunk_size or len(texts)):
        work = prepare_texts(window, source, plan, stats)
        parts.append(finish_texts(work, source, stats, name_row=lambda position, start=start: _quoted(texts, start + position)))
        start += len(window)
    return np.concatenate(parts)


def _quoted(texts: list[str], index: int) -> str:
    text = texts[index]
    return f"text {index + 1} ('{text[:20]}{'...' if len(text) > 20 else ''}')"


@dataclass
class _Window:
    shard: int
    rows: int
    position: int | None
    records: list[Record]
    rejects: list[BadRow]
    work: TextWork | None


@dataclass(frozen=True)
class RunReport:
    """What the summary needs: the run's figures, what the vectors are, and where rejected rows went."""

    stats: EncodeStats
    info: ModelInfo
    rejects: str


def run_encode(job: EncodeJob, hooks: Hooks, extent: Extent) -> RunReport:
    """The whole encode job: model, cache and sink are built elsewhere; this only connects them."""
    from sbert_cli.encoder import open_model
    from sbert_cli.manifest import DirectoryLayout, recorded_precision
    from sbert_cli.sinks import open_sink

    options = job.model
    if job.resume and options.precision == "auto" and job.output.kind == "directory":
        # A resumed directory keeps the precision it started with, even on a machine that would pick another.
        options = replace(options, precision=recorded_precision(DirectoryLayout(Path(job.output.path))) or "auto")
    handle = open_model(options)
    cache = open_cache(job.cache)
    started = time.perf_counter()
    with open_sink(job, handle.info) as sink:
        if sink.complete:
            return RunReport(EncodeStats(nothing_to_do=True), handle.info, sink.rejects_shown)
        source = ModelSource.for_handle(handle, cache, hooks.notice)
        plan = job.plan.for_device(handle.info.device)
        stats = encode_rows(
            iter_rows(job.input, extent), source=source, sink=sink, plan=plan, skip_bad_rows=job.skip_bad_rows, hooks=hooks, extent=extent,
            input_name=job.input.name,
        )
        if stats.rows + stats.rejected + stats.resumed_rows == 0:
            raise InputDataError(f"{job.input.name}: no rows to encode")
        sink.finish()
    stats.load_seconds, stats.seconds = source.load_seconds, time.perf_counter() - started
    return RunReport(stats, handle.info, sink.rejects_shown)


def model_source(options: ModelOptions, cache_path: str | None, notice: Callable[[str], None] = _on_stderr) -> ModelSource:
    """The model for sim and evaluate: described now, loaded only if the cache cannot answer."""
    from sbert_cli.encoder import open_model

    return ModelSource.for_handle(open_model(options), open_cache(cache_path), notice)


def open_cache(path: str | None) -> VectorCache | None:
    if path is None:
        return None
    from sbert_cli.cache import VectorCache

    return VectorCache(path)


def encode_rows(
    rows: Iterable[Record | BadRow],
    *,
    source: ModelSource,
    sink: Sink,
    plan: BatchPlan,
    skip_bad_rows: bool,
    hooks: Hooks,
    extent: Extent,
    input_name: str = "input",
) -> EncodeStats:
    """Stream rows through the model into the sink, shard by shard; memory holds a few windows, never the input.

    A bad row fails the run unless `skip_bad_rows`, when it goes to the sink's rejects. Shards the sink
    already has (a resumed run) are read past without tokenizing or encoding.
    """
    stats = EncodeStats()
    windows = _windows(rows, source=source, sink=sink, plan=plan, skip_bad_rows=skip_bad_rows, stats=stats, extent=extent)
    writer = BackgroundSink(sink)
    tracker = _ProgressTracker(hooks.progress, extent)
    current: int | None = None
    try:
        # Reading, deduplicating, looking up and tokenizing the next window, and writing the last one, overlap this
        # one's forward pass. Those three are the only windows in memory: prefetch starts the next one only once
        # this one is taken, and the writer takes a window only once it has written the last.
        for window in prefetch(windows, depth=1):
            on_batch = tracker.start(window)
            if window.shard in sink.done:
                stats.shards_resumed += 1 if window.shard != current else 0
                stats.resumed_rows += window.rows
                current = window.shard
                tracker.window_done(window)
                continue
            if window.shard != current:
                if current is not None and current not in sink.done:
                    writer.finish_shard()
                    stats.shards_written += 1
                writer.start_shard(window.shard)
                current = window.shard
            _encode_window(window, source, writer, stats, hooks=hooks, on_batch=on_batch, input_name=input_name)
            tracker.window_done(window)
            hooks.check_stop()
            del window, on_batch  # the writer holds what it still needs; the window's tokens and texts go now
        if current is not None and current not in sink.done:
            writer.finish_shard()
            stats.shards_written += 1
        writer.close()
    except BaseException:
        writer.abandon()
        raise
    stats.stage_seconds["write"] = writer.seconds
    return stats


def _encode_window(
    window: _Window,
    source: ModelSource,
    writer: BackgroundSink,
    stats: EncodeStats,
    *,
    hooks: Hooks,
    on_batch: Callable[[float], None] | None,
    input_name: str,
) -> None:
    writer.reject(window.rejects)
    stats.rejected += len(window.rejects)
    if window.work is not None:

        def name_row(position: int) -> str:
            record = window.records[position]
            return f"{input_name}: row {record.row}" + (f" (id {record.id})" if record.id != record.row else "")

        vectors = finish_texts(window.work, source, stats, hooks=hooks, on_batch=on_batch, name_row=name_row)
        n_tokens = window.work.n_tokens[window.work.slots]
        stats.truncated += int((n_tokens > source.info.max_length).sum())
        writer.write(window.records, vectors, n_tokens.tolist())
        stats.rows += len(window.records)


def _windows(
    rows: Iterable[Record | BadRow], *, source: ModelSource, sink: Sink, plan: BatchPlan, skip_bad_rows: bool, stats: EncodeStats, extent: Extent
) -> Iterator[_Window]:
    """Windows of rows that never span two shards, each prepared up to its forward pass."""
    iterator = iter_windows(rows, plan.chunk_size, key=lambda item: sink.shard_of(item.row))
    while True:
        started = time.perf_counter()
        window = next(iterator, None)
        stats.stage_seconds["read"] += time.perf_counter() - started
        if window is None:
            return
        position = extent.now()
        shard = sink.shard_of(window[0].row)
        if shard in sink.done:
            yield _Window(shard, len(window), position, [], [], None)
            continue
        records, rejects = split_window(window, skip_bad_rows)
        work = prepare_texts([record.text for record in records], source, plan, stats) if records else None
        yield _Window(shard, len(window), position, records, rejects, work)


class _ProgressTracker:
    """Spreads each window's rows and bytes over its batches, so the bar moves during a window, not after it."""

    def __init__(self, progress: Progress | None, extent: Extent) -> None:
        self.progress = progress
        self.extent = extent
        self.rows = 0
        self.position = 0
        self._start = (0, 0)

    def start(self, window: _Window) -> Callable[[float], None] | None:
        """Note where a window starts; the callback reports the share of its batches done."""
        self._start = (self.rows, self.position)
        if self.progress is None:
            return None
        return lambda fraction: self._report(window, fraction)

    def window_done(self, window: _Window) -> None:
        if self.progress is not None:
            self._report(window, 1.0)

    def _report(self, window: _Window, fraction: float) -> None:
        assert self.progress is not None
        start_rows, start_position = self._start
        end = window.position if window.position is not None else start_position
        rows, position = start_rows + int(window.rows * fraction), int(start_position + (end - start_position) * fraction)
        known = position if window.position is not None else None
        self.progress.advance(rows - self.rows, known, self.extent)
        self.rows, self.position = rows, position


class BackgroundSink:
    """Runs a sink's calls in order on a writer thread, so Parquet encoding and disk writes overlap the forward pass.

    One window is written at a time: write() waits until the sink is done with the previous calls, so the
    window being written is the only one behind the one being encoded. A failed call (a full disk) is
    re-raised in the caller's thread at its next call or at close().
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.seconds = 0.0
        self._calls: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="sbert-writer", daemon=True)
        self._thread.start()

    def start_shard(self, index: int) -> None:
        self._submit(self.sink.start_shard, index)

    def write(self, records: list[Record], vectors: np.ndarray, n_tokens: list[int]) -> None:
        self._calls.join()  # the last window is written (and freed) before this one is handed over
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
