"""The S3 URIs a RayJob gets when the pipeline's artifacts are not in S3 (kuberay.staging_uri), through a
real S3 endpoint (moto): the tokens uploaded once per digest, the checkpoint under the prefix, the
artifacts' own URIs when they are in S3, and the error without the setting."""

from __future__ import annotations

import pytest

from lmops import storage
from lmops.config import ConfigError, load_config
from lmops.errors import LmopsError
from lmops.manifest import input_digest
from lmops.train.kuberay.staging import job_uris


def _cfg(*overrides: str):
    return load_config("micro", ["kuberay.namespace=ml", *overrides])


def test_local_artifacts_are_staged_once_per_digest(s3, tiny_tokens):
    client, bucket = s3
    cfg = _cfg(f"kuberay.staging_uri=s3://{bucket}/staging/")
    lines: list[str] = []
    tokens, ckpt = job_uris(cfg, str(tiny_tokens), tiny_tokens, "/kfp/run/train/checkpoint.rayjob", job_name="lmops-1",
                            log=lines.append)
    digest = input_digest(tiny_tokens, "tokenize")
    assert tokens == f"s3://{bucket}/staging/tokens/{digest}"
    assert ckpt == f"s3://{bucket}/staging/checkpoints/ml/lmops-1"
    staged = {e.uri[len(tokens) + 1:] for e in storage.list_files(tokens)}
    assert staged == {p.relative_to(tiny_tokens).as_posix() for p in tiny_tokens.rglob("*") if p.is_file()}
    assert lines == [f"[train] tokens staged at {tokens} (the RayJob's pods reach only S3)"]

    # a re-run (another job, the same tokens) uploads nothing: the objects keep their first upload
    before = {o["Key"]: o["LastModified"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    lines.clear()
    again, ckpt2 = job_uris(cfg, str(tiny_tokens), tiny_tokens, "/kfp/run2/ckpt", job_name="lmops-2", log=lines.append)
    assert again == tokens and ckpt2.endswith("/checkpoints/ml/lmops-2")
    assert lines == [f"[train] tokens already staged at {tokens}"]
    assert {o["Key"]: o["LastModified"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]} == before


def test_a_partial_upload_is_not_taken_for_a_staged_one(s3, tiny_tokens):
    _, bucket = s3
    cfg = _cfg(f"kuberay.staging_uri=s3://{bucket}/st")
    prefix = f"s3://{bucket}/st/tokens/{input_digest(tiny_tokens, 'tokenize')}"
    storage.write_bytes(f"{prefix}/train.bin", b"half")  # an upload interrupted before its manifest
    tokens, _ = job_uris(cfg, str(tiny_tokens), tiny_tokens, "/ckpt", job_name="j", log=lambda s: None)
    assert storage.read_bytes(f"{tokens}/train.bin") == (tiny_tokens / "train.bin").read_bytes()


def test_s3_artifacts_are_used_as_they_are(tmp_path):
    # a Kubeflow with S3/MinIO artifacts: nothing staged, no setting needed, nothing read locally
    assert job_uris(_cfg(), "s3://a/tokens", tmp_path / "absent", "s3://a/ckpt", job_name="j") == \
        ("s3://a/tokens", "s3://a/ckpt")


def test_without_the_setting_the_error_names_it(tiny_tokens):
    with pytest.raises(LmopsError, match=r"the artifacts are at '/kfp/tokens', not in S3, and the RayJob's pods"
                                         r" reach only S3: set kuberay.staging_uri to an s3:// prefix"):
        job_uris(_cfg(), "/kfp/tokens", tiny_tokens, "/kfp/ckpt", job_name="j")
    with pytest.raises(ConfigError, match="kuberay.staging_uri: .*expected an s3:// prefix"):
        _cfg("kuberay.staging_uri=/tmp/staging")


def test_a_local_pipeline_run_on_kuberay_asks_for_it_before_starting_anything(tmp_path, monkeypatch):
    from lmops.pipeline.local import run_pipeline

    monkeypatch.setenv("LMOPS_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(LmopsError, match="kfp's local runner keeps the artifacts in local folders.*kuberay.staging_uri"):
        run_pipeline("micro", launcher="kuberay")
    with pytest.raises(LmopsError, match=r"launcher='ray'.*expected a launcher in \('local', 'kuberay'\)"):
        run_pipeline("micro", launcher="ray")
    assert not (tmp_path / "state").exists()  # no server started, no run folder
