"""The local servers of a one-machine run, recorded under ``<state>/servers/`` so a later run reuses them
and ``lmops stop`` (``make stop``) stops them.

- ``mlflow.json``: the MLflow server (sqlite backend and artifacts under ``<state>/mlflow``), started on
  first use and reused while it answers.
- ``serve-<model name>.json``: the KServe model server the deploy step started for that model name (a
  process, or with the container runner a container: ``kind: container``); a new deploy of the same name
  replaces it.
- ``ray.json``: the local Ray runtime (``ray start --head``) the train and compress stages connect to, so a
  run pays Ray's start-up once (and a later run not at all).

Each record holds the process group to signal. The state folder is ``$LMOPS_STATE_DIR`` (``make run``
sets it to the project's ``.state``), else ``.state`` in the working directory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from lmops.config import Config, sha256_json
from lmops.config.serve import ExampleConfig
from lmops.processes import group_alive, session_alive, stop_group
from lmops.serve.auth import bearer, client_key

MLFLOW = "mlflow"
RAY = "ray"


def state_dir() -> Path:
    return Path(os.environ.get("LMOPS_STATE_DIR") or ".state").resolve()


def _records(folder: Path | None = None) -> Path:
    return folder or state_dir() / "servers"


def read_record(name: str, folder: Path | None = None) -> dict[str, Any] | None:
    """The record of a server whose process group is still alive, else None. ``folder``: another set of
    records than the run's servers (``lmops cluster`` keeps its processes in ``<state>/cluster``)."""
    rec = _load(name, folder)
    return rec if rec is not None and _running(rec) else None


