"""LMTrainingJob with executor ``kubernetes`` on `lmops cluster`: the sample job (micro preset) applied with kubectl
runs as a batch/v1 Job per stage and a KubeRay RayJob (pods of the lmops image on the node, outputs through the
session's moto S3), registers a version in the session's MLflow with its lineage tags, and says so in status and
in `kubectl get lmtj`. The operator runs as its own process with the ServiceAccount token of manifests/rbac.

One end-to-end run carries the assertions (minutes of pods on 2 cores): the operator is SIGKILLed at six points
on the way (before the first Job is created, right after, while a stage runs, between two stages, right after the
RayJob is created, during register) and restarted, and every stage still exists exactly once; a spec edit
meanwhile is refused with a condition; a second job with a bad source URI fails with its pod's message; deleting
the job deletes its Jobs and RayJob; re-applying it finds its stages cached.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from micro_pipeline import MICRO, write_corpus
from operator_world import service_account_kubeconfig, start_operator, wait_for
from ray_pods import SMALL_PODS

from lmops import kube, storage
from lmops.crd import API_VERSION

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
KIND, RAYJOB, JOB = "LMTrainingJob", ("ray.io/v1", "RayJob"), ("batch/v1", "Job")
JOB_STAGES = ("build", "tokenize", "evaluate", "compress", "register")
# every stage pod requests a quarter core: the RayJob's pods (kept a few seconds after the job) fit beside them
SMALL_STAGES = {f"pipeline.{field}.{k}": v for field in ("build", "tokenize", "evaluate", "compress", "register_model")
                for k, v in (("cpu", "250m"), ("memory", "1Gi"), ("memory_limit", "3Gi"))}


def sample(ns: str, bucket: str, s3_endpoint: str, tracking_uri: str, name: str, sources: list[str]) -> dict:
    """manifests/samples/lmtrainingjob-kubernetes.yaml pointed at the session's S3, MLflow and node."""
    job = yaml.safe_load((REPO / "manifests" / "samples" / "lmtrainingjob-kubernetes.yaml").read_text())
    job["metadata"] = {"name": name, "namespace": ns}
    spec = job["spec"]
    spec["modelName"] = f"lm-{ns}"
    spec["sources"] = sources
    spec["mlflowTrackingUri"] = tracking_uri
    overrides = dict(item.split("=", 1) for item in MICRO)
    overrides.update({f"kuberay.{k}": str(v) for k, v in {**SMALL_PODS, "head_ranks": 1, "poll_s": 1,
                                                           "ttl_seconds_after_finished": 2}.items()})
    overrides.update(SMALL_STAGES)
    spec["overrides"] = overrides
    spec["executor"]["kubernetes"] = {"stagingUri": f"s3://{bucket}/staging", "s3Secret": "s3-creds",
                                      "s3EndpointUrl": s3_endpoint, "backoffLimit": 0}
    return job


def kubectl(*args: str) -> str:
    exe = str(Path(sys.executable).parent / "kubectl")
    return subprocess.run([exe, *args], check=True, capture_output=True, text=True).stdout


def status(admin, ns, name) -> dict:
    return ((kube.get(API_VERSION, KIND, name, ns, client=admin) or {}).get("status")) or {}


def stage_state(s: dict, stage: str) -> str | None:
    return {e["name"]: e["state"] for e in s.get("stages") or []}.get(stage)


def owned(admin, ns, uid, api_kind) -> list[dict]:
    objs, _ = kube.list_objects(*api_kind, ns, client=admin)
    return [o for o in objs if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]


def stage_pods(admin, ns) -> dict[str, list[str]]:
    pods, _ = kube.list_objects("v1", "Pod", ns, client=admin)
    out: dict[str, list[str]] = {}
    for p in pods:
        job = (p["metadata"].get("labels") or {}).get("job-name")
        if job and (p["metadata"].get("labels") or {}).get("lmops.dev/stage"):
            out.setdefault(job, []).append(p["metadata"]["name"])
    return out


