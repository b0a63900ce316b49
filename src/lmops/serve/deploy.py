"""The deploy stage: a local server process, or an InferenceService on Kubernetes.

local: ``lmops serve`` runs as a subprocess in its own process group (so stopping it also stops
anything it spawned), this waits until the model reports ready, sends one smoke request, and
writes ``endpoint.json`` with the URLs of every protocol and the pid to stop it by.
kubernetes: the rendered InferenceService is written next to endpoint.json and server-side applied
through lmops.kube; readiness there is the operator's business (canary gates), not this stage's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from lmops.config import Config
from lmops.errors import LmopsError
from lmops.processes import stop_group

ENDPOINT_FILE = "endpoint.json"


class DeployError(LmopsError, RuntimeError):
    """A deployment that did not come up; the message carries the server's last log lines."""


def deploy(cfg: Config, model_uri: str, out: str | Path) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.deploy.target == "local":
        return deploy_local(cfg, model_uri, out)
    return deploy_kubernetes(cfg, model_uri, out)


# ---------------------------------------------------------------- local
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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


def deploy_local(cfg: Config, model_uri: str, out: Path) -> dict[str, Any]:
    import requests

    serve = cfg.serve
    port = serve.port or free_port(serve.host)
    serve = serve.model_copy(update={"port": port})
    # the server reads exactly this file: what it ran with is on disk next to endpoint.json
    config_path = out / "serve-config.yaml"
    config_path.write_text(yaml.safe_dump(cfg.model_copy(update={"serve": serve}).model_dump(mode="json"), sort_keys=False))
    log_path = out / "server.log"
    cmd = [sys.executable, "-m", "lmops.cli", "serve", "-c", str(config_path), "--model", model_uri]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    base = f"http://{'127.0.0.1' if serve.host in ('0.0.0.0', '') else serve.host}:{port}"
    urls = protocol_urls(base, serve.model_name)
    try:
        _wait_ready(proc, urls["ready"], cfg.deploy.ready_timeout_s, log_path)
        t0 = time.perf_counter()
        r = requests.post(urls["v1_predict"], json={"instances": [{"prompt": cfg.deploy.smoke_prompt, "max_new_tokens": 4}]},
                          timeout=60)
        smoke_ms = (time.perf_counter() - t0) * 1000
        if r.status_code != 200 or not isinstance(r.json().get("predictions", [{}])[0].get("text"), str):
            raise DeployError(f"smoke request failed: {r.status_code} {r.text[:300]}")
    except BaseException:
        stop_process_group(proc.pid)
        raise
    endpoint = {"target": "local", "url": base, "model_name": serve.model_name, "model_uri": model_uri,
                "pid": proc.pid, "pgid": os.getpgid(proc.pid), "host": serve.host, "port": port,
                "log": str(log_path), "config": str(config_path), "protocols": urls,
                "smoke": {"status": r.status_code, "latency_ms": round(smoke_ms, 2)}}
    _write_json(out / ENDPOINT_FILE, endpoint)
    return endpoint


def _wait_ready(proc: subprocess.Popen, ready_url: str, timeout: float, log_path: Path) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise DeployError(f"server exited with status {code} before becoming ready; last log lines:\n"
                              f"{_tail(log_path)}")
        try:
            if requests.get(ready_url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass  # not listening yet
        time.sleep(0.25)
    raise DeployError(f"server not ready after {timeout:.0f} s ({ready_url}); last log lines:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process_group(pid: int, timeout: float = 15) -> None:
    """SIGTERM the server's process group, SIGKILL it if it lingers (nothing to do when it is gone)."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return

    def reap() -> bool:
        try:
            return os.waitpid(pid, os.WNOHANG) != (0, 0)
        except ChildProcessError:
            return True  # not our child (or already collected): its parent reaps it

    stop_group(pgid, timeout, reap)


def stop_local(endpoint_json: str | Path) -> None:
    stop_process_group(json.loads(Path(endpoint_json).read_text())["pid"])


# ---------------------------------------------------------------- kubernetes
def deploy_kubernetes(cfg: Config, model_uri: str, out: Path) -> dict[str, Any]:
    from lmops import kube
    from lmops.serve.inference_service import render_inference_service

    manifest = render_inference_service(cfg.deploy, cfg.serve, model_uri)
    (out / "inferenceservice.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    applied = kube.apply(manifest)
    endpoint = {"target": "kubernetes", "name": cfg.deploy.name, "namespace": cfg.deploy.namespace,
                "model_name": cfg.deploy.name, "model_uri": model_uri,
                "url": (applied.get("status") or {}).get("url"),
                "resource_version": applied.get("metadata", {}).get("resourceVersion")}
    _write_json(out / ENDPOINT_FILE, endpoint)
    return endpoint


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
