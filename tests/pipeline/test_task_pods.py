"""The compiled pipeline's task pods, read from the committed YAML: security context and emptyDirs, requests and
limits, S3 credentials by Secret reference; Kubeflow's cache key staying equal across runs for the cached tasks;
and the train pod resolve-config decides from the launcher."""

from __future__ import annotations

import pytest
import yaml

from lmops.config import load_config
from lmops.errors import LmopsError
from lmops.pipeline import steps
from lmops.pipeline.compile import PIPELINE_YAML
from lmops.pipeline.task_pods import train_pod
from lmops.security.restricted import violations

SPEC, PLATFORM = list(yaml.safe_load_all(PIPELINE_YAML.read_text()))
EXECUTORS = SPEC["deploymentSpec"]["executors"]
K8S = PLATFORM["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# What Kubeflow's backend adds to every task container by itself (kfp-kubernetes 2.17.3, set_security_context:
# "Platform security defaults ... are enforced separately"), which no pipeline can set or unset.
KUBEFLOW_DEFAULTS = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                     "seccompProfile": {"type": "RuntimeDefault"}}


def _task_pod(executor: str) -> dict:
    """The pod Kubeflow makes of a task, from the compiled platform config (user container only)."""
    k8s = K8S[executor]
    sc = {k: (int(v) if k in ("runAsUser", "runAsGroup") else v) for k, v in k8s["securityContext"].items()}
    volumes = [{"name": m["volumeName"], "emptyDir": {"medium": m["medium"]} if m.get("medium") else {}}
               for m in k8s["emptyDirMounts"]]
    container = {"name": "main", "image": EXECUTORS[executor]["container"]["image"],
                 "securityContext": {**sc, **KUBEFLOW_DEFAULTS},
                 "volumeMounts": [{"name": m["volumeName"], "mountPath": m["mountPath"]} for m in k8s["emptyDirMounts"]]}
    return {"containers": [container], "volumes": volumes}


@pytest.mark.parametrize("executor", sorted(EXECUTORS))
def test_every_task_runs_restricted_but_for_the_root_filesystem_kfp_cannot_make_read_only(executor):
    k8s = K8S[executor]
    assert k8s["securityContext"] == {"runAsUser": "1000", "runAsGroup": "1000", "runAsNonRoot": True}
    mounts = {m["mountPath"]: m.get("medium") for m in k8s["emptyDirMounts"]}
    assert {"/tmp", "/var/cache/lmops"} <= set(mounts)
    if executor in ("exec-train", "exec-compress"):  # Ray / torch shared memory
        assert mounts["/dev/shm"] == "Memory" and "/tmp/ray" in mounts
    pod = _task_pod(executor)
    assert violations(pod, read_only_root=False) == []
    # the gap, stated precisely: kfp-kubernetes has no readOnlyRootFilesystem (nor fsGroup)
    assert violations(pod) == ["spec.containers[0] (main): securityContext.readOnlyRootFilesystem must be true"]


