"""What every task's pod gets on a cluster, through kfp-kubernetes and kfp's resource setters.

- Pod security: kfp-kubernetes 2.17.3 can set only ``runAsUser``, ``runAsGroup`` and ``runAsNonRoot`` of a task
  (``set_security_context``; its KubernetesExecutorConfig has no other securityContext field): the images'
  UID/GID 1000, non-root. Its documentation states that Kubeflow's backend itself applies
  ``allowPrivilegeEscalation: false``, capabilities drop ALL and the RuntimeDefault seccomp profile.
  ``readOnlyRootFilesystem`` and ``fsGroup`` cannot be set from a pipeline, so the root filesystem stays
  writable; the emptyDirs below are mounted anyway (the same layout as the InferenceService and RayJob pods),
  and /dev/shm as a Memory emptyDir where Ray or torch run (train, compress).
- Requests and limits per task (``pipeline.*`` of the config the pipeline is compiled with:
  $LMOPS_PIPELINE_CONFIG, default the tiny preset's); the train task's come from resolve-config at run time.
- S3 credentials as a Secret reference only (``use_secret_as_env``): AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
  from ``pipeline.s3_secret``.
kfp's local runner ignores all of it (it runs the tasks as local processes).
"""

from __future__ import annotations

import os

from kfp import kubernetes
from kfp.dsl import PipelineTask

from lmops.config import Config, TaskResources, load_config
from lmops.security.context import CACHE, GID, RAY_TMP, SHM, TMP, UID


def compile_config() -> Config:
    """The config whose ``pipeline`` and ``image`` sections shape the compiled task pods."""
    return load_config(os.environ.get("LMOPS_PIPELINE_CONFIG") or None)


def harden(task: PipelineTask, cfg: Config, *, ray: bool = False) -> PipelineTask:
    kubernetes.set_security_context(task, run_as_user=UID, run_as_group=GID, run_as_non_root=True)
    for d in (TMP, CACHE, *((RAY_TMP, SHM) if ray else ())):
        kubernetes.empty_dir_mount(task, volume_name=d.name, mount_path=d.path, medium=d.medium)
    kubernetes.set_image_pull_policy(task, cfg.image.pull_policy)
    return task


def resources(task: PipelineTask, res: TaskResources) -> PipelineTask:
    cpu_limit, memory_limit = res.limits()
    return (task.set_cpu_request(res.cpu).set_cpu_limit(cpu_limit)
            .set_memory_request(res.memory).set_memory_limit(memory_limit))


def s3_credentials(task: PipelineTask, cfg: Config) -> PipelineTask:
    secret = cfg.pipeline.s3_secret
    if secret is not None:
        kubernetes.use_secret_as_env(task, secret_name=secret.name,
                                     secret_key_to_env={secret.access_key_key: "AWS_ACCESS_KEY_ID",
                                                        secret.secret_key_key: "AWS_SECRET_ACCESS_KEY"})
    return task


def cluster_ready(task: PipelineTask, cfg: Config, res: TaskResources | None, *, ray: bool = False) -> PipelineTask:
    """All of the above for one task (``res`` None: set elsewhere, e.g. from resolve-config's outputs)."""
    harden(task, cfg, ray=ray)
    s3_credentials(task, cfg)
    return resources(task, res) if res is not None else task
