"""Registry with S3 artifacts: a second real ``mlflow server`` whose artifact store is a bucket on the
session's moto_server (clients use the server's proxied ``mlflow-artifacts:/`` and need no S3 settings).

Also the mid-way failure: the bucket disappears after the first registration, so the next one fails
while uploading, after its run was created — nothing half-registered may remain.
"""

from __future__ import annotations

import uuid

import pytest

from chain import Chain, evaluate, make_chain
from lmops.registry.local_server import start_mlflow_server, stop_process_group
from lmops.config import RegistryConfig
from lmops.gates import check
from lmops.manifest import read_manifest, verify
from lmops.registry import RegistryError, Variant, download_model, register_variants

pytestmark = pytest.mark.slow
RULES = {"perplexity": {"max_ratio": 1.10}}
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Chain:
    return make_chain(tmp_path_factory.mktemp("chain-s3"), seed=1)


@pytest.fixture
def s3_server(moto_endpoint, tmp_path):
    """(server URL, boto3 client, bucket, prefix) for an MLflow server storing artifacts in moto S3."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, **{k.lower(): v for k, v in S3_ENV.items()
                                                            if k != "AWS_DEFAULT_REGION"}, region_name="us-east-1")
    bucket, prefix = f"mlflow-{uuid.uuid4().hex[:8]}", "lmops/artifacts"
    s3.create_bucket(Bucket=bucket)
    proc, url = start_mlflow_server(tmp_path / "mlflow-s3", f"s3://{bucket}/{prefix}",
                                    env={"MLFLOW_S3_ENDPOINT_URL": moto_endpoint, **S3_ENV})
    try:
        yield url, s3, bucket, prefix
    finally:
        stop_process_group(proc)


def test_artifacts_in_s3_and_a_failed_upload_leaves_nothing_behind(chain, s3_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    url, s3, bucket, prefix = s3_server
    name = f"lm-s3-{uuid.uuid4().hex[:6]}"
    cfg = RegistryConfig(tracking_uri=url, model_name=name, experiment="s3-test")
    fp32 = evaluate(chain.checkpoint, chain.tokens)
    reg = register_variants([Variant("fp32", chain.checkpoint, fp32, check(fp32, fp32, RULES))], cfg)
    assert reg.candidate == "1"

    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    # the logged model's artifacts (models/<model id>/artifacts/ of the experiment), the run's lineage.json
    assert any(k.endswith("/artifacts/artifacts/hf_model/model.safetensors") and "/models/m-" in k for k in keys), keys
    assert any(k.endswith("/artifacts/MLmodel") and "/models/m-" in k for k in keys)
    assert any(k.endswith("/artifacts/lineage.json") for k in keys)
    got = download_model(f"models:/{name}@candidate", tmp_path / "served", tracking_uri=url)
    assert verify(got).digest == read_manifest(chain.checkpoint).digest

    # the store goes away: the next registration fails mid-way, while uploading its artifacts
    for key in keys:
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # the server answers 500: retry once, not for minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    pruned = evaluate(chain.pruned, chain.tokens)
    with pytest.raises(RegistryError, match=rf"model '{name}' variant 'pruned': logging .*MLflow server {url}"):
        register_variants([Variant("pruned", chain.pruned, pruned, check(pruned, fp32, RULES))], cfg)

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    versions = client.search_model_versions(f"name='{name}'")
    assert [v.version for v in versions] == ["1"]  # no version for the failed variant
    assert client.get_model_version_by_alias(name, "candidate").version == "1"
    exp = client.get_experiment_by_name("s3-test")
    live = client.search_runs([exp.experiment_id])  # active runs only
    # the training run fp32 was recorded in stays (it holds version 1); the pruned variant's run is gone
    assert [r.data.tags["lmops.stage"] for r in live] == ["train"]
    from mlflow.entities import ViewType

    deleted = client.search_runs([exp.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert [(r.data.tags["lmops.stage"], r.data.tags["lmops.variant"]) for r in deleted] == [("compress", "pruned")]

    # a first registration under a new name fails the same way: not even the empty model is left
    other = cfg.model_copy(update={"model_name": f"{name}-new"})
    with pytest.raises(RegistryError, match="variant 'pruned': logging"):
        register_variants([Variant("pruned", chain.pruned, pruned, check(pruned, fp32, RULES))], other)
    assert not client.search_registered_models(f"name='{other.model_name}'")
