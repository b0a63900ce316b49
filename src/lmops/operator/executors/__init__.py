"""Where an LMTrainingJob's pipeline runs: ``kubernetes`` (a batch/v1 Job per stage and a RayJob for train, the
default), ``kfp`` (a Kubeflow Pipelines run) or ``local`` (the operator runs `lmops pipeline run`). Each starts
idempotently by run id, reports a RunState and cancels."""

from __future__ import annotations

from lmops.crd.training import LMTrainingJobSpec


def for_spec(spec: LMTrainingJobSpec, settings, obj: dict | None = None, client=None):
    """``obj``: the LMTrainingJob (the kubernetes executor names and owns its objects after it)."""
    if spec.executor.kind == "kfp":
        from lmops.operator.executors.kfp import KfpExecutor

        return KfpExecutor(spec.executor.kfp.host, settings.kfp_client_factory)
    if spec.executor.kind == "kubernetes":
        from lmops.operator.executors.kubernetes import KubernetesExecutor, target_for

        return KubernetesExecutor(target_for(obj, spec, settings), client, spec)
    from lmops.operator.executors.local import LocalExecutor

    return LocalExecutor(settings.runs_dir, settings.tracking_uri)
