from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(config: str, checkpoint: Input[Model], tokens: Input[Dataset], evaluation: Output[Artifact],
             metrics: Output[Metrics]) -> bool:
    """Stage 4: test-split perplexity and bits per byte, evaluation tokens/s, generation latency and size, gated
    against the current champion's recorded metrics (registry.champion_alias) when an MLflow server is configured.
    Returns whether the gate passed, which decides whether the model is registered. (A single output rather
    than a NamedTuple: kfp 2.17's local runner cannot resolve a dsl.If on a NamedTuple field.)"""
    from lmops.pipeline import steps

    row = steps.evaluate(config, checkpoint.path, tokens.path, evaluation.path)
    steps.record(evaluation, row, metrics)
    return row["gate_passed"]
