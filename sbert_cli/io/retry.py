"""Transient failures of an object store (a 5xx answer, SlowDown, a reset or silent connection) retried with bounded
backoff. One figure bounds it: no new attempt starts once RETRY_SECONDS have passed since the first failed, so a
store that keeps failing is given up after that long (plus, at most, one request's wait for a byte)."""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

RETRY_SECONDS = 60.0  # SBERT_STORE_RETRY_SECONDS overrides it
FIRST_DELAY, MOST_DELAY = 0.25, 8.0  # the backoff: doubled after each failure, up to MOST_DELAY
# Failures a later attempt can cure. A definite answer (no such key or bucket, access denied, a malformed request)
# is never retried: trying again cannot change it.
_TRANSIENT = re.compile(
    r"SLOW_DOWN|SlowDown|HTTP status 5\d\d|NETWORK_CONNECTION|INTERNAL_FAILURE|SERVICE_UNAVAILABLE|THROTTLING|"
    r"REQUEST_TIME_?OUT|curlCode|[Cc]onnection (reset|refused|aborted)|Server returned nothing|Broken pipe|timed out|"
    r"size differs"
)
_GIVEN_UP: dict[str, tuple[OSError, float]] = {}  # where -> the failure given up on, and until when it stands


def retry_seconds() -> float:
    value = os.environ.get("SBERT_STORE_RETRY_SECONDS", "")
    try:
        return max(0.0, float(value)) if value else RETRY_SECONDS
    except ValueError:
        return RETRY_SECONDS


def transient(error: BaseException) -> bool:
    """Whether another attempt may succeed where this one failed."""
    return isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and bool(_TRANSIENT.search(str(error)))


def retried(action: Callable[[], T], where: str) -> T:
    """`action()`, tried again after each transient failure until RETRY_SECONDS have passed; the last failure is then
    raised, marked with how long it was retried (`sbert_retried`). Once given up, requests to the same place fail at
    once for as long again, so that a run's clean-up (its lease, its temporaries) does not wait out the same outage."""
    given_up = _GIVEN_UP.get(where)
    if given_up is not None and time.monotonic() < given_up[1]:
        raise given_up[0]
    started = time.monotonic()
    delay = FIRST_DELAY
    while True:
        try:
            return action()
        except OSError as error:
            if not transient(error):
                raise
            now = time.monotonic()
            if now + delay - started > retry_seconds():
                error.sbert_retried = now - started  # type: ignore[attr-defined]
                _GIVEN_UP[where] = (error, now + retry_seconds())
                raise
            time.sleep(delay)
            delay = min(delay * 2, MOST_DELAY)


class RetryingReader(io.RawIOBase):
    """A store object read from start to end, whose reading goes on after a transient failure: the object is opened
    again where the failed read began. `tell()` is how far it has read (the progress bar's position)."""

    def __init__(self, open_at: Callable[[int], Any], where: str) -> None:
        super().__init__()
        self._open_at, self._where = open_at, where
        self._position = 0
        self._native: Any = retried(lambda: open_at(0), where)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        def read() -> int:
            if self._native is None:
                self._native = self._open_at(self._position)
            try:
                return int(self._native.readinto(buffer))
            except OSError:
                self._close_native()  # the stream is lost: the next attempt opens the object again here
                raise

        count = retried(read, self._where)
        self._position += count
        return count

    def tell(self) -> int:
        return self._position

    def _close_native(self) -> None:
        native, self._native = self._native, None
        try:
            native.close()
        except OSError:
            pass

    def close(self) -> None:
        if self._native is not None:
            self._close_native()
        super().close()


class RetryingFile(io.RawIOBase):
    """A store object with random access (a Parquet file: its footer, then its column chunks), each read retried."""

    def __init__(self, native: Any, where: str) -> None:
        super().__init__()
        self._native, self._where = native, where
        self._position = 0
        self._size: int = retried(native.size, where)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def size(self) -> int:
        return self._size

    def readinto(self, buffer: Any) -> int:
        wanted = min(len(buffer), max(0, self._size - self._position))
        if wanted == 0:
            return 0
        data = retried(lambda: self._native.read_at(wanted, self._position), self._where)
        count = len(data)
        memoryview(buffer)[:count] = data
        self._position += count
        return count

    def close(self) -> None:
        self._native.close()
        super().close()
