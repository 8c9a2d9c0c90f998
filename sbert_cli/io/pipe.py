"""The far end of stdout: output that a pipe's reader never took is not a success (exit 141, as on SIGPIPE)."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import struct
import termios
from typing import IO

_CHECK_MS = 50


def confirm_delivered(stream: IO[str]) -> None:
    """Flush `stream`; when it is a pipe, wait until its reader has taken everything, or raise BrokenPipeError
    if the reader went away first.

    A write into a pipe succeeds once the bytes are in the pipe's buffer, so output smaller than the buffer
    (64 KiB on Linux) is "written" even when the reader (`| head -c 100`) has already gone: only asking the
    pipe tells a run whose rows were read from one whose rows were dropped.
    """
    stream.flush()
    try:
        fd = stream.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
    except (AttributeError, OSError, ValueError):  # not a file (a test's captured stream) or already closed
        return
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR (no reader left) is reported whatever the mask
    wait_ms = 1  # a reader that is there takes a few lines at once: asked again soon, then less and less often
    while _unread(fd):
        if poller.poll(wait_ms):
            raise BrokenPipeError(errno.EPIPE, "the reader of stdout went away before reading everything")
        wait_ms = min(2 * wait_ms, _CHECK_MS)
    if poller.poll(0):
        raise BrokenPipeError(errno.EPIPE, "the reader of stdout went away before reading everything")


def _unread(fd: int) -> int:
    """Bytes in the pipe that its reader has not taken yet (0 where the system cannot tell)."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])
    except OSError:
        return 0