@pytest.mark.parametrize("executor", sorted(EXECUTORS))
def test_every_task_has_requests_and_limits_and_s3_credentials_by_reference(executor):
    res = EXECUTORS[executor]["container"]["resources"]
    for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
        assert res.get(key), (executor, key)  # never BestEffort
    (secret,) = K8S[executor]["secretAsEnv"]
    assert secret["secretName"] == "mlpipeline-minio-artifact" and secret["optional"] is False
    assert {m["envVar"] for m in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(e["name"] not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
               for e in EXECUTORS[executor]["container"].get("env", []))


def test_per_stage_defaults_are_compiled_in():
    res = {name[len("exec-"):]: ex["container"]["resources"] for name, ex in EXECUTORS.items()}
    assert (res["build"]["resourceCpuRequest"], res["build"]["resourceMemoryLimit"]) == ("1", "4Gi")
    assert (res["compress"]["resourceCpuRequest"], res["compress"]["resourceMemoryRequest"]) == ("4", "16Gi")
    assert (res["resolve-config"]["resourceCpuRequest"], res["deploy"]["resourceCpuRequest"]) == ("100m", "250m")


def _tasks():
    """Every task of the pipeline, nested DAGs (the gate's condition) included."""
    tasks = dict(SPEC["root"]["dag"]["tasks"])
    for comp in SPEC["components"].values():
        tasks.update((comp.get("dag") or {}).get("tasks") or {})
    return tasks


def _stable_key(name: str, tasks: dict) -> bool:
    """Whether Kubeflow's cache key of a task can be equal in two runs of the same parameters: its input
    parameters are values (equal when the same parameters give the same values) and its input artifacts are
    the same artifacts, which holds only for artifacts of tasks that were themselves served from the cache
    (backend/src/v2/cacheutils/cache.go: the key holds the input artifacts' metadata-store names)."""
    task = tasks[name]
    for art in (task.get("inputs") or {}).get("artifacts", {}).values():
        producer = art["taskOutputArtifact"]["producerTask"]
        if not (tasks[producer].get("cachingOptions") or {}).get("enableCache") or not _stable_key(producer, tasks):
            return False
    return True


def test_cached_tasks_can_hit_kubeflows_cache_across_runs():
    tasks = _tasks()
    cached = [n for n, t in tasks.items() if (t.get("cachingOptions") or {}).get("enableCache")]
    assert set(cached) == {"build", "tokenize"}
    for name in cached:
        assert _stable_key(name, tasks), name
        # the config arrives as resolve-config's parameter (a value), not as its artifact
        assert tasks[name]["inputs"]["parameters"]["config"]["taskOutputParameter"] == {
            "producerTask": "resolve-config", "outputParameterKey": "config"}
    # the check can fail: with the config as resolve-config's artifact (uncached), build could never hit
    broken = {**tasks, "build": {**tasks["build"], "inputs": {"artifacts": {"config": {"taskOutputArtifact": {
        "producerTask": "resolve-config", "outputArtifactKey": "resolved"}}}}}}
    assert not _stable_key("build", broken) and not _stable_key("tokenize", broken)


# ---------------------------------------------------------------- the train pod, by launcher
def test_kuberay_train_pod_is_small_cpu_only_and_off_gpu_nodes():
    cfg = load_config("tiny", ["image.repository=registry.local/lmops"])
    pod = train_pod(cfg, "kuberay", 0, {"gpu": "l4"}, [GPU_TOLERATION])
    assert pod["image"] == f"registry.local/lmops:{cfg.image.tag}-cpu"
    assert (pod["cpu"], pod["memory"], pod["gpus"]) == ("250m", "1Gi", 0)
    assert pod["node_selector"] == {} and pod["tolerations"] == []
    with pytest.raises(LmopsError, match="train_pod_gpus=1 with launcher=kuberay"):
        train_pod(cfg, "kuberay", 1)
    with pytest.raises(LmopsError, match="launcher='ray'"):
        train_pod(cfg, "ray", 0)


def test_local_train_pod_gets_the_gpus_the_cuda_image_and_gpu_placement():
    cfg = load_config("tiny", ["pipeline.train_local.cpu=6", "pipeline.train_local.memory=24Gi"])
    pod = train_pod(cfg, "local", 2, {"gpu": "l4"}, [])
    assert pod["image"].endswith("-cuda") and pod["gpus"] == 2 and (pod["cpu"], pod["memory"]) == ("6", "24Gi")
    assert pod["node_selector"] == {"gpu": "l4"} and pod["tolerations"] == [GPU_TOLERATION]
    cpu = train_pod(cfg, "local", 0, {"gpu": "l4"}, [GPU_TOLERATION])
    assert cpu["image"].endswith("-cpu") and cpu["node_selector"] == {} and cpu["tolerations"] == []


def test_resolve_config_outputs_carry_the_config_text(tmp_path):
    steps.resolve_config("tiny", ["train.max_steps=7"], tmp_path)
    out = steps.resolved_outputs(tmp_path, "kuberay", 0)
    assert steps.parse_config(out["config"]).train.max_steps == 7
    assert out["cpu_image"].endswith("-cpu") and out["train_image"].endswith("-cpu") and out["train_gpus"] == 0
    # the same inputs give the same text: the downstream cache keys are equal across runs
    steps.resolve_config("tiny", ["train.max_steps=7"], tmp_path / "again")
    assert steps.resolved_outputs(tmp_path / "again", "kuberay", 0)["config"] == out["config"]


def test_s3_endpoint_from_the_config_only_inside_a_kubeflow_pod():
    cfg = load_config("tiny")
    local: dict = {}
    steps.kubeflow_env(cfg, local)
    assert local == {}  # kfp's local runner: the caller's environment decides
    pod = {"KFP_POD_NAME": "lmops-abc-system-container-impl"}
    steps.kubeflow_env(cfg, pod)
    assert pod["LMOPS_S3_ENDPOINT_URL"] == "http://minio-service.kubeflow:9000"
    own = {"KFP_POD_NAME": "x", "LMOPS_S3_ENDPOINT_URL": "http://minio.ml:9000"}
    steps.kubeflow_env(cfg, own)
    assert own["LMOPS_S3_ENDPOINT_URL"] == "http://minio.ml:9000"


def test_bad_task_pod_settings_name_their_yaml_path():
    from lmops.config import ConfigError, config_from_dict

    for bad, where in (({"build": {"cpu": "lots"}}, "pipeline.build.cpu"),
                       ({"train_local": {"memory": "16 gigs"}}, "pipeline.train_local.memory"),
                       ({"evaluate": {"cpu": "4", "cpu_limit": "2"}}, r"pipeline: .*evaluate.cpu_limit \(2\) is below"),
                       ({"s3_secret": {"name": "Bad_Name"}}, "pipeline.s3_secret.name"),
                       ({"deploy": {"gpus": 1}}, r"pipeline.deploy.gpus: unknown key")):
        with pytest.raises(ConfigError, match=where):
            config_from_dict({"pipeline": bad})
    assert config_from_dict({"pipeline": {"s3_secret": None}}).pipeline.s3_secret is None


# ---------------------------------------------------------------- run arguments, refused before anything starts
@pytest.mark.parametrize("kwargs, error", [({"until": "register", "runner": "subprocess"}, "until='register' with"),
                                           ({"until": "deploy", "runner": "inprocess"}, "until='deploy' with"),
                                           ({"launcher": "ray"}, "launcher='ray'")])
def test_run_arguments_that_cannot_work_are_refused_first(kwargs, error):
    """Through run_pipeline itself (which wraps the run to give the caller its environment back): every argument
    reaches the checks, before any server starts."""
    from lmops.pipeline.local import run_pipeline

    with pytest.raises(LmopsError, match=error):
        run_pipeline("micro", **kwargs)
