from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def build(config: str, launcher: str, dataset: Output[Dataset]):
    """Stage 1: raw sources (local files or s3://) -> cleaned, deduplicated train/val/test JSONL shards with a
    manifest of digests. Splits are deterministic (hash of each document), so a re-run gives the same data.
    launcher=kuberay with build.engine ray (or auto): a KubeRay RayJob runs it on Ray Data (s3:// sources; data
    worker pods sized by build.ray) and writes the dataset beside this task's output, which then fetches it."""
    from lmops.pipeline import steps

    steps.record(dataset, steps.build(config, dataset.path, launcher, dataset.uri))
