"""The lmops Kubeflow pipeline: config -> build -> tokenize -> train -> evaluate -> compress -> register -> deploy.

Compile it with ``make pipeline`` (``lmops pipeline compile``) to ``pipelines/lmops_pipeline.yaml`` and upload
that file in the Kubeflow UI; ``make run`` runs the same function through kfp's local runner.

- Training is one task with two launchers. ``kuberay`` (the default on a cluster): the task submits a
  KubeRay RayJob whose GPU worker group is ``num_workers`` x ``gpus_per_worker`` (scheduled with
  ``gpu_node_selector`` / ``gpu_tolerations``) and waits for it. ``local``: Ray runs inside the task's own
  pod, which gets ``train_pod_gpus`` GPUs (kfp accelerator limit) and the same node selector and tolerations.
  (One task rather than an If/Else of two: kfp 2.17's local runner cannot pick an artifact out of
  ``dsl.OneOf``, and ``make run`` runs this very pipeline.)
- Build and tokenize follow the launcher too when their engine is Ray Data (``build.engine`` /
  ``tokenize.engine`` ray, or auto): with ``kuberay`` each submits a RayJob of its own (CPU data worker pods
  sized by ``build.ray`` / ``tokenize.ray``, inputs and outputs in S3) and fetches its output; otherwise the
  stage runs in the task's pod. A ``local`` engine always runs in the pod.
- Register and deploy run only when the evaluation gate passed against the current champion (``dsl.If``).
- kfp caching is on for build and tokenize (pure functions of their inputs), off for the rest: evaluation
  reads the champion, and registration and deployment change the world. The resolved config reaches every
  task as a string parameter, so Kubeflow's cache key (parameter values, input artifact ids, image, command)
  follows its content and build / tokenize hit across runs. lmops' own content-addressed stage cache
  (``cache_dir``) additionally serves any stage whose inputs and config are unchanged.
- Every task runs the image setting's cpu image as the non-root UID 1000, with CPU/memory requests and limits
  and S3 credentials from a Secret (pipelines/pod_settings.py). The train task's image, resources and GPU
  placement come from resolve-config: with ``kuberay`` it is a small CPU-only pod (the RayJob's workers get the
  GPUs and the GPU nodes), with ``local`` the cuda image and ``train_pod_gpus`` GPUs when it has any.
"""

from kfp import dsl, kubernetes

import components as c
from pipelines import pod_settings as pods

POD = pods.compile_config()  # the pipeline.* and image.* the task pods are compiled with

@dsl.pipeline(name="lmops", description="Raw text to a served, versioned causal language model: build, tokenize, "
                                         "train (Ray), evaluate, compress, register (MLflow), deploy (KServe).")
