"""KubeRay stand-in: plays KubeRay's RayJob and RayCluster controllers on `lmops cluster`, with real pods.

No KubeRay build exists here (Go, no package), so this process does the controllers' work through the API
server, level-triggered like them (every RayJob is reconciled about once a second), and never runs workload
code itself: the node's kubelet runs the pods, Ray runs the job.

For each RayJob (K8sJobMode), as ``rayjob_controller.go`` does:
- New: ``jobId`` and ``rayClusterName`` (``<name>-<5 random>``), ``startTime``, -> Initializing;
- Initializing: a RayCluster owned by the RayJob (its ``rayClusterSpec``); once the cluster is ready, the
  ``dashboardURL`` (``<cluster>-head-svc.<ns>.svc.cluster.local:8265``) and the submitter Job (the rendered
  ``submitterPodTemplate`` running ``ray job submit --no-wait`` then ``ray job logs --follow``), -> Running;
- Running: the RayJob's own head Service ``<rayjob>-head-svc``; the submitter Job's Failed condition
  (SubmissionFailed) and the Ray job's status read from the head's dashboard (``/api/jobs/<id>``): SUCCEEDED ->
  Complete, FAILED -> Failed/AppFailed with Ray's message; ``activeDeadlineSeconds`` -> Failed/DeadlineExceeded;
- Failed with ``backoffLimit`` left (not after a deadline) -> Retrying: cluster and submitter deleted, a new
  attempt from New; ``status.failed``/``succeeded`` counted;
- Complete/Failed with ``shutdownAfterJobFinishes``: the RayCluster deleted ``ttlSecondsAfterFinished`` after
  ``endTime`` (the submitter Job, which holds the logs, stays).
For each RayCluster (``raycluster_controller.go``): the head Service, the head pod and ``replicas`` pods per
worker group (kuberay_objects builds them as KubeRay does); a missing pod (deleted, evicted) is created again
and a finished one replaced; ``status`` (state ready, head pod IP, ready workers, the HeadPodReady condition
with the container's waiting reason, e.g. ErrImageNeverPull or CreateContainerConfigError).
Deletion, as KubeRay: a new RayJob gets the ``ray.io/rayjob-finalizer`` finalizer; once it is being deleted, a
Ray job not yet terminal is stopped through the head's dashboard (``POST /api/jobs/<id>/stop``) and the
finalizer removed; the garbage collector then deletes what the RayJob owns (ownerReferences).

Validation (utils.ValidateRayJobSpec) -> ValidationFailed, for what it checks and the modes it does not play.
What it does not play: autoscaling, suspend/Kueue (a suspended job is left alone),
SidecarMode/HTTPMode/InteractiveMode, clusterSelector, deletionStrategy, TLS and token auth options, and GCS
fault tolerance.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any

from lmops import kube
from lmops.cluster import kuberay_objects as ko
from lmops.cluster.standin import StandIn, main, now

RECONCILE_S = 1.0
TERMINAL_JOB = ("SUCCEEDED", "FAILED", "STOPPED")
FINISHED = ("Complete", "Failed", "ValidationFailed")
STOP_JOB_FINALIZER = "ray.io/rayjob-finalizer"  # utils.RayJobStopJobFinalizer


def _suffix() -> str:
    """KubeRay's rand.String(5): lower-case consonants and digits."""
    return "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))


def _ts(stamp: str | None) -> float | None:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp() if stamp else None


