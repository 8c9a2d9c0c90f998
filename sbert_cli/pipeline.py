"""The run: rows -> windows -> prepare (distinct texts, cache, tokens, batches) -> embed -> sink, with progress.

Each stage is built elsewhere; this only connects them in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sbert_cli.batching import iter_windows
from sbert_cli.embedding import ModelSource, TextWork, finish_texts, on_stderr, open_cache, prepare_texts
from sbert_cli.errors import InputDataError
from sbert_cli.io.output import open_output
from sbert_cli.io.readers import BadRow, Extent, Record, iter_rows, split_window
from sbert_cli.plan import BatchPlan
from sbert_cli.progress import Progress, ProgressTracker
from sbert_cli.repeated_ids import RepeatedIds, repeated_error
from sbert_cli.stats import EncodeStats
from sbert_cli.threads import BackgroundSink, prefetch

if TYPE_CHECKING:
    from sbert_cli.encoder import ModelHandle
    from sbert_cli.io.sinks import Sink
    from sbert_cli.job import EncodeJob
    from sbert_cli.model.description import ModelInfo
    from sbert_cli.model.options import ModelOptions


@dataclass(frozen=True)
class Hooks:
    """How the caller watches a run: a stop check between batches (it raises to stop), progress, and where
    a notice goes (the token budget cut down by out-of-memory)."""

    check_stop: Callable[[], None] = lambda: None
    progress: Progress | None = None
    notice: Callable[[str], None] = on_stderr


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


def run_encode(job: EncodeJob, model_opener: Callable[[ModelOptions], ModelHandle], hooks: Hooks, extent: Extent) -> RunReport:
    """The whole encode job: the output, the model (opened by `model_opener`), cache and rows are built elsewhere;
    this only connects them. The output is opened first: a run it continues decides the precision."""
    cache = open_cache(job.cache)
    with open_output(job.output, job.run_settings, hooks.notice) as output:
        handle = model_opener(replace(job.model, precision=output.precision(job.model.precision)))
        started = time.perf_counter()
        # int8's vectors are labelled with its quality gate's figures, known once the model is loaded: it loads first.
        early = ModelSource.for_handle(handle, cache, hooks.notice) if handle.info.precision == "int8" else None
        info = early.encoder().info if early is not None else handle.info
        with output.sink(info) as sink:
            if sink.complete:
                return RunReport(EncodeStats(nothing_to_do=True), info, sink.rejects_shown)
            source = early or ModelSource.for_handle(handle, cache, hooks.notice)
            plan = job.plan.for_device(handle.info.device)
            stats = encode_rows(
                iter_rows(job.input, extent), source=source, sink=sink, plan=plan, skip_bad_rows=job.skip_bad_rows, hooks=hooks, extent=extent,
                input_name=job.input.name, repeats=RepeatedIds() if job.input.id_column is not None else None,
            )
            if stats.rows + stats.rejected + stats.resumed_rows == 0:
                if not job.allow_empty:
                    raise InputDataError(f"{job.input.name}: no rows to encode; pass --allow-empty if an empty input is fine")
                # An empty output of the model's schema: a file with no rows; a directory gets one empty shard, so
                # that a dataset reader finds the schema there too.
                sink.start_shard(0)
                sink.finish_shard()
                stats.shards_written = 1
            sink.finish()
    stats.load_seconds, stats.seconds = source.load_seconds, time.perf_counter() - started
    stats.one_time_seconds = source.one_time_seconds
    return RunReport(stats, info, sink.rejects_shown)


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
    repeats: RepeatedIds | None = None,
) -> EncodeStats:
    """Stream rows through the model into the sink, shard by shard; memory holds a few windows, never the input.

    A bad row fails the run unless `skip_bad_rows`, when it goes to the sink's rejects. Shards the sink
    already has (a resumed run) are read past without tokenizing or encoding. `repeats`: ids checked for
    repeats over the whole input (resumed shards' rows included), which fail the run unless `skip_bad_rows`.
    """
    stats = EncodeStats()
    windows = _windows(
        rows, source=source, sink=sink, plan=plan, skip_bad_rows=skip_bad_rows, stats=stats, extent=extent, input_name=input_name, repeats=repeats
    )
    tracker = ProgressTracker(hooks.progress, extent)
    writer = BackgroundSink(sink)
    try:
        # Reading, deduplicating, looking up and tokenizing the next window, and writing the last one, overlap this
        # one's forward pass. Those three are the only windows in memory: prefetch starts the next one only once
        # this one is taken, and the writer takes a window only once it has written the last.
        for window in prefetch(windows, depth=1):
            on_batch = tracker.start(window.rows, window.position)
            if writer.enter(window.shard):
                _encode_window(window, source, writer, stats, check_stop=hooks.check_stop, on_batch=on_batch, input_name=input_name)
            else:
                stats.resumed_rows += window.rows
            tracker.window_done()
            hooks.check_stop()
            del window, on_batch  # the writer holds what it still needs; the window's tokens and texts go now
        writer.end_shard()
        writer.close()
    except BaseException:
        writer.abandon()
        raise
    stats.stage_seconds["write"] = writer.seconds
    stats.shards_written, stats.shards_resumed = writer.shards_written, writer.shards_resumed
    if repeats is not None and repeats.count:
        stats.repeated_ids = repeats.shown()
    if stats.unaccounted:  # the accounting rule: a run that lost a row fails before it publishes anything
        raise InputDataError(
            f"{input_name}: {stats.read_rows} rows read, but {stats.rows} written, {stats.rejected} rejected and "
            f"{stats.resumed_rows} done before; nothing more was published"
        )
    return stats


def _encode_window(
    window: _Window,
    source: ModelSource,
    writer: BackgroundSink,
    stats: EncodeStats,
    *,
    check_stop: Callable[[], None],
    on_batch: Callable[[float], None] | None,
    input_name: str,
) -> None:
    writer.reject(window.rejects)
    stats.rejected += len(window.rejects)
    if window.work is not None:

        def name_row(position: int) -> str:
            record = window.records[position]
            return f"{input_name}: row {record.row}" + (f" (id {record.id})" if record.id != record.row else "")

        vectors = finish_texts(window.work, source, stats, check_stop=check_stop, on_batch=on_batch, name_row=name_row)
        n_tokens = window.work.n_tokens[window.work.slots]
        stats.truncated += int((n_tokens > source.info.max_length).sum())
        writer.write(window.records, vectors, n_tokens.tolist())
        stats.rows += len(window.records)


def _windows(
    rows: Iterable[Record | BadRow], *, source: ModelSource, sink: Sink, plan: BatchPlan, skip_bad_rows: bool, stats: EncodeStats, extent: Extent,
    input_name: str, repeats: RepeatedIds | None,
) -> Iterator[_Window]:
    """Windows of rows that never span two shards, each prepared up to its forward pass."""
    iterator = iter_windows(rows, plan.chunk_size, key=lambda item: sink.shard_of(item.row))
    while True:
        started = time.perf_counter()
        window = next(iterator, None)
        stats.stage_seconds["read"] += time.perf_counter() - started
        if window is None:
            return
        # Rows are numbered by the readers, one number a data row: a gap is a row lost on the way.
        lost = next((stats.read_rows + index for index, item in enumerate(window) if item.row != stats.read_rows + index), None)
        if lost is not None:
            raise InputDataError(f"{input_name}: the reader skipped or repeated row {lost}; nothing more was published")
        stats.read_rows += len(window)
        if repeats is not None:
            good = [item for item in window if isinstance(item, Record)]
            found = repeats.add([record.id for record in good])
            if found and not skip_bad_rows:
                raise repeated_error(input_name, repeats, (good[found[0]].row, good[found[0]].id))
        position = extent.now()
        shard = sink.shard_of(window[0].row)
        if shard in sink.done:
            yield _Window(shard, len(window), position, [], [], None)
            continue
        records, rejects = split_window(window, skip_bad_rows)
        work = prepare_texts([record.text for record in records], source, plan, stats) if records else None
        yield _Window(shard, len(window), position, records, rejects, work)


