"""`make demo`: the loop on one machine, on `lmops cluster` (start it first: `make cluster`).

kubectl apply an LMTrainingJob -> the operator trains and registers -> promote its version -> the
ModelDeployment serves it -> promote another passing variant -> canary -> promoted -> promote a deliberately
broken version -> the gates fail -> rolled back by itself, traffic and alias. The operator runs as its own
process with the ServiceAccount token of manifests/rbac; MLflow is a local server with webhooks to it.

Re-runnable: each run starts from a clean state whatever an earlier one left (its LMTrainingJob and
ModelDeployment deleted while the operator runs, so their finalizers go with them; a namespace left
Terminating by objects whose operator was gone; the earlier run's MLflow data) and says what it
cleaned. Whatever it started -- operator, MLflow, the training run's Ray runtime and model server --
is stopped when it ends, failed or not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from lmops import kube
from lmops.config import REPO_ROOT
from lmops.crd import API_VERSION
from lmops.operator.run import release_finalizers

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m lmops.operator.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--cluster-folder", type=Path, help="the running lmops cluster (default: lmops cluster's own)")
    ap.add_argument("--work", type=Path, default=REPO_ROOT / ".state" / "demo", help="the demo's files (MLflow, runs)")
    ap.add_argument("--job", type=Path, default=REPO_ROOT / "manifests" / "samples" / "lmtrainingjob.yaml",
                    help="the LMTrainingJob to apply")
    return ap.parse_args(argv)


def clean_earlier_run(admin) -> list[str]:
    """A namespace an earlier run left Terminating (its objects' finalizers outlived their operator) is let go;
    returns what was cleaned. The demo's own objects are deleted later, with the operator running."""
    cleaned = []
    ns = kube.get("v1", "Namespace", NS, None, client=admin)
    if ns and ns["metadata"].get("deletionTimestamp"):
        cleaned += [f"the finalizer of {obj} (its operator was gone)" for obj in release_finalizers([NS], admin)]
        kube.wait_for("v1", "Namespace", NS, None, lambda o: o is None, timeout_s=120, client=admin)
        cleaned.append(f"namespace {NS}, which was Terminating")
    return cleaned


def delete_demo_objects(admin) -> list[str]:
    """The LMTrainingJobs and ModelDeployments of an earlier run, deleted and waited for (the running operator
    removes its finalizers, and ownership takes their InferenceServices)."""
    cleaned = []
    for kind in ("LMTrainingJob", "ModelDeployment"):
        for obj in kube.list_objects(API_VERSION, kind, NS, client=admin)[0]:
            name = obj["metadata"]["name"]
            kube.delete(API_VERSION, kind, name, NS, client=admin)
            kube.wait_for(API_VERSION, kind, name, NS, lambda o: o is None, timeout_s=120, client=admin)
            cleaned.append(f"{kind} {name} ({(obj.get('status') or {}).get('phase', 'no phase')})")
    return cleaned


def stop_run_servers(runs: Path) -> list[str]:
    """What the training job's local run left up: its Ray runtime and model server (lmops stop, in the
    executor's state folder)."""
    out = subprocess.run([sys.executable, "-m", "lmops.cli", "stop", "--json"], capture_output=True, text=True,
                         env={**os.environ, "LMOPS_STATE_DIR": str(runs / "state")})
    try:
        return json.loads(out.stdout).get("stopped") or []
    except ValueError:  # nothing printed: the state folder held nothing
        return []


def status(kind: str, name: str) -> dict:
    return (kube.get(API_VERSION, kind, name, NS) or {}).get("status") or {}


def history(name: str) -> None:
    for e in status("ModelDeployment", name).get("history") or []:
        print(f"    #{e['seq']:<2} {e['time']}  v{e['version']:<3} {e['outcome']:<13} {e.get('reason', '')[:110]}")


def main(argv: list[str] | None = None) -> int:
    from mlflow import MlflowClient

    from lmops.cluster import control_plane
    from lmops.operator.local import service_account_kubeconfig, start_operator, wait_until
    from lmops.processes import free_port
    from lmops.registry.local_server import LOCAL_WEBHOOK_ENV, start_mlflow_server, stop_process_group

    args = parse_args(argv)
    st = control_plane.status(args.cluster_folder)
    if st["state"] != "running":
        raise SystemExit(f"demo: lmops cluster is {st['state']}: start it with `make cluster` (lmops cluster up)")
    os.environ["KUBECONFIG"] = str(control_plane.kubeconfig(args.cluster_folder))
    cluster = control_plane.up(args.cluster_folder, echo=lambda line: None)  # reports the running one
    admin = cluster.client()
    work = args.work
    cleaned = clean_earlier_run(admin) + [f"the run servers {', '.join(names)}" for names in
                                          [stop_run_servers(work / "runs")] if names]
    if (work / "mlflow").exists():
        shutil.rmtree(work / "mlflow")  # its versions would be mistaken for this run's
        cleaned.append(f"the earlier run's MLflow data ({work / 'mlflow'})")
    mlflow_proc, mlflow_url = start_mlflow_server(work / "mlflow", str(work / "mlflow" / "artifacts"),
                                                  env=LOCAL_WEBHOOK_ENV)
    say(f"MLflow {mlflow_url}")
    op = relay = None
    try:
        # the predictor pods run the lmops image and resolve models:/ through MLflow: the image on the node
        # (built and loaded unless it is there), MLflow through the node's relay
        from lmops.cluster import node_images, pod_relay
        from lmops.images.build import build
        from lmops.images.engine import detect

        engine = detect(install=True)
        built = build("cpu", engine=engine, log=say)
        say(node_images.load(Path(cluster.folder), built.ref, engine, log=say).line())
        relay, pods_mlflow = pod_relay.start(mlflow_url)
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}, client=admin)
        kubeconfig, _ = service_account_kubeconfig(cluster, NS, work / "operator.kubeconfig")
        port = free_port()
        op = start_operator(kubeconfig, NS, pods_mlflow, work, poll_s=10, webhook_port=port, webhook_secret=SECRET)
        say(f"operator started with the ServiceAccount token of manifests/rbac (log {op.log})")
        cleaned += delete_demo_objects(admin)
        say("cleaned what an earlier run left: " + ("; ".join(cleaned) if cleaned else "nothing"))
        mlflow = MlflowClient(mlflow_url)
        job = yaml.safe_load(args.job.read_text())
        model, job_name = job["spec"]["modelName"], job["metadata"]["name"]
        time.sleep(2)
        mlflow.create_webhook(name=f"lmops-demo-{port}", url=op.webhook_url, secret=SECRET,
                              events=["model_version_alias.created", "model_version.created"])

        say(f"1. kubectl apply -f {args.job}")
        kubectl("apply", "-f", str(args.job))
        wait_until(lambda: status("LMTrainingJob", job_name).get("phase")
              in ("Succeeded", "Failed"), 1800, 5, "the training job to finish")
        kubectl("get", "lmtrainingjobs")
        job_status = status("LMTrainingJob", job_name)
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
        servers = stop_run_servers(work / "runs")
        if relay is not None:
            pod_relay.stop(relay)
        stop_process_group(mlflow_proc)
        say(f"stopped: the operator, MLflow{''.join(', ' + n for n in servers)}; the demo's objects stay in"
            f" namespace {NS} (the next `make demo` removes them first; or `kubectl delete namespace {NS}` while"
            " the operator runs)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
