from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Output

from components.image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def resolve_config(config: str, overrides: list, model_name: str, sources: list, num_workers: int,
                   gpus_per_worker: int, mlflow_tracking_uri: str, deploy_target: str, cache_dir: str,
                   gpu_node_selector: dict, gpu_tolerations: list, launcher: str, train_pod_gpus: int,
                   resolved: Output[Artifact]) -> NamedTuple(
        "Outputs", config=str, cpu_image=str, train_image=str, train_cpu=str, train_memory=str, train_cpu_limit=str,
        train_memory_limit=str, train_gpus=int, train_node_selector=dict, train_tolerations=list):
    """Validate the configuration once: a preset name (tiny, small, gpt2-124m) or YAML path inside the image,
    `key.path=value` overrides, and the pipeline's parameters mapped onto config fields. Writes config.yaml (the
    artifact, for the UI) and returns the same YAML as `config`, the parameter every later task takes (so their
    cache keys follow its content), plus the image of every task and the train task's pod, which depends on the
    launcher. A bad config fails here, before any work, with the YAML path at fault."""
    from collections import namedtuple

    from lmops.pipeline import steps

    steps.record(resolved, steps.resolve_config(
        config, overrides, resolved.path, model_name=model_name, sources=sources, num_workers=num_workers,
        gpus_per_worker=gpus_per_worker, mlflow_tracking_uri=mlflow_tracking_uri, deploy_target=deploy_target,
        cache_dir=cache_dir, node_selector=gpu_node_selector, tolerations=gpu_tolerations))
    out = steps.resolved_outputs(resolved.path, launcher, train_pod_gpus, gpu_node_selector, gpu_tolerations)
    fields = ["config", "cpu_image", "train_image", "train_cpu", "train_memory", "train_cpu_limit",
              "train_memory_limit", "train_gpus", "train_node_selector", "train_tolerations"]
    return namedtuple("Outputs", fields)(*(out[f] for f in fields))
