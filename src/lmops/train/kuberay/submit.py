"""Submitting a RayJob and waiting for it: server-side apply through lmops.kube, then KubeRay's status
read until the job succeeds, fails (with KubeRay's reason) or runs out of time (then it is deleted, so
its Ray cluster frees the GPUs). A job of the same name already there is re-attached to."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lmops import kube
from lmops.config import Config
from lmops.errors import LmopsError
from lmops.train.kuberay.render import API_VERSION, GPU_RESOURCE, KIND, render_stage_rayjob

# Extra client-side wait past the RayJob's own deadline, so KubeRay's DeadlineExceeded (with its
# message) is normally what ends a too-long job, and this timeout is only the backstop.
DEADLINE_GRACE_S = 120.0
LOG_PREFIX = "[train]"


class RayJobError(LmopsError, RuntimeError):
    """The RayJob failed, was refused, or did not finish in time; the message says how to see its logs."""


# ---------------------------------------------------------------- KubeRay's status, decided
PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"
# Container states that waiting does not heal (a missing image or Secret, a crash loop such as repeated
# OOMKills): KubeRay keeps the RayJob Initializing for ever, so the pod's own reason ends the wait instead of
# the timeout, hours later.
POD_CANNOT_START = ("ErrImageNeverPull", "InvalidImageName", "ImagePullBackOff", "CreateContainerConfigError",
                    "CreateContainerError", "CrashLoopBackOff")


def rayjob_outcome(status: dict[str, Any] | None, backoff_limit: int = 0) -> tuple[str, str | None]:
    """(pending | running | succeeded | failed, message) from a RayJob's ``status``; no I/O.

    KubeRay reports two things: ``jobDeploymentStatus`` (the RayJob's lifecycle: "", Initializing,
    Running, Complete, Failed, ValidationFailed, Suspending, Suspended, Retrying, Waiting) and
    ``jobStatus`` (the Ray job's: "", PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED). Success needs both
    (SUCCEEDED and Complete); KubeRay 1.1 marks a failed job Complete, later versions Failed with
    ``reason`` AppFailed / SubmissionFailed / DeadlineExceeded, so either failure signal ends the wait --
    except while the RayJob's ``backoffLimit`` leaves retries: then a failed Ray job is one attempt, and KubeRay
    goes Retrying with a new Ray cluster (``status.failed`` counts the attempts that failed).
    """
    status = status or {}
    dep = status.get("jobDeploymentStatus") or ""
    job = status.get("jobStatus") or ""
    detail = _detail(status)
    if dep == "ValidationFailed":
        return FAILED, f"KubeRay refused the RayJob spec: {detail or 'no message'}"
    stuck = pods_cannot_start(status) if dep in ("", "Initializing", "Running") else None
    if stuck:
        return FAILED, stuck
    if dep == "Failed":
        attempts = int(status.get("failed") or 0)
        return FAILED, (detail or f"the RayJob failed (job status {job or 'none'})") + (
            f" ({attempts} attempts failed)" if attempts > 1 else "")
    if dep == "Retrying":  # backoffLimit > 0: a new Ray cluster, a new attempt
        return RUNNING, f"retrying with a new Ray cluster{': ' + detail if detail else ''}"
    if job in ("FAILED", "STOPPED"):
        failed = int(status.get("failed") or 0)  # the attempts before this one
        if dep == "Running" and failed < backoff_limit:
            return RUNNING, (f"attempt {failed + 1} of {backoff_limit + 1} ended {job}; KubeRay retries it"
                             f" (backoffLimit {backoff_limit}){': ' + detail if detail else ''}")
        return FAILED, (detail or f"the Ray job ended {job}") + (
            f" (attempt {failed + 1} of {backoff_limit + 1})" if backoff_limit and dep == "Running" else "")
    if dep == "Complete":
        if job == "SUCCEEDED":
            return SUCCEEDED, detail or None
        return FAILED, detail or f"the RayJob completed with job status {job or 'none'}"
    if job == "SUCCEEDED":
        return RUNNING, "the Ray job succeeded; waiting for KubeRay to mark the RayJob Complete"
    if dep in ("Suspending", "Suspended"):
        return PENDING, f"{dep.lower()} (spec.suspend, or a queue such as Kueue holds it)"
    if dep == "Running" or job == "RUNNING":
        return RUNNING, None
    return PENDING, None


def pods_cannot_start(status: dict[str, Any]) -> str | None:
    """Why the RayJob's Ray pods cannot start, from the RayCluster status KubeRay copies into the RayJob: the
    HeadPodReady condition (its reason is the head container's waiting reason) and the cluster's ``reason``."""
    cluster = status.get("rayClusterStatus") or {}
    for cond in cluster.get("conditions") or []:
        if cond.get("type") == "HeadPodReady" and cond.get("reason") in POD_CANNOT_START:
            return f"the Ray head pod cannot start: {cond['reason']}: {cond.get('message') or 'no message'}"
    reason = cluster.get("reason") or ""
    if any(f": {r}:" in reason for r in POD_CANNOT_START):
        return f"a Ray pod cannot start: {reason}"
    return None


def unschedulable_pods(ns: str, name: str, status: dict[str, Any], client) -> list[str]:
    """The RayJob's Pending pods that the scheduler cannot place, each with its FailedScheduling message (the
    PodScheduled condition's, as ``kubectl describe pod`` shows it): the Ray pods (``ray.io/cluster``) and the
    submitter's (``job-name``: KubeRay names the submitter Job after the RayJob). KubeRay's status does not
    say it -- the RayJob just stays Initializing -- and a cluster autoscaler may still add a node, so this is
    reported, not a failure."""
    selectors = [f"ray.io/cluster={status['rayClusterName']}"] if status.get("rayClusterName") else []
    found = []
    for selector in [*selectors, f"job-name={name}"]:
        for pod in kube.list_objects("v1", "Pod", ns, client=client, label_selector=selector)[0]:
            st = pod.get("status") or {}
            cond = next((c for c in st.get("conditions") or [] if c.get("type") == "PodScheduled"), {})
            if st.get("phase") == "Pending" and cond.get("reason") == "Unschedulable":
                found.append(f"pod {pod['metadata']['name']} cannot be scheduled: {cond.get('message') or 'no message'}")
    return found


def _detail(status: dict[str, Any]) -> str:
    reason, message = status.get("reason") or "", status.get("message") or ""
    return f"{reason}: {message}" if reason and message else reason or message


# ---------------------------------------------------------------- submitting and waiting
def submit_and_wait(manifest: dict[str, Any], *, timeout_s: float, poll_s: float,
                    log: Callable[[str], None] = print, client=None, delete_on_timeout: bool = True,
                    max_read_errors: int = 5) -> dict[str, Any]:
    """Server-side apply the RayJob and poll it until it succeeds (returns the object), fails or times out
    (raises RayJobError). Each change of KubeRay's status is logged.

    A RayJob of the same name already there is re-attached to when it runs the same entrypoint (a
    retried pipeline task does not train twice, and one that already succeeded is not rerun); a
    finished one with another entrypoint, or a failed one, is deleted and submitted afresh.
    """
    meta = manifest["metadata"]
    ns, name = meta["namespace"], meta["name"]
    where = f"RayJob {ns}/{name}"
    client = client or kube.api_client()
    existing = kube.get(API_VERSION, KIND, name, ns, client=client)
    if existing is not None:
        state, msg = rayjob_outcome(existing.get("status"), rayjob_backoff_limit(existing))
        same = existing.get("spec", {}).get("entrypoint") == manifest["spec"]["entrypoint"]
        if same and state == SUCCEEDED:
            log(f"{LOG_PREFIX} {where} already succeeded with this entrypoint; not training again")
            return existing
        if same and state in (PENDING, RUNNING):
            log(f"{LOG_PREFIX} {where} is already {state}; waiting for it")
        elif state in (PENDING, RUNNING):
            raise RayJobError(f"{where} already exists and is {state} with a different entrypoint: pick another"
                              f" name, or delete it (kubectl delete rayjob -n {ns} {name})")
        else:
            log(f"{LOG_PREFIX} {where} exists and is {state}{': ' + msg if msg else ''}; deleting it to resubmit")
            kube.delete(API_VERSION, KIND, name, ns, client=client)
            _wait_gone(name, ns, client, timeout_s=min(120.0, timeout_s), poll_s=poll_s)
    kube.apply(manifest, client=client)
    log(f"{LOG_PREFIX} {where} submitted ({_shape(manifest)}); waiting up to {timeout_s:.0f}s")

    deadline = time.monotonic() + timeout_s
    last: tuple[str, str] | None = None
    shown: set[str] = set()
    errors = 0
    status: dict[str, Any] = {}
    unschedulable: list[str] = []  # the last look at pods waiting for the scheduler
    while True:
        try:
            obj = kube.get(API_VERSION, KIND, name, ns, client=client)
            errors = 0
        except kube.KubeError as e:  # a blip of the API server is not the job's failure
            errors += 1
            if errors >= max_read_errors:
                raise RayJobError(f"{where}: lost the API server ({errors} reads failed in a row): {e}") from None
            log(f"{LOG_PREFIX} {where}: status read failed ({errors}/{max_read_errors}), retrying: {e}")
            obj = None
        else:
            if obj is None:
                raise RayJobError(f"{where} disappeared while waiting (deleted by someone, or by a TTL); last seen:"
                                  f" {_seen(status)}")
        if obj is not None:
            status = obj.get("status") or {}
            now = (status.get("jobDeploymentStatus") or "", status.get("jobStatus") or "")
            state, msg = rayjob_outcome(status, rayjob_backoff_limit(obj))
            if now != last:
                log(_transition(where, last, now, status, shown, msg))
                last = now
            if state == SUCCEEDED:
                return obj
            if state == FAILED:
                raise RayJobError(_failure(where, ns, name, status, msg))
            if _waiting_for_pods(status):
                unschedulable = _look_at_pods(where, ns, name, status, client, shown, log)
        left = deadline - time.monotonic()
        if left <= 0:
            raise RayJobError(_timeout(where, ns, name, status, timeout_s, client, delete_on_timeout, log)
                              + "".join(f" Still Pending: {line}." for line in unschedulable))
        time.sleep(min(poll_s, left))


def rayjob_backoff_limit(rayjob: dict[str, Any]) -> int:
    return int((rayjob.get("spec") or {}).get("backoffLimit") or 0)


def _waiting_for_pods(status: dict[str, Any]) -> bool:
    """The Ray cluster is not up yet, or the submitter has not started the Ray job."""
    return (status.get("jobDeploymentStatus") or "") in ("", "Initializing", "Retrying") or \
        (status.get("jobStatus") or "") in ("", "PENDING")


def _look_at_pods(where: str, ns: str, name: str, status: dict[str, Any], client, shown: set[str],
                  log: Callable[[str], None]) -> list[str]:
    """unschedulable_pods, each new message logged once; nothing when pods may not be listed (a Role without
    pods: list only loses this hint)."""
    try:
        found = unschedulable_pods(ns, name, status, client)
    except kube.KubeError as e:
        if "pods-unlisted" not in shown:
            shown.add("pods-unlisted")
            log(f"{LOG_PREFIX} {where}: cannot list its pods to say why they wait ({e})")
        return []
    for line in found:
        reason = line.split(": ", 1)[1]
        if f"unschedulable={reason}" not in shown:  # the same reason for the next pod is not news
            shown.add(f"unschedulable={reason}")
            log(f"{LOG_PREFIX} {where}: {line}")
    return found


def train_on_kuberay(cfg: Config, tokens_uri: str, checkpoint_uri: str, *, name: str,
                     log: Callable[[str], None] = print, client=None) -> dict[str, Any]:
    """Render the RayJob for ``cfg``, submit it and wait: ``{"name", "namespace", "status", "manifest"}``.

    The checkpoint directory (with its manifest.json) is at ``checkpoint_uri`` when this returns.
    """
    return stage_on_kuberay("train", cfg, name=name, input_uri=tokens_uri, output_uri=checkpoint_uri, log=log,
                            client=client)


def stage_on_kuberay(stage: str, cfg: Config, *, name: str, output_uri: str, input_uri: str | None = None,
                     log: Callable[[str], None] = print, client=None) -> dict[str, Any]:
    """Run one stage as a RayJob (render_stage_rayjob), submit it and wait: ``{"name", "namespace", "status",
    "manifest"}``. The stage's output directory (with its manifest.json) is at ``output_uri`` when this returns."""
    manifest = render_stage_rayjob(stage, cfg, name=name, input_uri=input_uri, output_uri=output_uri)
    kr = cfg.kuberay
    log = stage_log(log, stage)
    obj = submit_and_wait(manifest, timeout_s=kr.timeout_s + DEADLINE_GRACE_S, poll_s=kr.poll_s, log=log,
                          client=client, delete_on_timeout=kr.delete_on_timeout)
    return {"name": name, "namespace": kr.namespace, "status": obj.get("status") or {}, "manifest": manifest}


def stage_log(log: Callable[[str], None], stage: str) -> Callable[[str], None]:
    """``log`` with the KubeRay lines (which start with ``[train]``) naming ``stage`` instead."""
    if stage == "train":
        return log
    return lambda line: log(f"[{stage}]{line[len(LOG_PREFIX):]}" if line.startswith(LOG_PREFIX) else line)


def _wait_gone(name: str, ns: str, client, *, timeout_s: float, poll_s: float) -> None:
    """Deletion is asynchronous (KubeRay's finalizer stops the job first): wait before re-creating."""
    deadline = time.monotonic() + timeout_s
    while kube.get(API_VERSION, KIND, name, ns, client=client) is not None:
        if time.monotonic() > deadline:
            raise RayJobError(f"RayJob {ns}/{name} is still being deleted after {timeout_s:.0f}s; try again later")
        time.sleep(min(poll_s, 2.0))


def _shape(manifest: dict[str, Any]) -> str:
    group = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpus = limits.get(GPU_RESOURCE, 0)
    return f"{group['replicas']} worker pod(s) x {gpus} GPU" if gpus else f"{group['replicas']} CPU worker pod(s)"


def _seen(status: dict[str, Any]) -> str:
    dep, job = status.get("jobDeploymentStatus") or "(none)", status.get("jobStatus") or "(none)"
    detail = _detail(status)
    return f"deployment {dep}, job {job}" + (f" ({detail})" if detail else "")


def _transition(where: str, last: tuple[str, str] | None, now: tuple[str, str], status: dict[str, Any],
                shown: set[str], msg: str | None) -> str:
    before = (last[0] or "New") if last else "(submitted)"
    line = f"{LOG_PREFIX} {where}: {before} -> {now[0] or 'New'} (job {now[1] or '-'})"
    for key, label in (("rayClusterName", "ray cluster"), ("dashboardURL", "dashboard")):
        value = status.get(key)
        if value and f"{key}={value}" not in shown:  # named once, when it first appears
            shown.add(f"{key}={value}")
            line += f"; {label} {value}"
    return line + (f": {msg}" if msg else "")


def _failure(where: str, ns: str, name: str, status: dict[str, Any], msg: str | None) -> str:
    cluster = status.get("rayClusterName")
    return (f"{where} failed: {msg} [{_seen(status)}]. Logs: kubectl logs -n {ns} job/{name}"
            f" (the submitter Job, which streams the Ray job's output); events: kubectl describe rayjob -n {ns} {name}"
            + (f"; Ray cluster {cluster} (kept for ttlSecondsAfterFinished)" if cluster else ""))


def _timeout(where: str, ns: str, name: str, status: dict[str, Any], timeout_s: float, client,
             delete: bool, log: Callable[[str], None]) -> str:
    text = f"{where} did not finish within {timeout_s:.0f}s; last seen: {_seen(status)}."
    if not delete:
        return text + f" Left running: kubectl delete rayjob -n {ns} {name} frees its Ray cluster."
    try:
        kube.delete(API_VERSION, KIND, name, ns, client=client)
        log(f"{LOG_PREFIX} {where}: deleted after the timeout")
        return text + " Deleted it so its Ray cluster releases the GPUs."
    except kube.KubeError as e:
        return text + f" Deleting it failed too ({e}): kubectl delete rayjob -n {ns} {name}"
