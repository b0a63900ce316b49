from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components.image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(config: str, checkpoint: Input[Model], evaluation: Input[Artifact], compressed: Input[Model],
             pipeline_run_id: str, registration: Output[Artifact]) -> NamedTuple("Outputs", model_uri=str, version=str):
    """Stage 6: one MLflow model version per variant (fp32 and each compressed one) with lineage, config,
    code and gate tags; the alias `candidate` goes to the best passing version, whose URI is returned."""
    from collections import namedtuple

    from lmops.pipeline import steps

    row = steps.register(config, checkpoint.path, evaluation.path, compressed.path, registration.path,
                         pipeline_run_id)
    steps.record(registration, row)
    return namedtuple("Outputs", ["model_uri", "version"])(row["model_uri"], row["candidate_version"])
