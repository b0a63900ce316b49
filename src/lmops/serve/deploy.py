"""The deploy stage: a local server process, or an InferenceService on Kubernetes.

local: ``lmops serve`` runs as a subprocess in its own process group (so stopping it also stops
anything it spawned), this waits until the model reports ready, sends one smoke request, and
writes ``endpoint.json`` with the URLs of every protocol and the pid to stop it by.
kubernetes: the rendered InferenceService is written next to endpoint.json and server-side applied
through lmops.kube (a ``models:/`` URI takes the MLflow server along in its env, as the container
resolves it); the stage waits until KServe reports it Ready (a model that does not load fails
it with KServe's reason) and smoke-tests the URL from its status. Canary gates are the operator's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from lmops.config import Config
from lmops.processes import stop_group
from lmops.serve.auth import client_key
from lmops.serve.endpoint import DeployError, protocol_urls, registry_env, smoke_test, tail, wait_ready, with_port

ENDPOINT_FILE = "endpoint.json"


def deploy(cfg: Config, model_uri: str, out: str | Path) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.deploy.target == "local":
        return deploy_local(cfg, model_uri, out)
    return deploy_kubernetes(cfg, model_uri, out)


# ---------------------------------------------------------------- local
def deploy_local(cfg: Config, model_uri: str, out: Path) -> dict[str, Any]:
    from lmops.serve import container

    if container.requested():  # the container runner's deploy task: the server is a container too
        endpoint = container.deploy_container(cfg, model_uri, out)
        _write_json(out / ENDPOINT_FILE, endpoint)
        return endpoint

    serve = with_port(cfg.serve)
    port = serve.port
    # the server reads exactly this file: what it ran with is on disk next to endpoint.json
    config_path = out / "serve-config.yaml"
    config_path.write_text(yaml.safe_dump(cfg.model_copy(update={"serve": serve}).model_dump(mode="json"), sort_keys=False))
    log_path = out / "server.log"
    cmd = [sys.executable, "-m", "lmops.cli", "serve", "-c", str(config_path), "--model", model_uri]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **registry_env(cfg)})
    base = f"http://{'127.0.0.1' if serve.host in ('0.0.0.0', '') else serve.host}:{port}"
    urls = protocol_urls(base, serve.model_name)
    try:
        _wait_ready(proc, urls["ready"], cfg.deploy.ready_timeout_s, log_path)
        smoke = smoke_test(urls["v1_predict"], cfg.deploy.smoke_prompt, client_key(cfg.serve))
    except BaseException:
        stop_process_group(proc.pid)
        raise
    endpoint = {"target": "local", "url": base, "model_name": serve.model_name, "model_uri": model_uri,
                "pid": proc.pid, "pgid": os.getpgid(proc.pid), "host": serve.host, "port": port,
                "log": str(log_path), "config": str(config_path), "protocols": urls, "smoke": smoke}
    _write_json(out / ENDPOINT_FILE, endpoint)
    return endpoint


def _wait_ready(proc: subprocess.Popen, ready_url: str, timeout: float, log_path: Path) -> None:
    wait_ready(ready_url, timeout, what="server",
               exited=lambda: None if proc.poll() is None else f"exited with status {proc.poll()}",
               last_lines=lambda: tail(log_path))


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
def deploy_kubernetes(cfg: Config, model_uri: str, out: Path, client=None) -> dict[str, Any]:
    """Apply the InferenceService, wait until KServe reports it Ready, smoke-test the URL from its status."""
    from lmops import kube
    from lmops.serve.inference_service import API_VERSION, render_inference_service

    manifest = render_inference_service(_with_registry(cfg, model_uri), cfg.serve, model_uri, image=cfg.image)
    (out / "inferenceservice.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    applied = kube.apply(manifest, client=client)
    generation = applied["metadata"].get("generation")
    name, ns = cfg.deploy.name, cfg.deploy.namespace
    where = f"InferenceService {ns}/{name}"
    deadline = time.monotonic() + cfg.deploy.ready_timeout_s
    while True:
        obj = kube.get(API_VERSION, "InferenceService", name, ns, client=client)
        if obj is None:
            raise DeployError(f"{where} disappeared while waiting for it to become Ready")
        status = obj.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        current = status.get("observedGeneration") == generation  # not the previous spec's verdict
        if current and ready.get("status") == "True" and status.get("url"):
            break
        if current and ready.get("status") == "False":
            raise DeployError(f"{where} is not Ready: {ready.get('reason')}: {ready.get('message')}")
        if time.monotonic() > deadline:
            raise DeployError(f"{where} not Ready after {cfg.deploy.ready_timeout_s:.0f} s; last condition:"
                              f" {ready or 'none'} (kubectl describe inferenceservice -n {ns} {name})")
        time.sleep(0.5)
    urls = protocol_urls(status["url"].rstrip("/"), name)
    smoke = smoke_test(urls["v1_predict"], cfg.deploy.smoke_prompt, client_key(cfg.serve))
    endpoint = {"target": "kubernetes", "name": name, "namespace": ns, "model_name": name, "model_uri": model_uri,
                "url": status["url"], "protocols": urls, "smoke": smoke,
                "revision": (status.get("components") or {}).get("predictor", {}).get("latestReadyRevision"),
                "resource_version": obj["metadata"].get("resourceVersion")}
    _write_json(out / ENDPOINT_FILE, endpoint)
    return endpoint


def _with_registry(cfg: Config, model_uri: str):
    """deploy config whose env tells the server where MLflow is when it must resolve a ``models:/`` URI itself:
    the server this stage resolved and registered with, unless deploy.env names one. Not a URI carrying
    credentials (user:password@host): those never go into a manifest."""
    from urllib.parse import urlsplit

    uri = registry_env(cfg).get("MLFLOW_TRACKING_URI")
    if not (model_uri.startswith("models:/") and uri) or "MLFLOW_TRACKING_URI" in cfg.deploy.env \
            or "@" in urlsplit(uri).netloc:
        return cfg.deploy
    return cfg.deploy.model_copy(update={"env": {**cfg.deploy.env, "MLFLOW_TRACKING_URI": uri}})


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
