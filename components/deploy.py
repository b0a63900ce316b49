from kfp import dsl
from kfp.dsl import Artifact, Output

from components.image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def deploy(config: str, model_uri: str, endpoint: Output[Artifact]) -> str:
    """Stage 7: serve the registered version: a KServe InferenceService (deploy.target=kubernetes), or a local
    KServe model server on 127.0.0.1 (local). Returns the endpoint URL; endpoint.json has every protocol's URL."""
    from lmops.pipeline import steps

    row = steps.deploy(config, model_uri, endpoint.path)
    steps.record(endpoint, row)
    return row["url"]
