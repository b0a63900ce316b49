"""Whether KServe's storage initializer can read an s3:// storageUri with the deploy config's credentials.

The storage initializer is an init container KServe adds; it takes S3 credentials from the predictor's
ServiceAccount (a Secret annotated with serving.kserve.io/s3-*, or the cloud's workload identity), never from
the predictor container's ``envFrom``. So ``deploy.s3_secret`` does not reach it, and KServe's Hugging Face
runtime, which has nothing but the storage initializer to fetch the model, needs ``deploy.service_account``.
(Without either, the lmops runtime may still read a public bucket or use the node's own identity.)
"""

from __future__ import annotations

from typing import Any


def storage_access_problem(deploy: Any, storage_uri: str | None) -> str | None:
    """A message naming the config field to set, or None when the download can work."""
    if not (storage_uri or "").startswith("s3://") or deploy.service_account:
        return None
    if deploy.runtime == "huggingface":
        return (f"deploy.service_account: required for runtime=huggingface with the s3:// storage URI {storage_uri}:"
                " KServe's storage initializer takes S3 credentials only from the predictor's ServiceAccount (a Secret"
                " annotated serving.kserve.io/s3-endpoint ... attached to it), not from deploy.s3_secret")
    if deploy.s3_secret:
        return (f"deploy.service_account: required to download the s3:// storage URI {storage_uri}: deploy.s3_secret"
                f" ({deploy.s3_secret}) reaches only the model server container, while KServe's storage initializer"
                " takes S3 credentials from the predictor's ServiceAccount")
    return None
