"""`make demo`: the loop on one machine, on `lmops cluster` (start it first: `make cluster`).

kubectl apply an LMTrainingJob -> its stages run as pods (a Job per stage, a RayJob whose Ray cluster trains
across a head and a worker pod) and register a version -> promote it -> the ModelDeployment serves it (a predictor
pod) -> promote another passing variant -> a canary pod, gates, promoted -> promote a deliberately broken version
-> the gates fail -> rolled back by itself, traffic and alias. Everything runs as pods of the lmops image on the
node: the operator too, installed from the Helm chart (helm/lmops). On this machine: MLflow, a local server with
webhooks to the operator, and the demo's S3 (lmops.operator.demo_s3), which the stage pods pass their outputs
through; pods reach both through the node's relays.

Re-runnable: each run starts from a clean state whatever an earlier one left (its LMTrainingJob and
ModelDeployment deleted while the operator runs, so their finalizers go with them; a namespace left
Terminating by objects whose operator was gone; an earlier release of the chart; the earlier run's MLflow data)
and says what it cleaned. Whatever it started -- the operator's release, MLflow, S3, the relays -- is stopped
when it ends, failed or not; the demo's objects stay (the ModelDeployment's predictor keeps serving).
"""

from __future__ import annotations

import argparse
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
RELEASE = "lmops"  # the chart's release: Deployment lmops-operator
S3_SECRET = "s3-creds"
PREDICTOR_CPU = "500m"  # two predictor pods (stable and canary) and the operator's fit one 2-core node
# The stage pods and the Ray cluster sized for one 2-core node (beside the operator's pod): a head and one worker
# pod with a quarter to half a core requested each; a job's own overrides win.
FIT_ONE_NODE = {
    **{f"kuberay.{k}": v for k, v in {"head_cpu": "1", "head_cpu_request": "500m", "worker_cpu": "1",
                                      "worker_cpu_request": "500m", "head_memory": "4Gi", "worker_memory": "2Gi",
                                      "head_ranks": "1", "ttl_seconds_after_finished": "5"}.items()},
    **{f"pipeline.{stage}.{k}": v for stage in ("build", "tokenize", "evaluate", "compress", "register_model")
       for k, v in (("cpu", "250m"), ("memory", "1Gi"), ("memory_limit", "3Gi"))},
}
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


def job_on_pods(job: dict, sources_prefix: str) -> dict:
    """The LMTrainingJob as the demo runs it: executor kubernetes (staging, Secret and S3 endpoint are the
    operator's, set at its install), local sources uploaded to the demo's S3, pods sized for this machine."""
    from lmops.operator import demo_s3

    spec = job["spec"]
    spec["executor"] = {"type": "kubernetes", "kubernetes": {"backoffLimit": 0}}
    spec["sources"] = demo_s3.upload_sources(list(spec.get("sources") or []), sources_prefix)
    spec["overrides"] = {**FIT_ONE_NODE, **(spec.get("overrides") or {})}
    return job


def train_pods(job_name: str) -> list[dict]:
    """The training job's RayJob pods (head and worker; KubeRay labels them with their node type)."""
    pods, _ = kube.list_objects("v1", "Pod", NS, label_selector=f"lmops.dev/training-job={job_name},ray.io/node-type")
    return pods


def predictor_pods() -> list[dict]:
    pods, _ = kube.list_objects("v1", "Pod", NS, label_selector="component=predictor")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def status(kind: str, name: str) -> dict:
    return (kube.get(API_VERSION, kind, name, NS) or {}).get("status") or {}


def history(name: str) -> None:
    for e in status("ModelDeployment", name).get("history") or []:
        print(f"    #{e['seq']:<2} {e['time']}  v{e['version']:<3} {e['outcome']:<13} {e.get('reason', '')[:110]}")


