"""Serving fixtures: a tiny model directory and real `lmops serve` processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tiny_model import make_model_dir

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> list[str]:
    """Local addresses LISTENing on ``port``, as /proc/net/tcp{,6} spell them (little-endian hex)."""
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                listening.append(local.rsplit(":", 1)[0])
    return listening


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("serve") / "tiny", layers=2)


@dataclass
class Server:
    proc: subprocess.Popen
    base: str
    name: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, path: str) -> str:
        return self.base + path


def start_server(model: str | Path, log_path: Path, *sets: str, name: str = "tiny", ready_timeout: float = 60,
                 attempts: int = 3, env: dict[str, str] | None = None) -> Server:
    # a free port can be taken by another process between choosing it and binding it: try another
    for attempt in range(attempts):
        try:
            return _start_server(model, log_path, sets, name, ready_timeout, env or {})
        except RuntimeError as e:
            if "address already in use" not in str(e) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _start_server(model: str | Path, log_path: Path, sets: tuple[str, ...], name: str, ready_timeout: float,
                  extra_env: dict[str, str]) -> Server:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra_env}
    cmd = [sys.executable, "-m", "lmops.cli", "serve", "--model", str(model), "--port", str(port), "--name", name,
           "--set", "serve.threads=1", *[a for s in sets for a in ("--set", s)]]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", name, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()[-3000:]}")
        try:
            if requests.get(server.url(f"/v1/models/{name}"), timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise TimeoutError(f"server not ready in {ready_timeout}s:\n{server.log()[-3000:]}")


def stop_server(server: Server) -> int:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(5)
    return server.proc.returncode


@pytest.fixture(scope="session")
def server(tiny_dir, tmp_path_factory):
    """One server for the whole session (start-up is most of a module's time on a loaded machine); tests
    compare metrics and log lines before and after, so they do not depend on each other. Small limits so
    limit checks are cheap to hit."""
    srv = start_server(tiny_dir, tmp_path_factory.mktemp("srv") / "server.log",
                       "serve.max_new_tokens=24", "serve.default_max_new_tokens=8", "serve.max_prompt_tokens=64", "serve.max_batch_size=8", "serve.max_prompts_per_request=8", "serve.body_read_timeout_s=1",
                       "serve.max_wait_ms=5")
    yield srv
    code = stop_server(srv)
    assert code == 0, f"server exited with {code} on SIGTERM:\n{srv.log()[-2000:]}"


# each test spends its own keys' buckets (8 requests per minute per key), so the tests do not share limits
FILE_KEYS = ["sk-auth-0", "sk-unloaded-1", "sk-loaded-2", "sk-queue-3", "sk-cache-5"]
ENV_KEY = "sk-from-env-4"
RPM = 8
QUEUE = 8
CACHE = 2


@pytest.fixture(scope="session")
def guarded(tmp_path_factory):
    """A server with API keys, rate limits, a small admission queue and a small response cache, serving
    another model than ``server`` (seed 1): its ETags must differ for the same request."""
    tmp = tmp_path_factory.mktemp("guarded")
    model = make_model_dir(tmp / "other", seed=1, layers=2)
    key_file = tmp / "keys.txt"
    key_file.write_text("# one key per line\n" + "\n".join(FILE_KEYS) + "\n\n")
    port = free_port()
    srv = start_server(model, tmp / "server.log", f"serve.api_key_file={key_file}", f"serve.grpc_port={port}",
                       f"serve.rate_limit_requests_per_minute={RPM}", f"serve.max_queued_requests={QUEUE}",
                       "serve.max_new_tokens=200", "serve.default_max_new_tokens=8", "serve.max_batch_size=16",
                       "serve.max_prompts_per_request=16", f"serve.response_cache_size={CACHE}",
                       env={"LMOPS_API_KEYS": ENV_KEY})
    srv.grpc = f"127.0.0.1:{port}"
    yield srv
    assert stop_server(srv) == 0
    for key in [*FILE_KEYS, ENV_KEY]:
        assert key not in srv.log(), "an API key reached the server's log"


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}
