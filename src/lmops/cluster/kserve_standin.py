"""KServe stand-in: plays KServe's InferenceService controller (serverless mode) on `lmops cluster`, with
local model servers.

What it plays, for each InferenceService (serving.kserve.io/v1beta1):
- each change of ``spec.predictor`` (other than ``canaryTrafficPercent``) is a new revision,
  ``<name>-predictor-0000N``, served by a local ``lmops serve`` on 127.0.0.1 and a free port, for the
  predictor's storage URI (``storageUri``, or the container's STORAGE_URI, standing in for KServe's
  storage initializer: ``lmops serve`` reads s3:// and local paths itself), with the container's
  ``--set`` args, ``env`` and ``envFrom`` Secrets;
- traffic as KServe splits it: with ``canaryTrafficPercent`` the new revision takes that share and the
  last rolled-out one the rest, both running; without it the new revision takes 100% once ready and
  the older ones are stopped; a revision that fails leaves traffic where it was;
- the status KServe writes: ``url``, ``address.url``, ``components.predictor`` (``url``,
  ``latestCreatedRevision``, ``latestReadyRevision``, ``latestRolledoutRevision``,
  ``previousRolledoutRevision``, ``traffic`` with each revision's own ``url``), ``modelStatus``, and the
  ``PredictorReady`` / ``Ready`` conditions -- False with reason RevisionFailed and the server's last log
  lines when the model does not load;
- deleting the InferenceService stops its servers.

What it does not: no Knative, Istio or ingress, so no traffic split behind one URL (``url`` is the
last rolled-out revision's server; each revision's server is at its ``traffic[].url``); no pods or
image pulls (the predictor's ``image``, ``command`` and resources are ignored: it is always this
environment's ``lmops serve``; ``modelFormat: huggingface`` is served by it too); no autoscaling,
transformers, explainers or raw-deployment mode.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmops.cluster.standin import StandIn, local_mounts, main, now, relocate
from lmops.processes import stop_group

READY_PROBE_TIMEOUT_S = 0.5
STARTING, READY, FAILED = "starting", "ready", "failed"


@dataclass
class _Revision:
    name: str
    digest: str
    proc: subprocess.Popen
    port: int
    log: Path
    state: str = STARTING
    reason: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class _Service:
    uid: str
    obj: dict[str, Any]
    revisions: dict[str, _Revision] = field(default_factory=dict)
    count: int = 0
    rolled_out: str | None = None  # the revision that last took all the traffic
    previous: str | None = None
    published: str = ""  # the last status written, to write only changes


class KServeStandIn(StandIn):
    """KServe stand-in: serves each InferenceService's revisions with local `lmops serve` processes."""

    api_version, kind = "serving.kserve.io/v1beta1", "InferenceService"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.services: dict[tuple[str, str], _Service] = {}

    # -------------------------------------------------------- events
    def changed(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        svc = self.services.get(key)
        if svc is not None and svc.uid != meta["uid"]:
            self._stop_service(key)
            svc = None
        if meta.get("deletionTimestamp"):
            return
        if svc is None:
            svc = self.services[key] = _Service(meta["uid"], obj)
        svc.obj = obj
        predictor = dict(obj["spec"].get("predictor") or {})
        predictor.pop("canaryTrafficPercent", None)  # traffic only: no new revision
        digest = hashlib.sha256(json.dumps(predictor, sort_keys=True).encode()).hexdigest()[:12]
        latest = self._latest(svc)
        if latest is None or latest.digest != digest:
            self._new_revision(key, svc, predictor, digest)
        self._publish(key, svc)

    def deleted(self, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.services:
            self.log(f"InferenceService {key[0]}/{key[1]}: deleted; stopping its servers")
            self._stop_service(key)

    def tick(self) -> None:
        import requests

        for key, svc in list(self.services.items()):
            changed = False
            for rev in svc.revisions.values():
                if rev.state == FAILED:
                    continue
                code = rev.proc.poll()
                if code is not None:
                    rev.state = FAILED
                    rev.reason = f"the model server exited with status {code}; last log lines:\n{_tail(rev.log)}"
                    changed = True
                elif rev.state == STARTING:
                    model = svc.obj["metadata"]["name"]
                    try:
                        ok = requests.get(f"{rev.url}/v1/models/{model}", timeout=READY_PROBE_TIMEOUT_S).ok
                    except requests.RequestException:
                        ok = False
                    if ok:
                        rev.state, changed = READY, True
            if changed:
                self._publish(key, svc)

    def shutdown(self) -> None:
        for key in list(self.services):
            self._stop_service(key)

    # -------------------------------------------------------- revisions
    def _new_revision(self, key: tuple[str, str], svc: _Service, predictor: dict[str, Any], digest: str) -> None:
        ns, name = key
        svc.count += 1
        rev_name = f"{name}-predictor-{svc.count:05d}"
        log = self.work_dir / f"{ns}_{rev_name}.log"
        port = _free_port()
        container = (predictor.get("containers") or [predictor.get("model") or {}])[0]
        try:
            mounts = local_mounts(container, self.work_dir / f"{ns}_{rev_name}.volumes")
            cmd = _serve_command(name, predictor, container, port, mounts)
            env = self.container_env(container, ns, mounts)
        except (LookupError, ValueError) as e:
            proc = subprocess.Popen(["false"])  # a revision that failed before it ran
            svc.revisions[rev_name] = _Revision(rev_name, digest, proc, port, log, FAILED, str(e))
            return
        with open(log, "ab") as out:
            out.write(f"==== {now()} {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.work_dir, env=env, start_new_session=True)
        svc.revisions[rev_name] = _Revision(rev_name, digest, proc, port, log)
        self.log(f"InferenceService {ns}/{name}: revision {rev_name} starting on port {port} (log {log})")

    def _latest(self, svc: _Service) -> _Revision | None:
        return svc.revisions[max(svc.revisions)] if svc.revisions else None

    def _stop_revision(self, svc: _Service, name: str) -> None:
        rev = svc.revisions.pop(name, None)
        if rev is not None and rev.proc.poll() is None:
            stop_group(rev.proc.pid, grace=5, reap=lambda: rev.proc.poll() is not None)

    def _stop_service(self, key: tuple[str, str]) -> None:
        svc = self.services.pop(key, None)
        for name in list(svc.revisions if svc else []):
            self._stop_revision(svc, name)

    # -------------------------------------------------------- traffic and status
    def _publish(self, key: tuple[str, str], svc: _Service) -> None:
        latest = self._latest(svc)
        canary = (svc.obj["spec"].get("predictor") or {}).get("canaryTrafficPercent")
        stable = svc.revisions.get(svc.rolled_out) if svc.rolled_out else None
        if latest.state == READY and latest is not stable and (canary is None or canary >= 100 or stable is None):
            # roll out: the new revision takes all the traffic, the others stop (KServe scales them to zero)
            svc.previous, svc.rolled_out, stable = svc.rolled_out, latest.name, latest
            for name in [n for n in svc.revisions if n != latest.name]:
                self._stop_revision(svc, name)
        traffic = []
        if stable is not None and latest is not stable and latest.state != FAILED and canary is not None:
            traffic = [{"revisionName": latest.name, "percent": canary, "latestRevision": True, "tag": "latest",
                        "url": latest.url},
                       {"revisionName": stable.name, "percent": 100 - canary, "latestRevision": False, "tag": "prev",
                        "url": stable.url}]
        elif stable is not None:
            traffic = [{"revisionName": stable.name, "percent": 100, "latestRevision": stable is latest,
                        "url": stable.url}]
        ready_rev = stable if stable is not None and stable.state == READY else None
        url = ready_rev.url if ready_rev else None
        if latest.state == FAILED:
            ready = _condition("False", "RevisionFailed", f'Revision "{latest.name}" failed with message: {latest.reason}')
        elif latest.state == STARTING or ready_rev is None:
            ready = _condition("Unknown", "RevisionMissing", f'Revision "{latest.name}" is not ready yet')
        else:
            ready = _condition("True")
        predictor = {"latestCreatedRevision": latest.name, "traffic": traffic}
        ready_names = [n for n, r in svc.revisions.items() if r.state == READY]
        if ready_names:
            predictor["latestReadyRevision"] = max(ready_names)
        if svc.rolled_out:
            predictor["latestRolledoutRevision"] = svc.rolled_out
        if svc.previous:
            predictor["previousRolledoutRevision"] = svc.previous
        if url:
            predictor["url"] = url
        status = {
            "observedGeneration": svc.obj["metadata"].get("generation"),
            "url": url, "address": {"url": url} if url else None,
            "components": {"predictor": predictor},
            "conditions": [{"type": t, **ready} for t in ("PredictorReady", "Ready")],
            "modelStatus": _model_status(latest),
        }
        text = json.dumps(status, sort_keys=True)
        if text != svc.published:
            self.write_status(svc.obj, {**status, "conditions": [{**c, "lastTransitionTime": now()}
                                                                 for c in status["conditions"]]})
            svc.published = text


def _serve_command(name: str, predictor: dict[str, Any], container: dict[str, Any], port: int,
                   mounts: dict[str, str] | None = None) -> list[str]:
    """`lmops serve` for this predictor, on 127.0.0.1:port, the model read from its storage URI."""
    env = {e["name"]: e.get("value") for e in container.get("env") or [] if "name" in e}
    model = predictor.get("model") or {}
    storage = model.get("storageUri") or env.get("STORAGE_URI")
    args = list(container.get("args") or [])
    sets = [a for i, a in enumerate(args) if i > 0 and args[i - 1] == "--set"]
    if "--model" in args and args[args.index("--model") + 1] != "/mnt/models":
        storage = storage or args[args.index("--model") + 1]  # a models:/ URI the server resolves itself
    if not storage:
        raise ValueError("no storage URI: set spec.predictor.model.storageUri or the container's STORAGE_URI")
    cmd = [sys.executable, "-m", "lmops.cli", "serve", "--model", storage, "--host", "127.0.0.1",
           "--port", str(port), "--name", name]
    for s in sets:
        key, eq, value = s.partition("=")
        cmd += ["--set", f"{key}{eq}{relocate(value, mounts or {})}"]  # e.g. serve.cache_dir on an emptyDir
    return cmd


def _condition(status: str, reason: str = "", message: str = "") -> dict[str, str]:
    out = {"status": status}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def _model_status(rev: _Revision) -> dict[str, Any]:
    if rev.state == FAILED:
        return {"transitionStatus": "BlockedByFailedLoad", "states": {"activeModelState": "FailedToLoad",
                                                                       "targetModelState": "FailedToLoad"},
                "lastFailureInfo": {"reason": "ModelLoadFailed", "message": rev.reason[-1000:]}}
    state = "Loaded" if rev.state == READY else "Loading"
    return {"transitionStatus": "UpToDate" if rev.state == READY else "InProgress",
            "states": {"activeModelState": state, "targetModelState": "Loaded"}}


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main(KServeStandIn))
