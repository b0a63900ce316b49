from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def train(config: str, tokens: Input[Dataset], launcher: str, pod_gpus: int, job_name: str,
          checkpoint: Output[Model], metrics: Output[Metrics]):
    """Stage 3, Ray Train (DDP), resuming from the latest complete checkpoint; writes a Hugging Face model dir.
    launcher=local: Ray inside this pod (its CPUs and pod_gpus GPUs), or the cluster RAY_ADDRESS names.
    launcher=kuberay: submit a KubeRay RayJob (ray.io/v1; head + GPU worker group sized by train.num_workers and
    kuberay.gpus_per_worker), report its status while waiting, fail with its message; the workers read the tokens
    from the artifact store (S3) and write the checkpoint beside this task's output, then it is fetched here
    (artifacts outside S3 are staged through kuberay.staging_uri)."""
    from lmops.pipeline import steps

    if launcher == "kuberay":
        row = steps.train_on_kuberay(config, tokens.uri, checkpoint.path, job_name=job_name,
                                     checkpoint_uri=checkpoint.uri + ".rayjob", tokens_dir=tokens.path)
    else:
        row = steps.train(config, tokens.path, checkpoint.path, gpus=pod_gpus)
    steps.record(checkpoint, row, metrics)