def test_sample_job_runs_as_stage_jobs_and_a_rayjob_through_operator_kills(
        kube_cluster, kube_namespace, kube_s3_secret, s3, moto_for_pods, mlflow_server, mlflow_for_pods, node_image,
        tmp_path):
    admin, ns = kube_cluster.client(), kube_namespace
    _, bucket = s3
    storage.upload_dir(write_corpus(tmp_path / "corpus"), f"s3://{bucket}/corpus")
    kubeconfig, _ = service_account_kubeconfig(kube_cluster, ns, tmp_path / "sa.kubeconfig")
    job = sample(ns, bucket, moto_for_pods, mlflow_for_pods, "micro-lm", [f"s3://{bucket}/corpus/"])
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    kubectl("apply", "-f", str(tmp_path / "job.yaml"))
    uid = kube.get(API_VERSION, KIND, "micro-lm", ns, client=admin)["metadata"]["uid"]
    start = lambda point=None: start_operator(kubeconfig, ns, mlflow_for_pods, tmp_path, poll_s=1,  # noqa: E731
                                              failpoint=point)
    names = {stage: f"micro-lm-{uid[:5]}-{stage}" for stage in (*JOB_STAGES, "train")}
    st = lambda: status(admin, ns, "micro-lm")  # noqa: E731
    killed = []

    def die_at(point: str) -> None:
        op = start(point)
        wait_for(f"operator killed at {point}", lambda: op.proc.poll() is not None, 600, describe=st)
        assert op.proc.returncode == -9, op.text()[-3000:]
        killed.append(point)

    def kill_when(what: str, fn, op):
        wait_for(what, fn, 600, operator=op, describe=st)
        op.kill()
        killed.append(what)

    # 1. before the first Job is created: the run is recorded, nothing exists
    die_at("jobs.before_create.build")
    assert st()["runId"] and st()["phase"] == "Pending" and not owned(admin, ns, uid, JOB)
    # 2. right after it is created, before status says so: the next operator does not create it again
    die_at("jobs.created.build")
    assert [j["metadata"]["name"] for j in owned(admin, ns, uid, JOB)] == [names["build"]]
    # 3. while a stage runs; meanwhile a spec edit is refused and a job with a bad source starts
    op = start()
    bad = sample(ns, bucket, moto_for_pods, mlflow_for_pods, "bad-source", [f"s3://{bucket}/no-such-corpus/"])
    kube.apply(bad, client=admin)
    kube.apply({**job, "spec": {**job["spec"], "overrides": {**job["spec"]["overrides"], "train.max_steps": "99"}}},
               client=admin)
    cond = wait_for("SpecChanged condition", lambda: next((c for c in st().get("conditions") or []
                                                           if c["type"] == "SpecChanged"), None), 60, operator=op)
    assert cond["reason"] == "RefusedWhileRunning" and "create a new LMTrainingJob" in cond["message"]
    kill_when("tokenize running", lambda: stage_state(st(), "tokenize") == "Running", op)
    # 4. between two stages (tokenize recorded done, the RayJob not created), 5. right after the RayJob is created
    die_at("jobs.before_create.train")
    assert {s["name"]: s["state"] for s in st()["stages"]}["tokenize"] == "Succeeded"
    assert not owned(admin, ns, uid, RAYJOB)
    die_at("jobs.created.train")
    assert [r["metadata"]["name"] for r in owned(admin, ns, uid, RAYJOB)] == [names["train"]]
    # 6. during register
    op = start()
    kill_when("register running", lambda: stage_state(st(), "register") == "Running", op)
    op = start()
    try:
        wait_for("Succeeded", lambda: st().get("phase") in ("Succeeded", "Failed"), 600, operator=op, describe=st)
        s = st()
        assert s["phase"] == "Succeeded", s
        assert killed == ["jobs.before_create.build", "jobs.created.build", "tokenize running",
                          "jobs.before_create.train", "jobs.created.train", "register running"]

        # every stage exactly once: one Job (one pod: nothing retried or re-created) per stage, one RayJob
        jobs = owned(admin, ns, uid, JOB)
        assert sorted(j["metadata"]["name"] for j in jobs) == sorted(names[s] for s in JOB_STAGES)
        pods = stage_pods(admin, ns)
        assert all(len(pods[names[stage]]) == 1 for stage in JOB_STAGES), pods
        assert len(owned(admin, ns, uid, RAYJOB)) == 1
        build = next(j for j in jobs if j["metadata"]["name"] == names["build"])
        pod = build["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
        assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}] and build["spec"]["backoffLimit"] == 0
        assert c["resources"]["requests"] == {"cpu": "250m", "memory": "1Gi"}
        assert "99" not in json.dumps(c["command"])  # the edit was not applied

        # status: every stage with its Job, times and outcome; the version and the key metric
        by_stage = {e["name"]: e for e in s["stages"]}
        assert [e["name"] for e in s["stages"]] == ["build", "tokenize", "train", "evaluate", "compress", "register"]
        for stage, e in by_stage.items():
            assert e["state"] == "Succeeded" and e["job"] == names[stage] and e["startTime"] and e["completionTime"], e
        version = s["registeredVersion"]
        assert s["metrics"]["perplexity"] > 1
        table = kubectl("get", "lmtj", "-n", ns)
        print(table)
        assert table.split("\n")[0].split()[:5] == ["NAME", "PHASE", "STAGE", "VERSION", "PERPLEXITY"]
        assert any(line.split()[:2] == ["micro-lm", "Succeeded"] and version in line.split() for line in table.split("\n"))
        print(kubectl("get", "jobs", "-n", ns))

        # in MLflow, with the lineage of its stage outputs
        from mlflow import MlflowClient

        from lmops.registry.lineage import MODEL_DIGEST

        tags = MlflowClient(mlflow_server).get_model_version(f"lm-{ns}", version).tags
        assert len(tags[MODEL_DIGEST]) == 64 and tags["lmops.pipeline_run_id"] == s["runId"], tags

        # an Event per stage change, once each despite the restarts (a stage that started and ended between two
        # reconciles has no StageStarted)
        events, _ = kube.list_objects("v1", "Event", ns, client=admin)
        mine = [e["reason"] + ":" + e["message"].split(":")[0] for e in events
                if e["involvedObject"]["name"] == "micro-lm" and e["reason"].startswith("Stage")]
        assert sorted(m for m in mine if m.startswith("StageSucceeded")) == sorted(
            f"StageSucceeded:stage {st_} ({names[st_]})" for st_ in names), mine
        assert len(mine) == len(set(mine)) and all(m.startswith(("StageStarted", "StageSucceeded")) for m in mine), mine

        # the bad source: Failed with the pod's own message
        b = wait_for("bad-source Failed", lambda: (lambda x: x if x.get("phase") == "Failed" else None)(
            status(admin, ns, "bad-source")), 120, operator=op)
        assert "stage build failed" in b["message"] and "no-such-corpus" in b["message"], b
        assert "no such file or directory (or nothing matches)" in b["stages"][0]["message"], b["stages"][0]

        # deleting the job deletes its Jobs and RayJob; re-applied, its stages are found cached
        kube.delete(API_VERSION, KIND, "micro-lm", ns, client=admin)
        wait_for("Jobs and RayJob deleted with their owner", lambda: not owned(admin, ns, uid, JOB)
                 and not owned(admin, ns, uid, RAYJOB), 120, operator=op)
        kubectl("apply", "-f", str(tmp_path / "job.yaml"))
        wait_for("re-applied job done", lambda: st().get("phase") in ("Succeeded", "Failed"), 600, operator=op,
                 describe=st)
        again = {e["name"]: e["state"] for e in st()["stages"]}
        # train's RayJob ran again, found its checkpoint's key unchanged and trained nothing (its log says so)
        assert st()["phase"] == "Succeeded" and again == {**{k: "Cached" for k in ("build", "tokenize", "train",
                                                                                    "evaluate", "compress")},
                                                          "register": "Succeeded"}, st()
        assert st()["registeredVersion"] == version  # the same model: register finds its version
    finally:
        op.stop()


