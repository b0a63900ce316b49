from kfp import dsl
from kfp.dsl import Artifact, Output

from components.image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def resolve_config(config: str, overrides: list, model_name: str, sources: list, num_workers: int,
                   gpus_per_worker: int, mlflow_tracking_uri: str, deploy_target: str, cache_dir: str,
                   gpu_node_selector: dict, gpu_tolerations: list, resolved: Output[Artifact]):
    """Validate the configuration once: a preset name (tiny, small, gpt2-124m) or YAML path inside the image,
    `key.path=value` overrides, and the pipeline's parameters mapped onto config fields. Writes config.yaml,
    which every later task reads, so a bad config fails here, before any work, with the YAML path at fault."""
    from lmops.pipeline import steps

    steps.record(resolved, steps.resolve_config(
        config, overrides, resolved.path, model_name=model_name, sources=sources, num_workers=num_workers,
        gpus_per_worker=gpus_per_worker, mlflow_tracking_uri=mlflow_tracking_uri, deploy_target=deploy_target,
        cache_dir=cache_dir, node_selector=gpu_node_selector, tolerations=gpu_tolerations))
