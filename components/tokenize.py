from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def tokenize(config: str, launcher: str, dataset: Input[Dataset], tokens: Output[Dataset]):
    """Stage 2: train (or load) a byte-level BPE tokenizer and pack each split into token shards
    (tokenizer/, train.bin, val.bin, test.bin). launcher=kuberay with tokenize.engine ray (or auto): a KubeRay
    RayJob encodes on Ray Data (worker pods sized by tokenize.ray), reading the dataset from S3."""
    from lmops.pipeline import steps

    steps.record(tokens, steps.tokenize(config, dataset.path, tokens.path, launcher, dataset.uri, tokens.uri))
