"""A TCP proxy in front of a test's registry, to make it misbehave: answer the first
connections with 500, forward slowly, or cut every connection once a request line is seen
(the registry "goes away") and refuse new ones.

Threads and plain sockets: the product runs its own event loop in a subprocess; this must
keep forwarding while the test thread waits on it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_BODY = b'{"errors":[{"code":"UNKNOWN","message":"test fault"}]}'
ERROR_500 = (
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(_BODY)}\r\nConnection: close\r\n\r\n".encode()
    + _BODY
)
READ_SIZE = 64 * 1024


class FaultProxy:
    """Listens on 127.0.0.1 (``host``) and forwards to ``upstream`` (HOST:PORT)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.fail_connections = 0  # the next N connections: one 500, then closed
        self.failed = 0  # connections answered with 500 so far
        self.delay = 0.0  # seconds slept per forwarded read, each way
        self.cut_on: bytes | None = None  # a request line holding this: the registry goes
        self.cut = threading.Event()  # set once cut: every connection closed, new refused
        self.seen: list[bytes] = []  # request lines seen (the first line of each read)
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with self._lock:
            if self.cut.is_set():
                client.close()
                return
            failing = self.fail_connections > 0
            if failing:
                self.fail_connections -= 1
                self.failed += 1
        if failing:
            with contextlib.suppress(OSError):
                client.recv(READ_SIZE)  # the request's head (at least its start)
                client.sendall(ERROR_500)
            client.close()
            return
        try:
            upstream = socket.create_connection(self._upstream)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets += [client, upstream]
        answers = threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True)
        answers.start()
        self._pump(client, upstream, True)
        answers.join()
        with self._lock:
            for sock in (client, upstream):
                if sock in self._sockets:
                    self._sockets.remove(sock)
                sock.close()

    def _pump(self, source: socket.socket, target: socket.socket, requests: bool) -> None:
        try:
            while data := source.recv(READ_SIZE):
                if requests:
                    line = data.split(b"\r\n", 1)[0]
                    if line[:1].isupper() and b" HTTP/1." in line:
                        self.seen.append(line)
                    if self.cut_on is not None and self.cut_on in line:
                        self.cut_all()
                        return
                if self.delay:
                    time.sleep(self.delay)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut_all(self) -> None:
        """The registry goes away: every connection reset, new ones refused."""
        with self._lock:
            self.cut.set()
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._sockets.clear()

    def requests(self, method: str) -> list[bytes]:
        return [line for line in self.seen if line.startswith(method.encode() + b" ")]

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
        self.cut_all()


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
