"""One run per output in an object store: a lease object beside the output, since a bucket has no flock.

S3 has no lock that pyarrow can take (a create-if-absent needs the If-None-Match header, which pyarrow's S3
filesystem does not send), so this is a lease, not a lock. A run writes `{token, pid, host, renewed}` to the lease
object, reads it back, and renews it every RENEW_SECONDS from a thread. A second run refuses while the lease is
fresh, naming the holder; a lease not renewed for LEASE_SECONDS, or held by a process that no longer runs on this
very host (a run killed by SIGKILL), is taken over. Two runs started in the same instant can both take it: each
renewal reads the lease first, and the run that finds another's token stops before it publishes anything more.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sbert_cli.errors import OutputError, SbertError, UsageError
from sbert_cli.io.storage import StorePath

LEASE_SECONDS = 300
RENEW_SECONDS = 60
_TORN = object()  # a renewal's read of something that is not a lease


@contextmanager
def output_lease(path: StorePath, target: str, notice: Callable[[str], None]) -> Iterator[Lease]:
    """Hold the lease at `path` for the run on `target`, or refuse at once naming the run that holds it."""
    lease = Lease(path, target)
    try:
        lease.take(notice)
        yield lease
    finally:
        lease.release()  # also when taking it failed half-way: a lease of ours left behind would block other hosts


class Lease:
    def __init__(self, path: StorePath, target: str) -> None:
        self.path, self.target = path, target
        self.token = uuid.uuid4().hex
        self.lost: str | None = None
        self._written = False  # whether this run ever wrote the lease (only then is there one of ours to remove)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, notice: Callable[[str], None]) -> None:
        holder = self._read()
        if holder is not None:
            age = time.time() - float(holder.get("renewed", 0))
            if _gone(holder):
                notice(f"sbert: {self.target}: took over the lease of {_who(holder)}, which is no longer running")
            elif age < LEASE_SECONDS:
                raise OutputError(
                    f"{self.target}: another sbert run ({_who(holder)}) holds this output's lease, renewed {age:.0f} s ago; "
                    f"wait for it to finish (a lease not renewed for {LEASE_SECONDS} s is taken over)"
                )
            else:
                notice(f"sbert: {self.target}: took over the lease of {_who(holder)}, not renewed for {age:.0f} s")
        self._write()
        holder = self._read()
        if holder is None:  # a definite answer that it is not there: our write did not stay; write it once more
            self._write()
            holder = self._read()
        if holder is None or holder.get("token") != self.token:
            raise OutputError(f"{self.target}: another sbert run ({_who(holder or {})}) took this output's lease at the same moment; wait for it to finish")
        self._thread = threading.Thread(target=self._renew, name="sbert-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise if another run has taken the lease: called before anything is published."""
        if self.lost is not None:
            raise OutputError(self.lost)

    def release(self) -> None:
        """Remove the lease if it is still ours (never another run's that took it over)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost is None and self._written:
            try:
                holder = self._read()
                if holder is None or holder.get("token") == self.token:
                    self.path.unlink(missing_ok=True)
            except SbertError:
                pass  # a lease left behind is taken over once it is old; the run's own outcome is what matters

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                holder = self._read(unreadable=_TORN)
                if holder is _TORN:
                    continue  # read while another write landed (bytes of two versions): neither ours nor theirs; ask again
                if holder is not None and holder.get("token") != self.token:
                    self.lost = f"{self.target}: another sbert run ({_who(holder)}) took this output's lease; this run stopped without publishing more"
                    return
                self._write()
            except SbertError:
                continue  # the store did not answer this time; the next renewal tries again

    def _read(self, unreadable: Any = None) -> Any:
        """The lease as the store holds it (a dict); None only when the store answers that there is none, and
        `unreadable` when what it holds is not a lease (not text, not JSON). A store that fails to answer raises its
        one-line error: that is no rival (io/retry.py retries it)."""
        try:
            text = self.path.read_text()
        except UsageError:  # "no such key": gone between the two requests, or never there
            if self.path.exists():
                raise
            return None
        except UnicodeDecodeError:  # a read that met a write (bytes of two versions); raised, it ended the renewal thread
            return unreadable
        try:
            data = json.loads(text)
        except ValueError:
            return unreadable
        return data if isinstance(data, dict) else unreadable

    def _write(self) -> None:
        record = {"token": self.token, "pid": os.getpid(), "host": socket.gethostname(), "renewed": time.time()}
        self._written = True  # from here on, a lease of ours may be there, even if this write seems to fail
        self.path.write_text(json.dumps(record) + "\n")


def _who(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"


def _gone(holder: dict[str, Any]) -> bool:
    """The holder ran on this host and its process is gone (killed): no need to wait for its lease to age."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
