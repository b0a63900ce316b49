"""The data stages' RayJobs without a cluster (render_stage_rayjob: the rendering training uses, with data worker
pods from ``<stage>.ray``), checked against KubeRay's CRD schema and the restricted Pod Security Standard; and the
pass-through environment, which never hands a pod an address of this machine. On pods: test_data_rayjob_cluster.py."""

from __future__ import annotations

import shlex

import pytest
from rendered_checks import assert_valid

from lmops.config import load_config
from lmops.errors import LmopsError
from lmops.train.rayjob import decode_config, job_env, render_rayjob, render_stage_rayjob

DATASET, TOKENS = "s3://lmops-artifacts/run-7/dataset", "s3://lmops-artifacts/run-7/tokens"


def _cfg(*overrides: str):
    return load_config("micro", ["build.sources=[s3://corpus/raw/]", "kuberay.namespace=ml",
                                 "kuberay.node_selector={cloud.google.com/gke-accelerator: nvidia-l4}", *overrides])


def _argv(m: dict) -> list[str]:
    return shlex.split(m["spec"]["entrypoint"])


def test_build_job_runs_ray_data_on_cpu_data_workers_sized_by_build_ray():
    cfg = _cfg("build.ray.worker_replicas=3", "build.ray.worker_cpu=4", "build.ray.worker_memory=6Gi",
               "build.ray.worker_cpu_request=3", "build.engine=auto", "cache_dir=/somewhere")
    m = render_stage_rayjob("build", cfg, name="lmops-build-1", output_uri=DATASET)
    assert_valid(m)
    assert m["metadata"]["labels"]["app.kubernetes.io/component"] == "build"
    argv = _argv(m)
    assert argv[:4] == ["python", "-m", "lmops.train.rayjob", "build"] and argv[argv.index("--out") + 1] == DATASET
    shipped = decode_config(argv[argv.index("--config-b64") + 1])
    # the job builds on Ray Data whatever the engine said, and without the submitter's cache folder
    assert shipped.build.engine == "ray" and shipped.cache_dir is None
    assert shipped.model_dump(exclude={"build", "cache_dir"}) == cfg.model_dump(exclude={"build", "cache_dir"})
    spec = m["spec"]["rayClusterSpec"]
    (group,) = spec["workerGroupSpecs"]
    assert group["groupName"] == "data-workers" and group["replicas"] == group["minReplicas"] == 3
    pod = group["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["image"].endswith("-cpu")
    assert worker["resources"] == {"requests": {"cpu": "3", "memory": "6Gi"}, "limits": {"cpu": "4", "memory": "6Gi"}}
    # the GPU placement is training's: data workers go wherever CPUs are
    assert "nodeSelector" not in pod and "tolerations" not in pod
    # the head runs the driver only: Ray Data's tasks go to the worker pods
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_tokenize_job_reads_the_dataset_and_without_workers_the_head_does_the_work():
    cfg = _cfg("tokenize.ray.worker_replicas=0", "kuberay.head_cpu=3")
    m = render_stage_rayjob("tokenize", cfg, name="lmops-tokenize-1", input_uri=DATASET, output_uri=TOKENS)
    assert_valid(m)
    argv = _argv(m)
    assert argv[3:6] == ["tokenize", "--dataset", DATASET] and argv[argv.index("--out") + 1] == TOKENS
    assert decode_config(argv[argv.index("--config-b64") + 1]).tokenize.engine == "ray"
    spec = m["spec"]["rayClusterSpec"]
    assert spec["workerGroupSpecs"][0]["replicas"] == 0
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "3"


def test_train_renders_as_before_through_the_same_function():
    cfg = _cfg("train.num_workers=2", "kuberay.gpus_per_worker=1")
    a = render_rayjob(cfg, name="lmops-train-1", tokens_uri=TOKENS, checkpoint_uri="s3://b/ckpt")
    b = render_stage_rayjob("train", cfg, name="lmops-train-1", input_uri=TOKENS, output_uri="s3://b/ckpt")
    assert a == b and a["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"] == "gpu-workers"
    assert a["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["nodeSelector"]


def test_what_the_pods_cannot_reach_is_refused_before_submitting():
    with pytest.raises(LmopsError, match=r"build.sources \['/data/corpus'\]: the RayJob's pods reach only S3"):
        render_stage_rayjob("build", _cfg("build.sources=[/data/corpus]"), name="b", output_uri=DATASET)
    with pytest.raises(LmopsError, match="dataset URI '/tmp/dataset': the RayJob's pods reach only S3"):
        render_stage_rayjob("tokenize", _cfg(), name="t", input_uri="/tmp/dataset", output_uri=TOKENS)
    with pytest.raises(LmopsError, match="dataset URI None"):
        render_stage_rayjob("tokenize", _cfg(), name="t", output_uri=TOKENS)
    with pytest.raises(LmopsError, match="RayJob stage 'evaluate': expected one of build, tokenize, train"):
        render_stage_rayjob("evaluate", _cfg(), name="e", output_uri=TOKENS)
    with pytest.raises(LmopsError, match="at most 47 characters"):
        render_stage_rayjob("build", _cfg(), name="b" * 48, output_uri=DATASET)


def test_data_worker_settings_are_checked_when_the_config_loads():
    from lmops.config import ConfigError

    with pytest.raises(ConfigError, match="build.ray.worker_memory"):
        _cfg("build.ray.worker_memory=lots")
    with pytest.raises(ConfigError, match="tokenize.ray.worker_replicas"):
        _cfg("tokenize.ray.worker_replicas=-1")


# ---------------------------------------------------------------- the pass-through environment
def _env(kr_env: dict | None = None, **environ: str) -> dict[str, str]:
    cfg = _cfg(*(f"kuberay.env.{k}={v}" for k, v in (kr_env or {}).items()))
    return {e["name"]: e["value"] for e in job_env(cfg.kuberay, environ)}


def test_an_mlflow_uri_on_this_machine_is_left_out_with_a_warning():
    with pytest.warns(UserWarning, match=r"MLFLOW_TRACKING_URI=http://127.0.0.1:5000 names this machine.*not passed"
                                         r".*kuberay.env.MLFLOW_TRACKING_URI"):
        env = _env(MLFLOW_TRACKING_URI="http://127.0.0.1:5000", LMOPS_S3_ENDPOINT_URL="http://minio.ml.svc:9000")
    assert "MLFLOW_TRACKING_URI" not in env and env["LMOPS_S3_ENDPOINT_URL"] == "http://minio.ml.svc:9000"
    with pytest.warns(UserWarning, match="MLFLOW_TRACKING_URI=http://localhost:5000"):
        assert "MLFLOW_TRACKING_URI" not in _env(MLFLOW_TRACKING_URI="http://localhost:5000")
    # an address pods reach is passed as before, and kuberay.env's own wins without a word
    assert _env(MLFLOW_TRACKING_URI="http://mlflow.ml.svc:5000")["MLFLOW_TRACKING_URI"] == "http://mlflow.ml.svc:5000"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = _env({"MLFLOW_TRACKING_URI": "http://10.244.0.1:5000"}, MLFLOW_TRACKING_URI="http://127.0.0.1:5000")
    assert env["MLFLOW_TRACKING_URI"] == "http://10.244.0.1:5000"


@pytest.mark.parametrize("name", ["LMOPS_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_an_s3_endpoint_on_this_machine_is_refused_naming_the_variable(name):
    with pytest.raises(LmopsError, match=rf"{name}=http://\[::1\]:9000 names this machine.*set kuberay.env.{name}"):
        _env(**{name: "http://[::1]:9000"})
    # unless kuberay.env gives the pods their own address; no loopback alias is derived from the host's
    env = _env({name: "http://10.244.0.1:9000"}, **{name: "http://127.0.0.1:9000"})
    assert env[name] == "http://10.244.0.1:9000" and "127.0.0.1" not in str(env)
