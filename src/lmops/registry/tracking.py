"""MLflow connection and experiment tracking (training runs, per-step metrics).

Everything goes through an explicit ``MlflowClient(tracking_uri)`` rather than mlflow's global
"active run", so the driver and a Ray worker on another node can log to the same run by id.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from lmops.errors import LmopsError

# MLflow's own HTTP client retries for minutes by default; a pipeline stage should say "unreachable"
# in seconds. Users can still raise these through the environment.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# stdout belongs to the lmops CLI (its --json output); MLflow would print "View run ..." links there
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # per-file bars flood pipeline logs
# pipeline steps run in clusters that often have no egress: do not try to send usage telemetry
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class RegistryError(LmopsError):
    """MLflow is unreachable or refused a request; the message names the server and the request."""


def tracking_uri(configured: str | None) -> str | None:
    """The configured URI, else $MLFLOW_TRACKING_URI, else None (no tracking)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or None


def check_reachable(uri: str, attempts: int = 4, timeout: float = 5.0, backoff: float = 0.5) -> None:
    """Fail with a clear message when an http(s) tracking server does not answer /health.

    Waits backoff, 2*backoff, 4*backoff... between attempts: a server that is restarting gets a few
    seconds, a wrong address fails in about ``backoff * 2**attempts`` seconds instead of MLflow's own
    minutes of retries.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    delay, last = backoff, None
    for attempt in range(attempts):
        try:
            r = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
            if r.ok:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as e:
            last = f"{type(e).__name__}: {e}"
        if attempt + 1 < attempts:
            time.sleep(delay)
            delay *= 2
    raise RegistryError(f"MLflow tracking server {uri} is unreachable after {attempts} attempts ({last})")


def client_for(uri: str):
    """An explicit client for tracking and registry on the same server (never mlflow's global state)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


class TrainingRun:
    """One MLflow run for a training stage: params (a nested config, flattened) at the start, metrics by step,
    artifacts at the end."""

    def __init__(self, uri: str, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str]):
        check_reachable(uri)
        self.uri = uri
        self.client = client_for(uri)
        exp_id = experiment_id(self.client, experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        log_params(self.client, self.run_id, flat_params(params))

    @property
    def worker_handle(self) -> dict[str, str]:
        """What a Ray worker needs to log into this run."""
        return {"uri": self.uri, "run_id": self.run_id}

    def log_artifact(self, path: str | Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        log_metrics(self.client, self.run_id, metrics, step)

    def finish(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config section as MLflow params: ``model.n_layer``, ``train.lr``..."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    flat = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(flat), 100):  # the REST API takes at most 100 params per batch
        client.log_batch(run_id, params=flat[i:i + 100])


def experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def log_metrics(client, run_id: str, metrics: dict[str, Any], step: int | None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
             if isinstance(v, (int, float)) and v is not None and k != "step"]
    if items:
        client.log_batch(run_id, metrics=items)


class MetricLogger:
    """Per-step metrics from a training worker into the driver's run. A tracking hiccup mid-run warns
    once and training goes on: losing a curve point is better than losing the run."""

    def __init__(self, handle: dict[str, str] | None):
        self.handle = handle
        self.client = client_for(handle["uri"]) if handle else None
        self.warned = False

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.client is None:
            return
        try:
            log_metrics(self.client, self.handle["run_id"], metrics, step)
        except Exception as e:  # noqa: BLE001 — any tracking failure is non-fatal here, by design
            if not self.warned:
                print(f"warning: MLflow metric logging failed, training continues: {e}", file=sys.stderr)
                self.warned = True
