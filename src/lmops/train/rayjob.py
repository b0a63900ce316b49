"""Stage 3 on a cluster: training as a KubeRay RayJob (ray.io/v1), and the entrypoint it runs.

Two halves, one module, because they must agree on one command line:
- the submitting side (the kfp train component): ``render_rayjob`` -> ``submit_and_wait``, or both at
  once with ``train_on_kuberay``. KubeRay creates a Ray cluster (a head pod + ``train.num_workers``
  GPU worker pods), runs the entrypoint on the head through a submitter Job (K8sJobMode), and deletes
  the cluster shortly after the job ends.
- the entrypoint (``python -m lmops.train.rayjob run --tokens URI --out URI --config-b64 B64``):
  fetches the tokens, runs the ordinary ``train_stage`` against the job's Ray cluster (RAY_ADDRESS is
  set there) and uploads the checkpoint directory, ``manifest.json`` last.

Pods only ever see S3 (credentials through Secrets named in ``kuberay.env_from_secrets``); nothing
local to the submitting pod exists in the Ray cluster.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import importlib.metadata
import json
import math
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmops import kube, storage
from lmops.config import Config, ConfigError, config_from_dict
from lmops.config.kuberay import INT32_MAX, KubeRayConfig
from lmops.errors import LmopsError

API_VERSION = "ray.io/v1"
KIND = "RayJob"
HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
WORKER_GROUP = "gpu-workers"
GPU_RESOURCE = "nvidia.com/gpu"
# KubeRay derives the RayCluster's and its Services' names from the RayJob's: longer names fail its
# validation (ValidationFailed), so refuse them before submitting.
MAX_NAME = 47
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Where the job finds the MLflow server and the S3 store: copied from the submitting pod when set there.
# Credentials never travel this way (kuberay.env_from_secrets).
PASSTHROUGH_ENV = ("MLFLOW_TRACKING_URI", "LMOPS_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                   "AWS_DEFAULT_REGION")
# Extra client-side wait past the RayJob's own deadline, so KubeRay's DeadlineExceeded (with its
# message) is normally what ends a too-long job, and this timeout is only the backstop.
DEADLINE_GRACE_S = 120.0
LOG_PREFIX = "[train]"


class RayJobError(LmopsError, RuntimeError):
    """The RayJob failed, was refused, or did not finish in time; the message says how to see its logs."""


# ---------------------------------------------------------------- the config the job trains with
def cluster_config(cfg: Config, checkpoint_uri: str) -> Config:
    """``cfg`` adjusted for the job's Ray cluster.

    - One DDP rank per GPU: ``train.num_workers`` pods x ``gpus_per_worker`` GPUs gives that many
      ranks of one GPU each (the loop drives one device per rank, so a rank with two GPUs would idle
      one). Without GPUs, one rank per pod holding the pod's CPUs.
    - Checkpoints on shared storage: with several nodes, Ray Train needs a ``storage_path`` every
      node can reach; a local one becomes ``<checkpoint_uri>.ray/``.
    """
    kr, tc = cfg.kuberay, cfg.train
    pods = tc.num_workers
    ranks_per_pod = kr.gpus_per_worker or 1
    per_rank = dict(tc.resources_per_worker)
    gpu = per_rank.pop("GPU", 1)
    if kr.gpus_per_worker and gpu != 1:
        raise LmopsError(f"train.resources_per_worker.GPU={gpu:g}: on KubeRay each rank drives one GPU; put more GPUs"
                         f" in a pod with kuberay.gpus_per_worker (now {kr.gpus_per_worker}) instead")
    cores = cpu_cores(kr.worker_cpu, "kuberay.worker_cpu")
    if not kr.gpus_per_worker:
        per_rank.setdefault("CPU", cores)
    wanted = per_rank.get("CPU", 0) * ranks_per_pod
    if wanted > cores:
        # Ray would wait forever for CPUs no pod has; say so now
        raise LmopsError(f"train.resources_per_worker.CPU={per_rank['CPU']:g} x {ranks_per_pod} rank(s) per pod needs"
                         f" {wanted:g} CPUs, but kuberay.worker_cpu is {kr.worker_cpu}")
    storage_path = tc.storage_path
    if not (storage_path and storage.is_s3(storage_path)):
        storage_path = checkpoint_uri.rstrip("/") + ".ray/"
    train = tc.model_copy(update={"num_workers": pods * ranks_per_pod, "use_gpu": kr.gpus_per_worker > 0,
                                  "resources_per_worker": per_rank, "storage_path": storage_path})
    return cfg.model_copy(update={"train": train, "cache_dir": None})


def cpu_cores(quantity: str, where: str) -> float:
    """A Kubernetes CPU quantity ("8", "500m", "1.5") in cores."""
    try:
        return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    except ValueError:
        raise LmopsError(f"{where}={quantity!r}: cannot read it as CPU cores (use e.g. '8' or '7500m')") from None


def encode_config(cfg: Config) -> str:
    """The whole resolved config as one shell-safe word (base64 of canonical JSON)."""
    text = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return base64.b64encode(text.encode()).decode()


def decode_config(b64: str) -> Config:
    try:
        raw = json.loads(base64.b64decode(b64, validate=True))
    except (binascii.Error, ValueError) as e:
        raise ConfigError(f"--config-b64: not base64 of a JSON config ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--config-b64: expected a JSON object, got {type(raw).__name__}")
    return config_from_dict(raw, source="--config-b64")


# ---------------------------------------------------------------- the manifest
def entrypoint(cfg: Config, tokens_uri: str, checkpoint_uri: str) -> str:
    return shlex.join(["python", "-m", "lmops.train.rayjob", "run", "--tokens", tokens_uri, "--out", checkpoint_uri,
                       "--config-b64", encode_config(cfg)])


def render_rayjob(cfg: Config, *, name: str, tokens_uri: str, checkpoint_uri: str,
                  labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The RayJob that trains ``cfg`` on the tokens at ``tokens_uri`` into ``checkpoint_uri`` (both s3://)."""
    if not (NAME.match(name) and len(name) <= MAX_NAME):
        raise LmopsError(f"RayJob name {name!r}: expected lower-case letters, digits and '-', starting with a letter,"
                         f" at most {MAX_NAME} characters (KubeRay derives longer names from it)")
    for flag, uri in (("tokens", tokens_uri), ("checkpoint", checkpoint_uri)):
        if not storage.is_s3(uri):
            raise LmopsError(f"{flag} URI {uri!r}: the RayJob's pods reach only S3; give an s3:// URI")
    kr = cfg.kuberay
    job_cfg = cluster_config(cfg, checkpoint_uri)
    meta_labels = {"app.kubernetes.io/managed-by": "lmops", "app.kubernetes.io/name": "lmops",
                   "app.kubernetes.io/component": "train", "lmops.dev/rayjob": name, **(labels or {})}
    env = job_env(kr)
    head_resources = _resources(kr.head_cpu, kr.head_memory, 0)
    worker_resources = _resources(kr.worker_cpu, kr.worker_memory, kr.gpus_per_worker)
    head = _container(HEAD_CONTAINER, kr, head_resources, env)
    head["ports"] = [{"containerPort": 6379, "name": "gcs-server", "protocol": "TCP"},
                     {"containerPort": 8265, "name": "dashboard", "protocol": "TCP"},
                     {"containerPort": 10001, "name": "client", "protocol": "TCP"}]
    pods = cfg.train.num_workers
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": kr.namespace, "labels": meta_labels},
        "spec": {
            "entrypoint": entrypoint(job_cfg, tokens_uri, checkpoint_uri),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": kr.ttl_seconds_after_finished,
            "activeDeadlineSeconds": min(math.ceil(kr.timeout_s), INT32_MAX),
            "rayClusterSpec": {
                "rayVersion": importlib.metadata.version("ray"),
                "headGroupSpec": {
                    # num-cpus 0: no training rank lands on the head; the driver and Ray Train's
                    # controller need no CPU reservation
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": _pod(meta_labels, head, kr, gpu_node=False),
                },
                "workerGroupSpecs": [{
                    "groupName": WORKER_GROUP,
                    "replicas": pods,
                    "minReplicas": pods,
                    "maxReplicas": pods,
                    "rayStartParams": {},  # KubeRay sets num-cpus / num-gpus from the container's limits
                    # the worker pods alone get the GPU placement (node selector, tolerations)
                    "template": _pod(meta_labels, _container(WORKER_CONTAINER, kr, worker_resources, env), kr,
                                     gpu_node=True),
                }],
            },
        },
    }


