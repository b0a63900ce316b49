"""What the kubernetes executor renders for an LMTrainingJob (lmops.operator.executors.stage_objects): every stage Job
and the train RayJob valid for the API server and the restricted Pod Security profile, owned by the job, with the
stage's resources and the S3 Secret by reference; the local executor's run ends at register."""

from __future__ import annotations

import pytest
from rendered_checks import assert_valid

from lmops.config.image import ImageConfig
from lmops.crd.training import parse_training_job
from lmops.errors import LmopsError
from lmops.operator.executors import local
from lmops.operator.executors.kubernetes import KubernetesExecutor
from lmops.operator.executors.stage_objects import Target, check_target, job_config, stage_job, stage_rayjob

SPEC = parse_training_job({"modelName": "m", "config": "micro", "sources": ["s3://b/corpus/"],
                           "overrides": {"pipeline.evaluate.cpu": "250m"},
                           "executor": {"kubernetes": {"backoffLimit": 3}}})


def target(**kw) -> Target:
    return Target(**{"namespace": "team", "name": "My.Job", "uid": "0123456789ab", "staging_uri": "s3://b/staging",
                     "s3_secret": "s3-creds", "s3_endpoint_url": "http://minio:9000", "backoff_limit": 3,
                     "service_account": None, "image": ImageConfig(), "tracking_uri": "http://mlflow:5000", **kw})


@pytest.mark.parametrize("stage", ["build", "tokenize", "evaluate", "compress", "register"])
def test_stage_jobs_are_valid_restricted_and_owned(stage):
    t = target()
    job = stage_job(stage, SPEC, t, job_config(SPEC, t), "run-1")
    assert_valid(job)
    assert job["metadata"]["name"] == f"my-job-01234-{stage}"
    assert job["metadata"]["ownerReferences"] == [{"apiVersion": "lmops.dev/v1alpha1", "kind": "LMTrainingJob",
                                                   "name": "My.Job", "uid": "0123456789ab", "controller": True}]
    assert job["spec"]["backoffLimit"] == 3
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert not any("KEY" in e["name"] for e in c["env"]), "credentials only by reference"
    assert c["command"][3:6] == [stage, "--staging", "s3://b/staging/team/My.Job"]
    if stage == "evaluate":
        assert c["resources"]["requests"]["cpu"] == "250m"


def test_train_is_the_kuberay_launchers_rayjob_reading_and_writing_the_staging_prefix():
    t = target()
    job = stage_rayjob("train", t, job_config(SPEC, t))
    assert_valid(job)
    assert job["metadata"]["name"] == "my-job-01234-train" and job["metadata"]["ownerReferences"][0]["uid"] == t.uid
    assert "--tokens s3://b/staging/team/My.Job/tokenize --out s3://b/staging/team/My.Job/train" in job["spec"]["entrypoint"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert {"name": "LMOPS_S3_ENDPOINT_URL", "value": "http://minio:9000"} in head["env"]


def test_data_stages_on_engine_ray_are_rayjobs_between_the_same_staging_folders():
    spec = parse_training_job({**SPEC.model_dump(by_alias=True, exclude_none=True),
                               "overrides": {"build.engine": "ray", "tokenize.engine": "auto"}})
    t = target()
    executor = KubernetesExecutor(t, None, spec)
    assert executor.ray_stages() == {"build", "tokenize", "train"}
    assert KubernetesExecutor(t, None, SPEC).ray_stages() == {"train"}, "engine local (the default): Jobs"
    cfg = job_config(spec, t)
    build, tokenize = stage_rayjob("build", t, cfg), stage_rayjob("tokenize", t, cfg)
    for job in (build, tokenize):
        assert_valid(job)
        assert job["metadata"]["ownerReferences"][0]["uid"] == t.uid
    assert build["metadata"]["name"] == "my-job-01234-build"
    assert "lmops.train.rayjob build --out s3://b/staging/team/My.Job/build " in build["spec"]["entrypoint"]
    assert ("tokenize --dataset s3://b/staging/team/My.Job/build --out s3://b/staging/team/My.Job/tokenize"
            in tokenize["spec"]["entrypoint"])
    from lmops.train.kuberay.render import decode_config

    assert decode_config(build["spec"]["entrypoint"].split("--config-b64 ")[1]).build.sources == ["s3://b/corpus/"]


def test_no_staging_prefix_is_a_clear_error():
    with pytest.raises(LmopsError, match="spec.executor.kubernetes.stagingUri"):
        check_target(target(staging_uri=""))


def test_the_local_executor_ends_at_register():
    cmd = local.command(parse_training_job({"modelName": "m", "executor": {"type": "local"}}))
    assert cmd[cmd.index("--until") + 1] == "register" and cmd[cmd.index("--runner") + 1] == "inprocess"
    stages, _ = local._stages("")
    assert "deploy" not in stages and "register" in stages
