"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the test S3 server: a share of requests is answered 503
SlowDown (with S3's XML body) or has its connection reset, the rest are passed on. Bounded: it serves only while a
test holds it, on loopback, and counts what it did."""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.'
    b"</Message><RequestId>FAULTY</RequestId></Error>"
)


class FaultyProxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, rate: float, seed: int = 0, fail_first: tuple[str, ...] = ()) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream.split("://", 1)[1].rstrip("/")
        self.rate = rate
        self.fail_first = set(fail_first)  # "METHOD path-substring": the first such request is answered 503
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"passed": 0, "503": 0, "reset": 0}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def fault(self, request: str = "") -> str | None:
        with self.lock:
            for pattern in sorted(self.fail_first):
                method, _, part = pattern.partition(" ")
                if request.startswith(method + " ") and part in request:
                    self.fail_first.discard(pattern)
                    self.counts["503"] += 1
                    return "503"
            draw = self.random.random()
            if draw >= self.rate:
                self.counts["passed"] += 1
                return None
            kind = "503" if draw < self.rate / 2 else "reset"
            self.counts[kind] += 1
            return kind


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultyProxy

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _serve(self) -> None:
        body = self._body()
        fault = self.server.fault(f"{self.command} {self.path}")
        if fault == "reset":
            # RST instead of FIN: the client sees "connection reset by peer".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault == "503":
            self.send_response(503, "Slow Down")
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(SLOW_DOWN if self.command != "HEAD" else b"")
            return
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=30)
        try:
            headers = {name: value for name, value in self.headers.items() if name.lower() != "transfer-encoding"}
            headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        # A HEAD answer's length is the object's (what a client reads a size from), not its empty body's.
        self.send_header("Content-Length", answer.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body(self) -> bytes:
        """The request's body, whole (a chunked one decoded: it is passed on with a Content-Length)."""
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():  # trailers, then the blank line
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve


@contextmanager
def faulty_proxy(upstream: str, rate: float, seed: int = 0, fail_first: tuple[str, ...] = ()) -> Iterator[FaultyProxy]:
    """The proxy serving on a thread for the block, then shut down."""
    proxy = FaultyProxy(upstream, rate, seed, fail_first)
    thread = threading.Thread(target=proxy.serve_forever, name="faulty-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(timeout=10)