def job_env(kr: KubeRayConfig, environ: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Plain env of every pod: the pass-through settings, then kuberay.env (which wins).

    RAY_AUTH_MODE is left alone: KubeRay decides the cluster's auth (its authOptions set the mode and
    token on every pod), and the driver connects through RAY_ADDRESS, which never turns auth on by itself.
    """
    environ = os.environ if environ is None else environ
    env = {k: environ[k] for k in PASSTHROUGH_ENV if environ.get(k)}
    if env.get("LMOPS_S3_ENDPOINT_URL") and not (env.get("AWS_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL_S3")):
        # Ray Train writes checkpoints to s3:// through pyarrow, which knows only the AWS variables
        env["AWS_ENDPOINT_URL_S3"] = env["LMOPS_S3_ENDPOINT_URL"]
    env["PYTHONUNBUFFERED"] = "1"  # the job's log lines reach `kubectl logs` as they are printed
    env.update(kr.env)
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def _resources(cpu: str, memory: str, gpus: int) -> dict[str, dict[str, Any]]:
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        amounts[GPU_RESOURCE] = gpus
    # requests == limits: Guaranteed pods, and GPUs may only be given as limits equal to requests
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _container(name: str, kr: KubeRayConfig, resources: dict[str, Any], env: list[dict[str, str]]) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": kr.image, "imagePullPolicy": kr.image_pull_policy,
                                 "resources": resources, "env": [dict(e) for e in env]}
    if kr.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": s}} for s in kr.env_from_secrets]
    return container


def _pod(labels: dict[str, str], container: dict[str, Any], kr: KubeRayConfig, *, gpu_node: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container]}
    if kr.service_account:
        spec["serviceAccountName"] = kr.service_account
    if gpu_node and kr.node_selector:
        spec["nodeSelector"] = dict(kr.node_selector)
    if gpu_node and kr.tolerations:
        spec["tolerations"] = [dict(t) for t in kr.tolerations]
    return {"metadata": {"labels": dict(labels)}, "spec": spec}


# ---------------------------------------------------------------- KubeRay's status, decided
PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"


def rayjob_outcome(status: dict[str, Any] | None) -> tuple[str, str | None]:
    """(pending | running | succeeded | failed, message) from a RayJob's ``status``; no I/O.

    KubeRay reports two things: ``jobDeploymentStatus`` (the RayJob's lifecycle: "", Initializing,
    Running, Complete, Failed, ValidationFailed, Suspending, Suspended, Retrying, Waiting) and
    ``jobStatus`` (the Ray job's: "", PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED). Success needs both
    (SUCCEEDED and Complete); KubeRay 1.1 marks a failed job Complete, later versions Failed with
    ``reason`` AppFailed / SubmissionFailed / DeadlineExceeded, so either failure signal ends the wait.
    """
    status = status or {}
    dep = status.get("jobDeploymentStatus") or ""
    job = status.get("jobStatus") or ""
    detail = _detail(status)
    if dep == "ValidationFailed":
        return FAILED, f"KubeRay refused the RayJob spec: {detail or 'no message'}"
    if dep == "Failed":
        return FAILED, detail or f"the RayJob failed (job status {job or 'none'})"
    if dep == "Retrying":  # backoffLimit > 0: a new Ray cluster, a new attempt
        return RUNNING, f"retrying with a new Ray cluster{': ' + detail if detail else ''}"
    if job in ("FAILED", "STOPPED"):
        return FAILED, detail or f"the Ray job ended {job}"
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
        state, msg = rayjob_outcome(existing.get("status"))
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
            state, msg = rayjob_outcome(status)
            if now != last:
                log(_transition(where, last, now, status, shown, msg))
                last = now
            if state == SUCCEEDED:
                return obj
            if state == FAILED:
                raise RayJobError(_failure(where, ns, name, status, msg))
        left = deadline - time.monotonic()
        if left <= 0:
            raise RayJobError(_timeout(where, ns, name, status, timeout_s, client, delete_on_timeout, log))
        time.sleep(min(poll_s, left))


def train_on_kuberay(cfg: Config, tokens_uri: str, checkpoint_uri: str, *, name: str,
                     log: Callable[[str], None] = print, client=None) -> dict[str, Any]:
    """Render the RayJob for ``cfg``, submit it and wait: ``{"name", "namespace", "status", "manifest"}``.

    The checkpoint directory (with its manifest.json) is at ``checkpoint_uri`` when this returns.
    """
    manifest = render_rayjob(cfg, name=name, tokens_uri=tokens_uri, checkpoint_uri=checkpoint_uri)
    kr = cfg.kuberay
    obj = submit_and_wait(manifest, timeout_s=kr.timeout_s + DEADLINE_GRACE_S, poll_s=kr.poll_s, log=log,
                          client=client, delete_on_timeout=kr.delete_on_timeout)
    return {"name": name, "namespace": kr.namespace, "status": obj.get("status") or {}, "manifest": manifest}


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


# ---------------------------------------------------------------- the entrypoint (runs on the head pod)
def run(cfg: Config, tokens_uri: str, checkpoint_uri: str, *, work_dir: str | Path | None = None,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)):
    """Fetch the tokens, train against this job's Ray cluster, publish the checkpoint at ``checkpoint_uri``."""
    from lmops.train.ray_train import ensure_ray
    from lmops.train.stage import train_stage

    work = Path(work_dir or tempfile.gettempdir()) / "lmops-rayjob"
    tokens = stage_tokens(tokens_uri, work / "tokens" / _short(tokens_uri))
    log(f"{LOG_PREFIX} tokens: {tokens_uri} -> {tokens}")
    local_ray = ensure_ray()
    if storage.is_s3(tokens_uri) and not local_ray:
        # the ranks open the tokens by the driver's local path: give every node the same copy
        fetch_on_every_node(tokens_uri, tokens, log=log)
    if not storage.is_s3(checkpoint_uri):
        return train_stage(cfg, tokens, checkpoint_uri, cache_dir=None, log=log)
    result = train_stage(cfg, tokens, work / "checkpoint" / _short(checkpoint_uri), cache_dir=None, log=log)
    publish_checkpoint(result.path, checkpoint_uri)
    log(f"{LOG_PREFIX} checkpoint: {result.path} -> {checkpoint_uri}")
    return result


def stage_tokens(uri: str, dest: str | Path) -> Path:
    """A local directory with the tokenize stage's output: an s3:// prefix downloaded to ``dest``, or
    a local directory as it is. train_stage verifies every file against its manifest afterwards."""
    if not storage.is_s3(uri):
        path = Path(uri)
        if not path.is_dir():
            raise LmopsError(f"--tokens {uri}: directory not found (expected the tokenize stage's output)")
        return path
    try:
        return storage.download_dir(uri, dest)
    except storage.StorageError as e:
        raise storage.StorageError(f"--tokens: cannot fetch the token shards: {e}") from None


def fetch_on_every_node(uri: str, dest: Path, *, log: Callable[[str], None]) -> None:
    """Download ``uri`` to ``dest`` on every other alive node of the Ray cluster (tasks pinned per node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n["NodeID"] != here]
    fetch = ray.remote(num_cpus=0)(stage_tokens)
    ray.get([fetch.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n, soft=False))
             .remote(uri, str(dest)) for n in nodes])
    log(f"{LOG_PREFIX} tokens copied to {len(nodes)} other node(s)")


def publish_checkpoint(src: Path, uri: str) -> None:
    """Upload a stage output directory, ``manifest.json`` last: a reader that finds the manifest finds
    every file it names."""
    from lmops.manifest import MANIFEST

    src = Path(src)
    with tempfile.TemporaryDirectory(prefix="lmops-publish-") as tmp:
        body = Path(tmp) / "body"
        for path in sorted(p for p in src.rglob("*") if p.is_file() and p != src / MANIFEST):
            target = body / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)  # same file system: no copy of the weights
            except OSError:
                shutil.copy2(path, target)
        if body.is_dir():
            storage.upload_dir(body, uri)
    storage.write_bytes(f"{uri.rstrip('/')}/{MANIFEST}", (src / MANIFEST).read_bytes())


def _short(uri: str) -> str:
    """A stable directory name per URI: the same path on every node, and across retries in one pod."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmops.train.rayjob",
                                     description="The entrypoint of lmops' KubeRay training job.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="fetch tokens, train on this Ray cluster, upload the checkpoint")
    p.add_argument("--tokens", required=True, help="the tokenize stage's output (s3:// prefix or directory)")
    p.add_argument("--out", required=True, help="where the checkpoint directory goes (s3:// prefix or directory)")
    p.add_argument("--config-b64", required=True, help="the resolved config, base64 of its JSON")
    args = parser.parse_args(argv)
    try:
        run(decode_config(args.config_b64), args.tokens, args.out)
    except LmopsError as e:
        print(f"lmops: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
