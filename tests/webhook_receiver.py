"""A real HTTP server that receives webhooks in tests, answering as each test tells it to."""

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived


class Receiver:
    """Listens on 127.0.0.1; answers each POST with the next of `statuses` (then `default`),
    after holding it `hang` seconds; records every request. With `tls`, it speaks HTTPS and
    its URL names it `localhost`."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.statuses: list[int] = []
        self.default = 204
        self.hang = 0.0
        self.requests: list[Received] = []
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append(Received(self.path, headers, body, time.monotonic()))
                status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                if receiver.hang:
                    receiver._released.wait(receiver.hang)
                self.send_response(status)
                self.send_header("content-length", "0")
                if 300 <= status < 400:
                    self.send_header("location", "/elsewhere")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{self.server.server_port}"
        else:
            self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()  # lets hanging handlers answer
        self.server.shutdown()
        self.server.server_close()

    def wait_for(
        self, check: Callable[[list[Received]], bool], timeout: float = 20
    ) -> list[Received]:
        """Poll until `check(requests)` holds; the requests so far."""
        deadline = time.monotonic() + timeout
        while not check(list(self.requests)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver got only {len(self.requests)} requests")
            time.sleep(0.02)
        return list(self.requests)
