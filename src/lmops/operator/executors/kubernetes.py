"""The ``kubernetes`` executor: an LMTrainingJob's stages as batch/v1 Jobs and KubeRay RayJobs (train; build and
tokenize too on engine ray), one at a time.

``state`` observes each stage's object by its deterministic name (and a finished Job's pod, whose termination
message is the stage's outcome) and lets lmops.rollout.stage_jobs decide; ``start`` creates the one stage
that decision names. Creating is idempotent (a 409 is "already there"), and nothing lives in this process:
an operator killed between any two calls resumes from what it finds in the cluster.
"""

from __future__ import annotations

import json
import os
from typing import Any

from lmops import kube
from lmops.crd.training import LMTrainingJobSpec
from lmops.failpoints import failpoint
from lmops.errors import LmopsError
from lmops.operator.executors.stage_objects import (STAGE_LABEL, Target, check_target, job_config, runs_on_ray,
                                                    stage_job, stage_rayjob)
from lmops.rollout import RunState
from lmops.rollout.stage_jobs import ACTIVE, BROKEN, DONE, StageObject, run_state
from lmops.train.kuberay.entrypoint import CACHED
from lmops.train.kuberay.render import API_VERSION as RAY_API, KIND as RAYJOB
from lmops.train.kuberay.submit import FAILED as RAY_FAILED, SUCCEEDED as RAY_SUCCEEDED
from lmops.train.kuberay.submit import rayjob_backoff_limit, rayjob_outcome

LOG_LINES = 10  # a failed stage's last log lines kept in status
CACHE_LOG_LINES = 40  # where a RayJob's submitter log says the job was cached (the job's last lines, then ray's)


def target_for(obj: dict[str, Any], spec: LMTrainingJobSpec, settings) -> Target:
    meta = obj["metadata"]
    k = spec.executor.kubernetes
    pick = lambda field, default: (getattr(k, field) if k and getattr(k, field) is not None else default)  # noqa: E731
    return Target(namespace=meta["namespace"], name=meta["name"], uid=meta["uid"],
                  staging_uri=pick("staging_uri", settings.staging_uri) or "",
                  s3_secret=pick("s3_secret", settings.s3_secret),
                  s3_endpoint_url=pick("s3_endpoint_url", settings.s3_endpoint_url),
                  backoff_limit=k.backoff_limit if k else 1, service_account=pick("service_account", None),
                  image=settings.image, tracking_uri=spec.mlflow_tracking_uri or settings.tracking_uri)