def _load(name: str, folder: Path | None) -> dict[str, Any] | None:
    """The record as written, running or not."""
    try:
        return json.loads((_records(folder) / f"{name}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _running(rec: dict[str, Any]) -> bool:
    if rec.get("kind") == "container":  # a model server container (make run RUNNER=container)
        from lmops.serve.container import running

        return running(rec["container"])
    return group_alive(int(rec.get("pgid", -1)))


def write_record(name: str, record: dict[str, Any], folder: Path | None = None) -> None:
    folder = _records(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, folder / f"{name}.json")


def ensure_mlflow() -> tuple[str, bool]:
    """(URL, started now) of the local MLflow server: the recorded one if it answers, else a new one."""
    import requests

    from lmops.registry.local_server import start_mlflow_server

    rec = read_record(MLFLOW)
    if rec is not None:
        try:
            if requests.get(f"{rec['url']}/health", timeout=3).ok:
                return rec["url"], False
        except requests.RequestException:
            pass
        stop(MLFLOW)  # alive but not answering: replace it
    root = state_dir() / "mlflow"
    proc, url = start_mlflow_server(root, str(root / "artifacts"))
    write_record(MLFLOW, {"kind": "mlflow", "url": url, "pid": proc.pid, "pgid": proc.pid, "root": str(root)})
    return url, True


def ensure_ray() -> tuple[str, bool]:
    """(GCS address, started now) of the local Ray runtime: the recorded one while it answers, else a new one."""
    from lmops.train.ray_head import gcs_answers, start_ray_head

    rec = read_record(RAY)
    if rec is not None:
        if gcs_answers(rec["address"]):
            return rec["address"], False
        stop(RAY)
    proc, address = start_ray_head(state_dir() / "logs" / "ray-head.log")
    write_record(RAY, {"kind": "ray", "address": address, "pid": proc.pid, "pgid": proc.pid})
    return address, True


def deploy_and_record(cfg: Config, model_uri: str, out: Path) -> dict[str, Any]:
    """Deploy (lmops.serve.deploy); a local server replaces this model name's previous one and is recorded
    (an InferenceService is its cluster's to run). The endpoint gets one example generation, shown in
    ``make run``'s summary."""
    from lmops.serve.deploy import deploy

    name = f"serve-{cfg.serve.model_name}"
    key = serving_key(cfg, model_uri)
    endpoint = reusable_server(name, key) if cfg.deploy.target == "local" else None
    if endpoint is None:
        if cfg.deploy.target == "local":
            stop(name)
        endpoint = deploy(cfg, model_uri, out)
    out.mkdir(parents=True, exist_ok=True)  # deploy makes it; a reused server's endpoint.json goes there too
    if cfg.deploy.target == "local" and "container" in endpoint:
        write_record(name, {"kind": "container", "url": endpoint["url"], "container": endpoint["container"],
                            "image": endpoint["image"], "model_uri": model_uri,
                            "endpoint": str(out / "endpoint.json")})
    elif cfg.deploy.target == "local":
        write_record(name, {"kind": "kserve", "url": endpoint["url"], "pid": endpoint["pid"],
                            "pgid": endpoint["pgid"], "model_uri": model_uri, "serving_key": key,
                            "endpoint": str(out / "endpoint.json")})
    endpoint["example"] = example_generation(endpoint["protocols"]["openai_completions"], endpoint["model_name"],
                                             cfg.deploy.example, client_key(cfg.serve))
    (out / "endpoint.json").write_text(json.dumps(endpoint, indent=2))
    return endpoint


def serving_key(cfg: Config, model_uri: str) -> str | None:
    """What a local server serves and how; None when the URI can point elsewhere later (an alias, a local
    directory), so such a server is never reused on its URI alone. A registered version is immutable."""
    if not re.fullmatch(r"models:/[^/@]+/\d+", model_uri):
        return None
    return sha256_json({"model_uri": model_uri, "serve": cfg.serve.model_dump(mode="json"),
                        "deploy": cfg.deploy.model_dump(mode="json", exclude={"example", "smoke_prompt"})})


def reusable_server(name: str, key: str | None) -> dict[str, Any] | None:
    """The endpoint of the recorded server when it serves exactly ``key`` and is ready: a re-run of the same
    model need not restart it (seconds of loading and warm-up). None otherwise."""
    import requests

    from lmops.serve import container

    rec = read_record(name)
    # a process server only (the container runner's deploy starts a server container, which it always replaces)
    if key is None or rec is None or rec.get("serving_key") != key or container.requested():
        return None
    try:
        endpoint = json.loads(Path(rec["endpoint"]).read_text())
        if not requests.get(f"{endpoint['url']}/v2/health/ready", timeout=3).ok:
            return None
    except (OSError, ValueError, KeyError, requests.RequestException):
        return None
    return {**endpoint, "reused": True}


def example_generation(url: str, model_name: str, example: ExampleConfig, api_key: str | None = None) -> dict[str, Any]:
    """One sampled completion over HTTP: proof the endpoint serves the model, and something to look at."""
    import requests

    r = requests.post(url, headers=bearer(api_key), json={"model": model_name, "prompt": example.prompt, "max_tokens": example.max_tokens,
                                 "temperature": example.temperature, "top_p": example.top_p,
                                 "seed": example.seed}, timeout=60)
    r.raise_for_status()
    return {"prompt": example.prompt, "completion": r.json()["choices"][0]["text"], "settings": example.describe()}


def stop(name: str, folder: Path | None = None) -> bool:
    """Stop one recorded server (its process group and the session it leads); False when it was not running."""
    rec = _load(name, folder)
    was_running = rec is not None and _running(rec)
    if was_running and rec.get("kind") == "container":
        from lmops.serve.container import remove

        remove(rec["container"])
    elif rec is not None and "pgid" in rec and session_alive(int(rec["pgid"])):
        stop_group(int(rec["pgid"]))  # also what outlived a crashed leader in its session (a Ray worker)
    (_records(folder) / f"{name}.json").unlink(missing_ok=True)
    return was_running


def _names(folder: Path | None = None) -> list[str]:
    folder = _records(folder)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def stop_all() -> list[str]:
    """Stop every recorded local server; returns what was running."""
    return [n for n in _names() if stop(n)]


def running(folder: Path | None = None) -> dict[str, dict[str, Any]]:
    """The recorded servers that are still up, by name."""
    return {n: rec for n in _names(folder) if (rec := read_record(n, folder)) is not None}
