"""One run per output: an advisory flock, which the kernel drops the moment its holder exits or is killed."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sbert_cli.errors import OutputError


@contextmanager
def output_lock(lock_file: Path, target: str, remove: bool) -> Iterator[None]:
    """Hold `lock_file` for the run or refuse at once, naming the holder; `remove` deletes it afterwards.

    The holder's pid and host are written into the file only for that message: the lock itself is the
    kernel's, so a crashed run leaves nothing to clean up.
    """
    fd = _acquire(lock_file, target)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        if remove:
            try:
                os.unlink(lock_file)  # still held, so no other run can hold this inode in between
            except OSError:
                pass
        os.close(fd)


def _acquire(lock_file: Path, target: str) -> int:
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"{target}: cannot create the lock file {lock_file} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(f"{target}: another sbert run ({holder}) is writing this output; wait for it to finish") from None
        # The run we waited behind may have removed the file after we opened it: lock the file at the path.
        try:
            if os.fstat(fd).st_ino == os.stat(lock_file).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _holder(fd: int) -> str:
    try:
        pid, _, host = os.pread(fd, 256, 0).decode("utf-8", "replace").strip().partition(" ")
    except OSError:
        return "pid unknown"
    return f"pid {pid} on {host}" if pid and host else "pid unknown"
