"""The compiled pipeline is a golden file: compiling again gives the committed YAML byte for byte, and the
YAML parses into kfp's PipelineSpec protobuf (what the Kubeflow UI and API server validate on upload)."""

from __future__ import annotations

import yaml

from lmops.pipeline.compile import PIPELINE_YAML, compile_pipeline

STAGES = ("resolve-config", "build", "tokenize", "train", "evaluate", "compress", "register", "deploy")


def test_committed_yaml_is_what_the_pipeline_compiles_to(tmp_path):
    fresh = compile_pipeline(tmp_path / "lmops_pipeline.yaml")
    import kfp

    # The YAML records the kfp version that compiled it; requirements.lock pins kfp, so with a locked
    # install this changes only when the pipeline does.
    assert fresh.read_text() == PIPELINE_YAML.read_text(), (
        f"pipelines/lmops_pipeline.yaml differs from a fresh compile with kfp {kfp.__version__}: if the pipeline "
        "changed, regenerate it with `make pipeline` and commit it; if only sdkVersion differs, this "
        "environment is not the lock (rm -rf .venv && make venv)")


def _documents():
    docs = list(yaml.safe_load_all(PIPELINE_YAML.read_text()))
    assert len(docs) == 2, "expected the PipelineSpec and its kubernetes platform spec"
    return docs


def test_yaml_loads_into_kfps_pipeline_spec_protobuf():
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec_doc, platform_doc = _documents()
    spec = json_format.ParseDict(spec_doc, pipeline_spec_pb2.PipelineSpec())  # unknown fields raise
    platform = json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec())
    assert spec.pipeline_info.name == "lmops"
    tasks = dict(spec.root.dag.tasks)
    # every stage is a task (register and deploy inside the gate's condition)
    names = set(tasks) | {t for c in spec.components.values() for t in c.dag.tasks}
    assert set(STAGES) <= names, names
    assert "kubernetes" in platform.platforms


def test_parameters_the_ui_shows():
    spec, _ = _documents()
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"config", "overrides", "model_name", "sources", "num_workers", "gpus_per_worker", "launcher",
            "train_pod_gpus", "mlflow_tracking_uri", "deploy_target", "gpu_node_selector",
            "gpu_tolerations"} <= set(params)
    assert params["config"]["defaultValue"] == "tiny"
    assert params["num_workers"]["parameterType"] == "NUMBER_INTEGER"


def test_gate_caching_gpus_and_scheduling_are_compiled_in():
    spec, platform = _documents()
    tasks = spec["root"]["dag"]["tasks"]
    # register + deploy run only when evaluate's output (the gate verdict) is true
    gate = next(t for t in tasks.values() if "triggerPolicy" in t)
    assert "evaluate-Output" in gate["triggerPolicy"]["condition"]
    inner = spec["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
    assert {"register", "deploy"} <= set(inner)
    # kfp caching: on for build and tokenize, off for the rest
    assert tasks["build"]["cachingOptions"].get("enableCache") is True
    assert tasks["tokenize"]["cachingOptions"].get("enableCache") is True
    for name in ("train", "evaluate", "compress"):
        assert not tasks[name]["cachingOptions"].get("enableCache"), name
    # GPUs, image, resources, node selector and tolerations of the train pod come from resolve-config, which
    # decides them from the launcher (lmops.pipeline.task_pods): a CPU-only pod for kuberay
    train_exec = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train_exec["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "resolve-config-train_gpus" in str(train_exec["resources"]["accelerator"])
    assert "resolve-config-train_image" in train_exec["image"]
    assert "resolve-config-train_cpu" in train_exec["resources"]["resourceCpuRequest"]
    assert "resolve-config-train_memory_limit" in train_exec["resources"]["resourceMemoryLimit"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    for key, output in (("nodeSelector", "train_node_selector"), ("tolerations", "train_tolerations")):
        assert output in str(k8s[key]) and "gpu_" not in str(k8s[key]), key
    # every component runs the lmops image (the image setting, from resolve-config) and does not pip-install kfp
    for name, ex in spec["deploymentSpec"]["executors"].items():
        image = ex["container"]["image"]
        assert image.startswith("localhost/lmops:") or "pipelinechannel--resolve-config-" in image, name
        assert "pip install" not in " ".join(ex["container"]["command"]), name
