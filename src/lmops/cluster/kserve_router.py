"""The KServe stand-in's router: plays Knative's route (Istio / Kourier in a real cluster) for one
InferenceService: its one URL, with the traffic split between the revisions' Services by the percents of
``status.components.predictor.traffic``.

An HTTP reverse proxy in the stand-in's process, listening on the node's address (reachable from this
machine and from pods). The split is deterministic rather than random, so a test can check the ratio over
a small number of requests: of every 100 requests, exactly ``percent`` go to each backend, interleaved.
It proxies requests and responses as they are (streamed responses too) and adds nothing: no retries, no
queueing, no autoscaling (Knative's activator and queue-proxy are not played).
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
UPSTREAM_TIMEOUT_S = 600  # a long generation is not an error


class Router:
    """One InferenceService's URL: ``set_routes([(backend_url, percent), ...])`` changes where it sends."""

    def __init__(self, host: str, name: str = ""):
        self.name = name
        self._routes: list[tuple[str, int]] = []
        self._count = 0
        self._served: dict[str, int] = {}
        self._lock = threading.Lock()
        router = self

        class Handler(_ProxyHandler):
            def backend(self) -> str | None:
                return router.pick()

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name=f"router-{name}")
        self._thread.start()

    def set_routes(self, routes: list[tuple[str, int]]) -> None:
        routes = [r for r in routes if r[1] > 0]
        with self._lock:
            if routes != self._routes:
                self._routes, self._count, self._served = routes, 0, {}

    def pick(self) -> str | None:
        """The backend of the next request: the one furthest behind its share so far (smooth weighted
        round robin: after every 100 requests each backend has had exactly its percent)."""
        with self._lock:
            if not self._routes:
                return None
            self._count += 1
            total = sum(p for _, p in self._routes)
            url = max(self._routes, key=lambda r: self._count * r[1] / total - self._served.get(r[0], 0))[0]
            self._served[url] = self._served.get(url, 0) + 1
            return url

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

    def backend(self) -> str | None:  # set by Router
        raise NotImplementedError

    def log_message(self, format, *args):  # noqa: A002 - the base class' name
        pass  # one line per request would drown the stand-in's log

    def _proxy(self) -> None:
        target = self.backend()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if self.command != "GET" else b""
        if target is None:
            return self._reply(503, b"no revision of this InferenceService is ready to take traffic\n")
        parts = urlsplit(target)
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=UPSTREAM_TIMEOUT_S)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
        headers["Host"] = parts.netloc
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
        except OSError as e:
            conn.close()
            return self._reply(502, f"revision at {target} unreachable: {e}\n".encode())
        try:
            length = resp.getheader("Content-Length")
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            if length is not None:
                self.send_header("Content-Length", length)
            else:  # streamed (chunked upstream): the end of the body is the end of the connection
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            while chunk := resp.read1(65536):
                self.wfile.write(chunk)
                if length is None:
                    self.wfile.flush()
        except OSError:
            self.close_connection = True
        finally:
            conn.close()

    def _reply(self, code: int, text: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _proxy