def test_operator_role_grants_stage_objects_and_nothing_more(kube_cluster, kube_namespace, tmp_path):
    """The Role of manifests/rbac (the chart's) on the real API server with RBAC, used with the operator's
    ServiceAccount token: what the kubernetes executor does is allowed, verbs beyond it are 403."""
    ns = kube_namespace
    _, token = service_account_kubeconfig(kube_cluster, ns, tmp_path / "sa.kubeconfig")
    sa = kube_cluster.client(token)
    assert kube.get(*JOB, "nope", ns, client=sa) is None and kube.get(*RAYJOB, "nope", ns, client=sa) is None
    assert kube.get("v1", "Pod", "nope", ns, client=sa) is None and kube.list_objects("v1", "Pod", ns, client=sa)[0] == []
    for verb, call in [("delete jobs", lambda: kube.delete(*JOB, "any", ns, client=sa)),
                       ("list jobs", lambda: kube.list_objects(*JOB, ns, client=sa)),
                       ("delete rayjobs", lambda: kube.delete(*RAYJOB, "any", ns, client=sa)),
                       ("delete pods", lambda: kube.delete("v1", "Pod", "any", ns, client=sa)),
                       ("create pods", lambda: kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
                           "name": "x", "namespace": ns}, "spec": {"containers": [{"name": "c", "image": "x"}]}},
                           client=sa)),
                       ("get secrets", lambda: kube.get("v1", "Secret", "s3-creds", ns, client=sa))]:
        with pytest.raises(kube.KubeError) as e:
            call()
        assert e.value.status == 403, verb
