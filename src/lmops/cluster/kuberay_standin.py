"""KubeRay stand-in: plays KubeRay's RayJob controller on `lmops cluster`, with local processes.

What it plays, for each RayJob (ray.io/v1):
- runs ``spec.entrypoint`` -- for lmops the same ``python -m lmops.train.rayjob run ...`` the head pod
  would run -- as a local process (``python`` is this environment's; the job starts a local Ray, as
  ``ray.init()`` does without RAY_ADDRESS), with the head container's ``env`` and the Secrets named in
  its ``envFrom`` (read from the API server, as the kubelet would);
- writes the status KubeRay writes: ``jobDeploymentStatus`` (Initializing -> Running -> Complete |
  Failed), ``jobStatus`` (PENDING -> RUNNING -> SUCCEEDED | FAILED), ``reason`` (AppFailed,
  DeadlineExceeded, SubmissionFailed), ``message`` (Ray's "Job entrypoint command failed with exit
  code N" with the last log lines), ``startTime``/``endTime``, ``jobId``, ``rayClusterName``,
  ``dashboardURL``, ``observedGeneration``;
- enforces ``activeDeadlineSeconds`` (the process is stopped, the job Failed with DeadlineExceeded);
- deleting the RayJob stops its process (KubeRay's finalizer stops the Ray job, then the cluster goes).

What it does not: no RayCluster object, no pods, Services or submitter Job, no image pulls, no
resources or GPUs (``rayClusterSpec`` is ignored beyond the head's env), no autoscaling, no
Kueue (a ``suspend``-ed job is left alone, never started), no ``backoffLimit`` retries, no TTL clean-up. A missing Secret fails the job at
once (SubmissionFailed) where a real pod would wait in CreateContainerConfigError.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmops.cluster.standin import StandIn, local_mounts, main, now
from lmops.processes import stop_group

LOG_TAIL_CHARS = 2000


@dataclass
class _Job:
    uid: str
    proc: subprocess.Popen
    log: Path
    started: float
    deadline_s: int | None
    obj: dict[str, Any] = field(repr=False)


class KubeRayStandIn(StandIn):
    """KubeRay stand-in: runs each RayJob's entrypoint locally and writes KubeRay's status."""

    api_version, kind = "ray.io/v1", "RayJob"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.jobs: dict[tuple[str, str], _Job] = {}
        self.done: set[str] = set()  # uids run to the end: their later (stale) events change nothing

    def changed(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        job = self.jobs.get(key)
        if job is not None and job.uid != meta["uid"]:  # deleted and created again between two events
            self._stop(key)
            job = None
        status = obj.get("status") or {}
        if job is not None or meta.get("deletionTimestamp") or meta["uid"] in self.done:
            return
        if obj["spec"].get("suspend"):
            return  # KubeRay holds a suspended job (a queue such as Kueue decides when it runs)
        if status.get("jobDeploymentStatus") in ("Complete", "Failed", "ValidationFailed"):
            return  # finished before; nothing to run
        if status.get("jobDeploymentStatus"):
            # a job this stand-in started before it restarted: the process is gone with it
            self.write_status(obj, {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed",
                                    "message": "the KubeRay stand-in restarted and lost the job's process",
                                    "endTime": now()})
            return
        self._start(key, obj)

    def _start(self, key: tuple[str, str], obj: dict[str, Any]) -> None:
        ns, name = key
        cluster = f"{name}-{secrets.token_hex(3)[:5]}"
        base = {"jobDeploymentStatus": "Initializing", "startTime": now(),  # jobStatus: omitted while empty, as KubeRay does
                "rayClusterName": cluster, "jobId": f"{name}-{secrets.token_hex(3)[:5]}",
                "dashboardURL": f"{cluster}-head-svc.{ns}.svc.cluster.local:8265",
                "observedGeneration": obj["metadata"].get("generation")}
        self.write_status(obj, base)
        head = (obj["spec"].get("rayClusterSpec") or {}).get("headGroupSpec", {}).get("template", {}) \
            .get("spec", {}).get("containers", [{}])[0]
        try:
            env = self.container_env(head, ns, local_mounts(head, self.work_dir / f"{ns}_{name}.volumes"))
            # The job's "Ray cluster" is a local Ray of its own: "local" starts one, where a bare ray.init()
            # would join any Ray another process on this machine runs.
            env["RAY_ADDRESS"] = "local"
        except LookupError as e:
            self.write_status(obj, {"jobDeploymentStatus": "Failed", "reason": "SubmissionFailed",
                                    "message": f"{e} (the head pod could not start)", "endTime": now()})
            return
        log = self.work_dir / f"{ns}_{name}.log"
        entrypoint = obj["spec"].get("entrypoint") or "true"
        with open(log, "ab") as out:
            out.write(f"==== {now()} {entrypoint[:300]}\n".encode())
            out.flush()
            # bash -c, as KubeRay's submitter runs it; `python` on PATH is this environment's
            proc = subprocess.Popen(["bash", "-c", entrypoint], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.work_dir, env=env, start_new_session=True)
        self.jobs[key] = _Job(obj["metadata"]["uid"], proc, log, time.monotonic(),
                              obj["spec"].get("activeDeadlineSeconds"), obj)
        self.log(f"RayJob {ns}/{name}: started pid {proc.pid} (log {log})")
        self.write_status(obj, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})

    def tick(self) -> None:
        for key, job in list(self.jobs.items()):
            code = job.proc.poll()
            if code is not None:
                del self.jobs[key]
                self.done.add(job.uid)
                self._finished(key, job, code)
            elif job.deadline_s is not None and time.monotonic() - job.started > job.deadline_s:
                self._stop(key)
                self.write_status(job.obj, {
                    "jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "endTime": now(),
                    "message": f"The RayJob has passed the activeDeadlineSeconds. ActiveDeadlineSeconds: {job.deadline_s}"})

    def _finished(self, key: tuple[str, str], job: _Job, code: int) -> None:
        self.log(f"RayJob {key[0]}/{key[1]}: entrypoint exited with {code}")
        if code == 0:
            self.write_status(job.obj, {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED",
                                        "message": "Job finished successfully.", "endTime": now()})
            return
        tail = job.log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        self.write_status(job.obj, {
            "jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed", "endTime": now(),
            "message": f"Job entrypoint command failed with exit code {code}, last available logs:\n{tail}"})

    def deleted(self, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.jobs:
            self.log(f"RayJob {key[0]}/{key[1]}: deleted; stopping its process")
            self._stop(key)

    def _stop(self, key: tuple[str, str]) -> None:
        job = self.jobs.pop(key, None)
        if job is not None:
            self.done.add(job.uid)
            stop_group(job.proc.pid, grace=5, reap=lambda: job.proc.poll() is not None)

    def shutdown(self) -> None:
        for key in list(self.jobs):
            self._stop(key)


if __name__ == "__main__":
    sys.exit(main(KubeRayStandIn))
