"""What a local deployment and its container variant share: the port a server will take, the URLs of its
protocols, the MLflow server it resolves ``models:/`` URIs with, waiting until it reports ready, and one smoke
request (lmops.serve.deploy starts a process, lmops.serve.container a container; both then use these)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from lmops.config import Config, ServeConfig
from lmops.errors import LmopsError
from lmops.processes import free_port
from lmops.serve.auth import bearer


class DeployError(LmopsError, RuntimeError):
    """A deployment that did not come up; the message carries the server's last log lines."""


def with_port(serve: ServeConfig) -> ServeConfig:
    """``serve`` with the port its server will listen on: the configured one, refused when taken, or a free
    one for port 0."""
    if serve.port:
        port_free(serve.host, serve.port)
        return serve
    return serve.model_copy(update={"port": free_port(serve.host)})


def port_free(host: str, port: int) -> None:
    """A server on a taken port fails to bind, while whatever holds the port may answer our readiness check in
    its place (a false "ready"). Refuse up front."""
    with socket.socket() as s:
        # as the server binds (uvicorn sets it): connections a replaced server closed (TIME_WAIT) do not hold
        # the port, a listener does
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "0.0.0.0", port))
        except OSError as e:
            raise DeployError(f"{host}:{port} is already in use ({e.strerror}): stop what holds it (`make stop`"
                              " if it is a previous run's server) or set serve.port=0 for a free port") from None


def protocol_urls(base: str, name: str) -> dict[str, str]:
    return {
        "v1_predict": f"{base}/v1/models/{name}:predict",
        "v2_infer": f"{base}/v2/models/{name}/infer",
        "openai_base": f"{base}/openai/v1",
        "openai_completions": f"{base}/openai/v1/completions",
        "openai_chat": f"{base}/openai/v1/chat/completions",
        "ready": f"{base}/v1/models/{name}",
        "metrics": f"{base}/metrics",
    }


def smoke_test(predict_url: str, prompt: str, api_key: str | None = None) -> dict[str, Any]:
    """One short v1 generation: proof that the endpoint serves the model, not only that it listens."""
    import requests

    t0 = time.perf_counter()
    r = requests.post(predict_url, json={"instances": [{"prompt": prompt, "max_new_tokens": 4}]}, timeout=60,
                      headers=bearer(api_key))
    smoke_ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200 or not isinstance(r.json().get("predictions", [{}])[0].get("text"), str):
        raise DeployError(f"smoke request to {predict_url} failed: {r.status_code} {r.text[:300]}")
    return {"status": r.status_code, "latency_ms": round(smoke_ms, 2)}


def wait_ready(ready_url: str, timeout: float, *, what: str, exited: Callable[[], str | None],
               last_lines: Callable[[], str], running: Callable[[], bool] | None = None) -> None:
    """Poll ``ready_url`` until it answers 200 while the server is up. ``exited``: why the server is gone (None
    while it is not); ``running``: checked after a 200, so that an answer from whatever else holds the port
    does not count (default: not exited); ``last_lines``: its log's end, for the error."""
    running = running or (lambda: exited() is None)
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gone = exited()
        if gone is not None:
            raise DeployError(f"{what} {gone} before becoming ready; last log lines:\n{last_lines()}")
        try:
            if requests.get(ready_url, timeout=2).status_code == 200 and running():
                return
        except requests.RequestException:
            pass  # not listening yet
        time.sleep(0.25)
    raise DeployError(f"{what} not ready after {timeout:.0f} s ({ready_url}); last log lines:\n{last_lines()}")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def registry_env(cfg: Config) -> dict[str, str]:
    """What the model server needs to resolve a ``models:/`` URI itself: the MLflow server this run was given
    (``registry.tracking_uri``, which the pipeline's ``mlflow_tracking_uri`` parameter sets), else the
    environment's. Without it a run given the server only as a parameter deploys a server that cannot find
    its model."""
    uri = cfg.registry.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return {"MLFLOW_TRACKING_URI": uri} if uri else {}
