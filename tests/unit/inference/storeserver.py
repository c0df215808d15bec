"""A model store over HTTP on loopback, for cache tests: counts requests, can stall or cut off
(a sized body or a chunked one)."""

from __future__ import annotations

import http.server
import pathlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        with srv.lock:
            srv.requests.append(self.path)
        if self.path.endswith(".tar"):
            time.sleep(srv.delay_s)
            if srv.truncate_to is not None:
                data = (pathlib.Path(self.directory) / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: srv.truncate_to])
                self.wfile.flush()
                self.close_connection = True
                return
            if srv.chunked_cut_to is not None:
                self._send_chunked_cut_off(srv.chunked_cut_to)
                return
        super().do_GET()

    def _send_chunked_cut_off(self, size: int) -> None:
        """One chunk of ``size`` bytes, then the connection closes without the last chunk."""
        data = (pathlib.Path(self.directory) / self.path.lstrip("/")).read_bytes()[:size]
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()
        self.close_connection = True


class _Server(http.server.ThreadingHTTPServer):
    delay_s = 0.0
    truncate_to: int | None = None
    chunked_cut_to: int | None = None

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lock = threading.Lock()
        self.requests: list[str] = []


@contextmanager
def serve(directory: pathlib.Path) -> Iterator[_Server]:
    """Serve ``directory`` on 127.0.0.1; yields the server (its ``url`` attribute is the base URL)."""

    def handler(*args: object) -> _Handler:
        return _Handler(*args, directory=str(directory))  # type: ignore[arg-type]

    srv = _Server(("127.0.0.1", 0), handler)
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