class KubernetesExecutor:
    def __init__(self, target: Target, client=None, spec: LMTrainingJobSpec | None = None):
        self.target = target
        self.client = client
        self.spec = spec
        self._ray_stages: set[str] | None = None

    def ray_stages(self) -> set[str]:
        """The stages that are RayJobs for this job's config: train, and build / tokenize on engine ray. Train
        alone when the config does not resolve (then no stage can start, and ``start`` says why)."""
        if self._ray_stages is None:
            from lmops.pipeline.stage_job import STAGES

            try:
                cfg = job_config(self.spec, self.target) if self.spec else None
            except LmopsError:
                cfg = None
            self._ray_stages = {s for s in STAGES if runs_on_ray(s, cfg)} if cfg else {"train"}
        return self._ray_stages

    # ------------------------------------------------------------ observing
    def state(self, run_id: str) -> RunState | None:
        observed = self.observe()
        if all(o is None for o in observed.values()):
            return None
        return run_state(observed)

    def observe(self) -> dict[str, StageObject | None]:
        from lmops.pipeline.stage_job import STAGES

        t = self.target
        ray_stages = self.ray_stages()
        kind = {stage: (RAY_API, RAYJOB) if stage in ray_stages else ("batch/v1", "Job") for stage in STAGES}
        objects = {stage: kube.get(*kind[stage], t.object_name(stage), t.namespace, client=self.client)
                   for stage in STAGES}
        listed: list[list[dict[str, Any]]] = []

        def pods_of(job_name: str) -> list[dict[str, Any]]:
            """The pods of one Job (a RayJob's submitter is one too); one list for the whole reconcile, made
            only once something needs it. It is made after every stage object was read, so a Job read as
            complete has its pod listed as Succeeded (the pod's phase is set before the Job's condition)."""
            if not listed:
                listed.append([p for p in kube.list_objects("v1", "Pod", t.namespace, client=self.client)[0]
                               if (p["metadata"].get("labels") or {}).get(STAGE_LABEL)])
            return [p for p in listed[0] if p["metadata"]["labels"].get("job-name") == job_name]

        out: dict[str, StageObject | None] = {}
        for stage, obj in objects.items():
            name = t.object_name(stage)
            if obj is None:
                out[stage] = None
            elif stage in ray_stages:
                out[stage] = self._rayjob_stage(name, obj, pods_of)
            else:
                out[stage] = self._job_stage(name, obj, pods_of(name))
        return out

    def _job_stage(self, name: str, job: dict[str, Any], pods: list[dict[str, Any]]) -> StageObject:
        st = job.get("status") or {}
        conds = {c["type"]: c for c in st.get("conditions") or [] if c.get("status") == "True"}
        start, end = st.get("startTime"), st.get("completionTime")
        if "Complete" in conds or st.get("succeeded"):
            done = next((p for p in pods if (p.get("status") or {}).get("phase") == "Succeeded"), None)
            return StageObject(name, DONE, start, end, result=_message_json(done))
        if "Failed" in conds:
            failed = sorted((p for p in pods if (p.get("status") or {}).get("phase") == "Failed"),
                            key=lambda p: p["metadata"].get("creationTimestamp") or "")
            last = failed[-1] if failed else None
            term = _terminated(last)
            error = _message_json(last).get("error") or (term.get("message") or "").strip()
            logs = self._log_tail(last) if last else ""
            reason = f"{conds['Failed'].get('reason') or 'Failed'} (pod {term.get('reason') or 'unknown'}," \
                     f" exit code {term.get('exitCode')}, {st.get('failed', 0)} attempt(s))"
            message = error + (f"\nlast log lines:\n{logs}" if logs and logs.strip() not in error else "")
            return StageObject(name, BROKEN, start, conds["Failed"].get("lastTransitionTime"), reason=reason,
                               message=message)
        return StageObject(name, ACTIVE, start)

    def _rayjob_stage(self, name: str, ray: dict[str, Any], pods_of) -> StageObject:
        st = ray.get("status") or {}
        outcome, msg = rayjob_outcome(st, rayjob_backoff_limit(ray))  # a failed attempt with retries left is not the end
        start, end = st.get("startTime"), st.get("endTime")
        if outcome == RAY_SUCCEEDED:
            result = {"detail": f"RayJob {name}: {st.get('jobStatus')}"}
            # the job's own word that it found its checkpoint valid and trained nothing: its submitter's log
            # (KubeRay's submitter Job has the RayJob's name and tails the job's output)
            submitter = next((p for p in pods_of(name) if (p.get("status") or {}).get("phase") == "Succeeded"), None)
            if submitter is not None and CACHED in self._log_tail(submitter, CACHE_LOG_LINES):
                result["status"] = "cached"
            return StageObject(name, DONE, start, end, result=result)
        if outcome == RAY_FAILED:
            return StageObject(name, BROKEN, start, end, reason=st.get("reason") or st.get("jobDeploymentStatus") or "Failed",
                               message=f"{msg or ''} (logs: kubectl logs job/{name})")
        return StageObject(name, ACTIVE, start)

    def _log_tail(self, pod: dict[str, Any], lines: int = LOG_LINES) -> str:
        from kubernetes import client as k8s

        try:
            return k8s.CoreV1Api(self.client or kube.api_client()).read_namespaced_pod_log(
                pod["metadata"]["name"], self.target.namespace, tail_lines=lines)
        except Exception as e:  # noqa: BLE001 - the log is a hint; its absence is said, not fatal
            return f"(log not readable: {getattr(e, 'reason', e)})"

    # ------------------------------------------------------------ acting
    def start(self, run_id: str, spec: LMTrainingJobSpec) -> bool:
        """Create the next stage's object (the first stage when none exists); False when there is none to
        create or it exists already."""
        check_target(self.target)
        observed = self.observe()
        stage = (run_state(observed).next_stage if any(observed.values()) else "build")
        if stage is None:
            return False
        cfg = job_config(spec, self.target)
        obj = (stage_rayjob(stage, self.target, cfg) if runs_on_ray(stage, cfg)
               else stage_job(stage, spec, self.target, cfg, run_id))
        failpoint(f"jobs.before_create.{stage}")
        created = kube.create(obj, client=self.client)
        failpoint(f"jobs.created.{stage}")
        return created

    def cancel(self, run_id: str) -> None:
        """Nothing to do: the stage objects are owned by the LMTrainingJob, so deleting it deletes them (and the
        garbage collector stops their pods)."""


def _terminated(pod: dict[str, Any] | None) -> dict[str, Any]:
    for cs in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            return term
    return {}


def _message_json(pod: dict[str, Any] | None) -> dict[str, Any]:
    text = (_terminated(pod).get("message") or "").strip()
    try:
        out = json.loads(text) if text.startswith("{") else {}
    except json.JSONDecodeError:
        out = {}
    return out if isinstance(out, dict) else {}


def settings_env() -> dict[str, str | None]:
    """The operator's defaults for every job (the chart's stageJobs values)."""
    return {"staging_uri": os.environ.get("LMOPS_STAGING_URI") or None,
            "s3_secret": os.environ.get("LMOPS_STAGE_S3_CREDENTIALS_REF") or None,
            "s3_endpoint_url": os.environ.get("LMOPS_STAGE_S3_ENDPOINT_URL") or None}
