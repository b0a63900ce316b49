"""The operator on `lmops cluster` (demo, tests, bench): its RBAC in a namespace, a kubeconfig with its
ServiceAccount's token (so it runs with exactly the Role's rights), and the operator as a process."""

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

from lmops.config import REPO_ROOT
from lmops.processes import stop_group

SA_NAME = "lmops-operator"
SECRET_ENV = "LMOPS_WEBHOOK_SECRET"


def rbac_objects(namespace: str) -> list[dict]:
    """manifests/rbac with its namespace replaced."""
    docs = []
    for path in sorted((REPO_ROOT / "manifests" / "rbac").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            doc = copy.deepcopy(doc)
            doc["metadata"]["namespace"] = namespace
            for s in doc.get("subjects", []):
                s["namespace"] = namespace
            docs.append(doc)
    return docs


def service_account_kubeconfig(cluster, namespace: str, out: Path, timeout: float = 30) -> tuple[Path, str]:
    """Apply the RBAC, wait for the ServiceAccount's token Secret (the controller-manager makes it), and write
    a kubeconfig that authenticates with it; (path, token)."""
    from lmops import kube

    admin = cluster.client()
    for doc in rbac_objects(namespace):
        kube.apply(doc, client=admin)
    deadline = time.time() + timeout
    token = None
    while time.time() < deadline and token is None:
        sa = kube.get("v1", "ServiceAccount", SA_NAME, namespace, client=admin) or {}
        for ref in sa.get("secrets") or []:
            secret = kube.get("v1", "Secret", ref["name"], namespace, client=admin) or {}
            if (secret.get("data") or {}).get("token"):
                token = base64.b64decode(secret["data"]["token"]).decode()
        if token is None:
            time.sleep(0.3)
    if not token:
        raise RuntimeError(f"no token Secret for ServiceAccount {namespace}/{SA_NAME} after {timeout}s")
    conf = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    conf["users"] = [{"name": SA_NAME, "user": {"token": token}}]
    for ctx in conf["contexts"]:
        ctx["context"]["user"] = SA_NAME
        ctx["context"]["namespace"] = namespace
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(conf))
    out.chmod(0o600)
    return out, token


@dataclass
class OperatorProcess:
    proc: subprocess.Popen
    log: Path
    webhook_url: str | None

    def kill(self) -> None:
        """SIGKILL, as a node failure would: no clean-up at all."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM (kopf stops its loops and the webhook receiver), SIGKILL after 30 s."""
        if self.proc.poll() is None:
            stop_group(self.proc.pid, 30, lambda: self.proc.poll() is not None)
        return self.proc.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def failure(self) -> str | None:
        """Why the operator is not running, or None (as lmops.operator.in_pod.OperatorPod.failure)."""
        return None if self.proc.poll() is None else f"the operator exited ({self.proc.returncode})"


def start_operator(kubeconfig: Path, namespace: str, tracking_uri: str, work: Path, *, poll_s: float = 2.0,
                   webhook_port: int | None = None, webhook_secret: str | None = None,
                   env: dict[str, str] | None = None) -> OperatorProcess:
    """`lmops operator` for one namespace in its own process group, its log in ``work``; ``env``: more
    environment (e.g. LMOPS_FAILPOINT for the kill tests)."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"operator-{uuid.uuid4().hex[:6]}.log"
    cmd = [sys.executable, "-m", "lmops.cli", "operator", "--namespace", namespace, "--tracking-uri", tracking_uri,
           "--poll-seconds", str(poll_s), "--runs-dir", str(work / "runs")]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1", **(env or {})}
    if webhook_port:
        cmd += ["--webhook-port", str(webhook_port)]
        env[SECRET_ENV] = webhook_secret or ""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{webhook_port}/mlflow/webhook" if webhook_port else None
    return OperatorProcess(proc, log, url)


def wait_until(fn, timeout: float, interval: float = 0.5, what: str = "it"):
    """``fn()``'s first truthy value, polled every ``interval``; TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = fn()
        if out:
            return out
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
