"""The KServe stand-in's router (Knative's route) against two real HTTP servers on 127.0.0.1: the split by
percent over real requests, bodies and streamed responses passed through, and clear errors when no revision
can take the request."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from lmops.cluster.kserve_router import Router


def _backend(name: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/stream":  # chunked, as a streamed completion is
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in (b"data: 1\n\n", b"data: 2\n\n"):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
                return
            out = name.encode() + b":" + body
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def backends():
    servers = [_backend("canary"), _backend("stable")]
    yield [url for _, url in servers]
    for server, _ in servers:
        server.shutdown()


def test_the_split_is_exact_per_hundred_requests_and_bodies_pass_through(backends):
    canary, stable = backends
    router = Router("127.0.0.1", "t/lm")
    try:
        router.set_routes([(canary, 20), (stable, 80)])
        with requests.Session() as s:
            answers = [s.post(f"{router.url}/v1/models/lm:predict", data=f"r{i}").text for i in range(100)]
        assert sum(a.startswith("canary:") for a in answers) == 20 and sum(a.startswith("stable:") for a in answers) == 80
        assert answers[7].endswith(":r7")
        assert "canary" in {a.split(":")[0] for a in answers[:5]}, "interleaved, not 80 in a row first"
        streamed = requests.post(f"{router.url}/stream", data="x", stream=True)
        assert streamed.status_code == 200 and b"".join(streamed.iter_content(None)) == b"data: 1\n\ndata: 2\n\n"

        router.set_routes([(stable, 100), (canary, 0)])  # KServe's rollback: canaryTrafficPercent 0
        assert {requests.post(router.url, data="x").text for _ in range(10)} == {"stable:x"}
    finally:
        router.close()


def test_no_ready_revision_or_an_unreachable_one_is_a_clear_error():
    router = Router("127.0.0.1", "t/lm")
    try:
        r = requests.post(router.url, data="x")
        assert r.status_code == 503 and "no revision" in r.text
        router.set_routes([("http://127.0.0.1:9", 100)])  # the discard port: nothing listens
        r = requests.post(router.url, data="x")
        assert r.status_code == 502 and "unreachable" in r.text
    finally:
        router.close()