def main(argv: list[str] | None = None) -> int:
    from mlflow import MlflowClient

    from lmops.cluster import control_plane
    from lmops.operator import demo_s3
    from lmops.operator.in_pod import OperatorPod, install_operator
    from lmops.operator.local import wait_until
    from lmops.registry.local_server import LOCAL_WEBHOOK_ENV, start_mlflow_server, stop_process_group

    args = parse_args(argv)
    st = control_plane.status(args.cluster_folder)
    if st["state"] != "running":
        raise SystemExit(f"demo: lmops cluster is {st['state']}: start it with `make cluster` (lmops cluster up)")
    os.environ["KUBECONFIG"] = str(control_plane.kubeconfig(args.cluster_folder))
    cluster = control_plane.up(args.cluster_folder, echo=lambda line: None)  # reports the running one
    admin = cluster.client()
    work = args.work
    cleaned = clean_earlier_run(admin)
    if (work / "mlflow").exists():
        shutil.rmtree(work / "mlflow")  # its versions would be mistaken for this run's
        cleaned.append(f"the earlier run's MLflow data ({work / 'mlflow'})")
    mlflow_proc, mlflow_url = start_mlflow_server(work / "mlflow", str(work / "mlflow" / "artifacts"),
                                                  env=LOCAL_WEBHOOK_ENV)
    say(f"MLflow {mlflow_url}")
    s3_proc = op = None
    relays = []
    try:
        s3_proc, s3_url = demo_s3.start(work / "s3.log")
        say(f"S3 (the demo's moto_server) {s3_url}, bucket {demo_s3.BUCKET}")
        # every pod runs the lmops image (built and loaded into the node unless it is there) and reaches MLflow
        # and S3 through the node's relays
        from lmops.cluster import node_images, pod_relay
        from lmops.images.build import build
        from lmops.images.engine import detect

        engine = detect(install=True)
        built = build("cpu", engine=engine, log=say)
        say(node_images.load(Path(cluster.folder), built.ref, engine, log=say).line())
        for url in (mlflow_url, s3_url):
            relays.append(pod_relay.start(url))
        pods_mlflow, pods_s3 = (relayed for _, relayed in relays)
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}, client=admin)
        kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": S3_SECRET, "namespace": NS},
                    "stringData": demo_s3.CREDENTIALS}, client=admin)
        earlier = OperatorPod(admin, cluster.kubeconfig, NS, RELEASE)
        running = earlier.pods(terminating=True)
        earlier.stop()  # helm uninstall of a release an interrupted run left (nothing when there is none)
        if running:
            cleaned.append(f"the chart's earlier release {RELEASE}")
        op = install_operator(cluster, NS, pods_mlflow, built.ref, poll_s=10, webhook_secret=SECRET, release=RELEASE,
                              values={"stageJobs": {"stagingUri": f"s3://{demo_s3.BUCKET}/staging",
                                                    "s3Secret": S3_SECRET, "s3EndpointUrl": pods_s3}})
        say(f"helm install {RELEASE} helm/lmops: the operator runs in pod {op.pod()['metadata']['name']}")
        cleaned += delete_demo_objects(admin)
        say("cleaned what an earlier run left: " + ("; ".join(cleaned) if cleaned else "nothing"))
        mlflow = MlflowClient(mlflow_url)
        job = job_on_pods(yaml.safe_load(args.job.read_text()), f"s3://{demo_s3.BUCKET}/sources")
        model, job_name = job["spec"]["modelName"], job["metadata"]["name"]
        applied = work / "job.yaml"
        applied.write_text(yaml.safe_dump(job, sort_keys=False))
        time.sleep(2)
        mlflow.create_webhook(name=f"lmops-demo-{RELEASE}", url=op.webhook_url, secret=SECRET,
                              events=["model_version_alias.created", "model_version.created"])

        say(f"1. kubectl apply -f {args.job} (as {applied}: executor kubernetes, its local sources in the demo's S3)")
        kubectl("apply", "-f", str(applied))
        wait_until(lambda: status("LMTrainingJob", job_name).get("phase") in ("Succeeded", "Failed")
                   or status("LMTrainingJob", job_name).get("currentStage") == "train" and train_pods(job_name),
                   1800, 2, "the training job's Ray pods")
        if status("LMTrainingJob", job_name).get("currentStage") == "train":
            say("training on KubeRay: the RayJob's head and worker pods and its submitter")
            kubectl("get", "pods", "-l", f"lmops.dev/training-job={job_name}")
        wait_until(lambda: status("LMTrainingJob", job_name).get("phase")
              in ("Succeeded", "Failed"), 1800, 5, "the training job to finish")
        kubectl("get", "lmtrainingjobs")
        kubectl("get", "jobs,rayjobs")
        job_status = status("LMTrainingJob", job_name)
        if job_status["phase"] != "Succeeded":
            raise SystemExit(f"demo: the training job failed: {job_status.get('message')}")
        versions = {mv.tags.get("lmops.variant"): str(mv.version) for mv in mlflow.search_model_versions(f"name='{model}'")
                    if mv.tags.get("lmops.gate.passed") == "true"}
        first = versions.get("fp32") or job_status["registeredVersion"]
        second = next((v for k, v in sorted(versions.items()) if v != first), None)

        say(f"2. promote version {first} (fp32) to champion; kubectl apply the sample ModelDeployment (predictors of"
            f" {PREDICTOR_CPU} CPU)")
        mlflow.set_registered_model_alias(model, "champion", first)
        md = yaml.safe_load((REPO_ROOT / "manifests" / "samples" / "modeldeployment.yaml").read_text())
        md["spec"]["serving"]["cpu"] = PREDICTOR_CPU  # the stable and the canary's pods beside the operator's
        (work / "modeldeployment.yaml").write_text(yaml.safe_dump(md, sort_keys=False))
        kubectl("apply", "-f", str(work / "modeldeployment.yaml"))
        wait_until(lambda: status("ModelDeployment", model).get("stableVersion") == first
              and any(c["type"] == "Ready" and c["status"] == "True"
                      for c in status("ModelDeployment", model).get("conditions") or []), 300, 1.0, "the first version to serve")
        kubectl("get", "lmtrainingjobs,modeldeployments")

        if second:
            say(f"3. promote version {second} ({[k for k, v in versions.items() if v == second][0]}): canary, gates, promote")
            mlflow.set_registered_model_alias(model, "champion", second)
            wait_until(lambda: status("ModelDeployment", model).get("phase") == "Progressing", 60, 0.2, "the canary")
            kubectl("get", "modeldeployments")
            wait_until(lambda: len(predictor_pods()) >= 2, 120, 1.0, "the canary's predictor pod")
            kubectl("get", "pods", "-l", "component=predictor")
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
        try:
            if op is not None:
                op.stop()  # helm uninstall: its post-delete hook releases the operator's finalizers
        finally:  # this machine's processes go even when the uninstall fails or is interrupted
            for proc, _ in relays:
                pod_relay.stop(proc)
            if s3_proc is not None:
                stop_process_group(s3_proc)
            stop_process_group(mlflow_proc)
        say(f"stopped: the operator's release {RELEASE}, MLflow, S3; the demo's objects stay in namespace {NS} (the"
            f" next `make demo` removes them first, or `kubectl delete namespace {NS}`)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
