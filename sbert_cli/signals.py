"""Stopping cleanly: SIGINT and SIGTERM ask a run to stop after its current batch; a second one stops it at once."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sbert_cli.errors import Interrupted


@contextmanager
def stop_on_signals(kept: str | None) -> Iterator[Callable[[], None]]:
    """Yields the check the runner calls between batches; `kept` names the directory whose finished shards stay."""
    received: list[int] = []

    def request_stop(signum: int, frame: object) -> None:
        received.append(signum)
        if len(received) > 1:
            raise Interrupted(_stopped_message(signum, kept), 128 + signum)

    def check_stop() -> None:
        if received:
            raise Interrupted(_stopped_message(received[0], kept), 128 + received[0])

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield check_stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped_message(signum: int, kept: str | None) -> str:
    name = signal.Signals(signum).name
    if kept is None:
        return f"stopped by {name}; no output was written"
    return f"stopped by {name}; finished shards are kept in {kept}, rerun with --resume to finish"
