"""`make demo`: the loop on one machine, on `lmops cluster` (start it first: `make cluster`).

kubectl apply an LMTrainingJob -> the operator trains and registers -> promote its version -> the
ModelDeployment serves it -> promote another passing variant -> canary -> promoted -> promote a deliberately
broken version -> the gates fail -> rolled back by itself, traffic and alias. The operator runs as its own
process with the ServiceAccount token of manifests/rbac; MLflow is a local server with webhooks to it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from lmops import kube
from lmops.config import REPO_ROOT
from lmops.crd import API_VERSION

NS = "lmops-demo"
SECRET = "lmops-demo-webhook-secret"  # a throwaway local demo; a cluster's comes from a Secret
T0 = time.monotonic()


def say(line: str) -> None:
    print(f"[demo {time.monotonic() - T0:6.1f}s] {line}", flush=True)


def kubectl(*args: str) -> str:
    exe = Path(sys.executable).with_name("kubectl")
    out = subprocess.run([str(exe), "-n", NS, *args], capture_output=True, text=True)
    text = (out.stdout + out.stderr).rstrip()
    print(f"    $ kubectl {' '.join(args)}")
    print("\n".join("    " + ln for ln in text.splitlines()), flush=True)
    return text


def status(kind: str, name: str) -> dict:
    return (kube.get(API_VERSION, kind, name, NS) or {}).get("status") or {}


def history(name: str) -> None:
    for e in status("ModelDeployment", name).get("history") or []:
        print(f"    #{e['seq']:<2} {e['time']}  v{e['version']:<3} {e['outcome']:<13} {e.get('reason', '')[:110]}")


def main() -> int:
    from mlflow import MlflowClient

    from lmops.cluster import control_plane
    from lmops.operator.local import service_account_kubeconfig, start_operator, wait_until
    from lmops.processes import free_port
    from lmops.registry.local_server import LOCAL_WEBHOOK_ENV, start_mlflow_server, stop_process_group

    st = control_plane.status()
    if st["state"] != "running":
        raise SystemExit(f"demo: lmops cluster is {st['state']}: start it with `make cluster` (lmops cluster up)")
    os.environ["KUBECONFIG"] = str(control_plane.kubeconfig())
    cluster = control_plane.up(echo=lambda line: None)  # reports the running one
    work = REPO_ROOT / ".state" / "demo"
    mlflow_proc, mlflow_url = start_mlflow_server(work / "mlflow", str(work / "mlflow" / "artifacts"),
                                                  env=LOCAL_WEBHOOK_ENV)
    say(f"MLflow {mlflow_url}")
    op = relay = None
    try:
        # the predictor pods run the lmops image and resolve models:/ through MLflow: the image on the node
        # (built and loaded unless it is there), MLflow through the node's relay
        from lmops.cluster import node_images, pod_relay
        from lmops.images.build import build

        engine = _engine()
        built = build("cpu", engine=engine, log=say)
        say(node_images.load(control_plane.default_folder(), built.ref, engine, log=say).line())
        relay, pods_mlflow = pod_relay.start(mlflow_url)
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        kubeconfig, _ = service_account_kubeconfig(cluster, NS, work / "operator.kubeconfig")
        port = free_port()
        op = start_operator(kubeconfig, NS, pods_mlflow, work, poll_s=10, webhook_port=port, webhook_secret=SECRET)
        say(f"operator started with the ServiceAccount token of manifests/rbac (log {op.log})")
        mlflow = MlflowClient(mlflow_url)
        job = yaml.safe_load((REPO_ROOT / "manifests" / "samples" / "lmtrainingjob.yaml").read_text())
        model = job["spec"]["modelName"]
        time.sleep(2)
        mlflow.create_webhook(name=f"lmops-demo-{port}", url=op.webhook_url, secret=SECRET,
                              events=["model_version_alias.created", "model_version.created"])

        say("1. kubectl apply -f manifests/samples/lmtrainingjob.yaml")
        kubectl("apply", "-f", str(REPO_ROOT / "manifests" / "samples" / "lmtrainingjob.yaml"))
        wait_until(lambda: status("LMTrainingJob", "tiny-lm").get("phase")
              in ("Succeeded", "Failed"), 1800, 5, "the training job to finish")
        kubectl("get", "lmtrainingjobs")
        job_status = status("LMTrainingJob", "tiny-lm")
        if job_status["phase"] != "Succeeded":
            raise SystemExit(f"demo: the training job failed: {job_status.get('message')}")
        versions = {mv.tags.get("lmops.variant"): str(mv.version) for mv in mlflow.search_model_versions(f"name='{model}'")
                    if mv.tags.get("lmops.gate.passed") == "true"}
        first = versions.get("fp32") or job_status["registeredVersion"]
        second = next((v for k, v in sorted(versions.items()) if v != first), None)

        say(f"2. promote version {first} (fp32) to champion; kubectl apply the ModelDeployment")
        mlflow.set_registered_model_alias(model, "champion", first)
        kubectl("apply", "-f", str(REPO_ROOT / "manifests" / "samples" / "modeldeployment.yaml"))
        wait_until(lambda: status("ModelDeployment", model).get("stableVersion") == first
              and any(c["type"] == "Ready" and c["status"] == "True"
                      for c in status("ModelDeployment", model).get("conditions") or []), 300, 1.0, "the first version to serve")
        kubectl("get", "lmtrainingjobs,modeldeployments")

        if second:
            say(f"3. promote version {second} ({[k for k, v in versions.items() if v == second][0]}): canary, gates, promote")
            mlflow.set_registered_model_alias(model, "champion", second)
            wait_until(lambda: status("ModelDeployment", model).get("phase") == "Progressing", 60, 0.2, "the canary")
            kubectl("get", "modeldeployments")
            wait_until(lambda: status("ModelDeployment", model).get("stableVersion") == second
                  and status("ModelDeployment", model).get("phase") == "Stable", 300, 1.0, "the promotion")
            kubectl("get", "modeldeployments")

        stable = status("ModelDeployment", model)["stableVersion"]
        run = mlflow.create_run("0")
        bad = str(mlflow.create_model_version(model, f"{run.info.artifact_uri}/model", run.info.run_id).version)
        say(f"4. a deliberately broken version {bad} (no model files) promoted by force")
        subprocess.run([sys.executable, "-m", "lmops.cli", "promote", model, bad, "--force", "--reason",
                        "demo: a broken version", "--tracking-uri", mlflow_url], check=True, capture_output=True)
        wait_until(lambda: any(e["version"] == bad and e["outcome"] == "RolledBack"
                                          for e in status("ModelDeployment", model).get("history") or [])
              and status("ModelDeployment", model).get("phase") == "Stable", 300, 1.0, "the rollback")
        now = str(mlflow.get_model_version_by_alias(model, "champion").version)
        say(f"rolled back by itself: alias champion -> version {now} (stable {stable}); traffic on version {stable}")
        kubectl("get", "lmtrainingjobs,modeldeployments")
        say("history (status.history; the same reasons are Events and tags on the MLflow versions):")
        history(model)
        kubectl("get", "events", "--field-selector", "source=lmops-operator")
        return 0
    finally:
        if op is not None:
            op.stop()
        if relay is not None:
            pod_relay.stop(relay)
        stop_process_group(mlflow_proc)
        say(f"operator and MLflow stopped; `kubectl delete namespace {NS}` removes the demo's objects")


def _engine():
    from lmops.images.engine import detect

    return detect(install=True)


if __name__ == "__main__":
    sys.exit(main())