def lmops_pipeline(
    config: str = "tiny",
    overrides: list = [],
    model_name: str = "lmops-lm",
    sources: list = [],
    num_workers: int = 1,
    gpus_per_worker: int = 0,
    launcher: str = "kuberay",
    train_pod_gpus: int = 0,
    mlflow_tracking_uri: str = "",
    deploy_target: str = "kubernetes",
    cache_dir: str = "",
    gpu_node_selector: dict = {},
    gpu_tolerations: list = [],
):
    """Parameters:
    config: preset name (tiny, small, gpt2-124m) or a YAML path inside the image.
    overrides: config overrides, each "key.path=value" (e.g. "train.max_steps=2000").
    model_name: MLflow registered model name (registry.model_name).
    sources: data sources (paths, globs, s3:// URIs); empty = the config's build.sources.
    num_workers: Ray Train workers (DDP ranks). gpus_per_worker: GPUs per worker (0 = CPU).
    launcher: "kuberay" (submit a RayJob: train, and build / tokenize when their engine is ray or auto) or "local"
    (Ray inside the task pods).
    train_pod_gpus: GPUs of the train pod itself (launcher=local; keep 0 with kuberay, whose workers get theirs).
    mlflow_tracking_uri: MLflow server for tracking, the champion gate and the registry; empty = $MLFLOW_TRACKING_URI.
    deploy_target: "kubernetes" (KServe InferenceService) or "local" (a model server beside the pipeline).
    cache_dir: lmops' stage cache folder ("" = none; kfp's own caching still applies to build/tokenize).
    gpu_node_selector / gpu_tolerations: scheduling of the GPU pods (the RayJob's workers, or the train pod with
    launcher=local and train_pod_gpus > 0; never the CPU-only submitting pod of kuberay); empty = the config's
    kuberay.node_selector / kuberay.tolerations for the RayJob (default: tolerate nvidia.com/gpu:NoSchedule when
    its workers have GPUs), and the nvidia.com/gpu toleration alone for a GPU train pod. (No default list here: kfp writes a dict default's keys in an
    unstable order, and the compiled YAML is a golden file.)
    """
    cfg = c.resolve_config(config=config, overrides=overrides, model_name=model_name, sources=sources,
                           num_workers=num_workers, gpus_per_worker=gpus_per_worker,
                           mlflow_tracking_uri=mlflow_tracking_uri, deploy_target=deploy_target, cache_dir=cache_dir,
                           gpu_node_selector=gpu_node_selector, gpu_tolerations=gpu_tolerations, launcher=launcher,
                           train_pod_gpus=train_pod_gpus)
    cfg.set_display_name("config").set_caching_options(False)
    pods.cluster_ready(cfg, POD, POD.pipeline.resolve_config)
    resolved = cfg.outputs["config"]  # the YAML text: cache keys follow the content
    image = cfg.outputs["cpu_image"]

    # with launcher=kuberay and a ray engine (build.engine / tokenize.engine ray, or auto), each data task
    # submits a RayJob of its own and waits for it, as train does
    built = c.build(config=resolved, launcher=launcher).set_display_name("build").set_caching_options(True)
    tokens = c.tokenize(config=resolved, launcher=launcher, dataset=built.outputs["dataset"])
    tokens.set_display_name("tokenize").set_caching_options(True)

    trained = c.train(config=resolved, tokens=tokens.outputs["tokens"], launcher=launcher,
                      pod_gpus=cfg.outputs["train_gpus"], job_name=f"lmops-{dsl.PIPELINE_JOB_ID_PLACEHOLDER}")
    trained.set_display_name("train").set_caching_options(False)
    # the train pod as resolve-config decided from the launcher: CPU-only for kuberay, GPUs for local
    trained.set_container_image(cfg.outputs["train_image"])
    trained.set_cpu_request(cfg.outputs["train_cpu"]).set_cpu_limit(cfg.outputs["train_cpu_limit"])
    trained.set_memory_request(cfg.outputs["train_memory"]).set_memory_limit(cfg.outputs["train_memory_limit"])
    trained.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(cfg.outputs["train_gpus"])
    kubernetes.add_node_selector_json(trained, cfg.outputs["train_node_selector"])
    kubernetes.add_toleration_json(trained, cfg.outputs["train_tolerations"])
    pods.cluster_ready(trained, POD, None, ray=True)
    checkpoint = trained.outputs["checkpoint"]

    scored = c.evaluate(config=resolved, checkpoint=checkpoint, tokens=tokens.outputs["tokens"])
    scored.set_display_name("evaluate").set_caching_options(False)
    small = c.compress(config=resolved, checkpoint=checkpoint, tokens=tokens.outputs["tokens"])
    small.set_display_name("compress").set_caching_options(False)
    for task, res in ((built, POD.pipeline.build), (tokens, POD.pipeline.tokenize), (scored, POD.pipeline.evaluate),
                      (small, POD.pipeline.compress)):
        task.set_container_image(image)
        pods.cluster_ready(task, POD, res, ray=task is small)  # distillation runs on Ray

    with dsl.If(scored.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a kfp condition)
        reg = c.register(config=resolved, checkpoint=checkpoint, evaluation=scored.outputs["evaluation"],
                         compressed=small.outputs["compressed"], pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
        reg.set_display_name("register").set_caching_options(False)
        served = c.deploy(config=resolved, model_uri=reg.outputs["model_uri"])
        served.set_display_name("deploy").set_caching_options(False)
        for task, res in ((reg, POD.pipeline.register_model), (served, POD.pipeline.deploy)):
            task.set_container_image(image)
            pods.cluster_ready(task, POD, res)
