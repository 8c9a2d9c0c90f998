"""Progress: a run's rows and bytes spread over its batches, and the bar on stderr (a percentage and ETA when the
input's size is known, rows and rows/s always)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, Protocol

from sbert_cli.io.readers import Extent


class Progress(Protocol):
    """Told after every batch how many more rows are done and how far into the input the reader is."""

    def advance(self, rows: int, position: int | None, extent: Extent) -> None: ...


class ProgressTracker:
    """Spreads each window's rows and bytes over its batches, so the bar moves during a window, not after it."""

    def __init__(self, progress: Progress | None, extent: Extent) -> None:
        self.progress = progress
        self.extent = extent
        self.rows = 0
        self.position = 0
        self._start = (0, 0)
        self._window: tuple[int, int | None] = (0, None)  # the current window's rows, and where the reader was after it

    def start(self, rows: int, position: int | None) -> Callable[[float], None] | None:
        """Note where a window of `rows` starts; the callback reports the share of its batches done."""
        self._start = (self.rows, self.position)
        self._window = (rows, position)
        if self.progress is None:
            return None
        return self._report

    def window_done(self) -> None:
        if self.progress is not None:
            self._report(1.0)

    def _report(self, fraction: float) -> None:
        assert self.progress is not None
        start_rows, start_position = self._start
        window_rows, window_position = self._window
        end = window_position if window_position is not None else start_position
        rows, position = start_rows + int(window_rows * fraction), int(start_position + (end - start_position) * fraction)
        known = position if window_position is not None else None
        self.progress.advance(rows - self.rows, known, self.extent)
        self.rows, self.position = rows, position


class ProgressBar:
    """tqdm, opened at the first batch (when the reader knows the input's size) and advanced after each batch.

    A text file is measured in bytes read, as sqlite-utils does; a Parquet file in rows from its metadata;
    stdin has no size, so it shows rows and rows/s only. tqdm redraws at most ten times a second.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.rows = 0
        self._bar: Any = None
        self._bytes = False

    def advance(self, rows: int, position: int | None, extent: Extent) -> None:
        if self._bar is None:
            self._open(extent, position)
        self.rows += rows
        if self._bytes and position is not None:
            elapsed = self._bar.format_dict["elapsed"]
            rate = f", {self.rows / elapsed:.1f} rows/s" if elapsed > 0 else ""
            self._bar.set_postfix_str(f"{self.rows} rows{rate}", refresh=False)
            self._bar.update(position - self._bar.n)
        else:
            self._bar.update(rows)

    def _open(self, extent: Extent, position: int | None) -> None:
        from tqdm import tqdm

        self._bytes = extent.unit == "bytes" and extent.total is not None and position is not None
        total = extent.total if (self._bytes or extent.unit == "rows") else None
        unit = "B" if self._bytes else " rows"
        self._bar = tqdm(total=total, unit=unit, unit_scale=self._bytes, file=self.stream, dynamic_ncols=True, smoothing=0.1, mininterval=0.1)

    def write(self, message: str) -> None:
        """A line on the stream above the bar, which is redrawn below it."""
        if self._bar is None:
            print(message, file=self.stream, flush=True)
        else:
            self._bar.write(message, file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextmanager
def progress_bar(quiet: bool, stream: IO[str] | None = None) -> Iterator[ProgressBar | None]:
    """A bar only when a person is watching stderr, and never with --quiet."""
    stream = stream or sys.stderr
    if quiet or not stream.isatty():
        yield None
        return
    bar = ProgressBar(stream)
    try:
        yield bar
    finally:
        bar.close()
