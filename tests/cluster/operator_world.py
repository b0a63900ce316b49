"""What the operator tests on `lmops cluster` share: the operator's RBAC in a test namespace and a kubeconfig
with its ServiceAccount's token, the operator as a real process, model versions in a real MLflow, waiting."""

from __future__ import annotations

import base64
import copy
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "registry"))  # chain.py: real, small registered model directories
SECRET = "operator-tests-webhook-secret"


def rbac_objects(namespace: str) -> list[dict]:
    docs = []
    for path in sorted((REPO / "manifests" / "rbac").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            doc = copy.deepcopy(doc)
            doc["metadata"]["namespace"] = namespace
            for s in doc.get("subjects", []):
                s["namespace"] = namespace
            docs.append(doc)
    return docs


def service_account_kubeconfig(cluster, namespace: str, out: Path, timeout: float = 30) -> tuple[Path, str]:
    """A kubeconfig that authenticates as the operator's ServiceAccount (its token Secret, made by the
    controller-manager's serviceaccount-token controller)."""
    from lmops import kube

    admin = cluster.client()
    for doc in rbac_objects(namespace):
        kube.apply(doc, client=admin)
    deadline = time.time() + timeout
    token = None
    while time.time() < deadline and token is None:
        sa = kube.get("v1", "ServiceAccount", "lmops-operator", namespace, client=admin) or {}
        for ref in sa.get("secrets") or []:
            secret = kube.get("v1", "Secret", ref["name"], namespace, client=admin) or {}
            if (secret.get("data") or {}).get("token"):
                token = base64.b64decode(secret["data"]["token"]).decode()
        if token is None:
            time.sleep(0.3)
    assert token, "no token Secret for ServiceAccount lmops-operator"
    conf = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    conf["users"] = [{"name": "lmops-operator", "user": {"token": token}}]
    for ctx in conf["contexts"]:
        ctx["context"]["user"] = "lmops-operator"
        ctx["context"]["namespace"] = namespace
    out.write_text(yaml.safe_dump(conf))
    return out, token


@dataclass
class Operator:
    proc: subprocess.Popen
    log: Path
    webhook_url: str | None

    def kill(self) -> None:
        """SIGKILL, as a node failure would: no cleanup at all."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def start_operator(kubeconfig: Path, namespace: str, tracking_uri: str, work: Path, *, poll_s: float = 2.0,
                   webhook_port: int | None = None) -> Operator:
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"operator-{uuid.uuid4().hex[:6]}.log"
    cmd = [sys.executable, "-m", "lmops.cli", "operator", "--namespace", namespace, "--tracking-uri", tracking_uri,
           "--poll-seconds", str(poll_s), "--runs-dir", str(work / "runs")]
    if webhook_port:
        cmd += ["--webhook-port", str(webhook_port)]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "LMOPS_WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    url = f"http://127.0.0.1:{webhook_port}/mlflow/webhook" if webhook_port else None
    return Operator(proc, log, url)


def wait_for(what: str, fn, timeout: float, interval: float = 0.3, operator: Operator | None = None, describe=None):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = fn()
        if last:
            return last
        if operator is not None and operator.proc.poll() is not None:
            raise AssertionError(f"operator exited ({operator.proc.returncode}) waiting for {what}:\n"
                                 f"{operator.text()[-4000:]}")
        time.sleep(interval)
    tail = f"\noperator log:\n{operator.text()[-4000:]}" if operator else ""
    state = f"\nstate: {describe()}" if describe else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}{state}{tail}")
