from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def compress(config: str, checkpoint: Input[Model], tokens: Input[Dataset], compressed: Output[Model],
             metrics: Output[Metrics]):
    """Stage 5: int8 quantization, magnitude pruning and a distilled student, each scored by the same
    evaluation and gated on its quality budget against the fp32 model (compress.json, compress.png)."""
    from lmops.pipeline import steps

    steps.record(compressed, steps.compress(config, checkpoint.path, tokens.path, compressed.path), metrics)