def _ms_stamp(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if ms else None


class KubeRayStandIn(StandIn):
    """KubeRay stand-in: RayJob -> RayCluster -> head/worker pods, Services, submitter Job; KubeRay's status."""

    api_version, kind = ko.RAY_API, "RayJob"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.next_at: dict[tuple[str, str], float] = {}
        self.shut_down: set[str] = set()  # RayJob uids whose cluster shutdownAfterJobFinishes removed

    # ------------------------------------------------------------ the watch feeds, the tick reconciles
    def changed(self, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.jobs[key] = obj
        self.next_at[key] = 0.0  # a change is reconciled at the next tick

    def deleted(self, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        self.jobs.pop(key, None)
        self.next_at.pop(key, None)

    def tick(self) -> None:
        t = time.monotonic()
        for key in list(self.jobs):
            if self.next_at.get(key, 0.0) > t:
                continue
            self.next_at[key] = t + RECONCILE_S
            obj = kube.get(ko.RAY_API, "RayJob", key[1], key[0], client=self.client)
            if obj is None:
                self.deleted({"metadata": {"namespace": key[0], "name": key[1]}})
                continue
            self._guarded(f"RayJob {key[0]}/{key[1]}", self.reconcile, obj)

    # ------------------------------------------------------------ the RayJob controller
    def reconcile(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        status = dict(job.get("status") or {})
        if meta.get("deletionTimestamp"):
            return self._being_deleted(job, status)
        if spec.get("suspend"):
            return
        dep = status.get("jobDeploymentStatus") or ""
        if dep in ("", "New") and kube.add_finalizer(job, STOP_JOB_FINALIZER, client=self.client):
            return  # the write bumps the resourceVersion: the status follows at the next tick, from a fresh read
        invalid = validation_error(spec) if dep not in FINISHED else None
        if invalid:
            self._write(job, {"jobDeploymentStatus": "ValidationFailed", "reason": "ValidationFailed",
                              "message": invalid})
        elif dep in ("", "New"):
            self._write(job, {"jobId": spec.get("jobId") or f"{meta['name']}-{_suffix()}",
                              "rayClusterName": f"{meta['name']}-{_suffix()}",
                              "jobDeploymentStatus": "Initializing", "startTime": now(),
                              "observedGeneration": meta.get("generation")})
        elif dep == "Initializing":
            self._initializing(job, status)
        elif dep == "Running":
            self._running(job, status)
        elif dep == "Retrying":
            self._retrying(job, status)
        elif dep in FINISHED:
            self._finished(job, status)

    def _being_deleted(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        """KubeRay's finalizer: a Ray job not yet terminal is stopped through the head's dashboard (so that it
        does not go on writing checkpoints while its pods are being killed), then the finalizer is removed
        whether the stop worked or not; the garbage collector then deletes what the RayJob owns."""
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        if STOP_JOB_FINALIZER not in (job["metadata"].get("finalizers") or []):
            return
        url = _job_url(status.get("rayClusterStatus") or {}, status.get("jobId"))
        if status.get("jobStatus") not in TERMINAL_JOB and url:
            try:
                request = urllib.request.Request(f"{url}/stop", method="POST")
                with urllib.request.urlopen(request, timeout=5):
                    pass
                self.log(f"RayJob {ns}/{name} is being deleted: Ray job {status['jobId']} stopped")
            except (OSError, ValueError) as e:
                self.log(f"RayJob {ns}/{name} is being deleted: failed to stop Ray job {status['jobId']}: {e}")
        kube.remove_finalizers(ko.RAY_API, "RayJob", name, ns, prefix=STOP_JOB_FINALIZER, client=self.client)

    def _initializing(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        if self._deadline_passed(job, status):
            return
        cluster = self._cluster_for(job, status)
        cstatus = self.reconcile_cluster(cluster)
        if cstatus.get("state") != "ready":
            if cstatus != status.get("rayClusterStatus"):
                self._write(job, {"rayClusterStatus": cstatus})
            return
        ns = job["metadata"]["namespace"]
        status["dashboardURL"] = f"{ko.head_service_fqdn(cluster['metadata']['name'], ns)}:{ko.DASHBOARD_PORT}"
        if kube.get("batch/v1", "Job", job["metadata"]["name"], ns, client=self.client) is None:
            kube.create(ko.submitter_job({**job, "status": status}, cluster), client=self.client)
            self.log(f"RayJob {ns}/{job['metadata']['name']}: submitter Job created")
        self._write(job, {"dashboardURL": status["dashboardURL"], "rayClusterStatus": cstatus,
                          "jobDeploymentStatus": "Running"})

    def _running(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if self._deadline_passed(job, status):
            return
        cluster = self._cluster_for(job, status)
        cstatus = self.reconcile_cluster(cluster)
        kube.create(ko.head_service(cluster, name=f"{name}-head-svc", owner=job, labels={
            ko.ORIGIN_NAME_LABEL: name, ko.ORIGIN_CRD_LABEL: "RayJob", ko.NODE_TYPE_LABEL: "head",
            ko.ID_LABEL: f"{name}-head"[-63:]}), client=self.client)
        update: dict[str, Any] = {"rayClusterStatus": cstatus}
        submitter = kube.get("batch/v1", "Job", name, ns, client=self.client) or {}
        conditions = [c for c in (submitter.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
        failed = next((c for c in conditions if c["type"] == "Failed"), None)
        finished_at = next((c.get("lastTransitionTime") for c in conditions if c["type"] in ("Complete", "Failed")), None)
        if failed is not None:
            update["jobDeploymentStatus"] = "Failed"
            if status.get("jobStatus") == "FAILED":
                update["reason"] = "AppFailed"
            else:
                update["reason"] = "SubmissionFailed"
                update["message"] = (f"Job submission has failed. Reason: {failed.get('reason')}."
                                     f" Message: {failed.get('message')}")
            return self._write(job, update, status)
        info = self._job_info(cstatus, status["jobId"])
        if info is None:  # the dashboard does not answer (yet)
            return self._write(job, update, status)
        if info == "not found":
            if finished_at:
                update.update({"jobDeploymentStatus": "Failed", "reason": "AppFailed",
                               "message": "Submitter completed but Ray job not found in RayCluster."})
            return self._write(job, update, status)
        terminal = info.get("status") in TERMINAL_JOB and finished_at is not None
        update.update({"jobStatus": info.get("status") or "", "message": info.get("message") or "",
                       "jobDeploymentStatus": "Running", "reason": None})
        if terminal:
            update["jobDeploymentStatus"] = "Failed" if info["status"] == "FAILED" else "Complete"
            update["reason"] = "AppFailed" if info["status"] == "FAILED" else None
        times = {k: _ms_stamp(info.get(f"{k[:-4]}_time")) for k in ("startTime", "endTime")}
        if any(times.values()):
            update["rayJobInfo"] = {k: v for k, v in times.items() if v}
        self._write(job, update, status)

    def _retrying(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        """Delete the attempt's cluster and submitter; once both are gone, start over from New."""
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        gone = True
        for api, kind, obj_name in ((ko.RAY_API, "RayCluster", status.get("rayClusterName")),
                                    ("batch/v1", "Job", name)):
            if obj_name and kube.get(api, kind, obj_name, ns, client=self.client) is not None:
                kube.delete(api, kind, obj_name, ns, client=self.client, propagation_policy="Foreground")
                gone = False
        if gone:
            self._write(job, {"rayClusterStatus": None, "rayClusterName": "", "dashboardURL": "", "jobId": "",
                              "message": "", "reason": "", "rayJobInfo": None, "jobStatus": "",
                              "jobDeploymentStatus": "New"})

    def _finished(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        spec = job["spec"]
        if not spec.get("shutdownAfterJobFinishes") or spec.get("clusterSelector") or job["metadata"]["uid"] in self.shut_down:
            return
        end = _ts(status.get("endTime"))
        if end is None or time.time() < end + int(spec.get("ttlSecondsAfterFinished") or 0):
            return
        name, ns = status.get("rayClusterName"), job["metadata"]["namespace"]
        if name and kube.delete(ko.RAY_API, "RayCluster", name, ns, client=self.client):
            self.log(f"RayJob {ns}/{job['metadata']['name']}: RayCluster {name} deleted (shutdownAfterJobFinishes)")
        self.shut_down.add(job["metadata"]["uid"])

    def _deadline_passed(self, job: dict[str, Any], status: dict[str, Any]) -> bool:
        deadline = job["spec"].get("activeDeadlineSeconds")
        start = _ts(status.get("startTime"))
        if deadline is None or start is None or time.time() < start + deadline:
            return False
        self._write(job, {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded",
                          "message": f"The RayJob has passed the activeDeadlineSeconds. StartTime:"
                                     f" {status.get('startTime')}. ActiveDeadlineSeconds: {deadline}"}, status)
        return True

    def _write(self, job: dict[str, Any], update: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        """updateRayJobStatus with checkBackoffLimitAndUpdateStatusIfNeeded: endTime when the deployment ends,
        the attempt counted, and a failure with retries left turned into Retrying."""
        old = old if old is not None else (job.get("status") or {})
        new = {**old, **update}
        dep = new.get("jobDeploymentStatus")
        if dep in FINISHED and old.get("jobDeploymentStatus") not in FINISHED:
            update["endTime"] = now()
            update["failed"] = int(old.get("failed") or 0) + (dep == "Failed")
            update["succeeded"] = int(old.get("succeeded") or 0) + (dep == "Complete" and new.get("jobStatus") == "SUCCEEDED")
            limit = job["spec"].get("backoffLimit")
            if (dep == "Failed" and limit is not None and update["failed"] < limit + 1
                    and new.get("reason") not in ("DeadlineExceeded", "JobStatusCheckTimeoutExceeded")):
                update["jobDeploymentStatus"] = "Retrying"
                self.log(f"RayJob {job['metadata']['namespace']}/{job['metadata']['name']}: attempt"
                         f" {update['failed']} failed ({new.get('reason')}); retrying (backoffLimit {limit})")
        # empty strings are KubeRay's omitted fields (omitempty): removed, which the CRD's string types accept
        update = {k: (None if v == "" else v) for k, v in update.items()}
        if all(old.get(k) == v for k, v in update.items()):
            return
        self.write_status(job, update)

    def _cluster_for(self, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """getOrCreateRayClusterInstance."""
        ns, name = job["metadata"]["namespace"], status["rayClusterName"]
        cluster = kube.get(ko.RAY_API, "RayCluster", name, ns, client=self.client)
        if cluster is None:
            kube.create(ko.ray_cluster(job, name), client=self.client)
            self.log(f"RayJob {ns}/{job['metadata']['name']}: RayCluster {name} created")
            cluster = kube.get(ko.RAY_API, "RayCluster", name, ns, client=self.client)
        return cluster

    def _job_info(self, cstatus: dict[str, Any], job_id: str) -> dict[str, Any] | str | None:
        """The dashboard's job info; "not found", or None when the dashboard does not answer (yet)."""
        url = _job_url(cstatus, job_id)
        if not url:
            return None
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return "not found" if e.code == 404 else None
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------ the RayCluster controller
    def reconcile_cluster(self, cluster: dict[str, Any]) -> dict[str, Any]:
        """Services and pods as the spec wants them; returns (and writes) the RayCluster's status."""
        meta, spec = cluster["metadata"], cluster["spec"]
        ns, name = meta["namespace"], meta["name"]
        kube.create(ko.head_service(cluster), client=self.client)
        pods, _ = kube.list_objects("v1", "Pod", ns, client=self.client)
        mine = [p for p in pods if (p["metadata"].get("labels") or {}).get(ko.CLUSTER_LABEL) == name
                and not p["metadata"].get("deletionTimestamp")]
        for pod in mine:  # KubeRay replaces a Ray pod that ended (its restartPolicy let it finish)
            if (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
                kube.delete("v1", "Pod", pod["metadata"]["name"], ns, client=self.client)
        mine = [p for p in mine if (p.get("status") or {}).get("phase") not in ("Failed", "Succeeded")]
        heads = [p for p in mine if p["metadata"]["labels"].get(ko.NODE_TYPE_LABEL) == "head"]
        if not heads:
            self._create_pod(ko.head_pod(cluster))
        ready_workers, desired = 0, 0
        workers = [p for p in mine if p["metadata"]["labels"].get(ko.NODE_TYPE_LABEL) == "worker"]
        for group in spec.get("workerGroupSpecs") or []:
            want = 0 if group.get("suspend") else max(int(group.get("replicas") or 0), int(group.get("minReplicas") or 0))
            want = min(want, int(group.get("maxReplicas", want)))
            desired += want
            have = [p for p in workers if p["metadata"]["labels"].get(ko.GROUP_LABEL) == group["groupName"]]
            for _ in range(want - len(have)):
                self._create_pod(ko.worker_pod(cluster, group))
            ready_workers += sum(_ready(p) for p in have)
        head = heads[0] if heads else None
        status = {"desiredWorkerReplicas": desired, "readyWorkerReplicas": ready_workers,
                  "availableWorkerReplicas": ready_workers, "observedGeneration": meta.get("generation"),
                  "head": {"podName": head["metadata"]["name"], "serviceName": f"{name}-head-svc",
                           **({"podIP": ip} if (ip := (head.get("status") or {}).get("podIP")) else {})} if head else None,
                  "conditions": [_head_pod_ready(head, (cluster.get("status") or {}).get("conditions"))],
                  "endpoints": {k: str(v) for k, v in ko.DEFAULT_PORTS.items()}}
        all_ready = head is not None and _ready(head) and ready_workers >= desired
        old_state = (cluster.get("status") or {}).get("state")
        status["state"] = "ready" if all_ready or old_state == "ready" else ""  # KubeRay keeps "ready" once reached
        if old_state != status["state"]:
            status["stateTransitionTimes"] = {**((cluster.get("status") or {}).get("stateTransitionTimes") or {}),
                                              **({status["state"]: now()} if status["state"] else {})}
        status["reason"] = _pod_problem(mine)
        # empty strings are KubeRay's omitted fields (omitempty); the API server refuses "" for them here
        status = {k: (None if v == "" else v) for k, v in status.items()}
        if any((cluster.get("status") or {}).get(k) != v for k, v in status.items()):
            kube.patch_status(ko.RAY_API, "RayCluster", name, ns, status, client=self.client)
        return {k: v for k, v in status.items() if v is not None}

    def _create_pod(self, pod: dict[str, Any]) -> None:
        kube.create(pod, client=self.client)  # generateName: the API server names it
        self.log(f"pod {pod['metadata']['namespace']}/{pod['metadata']['generateName']}* created")


def _job_url(cstatus: dict[str, Any], job_id: str | None) -> str | None:
    """The Ray job's URL on the head's dashboard, from the head pod's address (this process sits on the node,
    outside the cluster DNS); None before the head pod has an address or the job an id."""
    ip = (cstatus.get("head") or {}).get("podIP")
    return f"http://{ip}:{ko.DASHBOARD_PORT}/api/jobs/{job_id}" if ip and job_id else None


def validation_error(spec: dict[str, Any]) -> str | None:
    """What of utils.ValidateRayJobSpec this stand-in can run (the rest: modes it does not play)."""
    mode = spec.get("submissionMode") or "K8sJobMode"
    if mode != "K8sJobMode":
        return f"submissionMode {mode}: the KubeRay stand-in plays K8sJobMode only"
    if spec.get("clusterSelector"):
        return "clusterSelector: the KubeRay stand-in makes a RayCluster per RayJob only"
    if not spec.get("rayClusterSpec"):
        return "The RayJob spec is invalid: one of RayClusterSpec or ClusterSelector must be set"
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        return ("The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false is not allowed to"
                " be suspended")
    if int(spec.get("ttlSecondsAfterFinished") or 0) < 0:
        return "The RayJob spec is invalid: TTLSecondsAfterFinished must be a non-negative integer"
    return None


def _ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    return st.get("phase") == "Running" and any(c.get("type") == "Ready" and c.get("status") == "True"
                                                for c in st.get("conditions") or [])


def _container_problem(pod: dict[str, Any]) -> tuple[str, str] | None:
    """firstNotReadyContainerStatus: the waiting (or last terminated) reason of the first container not ready."""
    st = pod.get("status") or {}
    for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
        if cs.get("ready"):
            continue
        waiting = (cs.get("state") or {}).get("waiting") or {}
        last = (cs.get("lastState") or {}).get("terminated") or {}
        if waiting.get("reason") in (None, "PodInitializing", "ContainerCreating"):
            continue
        message = waiting.get("message") or ""
        if last.get("reason"):
            message = f"{message}; last exit: {last['reason']} (exit code {last.get('exitCode')})".lstrip("; ")
        return waiting["reason"], f"container {cs['name']}: {message}" if message else f"container {cs['name']}"
    return None


def _head_pod_ready(head: dict[str, Any] | None, old: list[dict[str, Any]] | None) -> dict[str, Any]:
    """utils.FindHeadPodReadyCondition (HeadPodNotFound when there is none yet)."""
    if head is None:
        cond = {"type": "HeadPodReady", "status": "False", "reason": "HeadPodNotFound", "message": ""}
    else:
        ready = next((c for c in (head.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
        cond = {"type": "HeadPodReady", "status": (ready or {}).get("status", "False"),
                "reason": (ready or {}).get("reason") or ("HeadPodRunningAndReady" if _ready(head) else "Unknown"),
                "message": (ready or {}).get("message") or ""}
        problem = _container_problem(head)
        if cond["reason"] == "ContainersNotReady" and problem:
            cond["reason"] = problem[0]
            cond["message"] = "; ".join(m for m in (cond["message"], problem[1]) if m)
    cond["message"] = cond["message"] or cond["reason"]  # a required field of metav1.Condition
    previous = next((c for c in old or [] if c.get("type") == "HeadPodReady"), None)
    same = previous and previous.get("status") == cond["status"]
    cond["lastTransitionTime"] = previous["lastTransitionTime"] if same else now()
    return cond


def _pod_problem(pods: list[dict[str, Any]]) -> str:
    """The first pod of the cluster that cannot start, and why (the RayCluster's ``reason``)."""
    for pod in pods:
        problem = _container_problem(pod)
        if problem:
            return f"pod {pod['metadata']['name']}: {problem[0]}: {problem[1]}"
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"pod {pod['metadata']['name']}: {cond.get('reason')}: {cond.get('message')}"
    return ""


if __name__ == "__main__":
    sys.exit(main(KubeRayStandIn))
