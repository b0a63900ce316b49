"""Where a RayJob reads its tokens and writes its checkpoint when the pipeline's artifacts are not in S3.

The job's pods reach only S3. On a Kubeflow whose artifact store is S3 or MinIO the train task hands the
job its artifact URIs as they are. Elsewhere (kfp's local runner, whose artifacts are local folders; a
Kubeflow storing artifacts in GCS or on a volume) the task first copies the tokens to
``kuberay.staging_uri``, keyed by their manifest digest so that a re-run, or another run on the same
tokens, finds them there and uploads nothing, and the job writes its checkpoint under the same prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lmops import storage
from lmops.config import Config
from lmops.errors import LmopsError
from lmops.manifest import MANIFEST, input_digest
from lmops.train.kuberay.entrypoint import publish_checkpoint
from lmops.train.kuberay.submit import LOG_PREFIX


def job_uris(cfg: Config, tokens_uri: str, tokens_dir: str | Path, checkpoint_uri: str, *, job_name: str,
             log: Callable[[str], None] = print) -> tuple[str, str]:
    """(tokens, checkpoint) URIs for the RayJob: the artifacts' own when they are in S3, else staged ones.

    ``tokens_dir`` is where this task reads the tokens artifact (its local path or mount)."""
    if storage.is_s3(tokens_uri) and storage.is_s3(checkpoint_uri):
        return tokens_uri, checkpoint_uri
    prefix = staging_prefix(cfg, f"the artifacts are at {tokens_uri!r}, not in S3")
    if not storage.is_s3(tokens_uri):
        tokens_uri = stage_tokens_dir(tokens_dir, prefix, log=log)
    if not storage.is_s3(checkpoint_uri):
        # one folder per job: a retried task re-attaches to its job, which writes to the same place
        checkpoint_uri = f"{prefix}/checkpoints/{cfg.kuberay.namespace}/{job_name}"
    return tokens_uri, checkpoint_uri


def staging_prefix(cfg: Config, why: str, stage: str = "train") -> str:
    """``kuberay.staging_uri``, or an error that names it and says why it is needed."""
    if not cfg.kuberay.staging_uri:
        raise LmopsError(f"{stage} on KubeRay: {why}, and the RayJob's pods reach only S3: set kuberay.staging_uri to"
                         f" an s3:// prefix that the {stage} task and the job's pods can both reach (its input is"
                         " copied there, the job writes its output there); not needed where Kubeflow's artifact"
                         " store is S3 or MinIO")
    return cfg.kuberay.staging_uri


def stage_tokens_dir(tokens_dir: str | Path, prefix: str, *, log: Callable[[str], None] = print) -> str:
    """Upload the tokenize stage's output to ``<prefix>/tokens/<digest>`` unless it is already there."""
    return stage_output_dir(tokens_dir, prefix, "tokenize", log=log)


FOLDERS = {"build": "dataset", "tokenize": "tokens"}
"""The staging folder of each stage's output, by the stage that wrote it."""


def stage_output_dir(local_dir: str | Path, prefix: str, stage: str, *, log: Callable[[str], None] = print) -> str:
    """Upload a stage's output directory to ``<prefix>/<folder>/<digest>`` unless it is already there."""
    digest = input_digest(local_dir, stage)  # verifies the files against their manifest first
    what = FOLDERS[stage]
    uri = f"{prefix}/{what}/{digest}"
    # the manifest goes up last (publish_checkpoint), so finding it means every file it names is there
    if storage.exists(f"{uri}/{MANIFEST}"):
        log(f"{LOG_PREFIX} {what} already staged at {uri}")
        return uri
    publish_checkpoint(Path(local_dir), uri)
    log(f"{LOG_PREFIX} {what} staged at {uri} (the RayJob's pods reach only S3)")
    return uri
